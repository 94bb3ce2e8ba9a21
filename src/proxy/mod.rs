//! The data plane: one request's way through the gateway.
//!
//! [`pipeline`] runs the phases in order; [`forward`] talks to origins;
//! [`respond`] renders everything the gateway answers itself and the access
//! log; [`body`] holds the streaming body types; [`widget`] puts the chat
//! widget into pages; [`tunnel`] joins a WebSocket's two connections.

pub mod access;
pub mod body;
pub mod forward;
pub mod pipeline;
pub mod respond;
pub mod tunnel;
pub mod widget;

/// Marks an HTTP/2 request whose address already has
/// `limits.max_connections_per_ip` connections and streams open: the
/// pipeline refuses it with 429, logged and counted as any refusal.
#[derive(Debug, Clone, Copy)]
pub struct OverIpCap;

/// What the server knows about the connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: std::net::SocketAddr,
    pub tls: bool,
}
