//! WebSocket tunnels: once the origin has answered a handshake with 101, the
//! client's and the origin's connections are joined, byte for byte, until
//! either side closes or neither sends anything for the route's idle
//! timeout. The tunnel keeps its client connection counted (the per-IP cap,
//! the open-connections gauge) for as long as it lives, though its HTTP
//! exchange is over.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Response;
use http::header::{self, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::body::GatewayBody;
use crate::hygiene::headers;
use crate::routing::pool::PooledBody;

/// What keeps a client's connection counted while a tunnel outlives the
/// HTTP exchange that opened it. The server puts it in the extensions of
/// requests that may upgrade; the tunnel holds it until it closes.
#[derive(Clone)]
pub struct HeldConnection(pub Arc<dyn Send + Sync>);

/// Whether an origin's 101 switched to what the client asked for.
pub fn switched_to_websocket(upstream: &Response<PooledBody>) -> bool {
    headers::lists_token(upstream.headers(), header::UPGRADE, "websocket")
}

/// Answers the client's 101 and joins the two upgraded connections.
pub fn open(
    client: OnUpgrade,
    held: Option<HeldConnection>,
    mut upstream: Response<PooledBody>,
    idle: Duration,
) -> Response<GatewayBody> {
    let upstream_upgrade = hyper::upgrade::on(&mut upstream);
    let (mut parts, upstream_body) = upstream.into_parts();
    tokio::spawn(async move {
        let _held = held;
        // Holds the origin connection's sender until its side of the tunnel is up.
        let _connection = upstream_body;
        match tokio::try_join!(client, upstream_upgrade) {
            Ok((client, upstream)) => {
                match relay(TokioIo::new(client), TokioIo::new(upstream), idle).await {
                    Ok(()) => tracing::debug!("websocket tunnel closed"),
                    Err(e) => tracing::debug!(error = %e, "websocket tunnel ended"),
                }
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    headers::strip_hop_by_hop(&mut parts.headers);
    ask_for_websocket(&mut parts.headers);
    Response::from_parts(parts, GatewayBody::Empty)
}

/// The hop-by-hop pair that asks for (or answers with) a switch to
/// websocket on this hop: the gateway sets it on each side itself, since
/// hop-by-hop headers do not pass through.
pub fn ask_for_websocket(headers: &mut http::HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// Copies both ways until both sides have closed, or until no byte has
/// moved either way for `idle`.
async fn relay<C, U>(client: C, upstream: U, idle: Duration) -> std::io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Watched {
        inner: client,
        started,
        last: last.clone(),
    };
    let mut upstream = Watched {
        inner: upstream,
        started,
        last: last.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        let quiet_since = started + Duration::from_millis(last.load(Ordering::Relaxed));
        tokio::select! {
            done = &mut copy => return done.map(|_| ()),
            () = tokio::time::sleep_until(quiet_since + idle) => {
                let moved = started + Duration::from_millis(last.load(Ordering::Relaxed));
                if moved == quiet_since {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("nothing sent either way for {idle:?}"),
                    ));
                }
            }
        }
    }
}

/// A stream that notes when bytes last moved through it.
struct Watched<S> {
    inner: S,
    started: Instant,
    /// Milliseconds from `started` to the last progress, shared by both sides.
    last: Arc<AtomicU64>,
}

impl<S> Watched<S> {
    fn moved(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_lives_while_bytes_move_and_ends_when_none_do() {
        let (client, mut client_far) = tokio::io::duplex(1024);
        let (upstream, mut upstream_far) = tokio::io::duplex(1024);
        let idle = Duration::from_secs(60);
        let relay = tokio::spawn(relay(client, upstream, idle));
        // Traffic one way only, every 50 s: never idle for 60.
        let mut got = [0u8; 2];
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            upstream_far.write_all(b"hi").await.unwrap();
            client_far.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hi");
        }
        assert!(!relay.is_finished());
        // Then nothing: it ends after the idle timeout.
        tokio::time::sleep(Duration::from_secs(61)).await;
        let ended = relay.await.unwrap();
        assert_eq!(ended.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
    }
}
