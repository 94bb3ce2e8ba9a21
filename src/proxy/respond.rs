//! Everything the gateway answers itself, and the access log.
//!
//! Error pages say what went wrong in terms a visitor can act on and never
//! include internal details (upstream addresses, error chains): those go to
//! the log. Each response carries a [`ResponseBody`] whose drop writes the
//! access-log line, so the line has the final byte count and duration.

use std::borrow::Cow;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::body::{BoxError, GatewayBody};

/// A response the gateway makes itself instead of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadRequest(&'static str),
    Forbidden,
    UnknownHost,
    NoRoute,
    MethodNotAllowed,
    BodyTooLarge,
    UriTooLong,
    /// More header fields than `limits.max_headers` (HTTP/2: hyper's
    /// HTTP/1 parser refuses these itself).
    TooManyHeaders,
    BodyTimeout,
    /// An HTTP/2 request from an address that already has
    /// `limits.max_connections_per_ip` connections and streams open.
    TooManyAtOnce,
    BadGateway,
    GatewayTimeout,
    /// The visitor's session could not be checked (the member store failed).
    SessionUnavailable,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Forbidden => StatusCode::FORBIDDEN,
            Refusal::UnknownHost => StatusCode::MISDIRECTED_REQUEST,
            Refusal::NoRoute => StatusCode::NOT_FOUND,
            Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::UriTooLong => StatusCode::URI_TOO_LONG,
            Refusal::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::TooManyAtOnce => StatusCode::TOO_MANY_REQUESTS,
            Refusal::BadGateway => StatusCode::BAD_GATEWAY,
            Refusal::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::SessionUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn explanation(self) -> &'static str {
        match self {
            Refusal::BadRequest(why) => why,
            Refusal::Forbidden => "Your account does not have access to this page.",
            Refusal::UnknownHost => "This server does not serve the requested host name.",
            Refusal::NoRoute => "There is nothing at this address.",
            Refusal::MethodNotAllowed => "This request method is not allowed here.",
            Refusal::BodyTooLarge => "The request body is larger than this address accepts.",
            Refusal::UriTooLong => "The requested address is too long.",
            Refusal::TooManyHeaders => {
                "The request has more header fields than this server accepts."
            }
            Refusal::BodyTimeout => "The request body stopped arriving before it was complete.",
            Refusal::TooManyAtOnce => {
                "Too many requests from your address are in progress at once. Please try again shortly."
            }
            Refusal::BadGateway => {
                "The site behind this gateway could not be reached or gave an invalid answer. Please try again shortly."
            }
            Refusal::GatewayTimeout => {
                "The site behind this gateway took too long to answer. Please try again shortly."
            }
            Refusal::SessionUnavailable => {
                "Your login cannot be checked just now. You are still logged in: please try again in a moment."
            }
        }
    }

    /// Where a person may go from the page (HTML), if anywhere.
    fn links(self) -> &'static str {
        match self {
            // Logged in, but not as someone this page is for.
            Refusal::Forbidden => {
                "<p><a href=\"/_membergate/login\">Log in as someone else</a> · \
                 <a href=\"/_membergate/account\">Your account</a> · <a href=\"/\">Home</a></p>"
            }
            _ => "",
        }
    }
}

/// Renders a refusal as a small self-contained HTML page, or JSON for API clients.
pub fn refusal(refusal: Refusal, wants_json: bool) -> Response<GatewayBody> {
    let status = refusal.status();
    let reason = status.canonical_reason().unwrap_or("Error");
    let (content_type, body) = if wants_json {
        (
            "application/json",
            format!(
                "{{\"error\":{{\"status\":{},\"reason\":\"{reason}\",\"message\":\"{}\"}}}}",
                status.as_u16(),
                refusal.explanation()
            ),
        )
    } else {
        (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
                 <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
                 <title>{code} {reason}</title><style>body{{font:16px/1.5 system-ui,sans-serif;\
                 max-width:36rem;margin:15vh auto;padding:0 1rem;color:#222}}h1{{font-size:1.4rem}}\
                 </style></head><body><h1>{code} {reason}</h1><p>{text}</p>{links}</body></html>\n",
                code = status.as_u16(),
                text = refusal.explanation(),
                links = refusal.links()
            ),
        )
    };
    own(status, content_type, body)
}

/// The answer where a member is needed but their session cannot be checked
/// (the member store failed): 503, try again shortly.
pub fn session_unavailable(wants_json: bool) -> Response<GatewayBody> {
    let mut response = refusal(Refusal::SessionUnavailable, wants_json);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// A response of the gateway's own: status, content type, body, never
/// stored by caches and never sniffed into another type.
pub fn own(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<bytes::Bytes>,
) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A permanent redirect (308 keeps the method and body).
pub fn redirect(location: &str) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::Empty);
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Whether the client asked for JSON rather than a page.
pub fn wants_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json") && !v.contains("text/html"))
}

/// The facts of one request, written as one access-log line when dropped.
pub struct AccessRecord {
    pub method: Method,
    pub version: Version,
    /// The visitor: the peer, or behind trusted proxies the address they
    /// forwarded (`hygiene::headers::client_ip`).
    pub client: IpAddr,
    /// The TCP peer, when it is not the visitor (a trusted proxy).
    pub via: Option<IpAddr>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub member: Option<i64>,
    pub status: u16,
    pub bytes: u64,
    pub started: Instant,
}

/// Values from the request are cut to a length in the log: its buffer holds
/// a bounded number of lines (`telemetry`), so their size must be bounded
/// too, or clients with long paths would grow it while a log reader stalls.
pub fn clip(value: &str, max: usize) -> Cow<'_, str> {
    if value.len() <= max {
        return Cow::Borrowed(value);
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}...({} bytes)", &value[..end], value.len()))
}

/// The longest path the access log writes whole.
const LOGGED_PATH: usize = 1024;
/// The longest method (an extension method can be any token).
const LOGGED_METHOD: usize = 32;

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let path = clip(self.path.as_deref().unwrap_or("-"), LOGGED_PATH);
        tracing::info!(
            target: "membergate::access",
            method = %clip(self.method.as_str(), LOGGED_METHOD),
            version = ?self.version,
            client = %self.client,
            via = self.via.map(tracing::field::display),
            host = self.host.as_deref().unwrap_or("-"),
            path = &*path,
            status = self.status,
            bytes = self.bytes,
            duration_us = self.started.elapsed().as_micros() as u64,
            route = self.route.as_deref().unwrap_or("-"),
            upstream = self.upstream.as_deref().unwrap_or("-"),
            member = self.member,
        );
    }
}

pin_project! {
    /// The body of every response sent to a client.
    pub struct ResponseBody {
        #[pin]
        inner: GatewayBody,
        record: Option<Box<AccessRecord>>,
    }
}

impl ResponseBody {
    pub fn new(inner: GatewayBody, record: Option<Box<AccessRecord>>) -> Self {
        ResponseBody { inner, record }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(record)) = (&polled, this.record.as_mut())
            && let Some(data) = frame.data_ref()
        {
            record.bytes += data.len() as u64;
        }
        if let (Poll::Ready(Some(Err(e))), Some(record)) = (&polled, this.record.as_ref()) {
            tracing::warn!(route = record.route.as_deref().unwrap_or("-"), error = %e, "response body aborted");
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
