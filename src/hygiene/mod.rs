//! Request hygiene: everything that makes a request safe to decide on and to forward.
//!
//! - [`path`]: one normalised path, used for both the decision and the origin;
//! - [`host`]: exactly one, well-formed host for the request;
//! - [`headers`]: hop-by-hop and reserved identity headers stripped, forwarding
//!   headers set from the connection rather than believed from the client.

pub mod headers;
pub mod host;
pub mod path;
