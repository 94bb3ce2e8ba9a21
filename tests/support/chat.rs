//! Origins for the chat-widget tests: a site that serves HTML pages (with the
//! headers a test asks for), and a local stand-in for HubSpot's Visitor
//! Identification API that can be made slow or failing and counts its calls.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub const PAGE: &str = "<!doctype html><html><head><title>Tides</title></head><body><p>High water at noon.</p></body></html>";

/// Serves `handler` on a fresh local port.
pub async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A stand-in for HubSpot's chat widget, for Chromium: like HubSpot's, it
/// keeps the visitor's conversation in a cookie of its own (`stand-in-utk`,
/// HubSpot's `messagesUtk`), made for whoever the widget first saw (the
/// settings' `identificationEmail`, or `anonymous`) and replaced only by
/// `HubSpotConversations.clear()`. Once ready it runs the page's
/// `hsConversationsOnReady` functions. `window.widgetThread` is whose
/// conversation it shows; `localStorage.clears` counts the resets.
pub const STAND_IN_WIDGET: &str = r#"(function(){
  function get(n){var m=document.cookie.match(new RegExp('(?:^|; )'+n+'=([^;]*)'));return m?decodeURIComponent(m[1]):null;}
  function who(){var s=window.hsConversationsSettings||{};return s.identificationEmail||'anonymous';}
  function start(){document.cookie='stand-in-utk='+encodeURIComponent(who())+';path=/;max-age=15552000';}
  if(!get('stand-in-utk')){start();}
  window.widgetThread=get('stand-in-utk');
  window.HubSpotConversations={clear:function(){
    start();
    localStorage.setItem('clears',String(Number(localStorage.getItem('clears')||0)+1));
    window.widgetThread=get('stand-in-utk');
  }};
  var queued=window.hsConversationsOnReady||[];
  window.hsConversationsOnReady={push:function(f){f();}};
  queued.forEach(function(f){f();});
  window.widgetReady=true;
})();"#;

impl Page {
    /// The stand-in widget's script, ready `delay_ms` after it ran: HubSpot's
    /// fetches its bundle and settings first.
    pub fn stand_in_widget(delay_ms: u64) -> Page {
        let script = format!("setTimeout(function(){{{STAND_IN_WIDGET}}}, {delay_ms});");
        Page {
            status: 200,
            headers: vec![("content-type", "application/javascript".into())],
            body: script.into_bytes(),
        }
    }
}

/// Serves `PAGE` (or a page registered for the path) with extra headers.
pub struct PageOrigin {
    pub addr: SocketAddr,
    /// The `Accept-Encoding` of every request, in order.
    pub accept_encodings: Arc<Mutex<Vec<Option<String>>>>,
}

/// One page: status, headers and body.
#[derive(Clone)]
pub struct Page {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Page {
    pub fn html(body: &str) -> Page {
        Page {
            status: 200,
            headers: vec![("content-type", "text/html; charset=utf-8".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    pub fn with(mut self, name: &'static str, value: &str) -> Page {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn status(mut self, status: u16) -> Page {
        self.status = status;
        self
    }

    /// The page with these bytes as its body (compressed, say).
    pub fn with_body(mut self, body: Vec<u8>) -> Page {
        self.body = body;
        self
    }
}

impl PageOrigin {
    /// `pages` by path; any other path gets `PAGE` as `text/html`.
    pub async fn start(pages: Vec<(&'static str, Page)>) -> PageOrigin {
        let pages: Arc<HashMap<&'static str, Page>> = Arc::new(pages.into_iter().collect());
        let accept_encodings = Arc::new(Mutex::new(Vec::new()));
        let seen = accept_encodings.clone();
        let addr = serve(move |req: Request<Incoming>| {
            let pages = pages.clone();
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(
                    req.headers()
                        .get("accept-encoding")
                        .map(|v| v.to_str().unwrap().to_owned()),
                );
                let page = pages
                    .get(req.uri().path())
                    .cloned()
                    .unwrap_or_else(|| Page::html(PAGE).with("etag", "\"v1\""));
                let mut response = Response::builder().status(page.status);
                for (name, value) in &page.headers {
                    response = response.header(*name, value);
                }
                response.body(Full::new(Bytes::from(page.body))).unwrap()
            }
        })
        .await;
        PageOrigin {
            addr,
            accept_encodings,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// How the fake HubSpot API behaves.
#[derive(Debug, Clone, Copy)]
pub enum HubSpotMode {
    Answer,
    Fail,
    /// Answers after this long.
    Slow(Duration),
    /// Never answers the first call (its connection stays open); answers
    /// every later one at once.
    HangFirst,
    /// Answers the first `calls` calls with `status` (and `Retry-After: 3`
    /// with a 429), every later one with a token.
    FailFirst {
        status: u16,
        calls: usize,
    },
}

/// A local HubSpot Visitor Identification API.
pub struct FakeHubSpot {
    pub addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    pub bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

pub const HUBSPOT_TOKEN: &str = "pat-test-0123456789";

impl FakeHubSpot {
    pub async fn start(mode: HubSpotMode) -> FakeHubSpot {
        let calls = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (calls.clone(), bodies.clone());
        let addr = serve(move |req: Request<Incoming>| {
            let (count, seen) = (count.clone(), seen.clone());
            async move {
                let json = |status: u16, value: serde_json::Value| {
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(value.to_string())))
                        .unwrap()
                };
                let authorised = req
                    .headers()
                    .get("authorization")
                    .is_some_and(|v| v == format!("Bearer {HUBSPOT_TOKEN}").as_str());
                if req.method() != "POST"
                    || req.uri().path() != "/conversations/v3/visitor-identification/tokens/create"
                {
                    return json(404, serde_json::json!({"message": "not found"}));
                }
                if !authorised {
                    return json(401, serde_json::json!({"message": "bad token"}));
                }
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                seen.lock().unwrap().push(body.clone());
                match mode {
                    HubSpotMode::Fail => json(500, serde_json::json!({"message": "oops"})),
                    HubSpotMode::Slow(delay) => {
                        tokio::time::sleep(delay).await;
                        json(200, serde_json::json!({"token": format!("hs-token-{n}")}))
                    }
                    HubSpotMode::HangFirst if n == 1 => {
                        std::future::pending::<()>().await;
                        unreachable!()
                    }
                    HubSpotMode::FailFirst { status, calls } if n <= calls => {
                        let mut answer = json(status, serde_json::json!({"message": "no"}));
                        if status == 429 {
                            answer.headers_mut().insert(
                                "retry-after",
                                hyper::header::HeaderValue::from_static("3"),
                            );
                        }
                        answer
                    }
                    HubSpotMode::Answer
                    | HubSpotMode::HangFirst
                    | HubSpotMode::FailFirst { .. } => {
                        json(200, serde_json::json!({"token": format!("hs-token-{n}")}))
                    }
                }
            }
        })
        .await;
        FakeHubSpot {
            addr,
            calls,
            bodies,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}
