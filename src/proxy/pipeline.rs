//! The request phases, in order. Each phase is a few lines that delegate to the
//! module named after its job, and either continues with what it learnt or
//! finishes the request with a response ([`Flow`]).
//!
//! ```text
//! accept     method, framing, target sanity (405, 400, 414)
//! normalise  one host, one path (400, 421)            -> hygiene::{host, path}
//! site       site by host, HTTPS redirect (308)       -> routing
//!            /_membergate/ pages                      -> portal
//!            /_membergate/api/ token API              -> identity::api
//! route      route by path (404)                      -> routing
//! authorise  session, access policy (302, 401, 403)   -> proxy::access, session, policy
//! forward    origin or directory, streaming (502/504) -> proxy::forward
//!            (the member's chat token, meanwhile)     -> proxy::widget, identity
//! rewrite    chat widget into HTML pages, streaming   -> proxy::widget, inject
//! respond    private caching, cookies, access log     -> proxy::access, proxy::respond
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;

use super::ConnInfo;
use super::access::{self, Access};
use super::body::GatewayBody;
use super::respond::{self, AccessRecord, Refusal, ResponseBody};
use super::{forward, widget};
use crate::admin::metrics::NO_ROUTE;
use crate::config::HttpMode;
use crate::gateway::{Gateway, Runtime};
use crate::hygiene::host::{self, HostError, RequestHost};
use crate::hygiene::path::{self, NormalPath};
use crate::identity;
use crate::portal;
use crate::routing::{Origin, Route, Site};

/// The outcome of a phase: go on with `T`, or answer now.
// Returned by value and unwrapped at once; boxing the response would cost an
// allocation on every refusal for no gain.
#[allow(clippy::large_enum_variant)]
pub enum Flow<T> {
    Continue(T),
    Respond(Response<GatewayBody>),
}

/// Unwraps a [`Flow`], returning the response from the enclosing function.
macro_rules! proceed {
    ($flow:expr) => {
        match $flow {
            Flow::Continue(value) => value,
            Flow::Respond(response) => return response,
        }
    };
}

/// The request as the phases after `normalise` see it.
pub struct Target {
    pub host: RequestHost,
    pub path: NormalPath,
    pub query: Option<String>,
    pub wants_json: bool,
    /// An HTTP/1.1 WebSocket handshake, tunnelled only if the origin agrees (101).
    pub websocket: bool,
}

static NO_ROUTE_LABEL: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| NO_ROUTE.into());

/// The status logged and counted for a request whose client went away (closed
/// the connection, reset the stream) before its answer was ready: nginx's 499.
const CLIENT_CLOSED: u16 = 499;

/// Counts a request in the metrics once: with its answer's status, or, if
/// hyper drops the request's future first (its client went away), as 499.
struct Counted<'r> {
    metrics: &'r crate::admin::metrics::Metrics,
    route: Option<&'r Arc<str>>,
    status: Option<u16>,
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        let route = self.route.unwrap_or(&NO_ROUTE_LABEL);
        self.metrics
            .request(route, self.status.unwrap_or(CLIENT_CLOSED));
    }
}

/// Serves one request. Never fails: every problem becomes a response.
pub async fn handle(
    gateway: &Gateway,
    conn: ConnInfo,
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let runtime = gateway.runtime();
    let mut record = runtime.config.log.access_log.then(|| {
        let peer = conn.peer.ip();
        let trusted = &runtime.config.server.trusted_proxies;
        let client = crate::hygiene::headers::client_ip(peer, request.headers(), trusted);
        Box::new(AccessRecord {
            method: request.method().clone(),
            version: request.version(),
            client,
            via: (client != peer).then_some(peer),
            host: None,
            path: None,
            route: None,
            upstream: None,
            member: None,
            // Until the answer is ready: logged so if the client leaves first.
            status: CLIENT_CLOSED,
            bytes: 0,
            started: Instant::now(),
        })
    });
    let mut counted = Counted {
        metrics: &gateway.metrics,
        route: None,
        status: None,
    };
    let had_body = has_body(&request);
    let is_head = request.method() == Method::HEAD;
    let mut response = phases(
        gateway,
        &runtime,
        conn,
        request,
        &mut counted.route,
        record.as_deref_mut(),
    )
    .await;
    // hyper's HTTP/1 server leaves out a HEAD answer's body, its HTTP/2
    // server does not: the gateway's own pages would go out as DATA frames,
    // which clients take for a protocol error. Content-Length stays.
    if is_head && !matches!(response.body(), GatewayBody::Empty) {
        *response.body_mut() = GatewayBody::Empty;
    }
    let status = response.status().as_u16();
    // A refused request may still have body bytes in flight; do not let them
    // be read as the next request on this connection (attack catalogue G6).
    if had_body && counted.route.is_none() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    counted.status = Some(status);
    drop(counted);
    if let Some(record) = record.as_mut() {
        record.status = status;
    }
    Ok(response.map(|body| ResponseBody::new(body, record)))
}

async fn phases<'r>(
    gateway: &Gateway,
    runtime: &'r Runtime,
    conn: ConnInfo,
    request: Request<Incoming>,
    route_label: &mut Option<&'r Arc<str>>,
    mut record: Option<&mut AccessRecord>,
) -> Response<GatewayBody> {
    let (mut parts, body) = request.into_parts();
    proceed!(accept(&parts, runtime));
    let target = proceed!(normalise(&parts));
    if let Some(record) = record.as_deref_mut() {
        record.host = Some(target.host.authority.clone());
        record.path = Some(target.path.encoded.clone());
    }
    let site = proceed!(site(gateway, runtime, conn, &target));
    // The API and portal futures are boxed: they are large, and inline they
    // would size (and cost moving) every proxied request's future.
    if identity::api::is_api_path(&target.path.decoded) {
        *route_label = Some(&site.portal_id);
        // The access log worked the client's address out already, if it is on.
        let client = match record.as_deref() {
            Some(record) => record.client,
            None => {
                let trusted = &runtime.config.server.trusted_proxies;
                crate::hygiene::headers::client_ip(conn.peer.ip(), &parts.headers, trusted)
            }
        };
        let path = &target.path.decoded;
        return Box::pin(identity::api::handle(
            gateway, runtime, &site.name, client, path, parts, body,
        ))
        .await;
    }
    if portal::is_portal_path(&target.path.decoded) {
        *route_label = Some(&site.portal_id);
        if let Some(record) = record {
            record.route = Some(site.portal_id.clone());
        }
        return Box::pin(portal::handle(
            gateway, runtime, &site.name, conn, &target, parts, body,
        ))
        .await;
    }
    let route = proceed!(route(site, &target));
    *route_label = Some(&route.id);
    if let Some(record) = record.as_deref_mut() {
        record.route = Some(route.id.clone());
        record.upstream = Some(route.origin.label().clone());
    }
    // A directory origin answers `/dir/` with `/dir/index.html`, and
    // `/page.html.gz` from the page's compressed copy.
    let served_as =
        crate::routing::served_as(matches!(route.origin, Origin::Dir(_)), &target.path.decoded);
    let access =
        proceed!(authorise(gateway, site, &target, served_as.as_deref(), &parts.headers).await);
    if let (Some(record), Some(visitor)) = (record, &access.visitor) {
        record.member = Some(visitor.member_id);
    }
    let widget = widget::plan(
        gateway,
        site,
        &target,
        served_as.as_deref(),
        &access,
        &parts.method,
        &parts.headers,
    );
    if let Some(plan) = widget.as_ref().filter(|plan| plan.page_load) {
        // The page is rewritten on its way: ask the origin for it uncompressed.
        parts.headers.remove(header::ACCEPT_ENCODING);
        if plan.personalises() {
            // Browsers revalidate a copy cached before logging in with its
            // ETag even when `Vary: Cookie` no longer matches; the origin's
            // 304 would bring that copy back, without the member's widget.
            parts.headers.remove(header::IF_NONE_MATCH);
            parts.headers.remove(header::IF_MODIFIED_SINCE);
        }
    }
    let method = parts.method.clone();
    let max_rewrite = runtime.config.limits.max_rewrite_bytes;
    // The member's token is fetched while the origin works on the page.
    let (response, token) = tokio::join!(
        forward::forward(gateway, runtime, conn, route, &access, target, parts, body),
        widget::token(gateway, runtime, site, &access, widget.as_ref()),
    );
    let response = widget::rewrite(site, &access, max_rewrite, widget, token, &method, response);
    access::finish(runtime, &access, response)
}

/// Who the visitor is and whether the policy lets them in.
async fn authorise(
    gateway: &Gateway,
    site: &Site,
    target: &Target,
    served_as: Option<&str>,
    headers: &http::HeaderMap,
) -> Flow<Access> {
    match access::authorise(gateway, site, target, served_as, headers).await {
        Ok(access) => Flow::Continue(access),
        Err(response) => Flow::Respond(response),
    }
}

/// Refuses methods that have no business at a gateway, request framings a
/// peer could read otherwise, and over-long targets.
fn accept(parts: &http::request::Parts, runtime: &Runtime) -> Flow<()> {
    let json = respond::wants_json(&parts.headers);
    if parts.method == Method::CONNECT || parts.method == Method::TRACE {
        return Flow::Respond(respond::refusal(Refusal::MethodNotAllowed, json));
    }
    if crate::hygiene::headers::has_odd_transfer_coding(&parts.headers) {
        return Flow::Respond(respond::refusal(
            Refusal::BadRequest("The request's Transfer-Encoding must be one field: chunked."),
            json,
        ));
    }
    if parts.extensions.get::<super::OverIpCap>().is_some() {
        let mut response = respond::refusal(Refusal::TooManyAtOnce, json);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Flow::Respond(response);
    }
    let limits = &runtime.config.limits;
    let target_len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > limits.max_uri_bytes {
        return Flow::Respond(respond::refusal(Refusal::UriTooLong, json));
    }
    // HTTP/1's parser counts fields itself; HTTP/2's does not. Browsers send
    // each cookie as a field of its own over HTTP/2 (RFC 9113, 8.2.3): they
    // count as the one `Cookie` field HTTP/1 would have.
    if parts.headers.len() > limits.max_headers {
        let cookies = parts.headers.get_all(header::COOKIE).iter().count();
        if parts.headers.len() - cookies.saturating_sub(1) > limits.max_headers {
            return Flow::Respond(respond::refusal(Refusal::TooManyHeaders, json));
        }
    }
    Flow::Continue(())
}

/// One host and one path, in normal form, or a 400.
fn normalise(parts: &http::request::Parts) -> Flow<Target> {
    let wants_json = respond::wants_json(&parts.headers);
    let bad = |why| Flow::Respond(respond::refusal(Refusal::BadRequest(why), wants_json));
    let host = match host::request_host(parts) {
        Ok(host) => host,
        Err(HostError::Missing) => return bad("The request has no Host."),
        Err(HostError::Duplicate) => return bad("The request has more than one Host header."),
        Err(HostError::Malformed | HostError::Conflict) => {
            return bad("The request's host name is not valid.");
        }
    };
    let path = match path::normalise(parts.uri.path()) {
        Ok(path) => path,
        Err(_) => {
            return bad(
                "The requested address contains characters or sequences that are not allowed.",
            );
        }
    };
    Flow::Continue(Target {
        host,
        path,
        query: parts.uri.query().map(str::to_owned),
        wants_json,
        websocket: is_websocket_handshake(parts),
    })
}

/// The site by host; plain HTTP is sent to HTTPS when so configured.
fn site<'r>(
    gateway: &Gateway,
    runtime: &'r Runtime,
    conn: ConnInfo,
    target: &Target,
) -> Flow<&'r Site> {
    let refuse = |r| Flow::Respond(respond::refusal(r, target.wants_json));
    let Some(site) = runtime.router.site(&target.host.name) else {
        return refuse(if target.host.from_target {
            Refusal::BadRequest("The request names a host this server does not serve.")
        } else {
            Refusal::UnknownHost
        });
    };
    let server = &runtime.config.server;
    if !conn.tls
        && server.http_mode == HttpMode::Redirect
        && let Some(port) = gateway.https_redirect_port(runtime)
    {
        let port = if port == 443 {
            String::new()
        } else {
            format!(":{port}")
        };
        let query = target
            .query
            .as_deref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let location = format!(
            "https://{}{port}{}{query}",
            target.host.name, target.path.encoded
        );
        return Flow::Respond(respond::redirect(&location));
    }
    Flow::Continue(site)
}

/// The site's route for the path.
fn route<'r>(site: &'r Site, target: &Target) -> Flow<&'r Route> {
    match site.route(&target.path.decoded) {
        Some(route) => Flow::Continue(route),
        None => Flow::Respond(respond::refusal(Refusal::NoRoute, target.wants_json)),
    }
}

fn has_body(request: &Request<Incoming>) -> bool {
    use http_body::Body;
    !request.body().is_end_stream()
}

fn is_websocket_handshake(parts: &http::request::Parts) -> bool {
    use crate::hygiene::headers::lists_token;
    parts.version == Version::HTTP_11
        && parts.method == Method::GET
        && lists_token(&parts.headers, header::UPGRADE, "websocket")
        && lists_token(&parts.headers, header::CONNECTION, "upgrade")
}
