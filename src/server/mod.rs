//! Listeners and connections: accept, TLS, HTTP/1.1 or HTTP/2, graceful
//! shutdown on SIGTERM and configuration reload on SIGHUP.

pub(crate) mod conn;
mod per_ip;
mod stall;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::gateway::Gateway;

/// The bound listening sockets.
pub struct Listeners {
    pub https: Option<TcpListener>,
    pub http: Option<TcpListener>,
    pub admin: Option<TcpListener>,
}

impl Listeners {
    pub async fn bind(gateway: &Gateway) -> Result<Listeners, String> {
        let runtime = gateway.runtime();
        let config = &runtime.config;
        Ok(Listeners {
            https: bind(config.server.https_listen).await?,
            http: bind(config.server.http_listen).await?,
            admin: bind(config.admin.listen).await?,
        })
    }

    /// `https=ADDR http=ADDR admin=ADDR`, with the ports actually bound.
    pub fn describe(&self) -> String {
        let parts = [
            ("https", &self.https),
            ("http", &self.http),
            ("admin", &self.admin),
        ];
        parts
            .iter()
            .filter_map(|(name, l)| {
                let addr = l.as_ref()?.local_addr().ok()?;
                Some(format!("{name}={addr}"))
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

async fn bind(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, String> {
    match addr {
        None => Ok(None),
        Some(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|e| format!("cannot listen on {addr}: {e}")),
    }
}

/// Which protocol a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Https,
    Http,
    Admin,
}

/// The signals the gateway answers: SIGHUP reloads, SIGTERM and SIGINT stop.
/// Installed before the gateway says it is listening, since until then a
/// signal does what it does by default, which for all three is to end the
/// process at once (no reload, no drain).
pub struct Signals {
    hangup: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> Result<Signals, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind| signal(kind).map_err(|e| format!("cannot install signal handler: {e}"));
        Ok(Signals {
            hangup: listen(SignalKind::hangup())?,
            terminate: listen(SignalKind::terminate())?,
            interrupt: listen(SignalKind::interrupt())?,
        })
    }
}

/// Serves until SIGTERM or SIGINT, then lets in-flight requests finish for up
/// to `shutdown_grace` before returning.
pub async fn run(
    gateway: Arc<Gateway>,
    listeners: Listeners,
    signals: Signals,
) -> Result<(), String> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut accept_loops = tokio::task::JoinSet::new();
    // One count per IP for every client listener together.
    let per_ip = Arc::new(per_ip::PerIpConnections::new());
    for (kind, listener) in [
        (Kind::Https, listeners.https),
        (Kind::Http, listeners.http),
        (Kind::Admin, listeners.admin),
    ] {
        if let Some(listener) = listener {
            accept_loops.spawn(conn::accept_loop(
                kind,
                listener,
                gateway.clone(),
                per_ip.clone(),
                shutdown_rx.clone(),
            ));
        }
    }
    drop(shutdown_rx);
    let sessions = gateway.membership.sessions.clone();
    let forget_tokens = gateway.clone();
    let follower = tokio::spawn(
        sessions.follow_changes(std::time::Duration::from_secs(1), move |member| {
            forget_tokens.identifier.forget_member(member)
        }),
    );
    wait_for_signals(&gateway, signals).await;
    follower.abort();

    let grace = gateway.runtime().config.server.shutdown_grace;
    let _ = shutdown_tx.send(true);
    // The listeners close as their loops end; only then is it true that no
    // new connection gets in (the kernel completes handshakes for an open
    // listener whether or not anyone accepts).
    while accept_loops.join_next().await.is_some() {}
    tracing::info!(
        ?grace,
        "shutting down: no new connections, draining in-flight requests"
    );
    // Every open connection holds a receiver; `closed` resolves when the last one ends.
    if tokio::time::timeout(grace, shutdown_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the remaining connections");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Reloads on SIGHUP; returns on SIGTERM or SIGINT.
async fn wait_for_signals(gateway: &Arc<Gateway>, signals: Signals) {
    let Signals {
        mut hangup,
        mut terminate,
        mut interrupt,
    } = signals;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                let gateway = gateway.clone();
                match tokio::task::spawn_blocking(move || gateway.reload()).await {
                    Ok(Ok(())) => tracing::info!("configuration reloaded"),
                    Ok(Err(e)) => tracing::error!("configuration reload rejected; keeping the running configuration:\n{e}"),
                    Err(e) => tracing::error!(error = %e, "configuration reload failed"),
                }
            }
            _ = terminate.recv() => return,
            _ = interrupt.recv() => return,
        }
    }
}
