//! Real origin servers for the tests: an echoing hyper server (plain or TLS)
//! that records what it received, and a raw-TCP origin that misbehaves.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as an origin saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The request target exactly as it arrived on the wire.
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// What arrived of the body (all of it, if `body_complete`).
    pub body: Vec<u8>,
    /// The body arrived to its end; false when the sender aborted it.
    pub body_complete: bool,
    /// Trailer fields sent after a chunked body.
    pub trailers: Vec<(String, String)>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Every header whose name, read with `_` and `.` as `-`, starts with `prefix`.
    pub fn under_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(k, _)| {
                k.to_ascii_lowercase()
                    .replace(['_', '.'], "-")
                    .starts_with(prefix)
            })
            .cloned()
            .collect()
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// An origin that answers by path:
/// - `/stream/N`: N chunks of 1 KiB, 20 ms apart;
/// - `/big`: 1 MiB;
/// - `/huge`: 64 MiB, streamed in 1 MiB chunks;
/// - `/slow`: answers after 3 s;
/// - `/hop`: a response carrying hop-by-hop headers;
/// - `/ws`: accepts a WebSocket handshake and echoes bytes;
/// - `/status/N`: an empty response with status N;
/// - anything else: a JSON echo of the request.
pub struct EchoOrigin {
    pub addr: SocketAddr,
    tls: bool,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    connections: Arc<AtomicUsize>,
}

impl EchoOrigin {
    pub async fn start() -> EchoOrigin {
        EchoOrigin::spawn(None).await
    }

    /// Serves HTTPS with the given PEM certificate and key.
    pub async fn start_tls(cert: &Path, key: &Path) -> EchoOrigin {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        EchoOrigin::spawn(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn spawn(tls: Option<tokio_rustls::TlsAcceptor>) -> EchoOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let origin = EchoOrigin {
            addr,
            tls: tls.is_some(),
            recorded: recorded.clone(),
            connections: connections.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let recorded = recorded.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, recorded.clone()));
                    match tls {
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        }
                    }
                });
            }
        });
        origin
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// How many connections the origin has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.recorded.lock().unwrap().clone()
    }

    /// The one request received so far (panics if there is not exactly one).
    pub fn only_request(&self) -> Recorded {
        let all = self.requests();
        assert_eq!(
            all.len(),
            1,
            "expected one request at the origin, got {all:#?}"
        );
        all.into_iter().next().unwrap()
    }
}

async fn answer(
    req: Request<Incoming>,
    recorded: Arc<Mutex<Vec<Recorded>>>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/ws" {
        return Ok(websocket(req, "websocket"));
    }
    // Switches a WebSocket handshake to another protocol.
    if path == "/ws-h2c" {
        return Ok(websocket(req, "h2c"));
    }
    let (parts, body) = req.into_parts();
    let pairs = |fields: &http::HeaderMap| -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect()
    };
    let (body, body_complete, trailers) = match body.collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().map(pairs).unwrap_or_default();
            (collected.to_bytes().to_vec(), true, trailers)
        }
        Err(_) => (Vec::new(), false, Vec::new()),
    };
    let record = Recorded {
        method: parts.method.to_string(),
        target: parts.uri.to_string(),
        headers: pairs(&parts.headers),
        body,
        body_complete,
        trailers,
    };
    recorded.lock().unwrap().push(record.clone());
    let full = |status: u16, content_type: &str, data: Vec<u8>| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(data)).boxed())
            .unwrap()
    };
    if let Some(n) = path.strip_prefix("/stream/") {
        let n: usize = n.parse().unwrap_or(1);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        tokio::spawn(async move {
            for i in 0..n {
                let chunk = Bytes::from(vec![b'a' + (i % 26) as u8; 1024]);
                if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let stream = tokio_stream_from(rx);
        return Ok(Response::builder()
            .header("content-type", "application/octet-stream")
            .body(StreamBody::new(stream).boxed())
            .unwrap());
    }
    if path == "/huge" {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'x'; 1 << 20]);
            for _ in 0..64 {
                if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                    return;
                }
            }
        });
        return Ok(Response::builder()
            .header("content-type", "application/octet-stream")
            .header("content-length", (64u64 << 20).to_string())
            .body(StreamBody::new(tokio_stream_from(rx)).boxed())
            .unwrap());
    }
    if path == "/big" {
        return Ok(full(200, "application/octet-stream", vec![b'x'; 1 << 20]));
    }
    if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(3)).await;
        return Ok(full(200, "text/plain", b"slow".to_vec()));
    }
    if path == "/hop" {
        let mut response = full(200, "text/plain", b"hop".to_vec());
        let h = response.headers_mut();
        h.insert("connection", "x-origin-private".parse().unwrap());
        h.insert("x-origin-private", "secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-kept", "yes".parse().unwrap());
        return Ok(response);
    }
    if path.ends_with("/shared-cacheable") {
        // Directives for browsers, for shared caches, and for CDNs alone.
        let mut response = full(200, "text/plain", b"cacheable".to_vec());
        let h = response.headers_mut();
        h.insert(
            "cache-control",
            "public, max-age=60, s-maxage=600".parse().unwrap(),
        );
        h.insert("cdn-cache-control", "max-age=600".parse().unwrap());
        h.insert(
            "cloudflare-cdn-cache-control",
            "max-age=600".parse().unwrap(),
        );
        h.insert("surrogate-control", "max-age=600".parse().unwrap());
        h.insert("edge-control", "cache-maxage=600s".parse().unwrap());
        return Ok(response);
    }
    if path.ends_with("/cacheable") {
        let mut response = full(200, "text/plain", b"cacheable".to_vec());
        let h = response.headers_mut();
        h.insert("cache-control", "public, max-age=60".parse().unwrap());
        return Ok(response);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return Ok(full(code.parse().unwrap_or(500), "text/plain", Vec::new()));
    }
    let echo = serde_json::json!({
        "method": record.method,
        "target": record.target,
        "headers": record.headers,
        "body_len": record.body.len(),
        "body": String::from_utf8_lossy(&record.body),
    });
    Ok(full(
        200,
        "application/json",
        serde_json::to_vec(&echo).unwrap(),
    ))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Echoes through the upgraded connection; its 101 names `protocol`.
fn websocket(mut req: Request<Incoming>, protocol: &'static str) -> Response<Body> {
    let wants = req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if !wants {
        return Response::builder()
            .status(426)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let mut io = TokioIo::new(upgraded);
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", protocol)
        .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}

/// How a [`FaultyOrigin`] misbehaves.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Accepts, reads, never answers.
    Hang,
    /// Sends a head promising 100000 bytes, 1000 bytes, then closes.
    ResetMidBody,
    /// Sends a head promising 100000 bytes, 1000 bytes, then goes silent
    /// with the connection open.
    StallMidBody,
    /// Sends [`DRIP_BYTES`] in [`DRIP_PARTS`] parts, [`DRIP_PAUSE`] apart:
    /// slow, but never idle for long.
    DripBody,
    /// Sends a broken status line.
    MalformedStatus,
    /// Sends 70 KB of headers.
    HugeHeaders,
    /// Sends a valid response followed by a second, unrequested one.
    ExtraBytes,
    /// Reads the request, then closes without a word.
    CloseWithoutAnswer,
    /// Sends a chunked head and one chunk, then resets the connection (RST).
    ResetAfterHead,
    /// Answers with both `Content-Length` and `Transfer-Encoding: chunked`.
    LengthAndChunked,
    /// Answers with two different `Content-Length` headers.
    TwoLengths,
    /// Answers properly, then writes a forged response while the connection idles.
    IdleJunk,
    /// Streams a 64 MiB HTML page.
    HugeHtml,
    /// Sends a chunked `200 text/html` page's head, [`HEAD_THEN_SILENCE`],
    /// then goes silent with the connection open.
    HtmlHeadThenSilence,
    /// Sends `103 Early Hints` (a `Link` preload) before a `200 text/html`
    /// page, [`SMALL_HTML`], framed by `Content-Length`. A `HEAD` gets the
    /// same heads and no body.
    EarlyHintsHtml,
    /// Sends [`SMALL_HTML`] chunked, announcing a trailer (`Trailer: X-T`)
    /// and sending it (`X-T: 1`) after the last chunk. A `HEAD` gets the
    /// head and no body.
    ChunkedHtmlTrailer,
}

/// The page of [`Fault::EarlyHintsHtml`] and [`Fault::ChunkedHtmlTrailer`].
pub const SMALL_HTML: &str = "<head></head>";

/// The size of the [`Fault::DripBody`] body, its parts, and the pause before
/// each: 2.4 s in all.
pub const DRIP_BYTES: usize = 8000;
pub const DRIP_PARTS: usize = 8;
pub const DRIP_PAUSE: Duration = Duration::from_millis(300);

/// What [`Fault::HtmlHeadThenSilence`] sends before its silence.
pub const HEAD_THEN_SILENCE: &str =
    "<!doctype html><html><head><title>Later</title></head><body><p>loading</p>";

/// The size of the [`Fault::HugeHtml`] page.
pub const HUGE_HTML_BYTES: usize = 64 << 20;

pub struct FaultyOrigin {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    /// The request line of every request head read, in order.
    lines: Arc<Mutex<Vec<String>>>,
}

impl FaultyOrigin {
    pub async fn start(fault: Fault) -> FaultyOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let recorder = lines.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                let recorder = recorder.clone();
                tokio::spawn(async move {
                    let mut served = 0;
                    loop {
                        let mut buf = vec![0u8; 65536];
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        served += 1;
                        let line = got.split(|&b| b == b'\r').next().unwrap_or_default();
                        let head_only = line.starts_with(b"HEAD ");
                        recorder
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(line).into_owned());
                        counter.fetch_add(1, Ordering::SeqCst);
                        let reply: Vec<u8> = match fault {
                            Fault::Hang => {
                                tokio::time::sleep(Duration::from_secs(60)).await;
                                return;
                            }
                            Fault::ResetMidBody => {
                                let mut r = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n".to_vec();
                                r.extend(vec![b'z'; 1000]);
                                let _ = stream.write_all(&r).await;
                                return;
                            }
                            Fault::StallMidBody => {
                                let mut r = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n".to_vec();
                                r.extend(vec![b'z'; 1000]);
                                let _ = stream.write_all(&r).await;
                                tokio::time::sleep(Duration::from_secs(60)).await;
                                return;
                            }
                            Fault::DripBody => {
                                let head = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {DRIP_BYTES}\r\n\r\n");
                                if stream.write_all(head.as_bytes()).await.is_err() {
                                    return;
                                }
                                for _ in 0..DRIP_PARTS {
                                    tokio::time::sleep(DRIP_PAUSE).await;
                                    if stream.write_all(&[b'd'; DRIP_BYTES / DRIP_PARTS]).await.is_err() {
                                        return;
                                    }
                                }
                                continue;
                            }
                            Fault::MalformedStatus => {
                                b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
                            }
                            Fault::HugeHeaders => {
                                let mut r = b"HTTP/1.1 200 OK\r\n".to_vec();
                                for i in 0..700 {
                                    r.extend(
                                        format!("X-Filler-{i}: {}\r\n", "f".repeat(90)).as_bytes(),
                                    );
                                }
                                r.extend(b"Content-Length: 2\r\n\r\nok");
                                r
                            }
                            Fault::ExtraBytes => {
                                let body = format!("response-{served}");
                                format!(
                                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!",
                                    body.len()
                                )
                                .into_bytes()
                            }
                            Fault::CloseWithoutAnswer => return,
                            Fault::ResetAfterHead => {
                                let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
                                let _ = stream.write_all(head).await;
                                let _ = stream.flush().await;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                // Linger 0: close() sends RST instead of FIN.
                                #[allow(deprecated)]
                                let _ = stream.set_linger(Some(Duration::ZERO));
                                return;
                            }
                            Fault::LengthAndChunked => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
                            Fault::TwoLengths => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!".to_vec(),
                            Fault::IdleJunk => {
                                let body = format!("response-{served}");
                                let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                                if stream.write_all(reply.as_bytes()).await.is_err() {
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nevil!".to_vec()
                            }
                            Fault::HtmlHeadThenSilence => {
                                let r = format!("HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{HEAD_THEN_SILENCE}\r\n", HEAD_THEN_SILENCE.len());
                                let _ = stream.write_all(r.as_bytes()).await;
                                tokio::time::sleep(Duration::from_secs(60)).await;
                                return;
                            }
                            Fault::HugeHtml => {
                                let start = b"<!doctype html><html><head><title>Huge</title></head><body>";
                                let head = format!("HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {HUGE_HTML_BYTES}\r\n\r\n");
                                let mut chunk = start.to_vec();
                                let filler = b"<p>The tide came in, and went out again.</p>\n".repeat(1500);
                                if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(&chunk).await.is_err() {
                                    return;
                                }
                                let mut left = HUGE_HTML_BYTES - chunk.len();
                                while left > 0 {
                                    chunk.clear();
                                    chunk.extend_from_slice(&filler[..filler.len().min(left)]);
                                    left -= chunk.len();
                                    if stream.write_all(&chunk).await.is_err() {
                                        return;
                                    }
                                }
                                continue;
                            }
                            Fault::EarlyHintsHtml => {
                                let mut r = format!(
                                    "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n\
                                     HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
                                    SMALL_HTML.len()
                                );
                                if !head_only {
                                    r.push_str(SMALL_HTML);
                                }
                                r.into_bytes()
                            }
                            Fault::ChunkedHtmlTrailer => {
                                let mut r = String::from(
                                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                                     Transfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n",
                                );
                                if !head_only {
                                    // The page in two chunks, then the trailer.
                                    let (a, b) = SMALL_HTML.split_at(6);
                                    r.push_str(&format!(
                                        "{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nX-T: 1\r\n\r\n",
                                        a.len(),
                                        b.len()
                                    ));
                                }
                                r.into_bytes()
                            }
                        };
                        if stream.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FaultyOrigin {
            addr,
            requests,
            lines,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many request heads the origin has read, over all connections.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The request line (`GET /x HTTP/1.1`) of every request head read, in order.
    pub fn request_lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// Answers with redirects to itself, as origins behind a proxy do:
/// `/own` to its own address, `/by-host` to the `Host` it was given with its
/// own scheme and port, `/elsewhere` to another site, `/relative` to a path.
pub struct RedirectOrigin {
    pub addr: SocketAddr,
}

impl RedirectOrigin {
    pub async fn start() -> RedirectOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| async move {
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                            .split(':')
                            .next()
                            .unwrap_or("")
                            .to_owned();
                        let location = match req.uri().path() {
                            "/own" => format!("http://{addr}/landed?from=own#top"),
                            "/by-host" => format!("http://{host}:{}/landed", addr.port()),
                            "/two-slashes" => format!("http://{addr}//example.com/landed"),
                            "/elsewhere" => "https://example.com/landed".to_owned(),
                            _ => "/landed".to_owned(),
                        };
                        let response = Response::builder()
                            .status(302)
                            .header("location", location)
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RedirectOrigin { addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// An origin that listens but never accepts: the kernel completes each TCP
/// connection into the backlog, and nothing ever answers on it (a TLS
/// handshake there waits for ever).
pub struct SilentOrigin {
    pub addr: SocketAddr,
    _listener: TcpListener,
}

impl SilentOrigin {
    pub async fn start() -> SilentOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        SilentOrigin {
            addr,
            _listener: listener,
        }
    }

    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// An address where nothing listens.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// An origin whose every response sets `cookie` and a harmless `theme=dark`.
pub struct CookieOrigin {
    pub addr: SocketAddr,
}

impl CookieOrigin {
    /// Answers every request with these `Set-Cookie` values (any bytes),
    /// then `theme=dark`.
    pub async fn start(cookies: &'static [&'static [u8]]) -> CookieOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<Incoming>| async move {
                        let mut response = Response::builder();
                        for cookie in cookies {
                            let value = hyper::header::HeaderValue::from_bytes(cookie).unwrap();
                            response = response.header("set-cookie", value);
                        }
                        let response = response
                            .header("set-cookie", "theme=dark; Path=/")
                            .body(Full::new(Bytes::from_static(b"ok")))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        CookieOrigin { addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
