//! Forwarding: a routed request goes to its origin and the response streams back.
//!
//! HTTP origins get the cleaned headers and exactly the normalised path; bodies
//! stream both ways with size caps and idle timeouts. Directory origins are
//! served in-process. WebSocket handshakes become a tunnel only once the origin
//! has answered 101.

use std::future::Future;
use std::time::{Duration, Instant};

use http_body::Body;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tower::ServiceExt;

use super::ConnInfo;
use super::access::{self, Access};
use super::body::{BodyError, ForwardBody, GatewayBody, Upload, body_error_in};
use super::pipeline::Target;
use super::respond::{self, Refusal};
use super::tunnel::{self, HeldConnection};
use crate::gateway::{Gateway, Runtime};
use crate::hygiene::headers::{self, ClientFacts};
use crate::hygiene::host::RequestHost;
use crate::routing::{DirOrigin, HttpOrigin, Origin, Route};
use crate::session::Visitor;

#[allow(clippy::too_many_arguments)]
pub async fn forward(
    gateway: &Gateway,
    runtime: &Runtime,
    conn: ConnInfo,
    route: &Route,
    access: &Access,
    target: Target,
    parts: http::request::Parts,
    body: Incoming,
) -> Response<GatewayBody> {
    match &route.origin {
        // Boxed: ServeDir's future is large, and would otherwise set the
        // size of every proxied request's future.
        Origin::Dir(dir) => Box::pin(serve_dir(dir, &target, parts)).await,
        Origin::Http(origin) => {
            let visitor = access.visitor.as_deref();
            proxy_http(
                gateway, runtime, conn, route, origin, visitor, target, parts, body,
            )
            .await
        }
    }
}

/// Serves a file from a directory origin (GET and HEAD only).
async fn serve_dir(
    dir: &DirOrigin,
    target: &Target,
    parts: http::request::Parts,
) -> Response<GatewayBody> {
    if parts.method != Method::GET && parts.method != Method::HEAD {
        let mut response = respond::refusal(Refusal::MethodNotAllowed, target.wants_json);
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if is_precompressed_copy(dir, &target.path.decoded).await {
        return respond::refusal(Refusal::NoRoute, target.wants_json);
    }
    let Ok(uri) = target.path.encoded.parse::<Uri>() else {
        return respond::refusal(
            Refusal::BadRequest("The requested address is not valid."),
            false,
        );
    };
    let mut request = http::Request::new(());
    *request.method_mut() = parts.method;
    *request.uri_mut() = uri;
    *request.headers_mut() = parts.headers;
    match dir.serve.clone().oneshot(request).await {
        Ok(response) => response.map(|inner| GatewayBody::Dir { inner }),
        Err(never) => match never {},
    }
}

/// Why an origin's answer did not come in time.
enum Late {
    /// It had the whole request for `response_timeout` without answering.
    Answer,
    /// It took nothing more of the request's body for that long.
    Body,
}

/// The origin's answer, given `timeout` from when the request's body has
/// been sent in full, not from its start: how fast a client uploads is the
/// body idle timeout's business, and a slow but steady upload is no fault of
/// the origin's. An origin may answer before the body is all there (a 413).
///
/// Until then the origin must keep taking the body. One that stops reading
/// it (or never connects) leaves hyper stuck writing, and the body, no longer
/// polled, times nothing. So the wait ends once the origin's connection has
/// held what it was handed for `timeout` without asking for more (noticed
/// between 1 and 1.5 times `timeout`). Time it spends waiting on the client
/// does not count.
async fn answer_after_body<T>(
    answer: impl Future<Output = T>,
    upload: Upload,
    timeout: Duration,
) -> Result<T, Late> {
    let Upload { mut sent, progress } = upload;
    tokio::pin!(answer);
    let tick = (timeout / 2).max(Duration::from_millis(1));
    // What the origin had taken two ticks ago and one tick ago (at the start).
    let mut seen = [None, progress.taken_by_origin()];
    loop {
        tokio::select! {
            early = &mut answer => return Ok(early),
            _ = &mut sent => break,
            () = tokio::time::sleep(tick) => {
                let now = progress.taken_by_origin();
                if now.is_some() && now == seen[0] {
                    return Err(Late::Body);
                }
                seen = [seen[1], now];
            }
        }
    }
    tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| Late::Answer)
}

/// Whether the path names the `.gz` or `.br` copy of a file beside it.
/// Those copies are how `ServeDir` answers for the file itself to clients
/// that accept the coding; asked for by name, they would be the file's
/// content under a path that no access rule written for the file matches.
async fn is_precompressed_copy(dir: &DirOrigin, path: &str) -> bool {
    let Some(original) = crate::routing::precompressed_original(path) else {
        return false;
    };
    // The path is normalised: no dot segments, so it stays inside the directory.
    let file = dir.dir.join(original.trim_start_matches('/'));
    tokio::fs::metadata(file).await.is_ok_and(|m| m.is_file())
}

#[allow(clippy::too_many_arguments)]
async fn proxy_http(
    gateway: &Gateway,
    runtime: &Runtime,
    conn: ConnInfo,
    route: &Route,
    origin: &HttpOrigin,
    visitor: Option<&Visitor>,
    target: Target,
    parts: http::request::Parts,
    body: Incoming,
) -> Response<GatewayBody> {
    let json = target.wants_json;
    // Built before the first await, so that the request's parts are not part
    // of this future's state: the state is moved as the request starts.
    let OriginRequest {
        request,
        client_upgrade,
        upload,
        client_host,
    } = match origin_request(runtime, conn, route, origin, visitor, target, parts, body) {
        Ok(built) => built,
        Err(refusal) => return respond::refusal(refusal, json),
    };
    let sent = Instant::now();
    let answer = origin.pool.send(request);
    let outcome = match upload {
        None => tokio::time::timeout(origin.response_timeout, answer)
            .await
            .map_err(|_| Late::Answer),
        Some(upload) => answer_after_body(answer, upload, origin.response_timeout).await,
    };
    let mut response = match outcome {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            let refusal = match body_error_in(&*error) {
                Some(BodyError::TooLarge) => Refusal::BodyTooLarge,
                Some(BodyError::Idle) => Refusal::BodyTimeout,
                Some(BodyError::Malformed) => {
                    Refusal::BadRequest("The request body could not be read.")
                }
                None => {
                    gateway.metrics.upstream_error(&origin.label);
                    tracing::warn!(upstream = %origin.label, error = %error_chain(&*error), "upstream request failed");
                    Refusal::BadGateway
                }
            };
            return respond::refusal(refusal, json);
        }
        Err(late) => {
            gateway.metrics.upstream_error(&origin.label);
            let timeout = origin.response_timeout;
            match late {
                Late::Answer => {
                    tracing::warn!(upstream = %origin.label, ?timeout, "upstream response timed out");
                }
                Late::Body => {
                    tracing::warn!(upstream = %origin.label, ?timeout, "upstream stopped taking the request body");
                }
            }
            // The send given up has ended its origin connection, and the
            // client's closes after this answer if its body is unread.
            return respond::refusal(Refusal::GatewayTimeout, json);
        }
    };
    gateway
        .metrics
        .upstream_latency(&origin.label, sent.elapsed().as_secs_f64());
    if headers::has_conflicting_framing(response.headers()) {
        // Dropping the unread response closes that upstream connection too.
        gateway.metrics.upstream_error(&origin.label);
        tracing::warn!(upstream = %origin.label, "upstream response framed by both Content-Length and Transfer-Encoding");
        return respond::refusal(Refusal::BadGateway, json);
    }

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return match client_upgrade {
            Some((client, held)) if tunnel::switched_to_websocket(&response) => {
                tunnel::open(client, held, response, origin.idle_timeout)
            }
            Some(_) => {
                gateway.metrics.upstream_error(&origin.label);
                tracing::warn!(upstream = %origin.label, "upstream switched to a protocol other than websocket");
                respond::refusal(Refusal::BadGateway, json)
            }
            None => {
                gateway.metrics.upstream_error(&origin.label);
                tracing::warn!(upstream = %origin.label, "upstream switched protocols unasked");
                respond::refusal(Refusal::BadGateway, json)
            }
        };
    }
    headers::strip_hop_by_hop(response.headers_mut());
    // Redirects, and a 201's new resource; a page's `Location` is not read.
    let status = response.status();
    if (status.is_redirection() || status == StatusCode::CREATED)
        && let Some(location) = response.headers().get(header::LOCATION)
        && let Some(ours) = redirect_to_gateway(location, origin, conn.tls, &client_host)
    {
        response.headers_mut().insert(header::LOCATION, ours);
    }
    response.map(|body| GatewayBody::upstream(body, origin.idle_timeout))
}

/// An origin's redirect to itself, as the client must be sent it: back to
/// the host the client asked for, as a path (nginx's `proxy_redirect
/// default` does the same with its own scheme). Either the origin named its own address
/// (`http://10.0.0.5:8080/kb/`), or it built the URL from the `Host` it was
/// given with its own scheme and port (`http://docs.example.com:8080/kb/`).
/// Anything else, relative paths included, stays as it is.
fn redirect_to_gateway(
    location: &HeaderValue,
    origin: &HttpOrigin,
    client_tls: bool,
    client: &RequestHost,
) -> Option<HeaderValue> {
    let text = location.to_str().ok()?;
    let (url, fragment) = match text.split_once('#') {
        Some((url, fragment)) => (url, Some(fragment)),
        None => (text, None),
    };
    let uri: Uri = url.parse().ok()?;
    let (scheme, authority) = (uri.scheme()?, uri.authority()?);
    if *scheme != origin.scheme || authority.as_str().contains('@') {
        return None;
    }
    let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    let port = authority.port_u16().unwrap_or(default_port);
    let origin_port = origin.authority.port_u16().unwrap_or(default_port);
    let own_address = authority
        .host()
        .eq_ignore_ascii_case(origin.authority.host());
    let clients_host = authority.host().eq_ignore_ascii_case(&client.name);
    if port != origin_port || !(own_address || clients_host) {
        return None;
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    // A path alone keeps the scheme, host and port the browser used, also
    // behind an ingress that ended TLS. One that starts with two slashes
    // (or a slash and a backslash, to browsers) would name another host, so
    // it keeps our scheme and the client's host.
    let names_a_host = path.starts_with("//") || path.starts_with("/\\");
    let mut ours = if path.starts_with('/') && !names_a_host {
        path.to_owned()
    } else {
        let gateway_scheme = if client_tls { "https" } else { "http" };
        format!("{gateway_scheme}://{}{path}", client.authority)
    };
    if let Some(fragment) = fragment {
        ours.push('#');
        ours.push_str(fragment);
    }
    HeaderValue::from_str(&ours).ok()
}

/// A request ready for its origin.
struct OriginRequest {
    request: http::Request<ForwardBody>,
    /// The client's side of a WebSocket upgrade, if it asked for one, with
    /// what keeps its connection counted.
    client_upgrade: Option<(OnUpgrade, Option<HeldConnection>)>,
    /// How a body still to come is getting on; `None` without one.
    upload: Option<Upload>,
    /// The host (and port) the client asked for, for the origin's redirects.
    client_host: RequestHost,
}

/// The request as the origin gets it: cleaned headers, the member's identity,
/// the normalised path, and the body capped; with the client's side of a
/// WebSocket upgrade, if it asked for one, and word of how a body is getting
/// on, if it has one.
#[allow(clippy::too_many_arguments)]
fn origin_request(
    runtime: &Runtime,
    conn: ConnInfo,
    route: &Route,
    origin: &HttpOrigin,
    visitor: Option<&Visitor>,
    target: Target,
    mut parts: http::request::Parts,
    body: Incoming,
) -> Result<OriginRequest, Refusal> {
    if content_length(&parts.headers).is_some_and(|len| len > route.max_body_bytes) {
        return Err(Refusal::BodyTooLarge);
    }
    let server = &runtime.config.server;
    let trusted = headers::is_trusted(conn.peer.ip(), &server.trusted_proxies);
    let facts = ClientFacts {
        peer_ip: conn.peer.ip(),
        tls: conn.tls,
        host: &target.host.authority,
    };
    headers::prepare_request(
        &mut parts.headers,
        &server.identity_header_prefix,
        trusted,
        facts,
    );
    let host = if route.rewrite_host {
        origin.host_header.clone()
    } else {
        HeaderValue::from_str(&target.host.authority)
            .map_err(|_| Refusal::BadRequest("The request's host name is not valid."))?
    };
    parts.headers.insert(header::HOST, host);
    access::withhold_gateway_cookies(&mut parts.headers, &runtime.config.members.cookie_name);
    if let Some(visitor) = visitor {
        access::set_identity(&mut parts.headers, runtime, visitor);
    }
    let client_upgrade = if target.websocket {
        tunnel::ask_for_websocket(&mut parts.headers);
        let held = parts.extensions.remove::<HeldConnection>();
        parts
            .extensions
            .remove::<OnUpgrade>()
            .map(|client| (client, held))
    } else {
        None
    };

    // A path that was already in normal form (nearly all) goes on as the
    // client's request line had it, shared rather than written and parsed again.
    let as_sent = parts
        .uri
        .path_and_query()
        .filter(|sent| sent.path() == target.path.encoded)
        .cloned();
    let path_and_query = match (as_sent, &target.query) {
        (Some(sent), _) => Ok(sent),
        (None, None) => PathAndQuery::try_from(target.path.encoded),
        (None, Some(query)) => PathAndQuery::try_from(format!("{}?{query}", target.path.encoded)),
    };
    // Origin form: the connection is already the origin's.
    let uri = path_and_query
        .map(Uri::from)
        .map_err(|_| Refusal::BadRequest("The requested address is not valid."))?;
    let mut body = ForwardBody::new(
        body,
        route.max_body_bytes,
        runtime.config.limits.body_idle_timeout,
    );
    // Watched while a body that is still to come is sent; a request with
    // none (nearly all) starts its response timeout at once.
    let upload = (!body.is_end_stream()).then(|| body.watch());
    let mut request = http::Request::new(body);
    *request.method_mut() = parts.method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = parts.headers;
    Ok(OriginRequest {
        request,
        client_upgrade,
        upload,
        client_host: target.host,
    })
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
