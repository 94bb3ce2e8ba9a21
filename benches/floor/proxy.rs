//! The floor under any hyper 1 data plane, for `scripts/bench.sh`: the least a
//! proxy built on hyper's server and client can do for a page, measured in
//! the same run as membergate and nginx.
//!
//! ```text
//! floor-proxy LISTEN ORIGIN [spawn|inline] [inject]
//! ```
//!
//! Each client connection gets one origin connection of its own (no pool, no
//! lock), requests and responses pass with their headers as they are (no
//! hygiene, no routing, no session), on one current-thread runtime and
//! membergate's allocator (mimalloc). With `inject`, `200 text/html` pages
//! get a fixed script before `</head>` through lol_html, parsing only up to
//! that point, as membergate does. `spawn` drives
//! the origin connection as a task of its own (as hyper documents it, and as
//! membergate does); `inline` polls it in the client connection's task.
//!
//! It is a measuring stick, not a proxy to deploy: it trusts every header.

use std::borrow::Cow;
use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lol_html::html_content::ContentType;
use lol_html::send::{Element, ElementContentHandlers, HtmlRewriter, Settings};
use lol_html::{OutputSink, Selector};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn Error + Send + Sync>;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What nginx's `sub_filter` puts in, in the bench script.
const SNIPPET: &str = r#"<script>window.hsConversationsSettings={identificationEmail:"a@example.com",identificationToken:"x"};</script>"#;
/// Bytes fed to lol_html at a time until the snippet is in (membergate's slice).
const SLICE: usize = 1024;

static HEAD: LazyLock<Option<Selector>> = LazyLock::new(|| "head".parse().ok());

#[derive(Clone, Copy, PartialEq)]
enum Drive {
    Spawn,
    Inline,
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: floor-proxy LISTEN ORIGIN [spawn|inline] [inject]";
    let (Some(listen), Some(origin)) = (args.first(), args.get(1)) else {
        return Err(usage.into());
    };
    let listen: SocketAddr = listen.parse()?;
    let origin: SocketAddr = origin.parse()?;
    let drive = match args.get(2).map(String::as_str) {
        None | Some("spawn") => Drive::Spawn,
        Some("inline") => Drive::Inline,
        Some(_) => return Err(usage.into()),
    };
    let inject = match args.get(3).map(String::as_str) {
        None => false,
        Some("inject") => true,
        Some(_) => return Err(usage.into()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(listen, origin, drive, inject))
}

async fn serve(
    listen: SocketAddr,
    origin: SocketAddr,
    drive: Drive,
    inject: bool,
) -> Result<(), BoxError> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
            match connection(client, origin, drive, inject).await {
                Ok(()) => {}
                // wrk closes its connections mid-request when a run ends.
                Err(e)
                    if e.downcast_ref()
                        .is_some_and(hyper::Error::is_incomplete_message) => {}
                Err(e) => eprintln!("floor-proxy: connection ended: {e}"),
            }
        });
    }
}

/// One client connection, and the origin connection that serves it.
async fn connection(
    client: TcpStream,
    origin: SocketAddr,
    drive: Drive,
    inject: bool,
) -> Result<(), BoxError> {
    client.set_nodelay(true)?;
    let upstream = TcpStream::connect(origin).await?;
    upstream.set_nodelay(true)?;
    let (sender, upstream_conn) =
        hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(upstream)).await?;
    // HTTP/1.1 serves one request at a time: the lock is never contended.
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = service_fn(move |request| {
        let sender = sender.clone();
        async move { Ok::<_, Infallible>(forward(&sender, request, inject).await) }
    });
    let server_conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(client), service);
    match drive {
        Drive::Spawn => {
            tokio::spawn(upstream_conn);
            server_conn.await?;
        }
        Drive::Inline => {
            // Both in this task; the origin connection ends once the server
            // connection has dropped its service, and with it the sender.
            let (served, _) = tokio::join!(server_conn, upstream_conn);
            served?;
        }
    }
    Ok(())
}

async fn forward(
    sender: &tokio::sync::Mutex<SendRequest<Incoming>>,
    request: Request<Incoming>,
    inject: bool,
) -> Response<FloorBody> {
    let sent = {
        let mut sender = sender.lock().await;
        if sender.ready().await.is_err() {
            return bad_gateway();
        }
        sender.send_request(request)
    };
    let Ok(response) = sent.await else {
        return bad_gateway();
    };
    let html = response.status() == StatusCode::OK
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"text/html"));
    if !(inject && html) {
        return response.map(FloorBody::Passed);
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    match Injecting::new(body) {
        Some(injecting) => Response::from_parts(parts, FloorBody::Injected(Box::new(injecting))),
        None => bad_gateway(),
    }
}

fn bad_gateway() -> Response<FloorBody> {
    let mut response = Response::new(FloorBody::Empty);
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}

enum FloorBody {
    Passed(Incoming),
    Injected(Box<Injecting>),
    Empty,
}

impl Body for FloorBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            FloorBody::Passed(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            FloorBody::Injected(injecting) => injecting.poll_frame(cx),
            FloorBody::Empty => Poll::Ready(None),
        }
    }
}

/// Collects the rewriter's output between writes.
#[derive(Clone)]
struct Collected(Arc<Mutex<Vec<u8>>>);

impl Collected {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl OutputSink for Collected {
    fn handle_chunk(&mut self, chunk: &[u8]) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(chunk);
    }
}

/// A page on its way through lol_html until the snippet is in, then as it came.
struct Injecting {
    inner: Incoming,
    rewriter: Option<HtmlRewriter<'static, Collected>>,
    output: Collected,
    injected: Arc<AtomicBool>,
    /// What is left of a frame once the snippet is in.
    rest: Option<Bytes>,
}

impl Injecting {
    fn new(inner: Incoming) -> Option<Injecting> {
        let head = HEAD.as_ref()?;
        let injected = Arc::new(AtomicBool::new(false));
        let flag = injected.clone();
        let handlers =
            ElementContentHandlers::default().element(move |el: &mut Element<'_, '_>| {
                let flag = flag.clone();
                if let Some(end) = el.end_tag_handlers() {
                    end.push(Box::new(move |end| {
                        if !flag.swap(true, Ordering::Relaxed) {
                            end.before(SNIPPET, ContentType::Html);
                        }
                        Ok(())
                    }));
                }
                Ok(())
            });
        let settings =
            Settings::new_send().append_element_content_handler((Cow::Borrowed(head), handlers));
        let output = Collected(Arc::new(Mutex::new(Vec::with_capacity(SLICE * 2))));
        Some(Injecting {
            inner,
            rewriter: Some(HtmlRewriter::new(settings, output.clone())),
            output,
            injected,
            rest: None,
        })
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(rest) = self.rest.take() {
            return Poll::Ready(Some(Ok(Frame::data(rest))));
        }
        loop {
            let Some(rewriter) = self.rewriter.as_mut() else {
                return Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into);
            };
            let data = match std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    if let Some(rewriter) = self.rewriter.take() {
                        rewriter.end()?;
                    }
                    let tail = self.output.take();
                    return Poll::Ready((!tail.is_empty()).then(|| Ok(Frame::data(tail.into()))));
                }
            };
            let mut at = 0;
            while at < data.len() && !self.injected.load(Ordering::Relaxed) {
                let end = (at + SLICE).min(data.len());
                rewriter.write(&data[at..end])?;
                at = end;
            }
            if self.injected.load(Ordering::Relaxed) {
                if let Some(rewriter) = self.rewriter.take() {
                    rewriter.end()?;
                }
                if at < data.len() {
                    self.rest = Some(data.slice(at..));
                }
            }
            let out = self.output.take();
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out.into()))));
            }
            if let Some(rest) = self.rest.take() {
                return Poll::Ready(Some(Ok(Frame::data(rest))));
            }
        }
    }
}
