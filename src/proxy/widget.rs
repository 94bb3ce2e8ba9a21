//! The chat widget on the data plane: whether this request's page gets it
//! (targeting), the member's identification token (fetched while the origin
//! works), and the rewrite of the page on its way back.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Response};

use super::access::Access;
use super::body::GatewayBody;
use super::pipeline::Target;
use crate::gateway::{Gateway, Runtime};
use crate::identity::{self, ChatDecision};
use crate::inject;
use crate::routing::Site;

/// The widget's plan for one page: shown, and identified or not.
pub struct Plan {
    pub decision: ChatDecision,
    /// The coding the rewritten page is sent in (from the client's `Accept-Encoding`).
    pub client_coding: inject::Coding,
    /// The widget forgets its visitor: the chat-reset cookie came with the
    /// request, or the request's session is over and this response sets
    /// that cookie. The statement that clears it, for the reset script.
    pub reset: Option<Arc<str>>,
    /// A browser loading a page (not a script, style or image the chat's
    /// paths also cover): the origin is asked for it uncompressed, since it
    /// will be rewritten. Anything else keeps the client's `Accept-Encoding`.
    pub page_load: bool,
    /// A HubSpot token may be asked for (and waited for) for this request: a
    /// `GET` the browser does not call a subresource. An image or a script
    /// of a member's page uses a cached one at most; its answer is rarely
    /// rewritten, and a `HEAD`'s never.
    pub mint: bool,
}

impl Plan {
    /// Whether the page is made for this visitor alone: their identification,
    /// or the reset after a session. A copy the browser kept from before (an
    /// anonymous visitor's, before logging in) cannot stand for it.
    pub fn personalises(&self) -> bool {
        self.decision == ChatDecision::Identified || self.reset.is_some()
    }
}

/// Whether this request's page gets the widget. Only GET requests for pages
/// of a site with a chat configuration are candidates.
pub fn plan(
    gateway: &Gateway,
    site: &Site,
    target: &Target,
    served_as: Option<&str>,
    access: &Access,
    method: &Method,
    headers: &http::HeaderMap,
) -> Option<Plan> {
    let chat = site.chat.as_ref()?;
    // HEAD too: its answer carries the headers the GET's would.
    if !(method == Method::GET || method == Method::HEAD) || target.websocket {
        return None;
    }
    let groups = access.visitor.as_deref().map(|v| v.groups.as_slice());
    let query = target.query.as_deref();
    let (decision, _) = identity::decide_page(chat, &target.path.decoded, served_as, query, groups);
    if decision == ChatDecision::Off {
        return None;
    }
    let accepted: Vec<&str> = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let sessions = &gateway.membership.sessions;
    let reset = access.session_ended
        || crate::session::cookie_values(headers, sessions.chat_reset_name())
            .any(|v| v == crate::session::CHAT_RESET_VALUE);
    let fetched = Fetched::of(headers);
    Some(Plan {
        decision,
        client_coding: inject::codec::preferred(&accepted),
        reset: reset.then(|| sessions.chat_reset_clearing().clone()),
        page_load: fetched == Fetched::Page,
        mint: method == Method::GET && fetched != Fetched::Subresource,
    })
}

/// What a request fetches, as far as its headers tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetched {
    /// A page to show: the browser says so in `Sec-Fetch-Dest`, or, without
    /// it, asks for HTML in `Accept`.
    Page,
    /// Something else for a page (an image, a script, a fetch), by
    /// `Sec-Fetch-Dest`.
    Subresource,
    /// No `Sec-Fetch-Dest` (not a browser, or an old one) and no HTML asked for.
    Unknown,
}

impl Fetched {
    fn of(headers: &http::HeaderMap) -> Fetched {
        const SEC_FETCH_DEST: header::HeaderName =
            header::HeaderName::from_static("sec-fetch-dest");
        let first = |name| headers.get(name).map(HeaderValue::as_bytes);
        match first(SEC_FETCH_DEST) {
            Some(b"document" | b"iframe" | b"frame") => Fetched::Page,
            Some(_) => Fetched::Subresource,
            None if first(header::ACCEPT).is_some_and(asks_for_html) => Fetched::Page,
            None => Fetched::Unknown,
        }
    }
}

fn asks_for_html(accept: &[u8]) -> bool {
    accept
        .windows(b"text/html".len())
        .any(|w| w.eq_ignore_ascii_case(b"text/html"))
}

/// The member's token when the plan identifies them; `None` otherwise, or
/// when no token came in time.
pub async fn token(
    gateway: &Gateway,
    runtime: &Runtime,
    site: &Site,
    access: &Access,
    plan: Option<&Plan>,
) -> Option<Arc<str>> {
    let plan = plan.filter(|p| p.decision == ChatDecision::Identified)?;
    let (chat, visitor) = (site.chat.as_ref()?, access.visitor.as_deref()?);
    let request = identity::TokenRequest {
        chat,
        settings: &runtime.config.identification,
        keys: runtime.identity_keys.as_ref(),
        site: &site.name,
    };
    // Boxed: the token cache's lookup future is large, and only pages that
    // identify a member need it; unboxed it would size every request's future.
    Box::pin(gateway.identifier.token_for(request, visitor, plan.mint)).await
}

/// Puts the widget into the page if the response is one that may be rewritten.
/// A plan with `reset` (the session ended) makes the widget forget
/// its visitor. The reset script clears the cookie itself when it runs: the
/// gateway cannot know, when it sends the headers, whether the snippet will
/// find its place in the page.
pub fn rewrite(
    site: &Site,
    access: &Access,
    max_decoded: usize,
    plan: Option<Plan>,
    token: Option<Arc<str>>,
    method: &Method,
    response: Response<GatewayBody>,
) -> Response<GatewayBody> {
    let (Some(plan), Some(chat)) = (plan, site.chat.as_ref()) else {
        return response;
    };
    // A HEAD answer has the headers a GET would get (RFC 9110, 9.3.2): the
    // same rewritable test, the same header edits, no body to rewrite.
    let head = method == Method::HEAD;
    let as_get = if head { &Method::GET } else { method };
    let Some(page) = inject::rewritable(as_get, response.status(), response.headers()) else {
        return response;
    };
    let identified = match (&token, access.visitor.as_deref()) {
        (Some(token), Some(visitor)) => Some((visitor.email.as_str(), &**token)),
        _ => None,
    };
    let nonce = inject::csp::script_nonce(response.headers());
    let snippet = inject::snippet(chat, identified, nonce.as_deref(), plan.reset.as_deref());
    if snippet.html.is_empty() {
        // Nothing to add: the page loads the widget itself, and this
        // visitor is not identified.
        return response;
    }
    let mut response = response;
    if let Some(script) = snippet.inline_script() {
        inject::csp::allow_inline_script(response.headers_mut(), script, nonce.as_deref());
    }
    let to = plan.client_coding;
    // The reset is this browser's alone: a shared cache must not hand it to
    // every visitor, wiping their chat on each page.
    let personalised = identified.is_some() || plan.reset.is_some();
    if head {
        let (mut parts, body) = response.into_parts();
        inject::fix_headers(&mut parts.headers, personalised, to);
        return Response::from_parts(parts, body);
    }
    inject::rewrite(response, page, snippet, personalised, to, max_decoded)
}
