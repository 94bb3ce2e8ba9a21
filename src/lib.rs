//! membergate: a membership gateway in front of hosted content.
//!
//! A request goes through these phases (see [`proxy::pipeline`]):
//!
//! ```text
//!  client ──TLS/TCP──► server      accept: TLS handshake (timeout), ALPN h2 / http/1.1,
//!                        │                 header size, count and read-time limits
//!                        ▼
//!                     pipeline ─► accept     method, target length
//!                        │        normalise  hygiene::host, hygiene::path (once)
//!                        │        route      routing: site by host, route by path
//!                        │        forward    proxy::forward: headers cleaned
//!                        │                   (hygiene::headers), origin or dir:
//!                        ▼        respond    proxy::respond: own pages, access log
//!                     origin
//! ```
//!
//! Configuration is loaded by [`config`], built into a [`gateway::Runtime`]
//! snapshot that is swapped atomically on reload, and observed through the
//! [`admin`] listener.

pub mod admin;
pub mod cli;
pub mod config;
pub mod files;
pub mod gateway;
pub mod hygiene;
pub mod identity;
pub mod inject;
pub mod limits;
pub mod mail;
pub mod members;
pub mod policy;
pub mod portal;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod session;
pub mod telemetry;
