//! The membership side of proxying: who the visitor is (session), whether the
//! site's policy lets them in, the identity sent to the origin, and what a
//! protected response must carry back.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use super::body::GatewayBody;
use super::pipeline::Target;
use super::respond::{self, Refusal};
use crate::gateway::{Gateway, Runtime};
use crate::hygiene::headers::{add_vary, keep_from_shared_caches, mark_private};
use crate::policy::{self, Decision};
use crate::portal;
use crate::routing::Site;
use crate::session::{Settled, Visitor};

static X_ROBOTS_TAG: header::HeaderName = header::HeaderName::from_static("x-robots-tag");

/// The outcome of the authorise phase for a request that may proceed.
pub struct Access {
    pub visitor: Option<Arc<Visitor>>,
    /// The path's rule is not public: the response depends on the session
    /// cookie, whatever the rule says about caching.
    pub members_only: bool,
    /// The rule leaves caching to the gateway (`private`, the default): a
    /// members-only response is `private, no-store`, and one the origin made
    /// knowing who the visitor is stays out of shared caches. `private =
    /// false` keeps the origin's caching headers.
    pub private: bool,
    /// The cookies the response sets: a renewed session's new id, or a dead
    /// one cleared with the chat reset.
    pub set_cookies: Vec<String>,
    /// The request's session cookie named a session that is over: the
    /// widget forgets its visitor (see `proxy::widget`).
    pub session_ended: bool,
}

/// Who the visitor is and whether the site's rules let them in. `served_as`
/// is the path the origin will answer with when it differs from the one
/// asked for (a directory origin's `index.html` for `/dir/`): the stricter of
/// the two decisions holds, so a rule written for the file covers its alias.
pub async fn authorise(
    gateway: &Gateway,
    site: &Site,
    target: &Target,
    served_as: Option<&str>,
    headers: &HeaderMap,
) -> Result<Access, Response<GatewayBody>> {
    let sessions = &gateway.membership.sessions;
    let Some(Settled {
        visitor,
        set_cookies,
        unavailable,
        ended,
    }) = sessions.settle(sessions.lookup(headers).await)
    else {
        let why = "The request carries more than one session cookie.";
        return Err(respond::refusal(
            Refusal::BadRequest(why),
            target.wants_json,
        ));
    };
    let who = match &visitor {
        Some(v) => policy::Visitor::Member { groups: &v.groups },
        None => policy::Visitor::Anonymous,
    };
    let own = policy::decide(&site.rules, &target.path.decoded, who);
    let alias = served_as.map(|served| policy::decide(&site.rules, served, who));
    let (decision, matched) = policy::stricter(own, alias);
    let rule = matched.map(|i| &site.rules.rules[i]);
    let mut refused = match decision {
        Decision::Allow => {
            // What protects the page, under either of its paths: a member
            // let into `/guide/` by the public default is still reading the
            // members-only `/guide/index.html`.
            let protection = |matched: Option<usize>| {
                let rule = matched.map(|i| &site.rules.rules[i]);
                let access = rule.map_or(&site.rules.default, |r| &r.access);
                (*access != policy::Access::Public).then(|| rule.is_none_or(|r| r.private))
            };
            let own = protection(own.1);
            let alias = alias.and_then(|(_, matched)| protection(matched));
            return Ok(Access {
                visitor,
                members_only: own.is_some() || alias.is_some(),
                // Kept from shared caches unless every rule that protects it
                // says otherwise.
                private: match (own, alias) {
                    (None, None) => true,
                    (own, alias) => own.unwrap_or(false) || alias.unwrap_or(false),
                },
                set_cookies,
                session_ended: ended,
            });
        }
        // The visitor may well be a member: say so rather than ask them to
        // log in again.
        Decision::Login if unavailable => respond::session_unavailable(target.wants_json),
        Decision::Login if target.wants_json => json_unauthorized(),
        Decision::Login => match rule.and_then(|r| r.teaser.as_deref()) {
            Some(teaser) => teaser_page(teaser, target),
            None => login_redirect(target),
        },
        Decision::Forbidden => forbidden(target.wants_json),
    };
    for cookie in &set_cookies {
        append_cookie(refused.headers_mut(), cookie);
    }
    if ended {
        crate::session::forget_members_pages(refused.headers_mut());
    }
    Err(refused)
}

/// Sets the identity headers on a request going to an origin. Client copies
/// were already removed by header hygiene; values that are not plain ASCII are
/// sent in RFC 8187 form (`UTF-8''percent-encoded`), so no value can break a header.
pub fn set_identity(headers: &mut HeaderMap, runtime: &Runtime, visitor: &Visitor) {
    if !runtime.config.members.identity_headers {
        return;
    }
    // The values were encoded once, when the session was cached.
    let (names, values) = (&runtime.identity_headers, &visitor.identity);
    headers.insert(names.id.clone(), values.id.clone());
    headers.insert(names.email.clone(), values.email.clone());
    headers.insert(names.name.clone(), values.name.clone());
    headers.insert(names.groups.clone(), values.groups.clone());
}

/// Removes the gateway's own cookies (the session, its CSRF companion, the
/// chat-reset flag and the device cookie)
/// from the request going to an origin, which must never be able to read or
/// replay a member's session, and joins the `Cookie` fields an HTTP/2 client
/// sends one per cookie into the single header HTTP/1.1 expects (RFC 9113,
/// 8.2.3). A lone header without our cookies is left as it is.
pub fn withhold_gateway_cookies(headers: &mut HeaderMap, session_cookie: &str) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), second) = (values.next(), values.next()) else {
        return;
    };
    if second.is_none() && !memchr_name(first.as_bytes(), session_cookie.as_bytes()) {
        return;
    }
    let mut kept = String::new();
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            let pair = pair.trim();
            let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
            let ours = name == session_cookie
                || name
                    .strip_prefix(session_cookie)
                    .is_some_and(|rest| matches!(rest, "-csrf" | "-chat-reset" | "-device"));
            if pair.is_empty() || ours {
                continue;
            }
            if !kept.is_empty() {
                kept.push_str("; ");
            }
            kept.push_str(pair);
        }
    }
    headers.remove(header::COOKIE);
    if let Ok(value) = HeaderValue::from_str(&kept)
        && !kept.is_empty()
    {
        headers.insert(header::COOKIE, value);
    }
}

/// Whether `name` occurs in `haystack` (a cheap pre-check before parsing).
fn memchr_name(haystack: &[u8], name: &[u8]) -> bool {
    !name.is_empty() && memchr::memmem::find(haystack, name).is_some()
}

/// The name a server will read in the `Cookie` header a browser sends back
/// for a `Set-Cookie` value. Usually what comes before the first `=`,
/// trimmed. A browser keeps a cookie with an empty name (`=mg=x`, or `mg`
/// with no `=`) and sends back its value alone (RFC 6265bis 5.6, 5.7.3):
/// `Cookie: mg=x`, so then the name is what comes first in the value.
fn cookie_name(value: &[u8]) -> &[u8] {
    let pair = value.split(|&b| b == b';').next().unwrap_or_default();
    let sent_back = match pair.iter().position(|&b| b == b'=') {
        Some(end) if !pair[..end].trim_ascii().is_empty() => return pair[..end].trim_ascii(),
        Some(end) => &pair[end + 1..],
        None => pair,
    };
    let end = sent_back
        .iter()
        .position(|&b| b == b'=')
        .unwrap_or(sent_back.len());
    sent_back[..end].trim_ascii()
}

/// After the origin answered: private caching for protected paths, no origin
/// attempt to set the gateway's cookies (catalogue I2), and the gateway's
/// own cookies to set (a dead session cleared, a renewed one's new id).
pub fn finish(
    runtime: &Runtime,
    access: &Access,
    mut response: Response<GatewayBody>,
) -> Response<GatewayBody> {
    let members = &runtime.config.members;
    let headers = response.headers_mut();
    if headers.contains_key(header::SET_COOKIE) {
        let own = [
            members.cookie_name.clone(),
            format!("{}-csrf", members.cookie_name),
            format!("{}-chat-reset", members.cookie_name),
            format!("{}-device", members.cookie_name),
        ];
        let kept: Vec<HeaderValue> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter(|v| {
                // Read as bytes: a value with any byte outside visible ASCII
                // (an attribute `x=é`) is still a cookie to a browser.
                let name = cookie_name(v.as_bytes());
                !own.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(name))
            })
            .cloned()
            .collect();
        headers.remove(header::SET_COOKIE);
        for value in kept {
            headers.append(header::SET_COOKIE, value);
        }
    }
    let protected = access.members_only && access.private;
    if protected {
        headers.insert(X_ROBOTS_TAG.clone(), HeaderValue::from_static("noindex"));
    }
    // The origin was told who the visitor is: what it answered may say so.
    let identified = access.visitor.is_some() && members.identity_headers;
    if access.members_only || identified {
        add_vary(headers, "Cookie");
    }
    for cookie in &access.set_cookies {
        append_cookie(headers, cookie);
    }
    if access.session_ended {
        crate::session::forget_members_pages(headers);
    }
    // A renewed session's id must never land in a shared cache, even on a
    // public page; nor a chat reset, which is this browser's alone.
    if protected || !access.set_cookies.is_empty() {
        mark_private(headers);
    } else if identified && access.private {
        keep_from_shared_caches(headers);
    }
    response
}

fn append_cookie(headers: &mut HeaderMap, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        headers.append(header::SET_COOKIE, value);
    }
}

/// `return_to=<the requested path and query>`, form-encoded.
fn return_to_query(target: &Target) -> String {
    let wanted = match &target.query {
        Some(q) => format!("{}?{q}", target.path.encoded),
        None => target.path.encoded.clone(),
    };
    serde_urlencoded::to_string([("return_to", wanted.as_str())]).unwrap_or_default()
}

fn login_redirect(target: &Target) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::Empty);
    *response.status_mut() = StatusCode::FOUND;
    let location = format!("{}/login?{}", portal::PREFIX, return_to_query(target));
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The rule's teaser, rendered with links to log in or register that come
/// back to the requested page. Served with 200 so the teaser can be read and
/// shared, but never cached: the same address shows the full page to members.
fn teaser_page(teaser: &policy::Teaser, target: &Target) -> Response<GatewayBody> {
    let query = return_to_query(target);
    let mut env = minijinja::Environment::new();
    let rendered = env
        .add_template("teaser.html", &teaser.source)
        .and_then(|()| env.get_template("teaser.html"))
        .and_then(|template| {
            template.render(minijinja::context! {
                login_url => format!("{}/login?{query}", portal::PREFIX),
                register_url => format!("{}/register?{query}", portal::PREFIX),
                path => &target.path.decoded,
            })
        });
    let html = match rendered {
        Ok(html) => html,
        Err(e) => {
            tracing::error!(file = %teaser.file.display(), error = %e, "teaser template failed");
            return login_redirect(target);
        }
    };
    let mut response = respond::own(StatusCode::OK, "text/html; charset=utf-8", html);
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Cookie"));
    response
}

fn json_unauthorized() -> Response<GatewayBody> {
    respond::own(
        StatusCode::UNAUTHORIZED,
        "application/json",
        "{\"error\":{\"status\":401,\"reason\":\"Unauthorized\",\"message\":\"Log in to open this address.\"}}",
    )
}

fn forbidden(json: bool) -> Response<GatewayBody> {
    let mut response = respond::refusal(Refusal::Forbidden, json);
    response
        .headers_mut()
        .insert(X_ROBOTS_TAG.clone(), HeaderValue::from_static("noindex"));
    response
}

#[cfg(test)]
mod tests {
    use super::withhold_gateway_cookies;
    use crate::hygiene::headers::header_text;

    #[test]
    fn origins_never_see_the_gateway_cookies() {
        let cases: [(&[&str], Option<&str>); 7] = [
            (&["theme=dark"], Some("theme=dark")),
            (&["mg=abc; theme=dark"], Some("theme=dark")),
            (&["mg-csrf=t; mg=abc"], None),
            (&["a=1", "mg=abc", "b=2"], Some("a=1; b=2")),
            (&["a=1", "b=2"], Some("a=1; b=2")),
            (&["mg-device=t; a=1; mg-chat-reset=1"], Some("a=1")),
            (
                &["mgx=1; xmg=2; mg-csrfx=3"],
                Some("mgx=1; xmg=2; mg-csrfx=3"),
            ),
        ];
        for (sent, expected) in cases {
            let mut headers = http::HeaderMap::new();
            for value in sent {
                headers.append("cookie", value.parse().unwrap());
            }
            withhold_gateway_cookies(&mut headers, "mg");
            let all: Vec<_> = headers.get_all("cookie").iter().collect();
            assert!(all.len() <= 1, "{sent:?}");
            assert_eq!(
                all.first().map(|v| v.to_str().unwrap()),
                expected,
                "{sent:?}"
            );
        }
    }

    #[test]
    fn header_text_never_breaks_a_header() {
        assert_eq!(header_text("Ada Lovelace"), "Ada Lovelace");
        assert_eq!(header_text("Zoë"), "UTF-8''Zo%C3%AB");
        assert_eq!(
            header_text("Eve\r\nX-Member-Groups: admin"),
            "UTF-8''Eve%0D%0AX-Member-Groups%3A%20admin"
        );
        assert_eq!(header_text("a\0b"), "UTF-8''a%00b");
        assert!(http::HeaderValue::from_str(&header_text("</script>\u{2028}")).is_ok());
    }
}
