//! One listener's accept loop and one connection's life: TLS handshake (with a
//! timeout of its own), protocol by ALPN, and a graceful close on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_io_timeout::TimeoutWriter;

use super::Kind;
use super::per_ip::{PerIpConnections, Placed, StreamPlaces};
use super::stall::StallWatch;
use crate::admin;
use crate::config::Limits;
use crate::gateway::Gateway;
use crate::proxy::tunnel::HeldConnection;
use crate::proxy::{ConnInfo, OverIpCap, pipeline};

/// The per-connection service: every request goes through the pipeline.
macro_rules! pipeline_service {
    // HTTP/1.1: a request that may upgrade carries what keeps its connection
    // counted, for a tunnel to hold once the exchange is over.
    ($gateway:expr, $conn:expr, held: $held:expr) => {{
        let gateway = $gateway;
        let conn = $conn;
        let held: HeldConnection = $held;
        service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            if request.extensions().get::<OnUpgrade>().is_some() {
                request.extensions_mut().insert(held.clone());
            }
            let gateway = gateway.clone();
            async move { pipeline::handle(&gateway, conn, request).await }
        })
    }};
    // HTTP/2: requests start the idle clock and are in flight until their
    // body is dropped; bodies count their waits for window. Each takes a
    // place in its address's count until its body's last frame, or is
    // refused over the cap.
    ($gateway:expr, $conn:expr, $watch:expr, $places:expr) => {{
        let gateway = $gateway;
        let conn = $conn;
        let watch: &Http2Watch = $watch;
        let places: Option<StreamPlaces> = $places;
        let (idle, stall) = (watch.idle.clone(), watch.stall.clone());
        service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            idle.request_started();
            let in_flight = stall.request_started();
            let place = match places.as_ref().map(StreamPlaces::take) {
                Some(None) => {
                    request.extensions_mut().insert(OverIpCap);
                    None
                }
                Some(place) => place,
                None => None,
            };
            let gateway = gateway.clone();
            async move {
                let response = pipeline::handle(&gateway, conn, request).await?;
                Ok::<_, Infallible>(response.map(|body| in_flight.watch(Placed::new(body, place))))
            }
        })
    }};
}

/// When an HTTP/2 connection last started a request. hyper closes idle
/// HTTP/1.1 connections through its header timeout, but an HTTP/2 connection
/// only answers keep-alive pings, so without this an idle client would hold
/// its connection (and a file descriptor) for ever.
pub struct IdleWatch {
    opened: Instant,
    /// Milliseconds from `opened` to the start of the latest request.
    last_request_ms: AtomicU64,
}

impl IdleWatch {
    pub fn new() -> IdleWatch {
        IdleWatch {
            opened: Instant::now(),
            last_request_ms: AtomicU64::new(0),
        }
    }

    fn request_started(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_request_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no request has started for `limit`.
    async fn expired(&self, limit: Duration) {
        loop {
            let last = self.last_request_ms.load(Ordering::Relaxed);
            let deadline = self.opened + Duration::from_millis(last) + limit;
            tokio::time::sleep_until(deadline).await;
            if self.last_request_ms.load(Ordering::Relaxed) == last {
                return;
            }
        }
    }
}

pub async fn accept_loop(
    kind: Kind,
    listener: TcpListener,
    gateway: Arc<Gateway>,
    per_ip: Arc<PerIpConnections>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and similar: back off briefly, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // A dual-stack listener (`[::]`) sees IPv4 clients as `::ffff:a.b.c.d`.
        // They are IPv4 clients to `trusted_proxies`, the per-IP cap, the
        // forwarding headers and the log alike.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let _ = stream.set_nodelay(true);
        if kind == Kind::Admin {
            tokio::spawn(admin::serve_connection(
                stream,
                gateway.clone(),
                shutdown.clone(),
            ));
            continue;
        }
        let runtime = gateway.runtime();
        let (limits, server) = (&runtime.config.limits, &runtime.config.server);
        let Some(counted) = per_ip.admit(
            peer.ip(),
            limits.max_connections_per_ip,
            &server.trusted_proxies,
        ) else {
            gateway.metrics.connection_over_ip_cap();
            tracing::debug!(%peer, "connection closed: its IP is at max_connections_per_ip");
            continue;
        };
        let places = (kind == Kind::Https).then(|| {
            let cap = limits.max_connections_per_ip;
            StreamPlaces::for_connection(&per_ip, peer.ip(), cap, &server.trusted_proxies)
        });
        let stream = client_stream(stream, limits.send_timeout);
        drop(runtime);
        let gateway = gateway.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // Counted until the connection closes, or a tunnel it became does.
            let held = HeldConnection(Arc::new((counted, gateway.metrics.connection_opened())));
            let conn = ConnInfo {
                peer,
                tls: kind == Kind::Https,
            };
            match kind {
                Kind::Https => {
                    let places = places.flatten();
                    serve_tls(stream, conn, gateway, shutdown, held, places).await;
                }
                _ => serve_http1(TokioIo::new(stream), conn, gateway, shutdown, held).await,
            }
        });
    }
}

/// A client's connection as the protocols see it: a write that makes no
/// progress for `send_timeout` fails, and hyper closes the connection, so a
/// client that stops reading cannot hold it (attack catalogue H3). Under TLS,
/// so the handshake's writes are covered too.
type ClientStream = Pin<Box<TimeoutWriter<TcpStream>>>;

fn client_stream(stream: TcpStream, send_timeout: Duration) -> ClientStream {
    let mut stream = TimeoutWriter::new(stream);
    stream.set_timeout(Some(send_timeout));
    Box::pin(stream)
}

async fn serve_tls(
    stream: ClientStream,
    conn: ConnInfo,
    gateway: Arc<Gateway>,
    shutdown: watch::Receiver<bool>,
    held: HeldConnection,
    places: Option<StreamPlaces>,
) {
    let runtime = gateway.runtime();
    let Some(tls) = runtime.tls.clone() else {
        return;
    };
    let limits = &runtime.config.limits;
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
    let stream = match tokio::time::timeout(limits.tls_handshake_timeout, accept).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            gateway.metrics.tls_handshake_failed();
            tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            gateway.metrics.tls_handshake_failed();
            tracing::debug!(peer = %conn.peer, "TLS handshake timed out");
            return;
        }
    };
    let session = stream.get_ref().1;
    let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    gateway.metrics.tls_handshake_completed(resumed);
    let h2 = session.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    if h2 {
        let watch = Http2Watch {
            idle: Arc::new(IdleWatch::new()),
            idle_timeout: limits.http2_idle_timeout,
            stall: Arc::new(StallWatch::new()),
            send_timeout: limits.send_timeout,
        };
        let service = pipeline_service!(gateway.clone(), conn, &watch, places);
        let connection = http2_builder(limits).serve_connection(io, service);
        drop(runtime);
        if drive(connection, shutdown, Some(watch)).await == Ended::Stalled {
            gateway.metrics.http2_connection_stalled();
        }
    } else {
        drop(runtime);
        serve_http1(io, conn, gateway, shutdown, held).await;
    }
}

async fn serve_http1<I>(
    io: I,
    conn: ConnInfo,
    gateway: Arc<Gateway>,
    shutdown: watch::Receiver<bool>,
    held: HeldConnection,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let limits = gateway.runtime().config.limits.clone();
    let connection = http1_builder(&limits)
        .serve_connection(io, pipeline_service!(gateway.clone(), conn, held: held))
        .with_upgrades();
    // A request the parser refused never reached the pipeline, its access
    // log or its metrics: it is counted and logged here.
    if let Ended::Unparsed(why) = drive(connection, shutdown, None).await {
        gateway.metrics.request_unparsed();
        tracing::info!(peer = %conn.peer, error = %why, "HTTP/1 request refused by the parser");
    }
}

pub fn http1_builder(limits: &Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192) + limits.max_uri_bytes)
        .keep_alive(true);
    builder
}

fn http2_builder(limits: &Limits) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        // What a stream may queue for its client beyond what the socket took
        // (h2's default is 400 KiB). A client that grants a huge window and
        // then stops reading makes every stream queue this much until
        // `send_timeout`; 64 KiB is several TLS records, enough to keep the
        // socket busy.
        .max_send_buf_size(64 * 1024)
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .keep_alive_interval(std::time::Duration::from_secs(30));
    builder
}

/// A served connection that can be asked to finish its in-flight requests and close.
pub trait GracefulConnection: Future {
    fn begin_graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> GracefulConnection for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn begin_graceful_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> GracefulConnection for http2::Connection<I, S, E>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn begin_graceful_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// What an HTTP/2 connection is watched for, besides shutdown.
pub struct Http2Watch {
    idle: Arc<IdleWatch>,
    idle_timeout: Duration,
    stall: Arc<StallWatch>,
    send_timeout: Duration,
}

/// How a driven connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// By the protocol: the client closed, an error, or a graceful close.
    Closed,
    /// hyper's HTTP/1 parser refused a request (it answered 400, 414 or 431
    /// itself, before the pipeline saw it); with hyper's reason.
    Unparsed(String),
    /// Dropped: a stream's client held its window shut for `send_timeout`.
    Stalled,
}

/// Runs a connection to its end; on shutdown, or once no request has started
/// for the HTTP/2 idle limit, asks it to close after the requests in flight.
/// A stalled HTTP/2 stream ends the connection at once: a graceful close
/// would wait for that very stream. The shutdown receiver is held until the
/// connection ends, which is what the server's drain waits on.
pub async fn drive<C>(
    connection: C,
    mut shutdown: watch::Receiver<bool>,
    http2: Option<Http2Watch>,
) -> Ended
where
    C: GracefulConnection,
    C::Output: Into<Result<(), hyper::Error>>,
{
    let mut connection = std::pin::pin!(connection);
    let idle_expired = async {
        match &http2 {
            Some(watch) => watch.idle.expired(watch.idle_timeout).await,
            None => std::future::pending().await,
        }
    };
    // What ends the first wait: the connection itself, or a reason to close it.
    enum Next<T> {
        Ended(T),
        Close,
        Stalled,
    }
    let next = tokio::select! {
        result = connection.as_mut() => Next::Ended(result),
        _ = shutdown.changed() => Next::Close,
        _ = idle_expired => {
            tracing::debug!("closing an idle HTTP/2 connection");
            Next::Close
        }
        _ = stalled(http2.as_ref()) => Next::Stalled,
    };
    let result = match next {
        Next::Ended(result) => result,
        Next::Stalled => return Ended::Stalled,
        Next::Close => match close(connection.as_mut(), http2.as_ref()).await {
            Ok(result) => result,
            Err(ended) => return ended,
        },
    };
    let ended = match result.into() {
        Ok(()) => Ended::Closed,
        Err(e) if e.is_parse() => Ended::Unparsed(e.to_string()),
        Err(e) => {
            tracing::debug!(error = %e, "connection ended with an error");
            Ended::Closed
        }
    };
    drop(shutdown);
    ended
}

/// Resolves once a stream of an HTTP/2 connection has stalled; never for
/// HTTP/1.1, whose socket write timeout covers the same case.
async fn stalled(http2: Option<&Http2Watch>) {
    match http2 {
        Some(watch) => watch.stall.stalled(watch.send_timeout).await,
        None => std::future::pending().await,
    }
    tracing::debug!("closing an HTTP/2 connection: a stream's client stopped reading");
}

/// Asks a connection to close after its requests in flight, and waits for
/// them. HTTP/2
/// streams are still watched: one that stalls ends the connection, and so
/// does a response handed to HTTP/2 whole that its client has not taken for
/// `send_timeout` (no request left in flight, the rest in HTTP/2's buffer).
async fn close<C>(
    mut connection: Pin<&mut C>,
    http2: Option<&Http2Watch>,
) -> Result<C::Output, Ended>
where
    C: GracefulConnection,
{
    connection.as_mut().begin_graceful_shutdown();
    let Some(watch) = http2 else {
        return Ok(connection.await);
    };
    tokio::select! {
        result = connection => Ok(result),
        _ = stalled(http2) => Err(Ended::Stalled),
        _ = watch.stall.idle_for(watch.send_timeout) => {
            tracing::debug!("closing an HTTP/2 connection: its client does not take its last responses");
            Err(Ended::Stalled)
        }
    }
}
