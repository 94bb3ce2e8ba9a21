//! The gateway's own pages under `/_membergate/`: register, verify, log in,
//! log out, reset a password, and the account page (where a member can also
//! delete their account).
//!
//! Every POST is checked for origin and CSRF token before anything else; every
//! answer that could reveal whether an email is registered (register, login,
//! reset) is the same for both cases, and unknown emails cost the same
//! password-hashing time as known ones.

pub mod csrf;
pub mod device;
pub mod membership;
pub mod pages;
pub mod return_to;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use minijinja::context;

pub use membership::Membership;
use membership::{Action, Browser, MailCooldown, MailKind};

use crate::config::{self, Registration};
use crate::gateway::{Gateway, Runtime};
use crate::identity::Identifier;
use crate::mail::Message;
use crate::members::password::{self, Check, NotDone};
use crate::members::{Member, NewMember, Status, StoreError, TokenPurpose, clean_name, email, now};
use crate::proxy::ConnInfo;
use crate::proxy::body::GatewayBody;
use crate::proxy::pipeline::Target;
use crate::proxy::respond;
use crate::session::{Visitor, cookie_values, hash_id};

/// The path prefix of the portal.
pub const PREFIX: &str = "/_membergate";
/// Largest form body accepted (catalogue H4).
const MAX_FORM_BYTES: usize = 16 * 1024;
const VERIFY_LIFETIME: i64 = 24 * 3600;
const RESET_LIFETIME: i64 = 3600;
/// As long as a verification link: both prove a mailbox.
const EMAIL_CHANGE_LIFETIME: i64 = 24 * 3600;

/// Whether a normalised path belongs to the portal.
pub fn is_portal_path(path: &str) -> bool {
    crate::routing::prefix_matches(PREFIX, path)
}

/// One portal request with what every handler needs.
struct Request<'a> {
    m: &'a Membership,
    /// Identification tokens cached per member, dropped with a deleted one.
    identifier: &'a Identifier,
    config: &'a config::Members,
    site_name: &'a str,
    conn: ConnInfo,
    /// The visitor's address, for rate limits (see `headers::client_ip`).
    client: std::net::IpAddr,
    target: &'a Target,
    headers: http::HeaderMap,
    /// The logged-in member, if any.
    visitor: Option<Arc<Visitor>>,
    /// The pre-session cookie, if the browser sent one.
    pre_session: Option<String>,
    /// Cookies to set on the response.
    set_cookies: Vec<String>,
    /// The browser is to forget the member who used it: the chat widget's
    /// conversation and the site's pages in its caches.
    reset_browser: bool,
}

pub async fn handle(
    gateway: &Gateway,
    runtime: &Runtime,
    site_name: &str,
    conn: ConnInfo,
    target: &Target,
    parts: http::request::Parts,
    body: Incoming,
) -> Response<GatewayBody> {
    let m = &*gateway.membership;
    let config = &runtime.config.members;
    let body_timeout = runtime.config.limits.body_idle_timeout;
    let Some(settled) = m.sessions.settle(m.sessions.lookup(&parts.headers).await) else {
        return message_response(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "Your browser sent conflicting session cookies. Clear this site's cookies and try again.",
        );
    };
    let pre_name = pre_session_cookie(config);
    let pre_session = cookie_values(&parts.headers, &pre_name)
        .next()
        .map(str::to_owned);
    let mut req = Request {
        m,
        identifier: &gateway.identifier,
        config,
        site_name,
        conn,
        client: crate::hygiene::headers::client_ip(
            conn.peer.ip(),
            &parts.headers,
            &runtime.config.server.trusted_proxies,
        ),
        target,
        headers: parts.headers,
        visitor: settled.visitor,
        pre_session,
        set_cookies: settled.set_cookies,
        reset_browser: settled.ended,
    };
    let sub = &target.path.decoded[PREFIX.len()..];
    let sub = sub.to_ascii_lowercase();
    // The pages for a member (and logging out, which must end the stored
    // session) wait for the store rather than treat a member as a stranger.
    if settled.unavailable && (sub.starts_with("/account") || sub == "/logout") {
        return respond::session_unavailable(target.wants_json);
    }
    let query = parse_query(target.query.as_deref());
    let mut response = match (&parts.method, sub.as_str()) {
        (&Method::GET | &Method::HEAD, "/login") => req.login_page(&query, None, ""),
        (&Method::GET | &Method::HEAD, "/register") => {
            req.register_page(&query, None, &HashMap::new())
        }
        // Opening the link only shows a button: mail scanners and link
        // checkers fetch links (GET and HEAD) without a person behind them.
        (&Method::GET | &Method::HEAD, "/verify") => req.verify_page(&query),
        (&Method::GET | &Method::HEAD, "/reset") => req.reset_page(&query, None),
        (&Method::GET | &Method::HEAD, "/account") => req.account_page(&query, None).await,
        // Like the verification link: opening it only shows a button.
        (&Method::GET | &Method::HEAD, "/account/email") => req.email_confirm_page(&query),
        (&Method::POST, path) => match req
            .checked_form(body, body_timeout, req.form_tokens(path))
            .await
        {
            Err(response) => response,
            Ok(form) => match path {
                "/login" => req.login(&form).await,
                "/register" => req.register(&form).await,
                "/verify" => req.verify(&form).await,
                "/logout" => req.logout(&form).await,
                "/reset" => req.reset_request(&form).await,
                "/reset/confirm" => req.reset_confirm(&form).await,
                "/account/name" => req.account_name(&form).await,
                "/account/password" => req.account_password(&form).await,
                "/account/delete" => req.account_delete(&form).await,
                "/account/email" => req.account_email(&form).await,
                "/account/email/confirm" => req.email_confirm(&form).await,
                _ => message_response(
                    StatusCode::NOT_FOUND,
                    "Not found",
                    "There is nothing at this address.",
                ),
            },
        },
        (_, "/logout") => {
            let mut r = message_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "Log out",
                "Use the log-out button to log out.",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            r
        }
        _ => message_response(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is nothing at this address.",
        ),
    };
    for cookie in req.set_cookies {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    if req.reset_browser {
        crate::session::forget_members_pages(response.headers_mut());
    }
    response
}

fn pre_session_cookie(config: &config::Members) -> String {
    format!("{}-csrf", config.cookie_name)
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    query
        .map(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// Which CSRF tokens a form posted to the portal takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FormTokens {
    /// Bound to the visitor: the session for a member, the pre-session
    /// cookie for anyone else. A member's own forms (the account page,
    /// log-out).
    Visitors,
    /// Bound to the pre-session cookie even when a member is logged in: a
    /// form for anyone (log in, register, confirm, reset) may come from a
    /// page opened in another tab before this browser logged in. An
    /// attacker cannot read that cookie, so login CSRF stays refused.
    PreSessionToo,
    /// None: a log-out from a browser without a live session (ended
    /// elsewhere, idled out, or a second click). Logging out a browser that
    /// is not logged in gives a forger nothing; the origin is still checked.
    NoneNeeded,
}

impl Request<'_> {
    /// Which tokens the form posted to `path` (below the prefix) takes.
    fn form_tokens(&self, path: &str) -> FormTokens {
        match path {
            "/logout" if self.visitor.is_none() => FormTokens::NoneNeeded,
            // The new address's link may be opened in any browser, logged
            // in or not.
            "/login"
            | "/register"
            | "/verify"
            | "/reset"
            | "/reset/confirm"
            | "/account/email/confirm" => FormTokens::PreSessionToo,
            _ => FormTokens::Visitors,
        }
    }

    /// The browser forgets the member who used it: the next page with the
    /// chat widget resets it (see `proxy::widget`), and the site's pages
    /// leave the browser's caches.
    fn reset_browser(&mut self) {
        self.set_cookie(self.m.sessions.chat_reset_cookie());
        self.reset_browser = true;
    }

    /// Queues a cookie for the response, once.
    fn set_cookie(&mut self, cookie: String) {
        if !self.set_cookies.contains(&cookie) {
            self.set_cookies.push(cookie);
        }
    }

    /// What CSRF tokens of this visitor are bound to; creates the pre-session
    /// cookie when a form is about to be shown to a visitor without one.
    fn csrf_binding(&mut self, create: bool) -> Option<Vec<u8>> {
        if let Some(v) = &self.visitor {
            return Some(v.id_hash.to_vec());
        }
        self.pre_session_binding(create)
    }

    /// The pre-session cookie's value, as a binding; created when `create`
    /// and the browser has none.
    fn pre_session_binding(&mut self, create: bool) -> Option<Vec<u8>> {
        if self.pre_session.is_none() && create {
            let value = csrf::new_pre_session();
            let cookie = cookie::Cookie::build((pre_session_cookie(self.config), value.clone()))
                .path("/")
                .secure(self.config.cookie_secure)
                .http_only(true)
                .same_site(cookie::SameSite::Lax)
                .build();
            self.set_cookies.push(cookie.to_string());
            self.pre_session = Some(value);
        }
        self.pre_session.as_ref().map(|v| v.as_bytes().to_vec())
    }

    fn csrf_token(&mut self) -> String {
        let binding = self.csrf_binding(true).unwrap_or_default();
        csrf::token(&self.m.csrf_key, &binding)
    }

    /// The token for a form anyone may send ([`FormTokens::PreSessionToo`]),
    /// bound to the pre-session cookie even for a logged-in member: the form
    /// still works after this browser logs in or out in another tab.
    fn anyones_csrf_token(&mut self) -> String {
        let binding = self.pre_session_binding(true).unwrap_or_default();
        csrf::token(&self.m.csrf_key, &binding)
    }

    /// Reads a POST form after checking origin and size, then checks its
    /// CSRF token against the bindings `tokens` allows.
    async fn checked_form(
        &mut self,
        body: Incoming,
        timeout: Duration,
        tokens: FormTokens,
    ) -> Result<HashMap<String, String>, Response<GatewayBody>> {
        let forbidden = || {
            message_response(
                StatusCode::FORBIDDEN,
                "Form expired",
                "This form could not be accepted. Go back, reload the page and try again.",
            )
        };
        if !csrf::same_origin(&self.headers, &self.target.host.authority, self.conn.tls) {
            let origin = self.headers.get(header::ORIGIN).map(|v| {
                let origin = String::from_utf8_lossy(v.as_bytes());
                crate::proxy::respond::clip(&origin, 256).into_owned()
            });
            tracing::info!(
                ?origin,
                "portal form refused: not sent from this site's page"
            );
            return Err(message_response(
                StatusCode::FORBIDDEN,
                "Form refused",
                "This form was not sent from this site's own page: the request names another \
                 site as its origin, or none. Open the page and send the form from there.",
            ));
        }
        let limited = http_body_util::Limited::new(body, MAX_FORM_BYTES);
        let bytes = match tokio::time::timeout(timeout, limited.collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(message_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Too large",
                    "That form is larger than this page accepts.",
                ));
            }
            Ok(Err(_)) => {
                return Err(message_response(
                    StatusCode::BAD_REQUEST,
                    "Bad request",
                    "The form could not be read.",
                ));
            }
            // Dripped in slowly or stopped: the whole form is due within the
            // body timeout, so a trickle cannot hold the request open.
            Err(_elapsed) => {
                return Err(message_response(
                    StatusCode::REQUEST_TIMEOUT,
                    "Too slow",
                    "The form did not arrive in time. Please try again.",
                ));
            }
        };
        let form: HashMap<String, String> =
            match serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes) {
                Ok(pairs) => pairs.into_iter().collect(),
                Err(_) => {
                    return Err(message_response(
                        StatusCode::BAD_REQUEST,
                        "Bad request",
                        "The form could not be read.",
                    ));
                }
            };
        if tokens == FormTokens::NoneNeeded {
            return Ok(form);
        }
        let mut bindings: Vec<Vec<u8>> = self.csrf_binding(false).into_iter().collect();
        // A session renewed since the page was made (the member gained a
        // group) is still the one the form was made for.
        if let Some(old) = self.visitor.as_ref().and_then(|v| v.renewed_from) {
            bindings.push(old.to_vec());
        }
        if tokens == FormTokens::PreSessionToo && self.visitor.is_some() {
            bindings.extend(self.pre_session_binding(false));
        }
        let submitted = form.get("csrf").map(String::as_str).unwrap_or("");
        let key = &self.m.csrf_key;
        if bindings
            .iter()
            .any(|binding| csrf::token_matches(key, binding, submitted))
        {
            return Ok(form);
        }
        tracing::info!(
            "portal form refused: its token is not this browser's (an old page, or cookies cleared)"
        );
        Err(forbidden())
    }

    fn page(
        &self,
        status: StatusCode,
        template: &str,
        context: minijinja::Value,
    ) -> Response<GatewayBody> {
        let merged = context! { site_name => self.site_name, ..context };
        match self.config.templates.render(template, merged) {
            Ok(html) => html_response(status, html),
            Err(e) => {
                tracing::error!(error = %e, "portal template failed");
                message_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Error",
                    "This page could not be shown.",
                )
            }
        }
    }

    fn message(
        &self,
        status: StatusCode,
        heading: &str,
        text: &str,
        link: Option<(&str, &str)>,
    ) -> Response<GatewayBody> {
        let (link, link_text) = link.unwrap_or(("", ""));
        self.page(
            status,
            "message.html",
            context! { heading, text, link, link_text },
        )
    }

    fn too_many(&self) -> Response<GatewayBody> {
        let mut r = self.message(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts",
            "There have been too many attempts. Wait a minute and try again.",
            None,
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        r
    }

    /// Whether this browser logged in to `account` before (its device
    /// cookie vouches for it), which puts it outside the account's ceiling.
    fn browser_of(&self, account: Option<&str>) -> Browser {
        match account {
            Some(a) if self.m.devices.vouches_for(&self.headers, a, now()) => Browser::Known,
            _ => Browser::Unknown,
        }
    }

    /// Password hashing is full (a flood of logins from many addresses):
    /// refused at once rather than answered minutes late.
    fn busy(&self) -> Response<GatewayBody> {
        let mut r = self.message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            "Too many people are logging in just now. Try again in a few seconds.",
            None,
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        r
    }

    fn hashing_failed(&self) -> Response<GatewayBody> {
        self.message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again",
            "Your password could not be changed just now.",
            None,
        )
    }

    fn can_register(&self) -> bool {
        self.config.registration != Registration::Invite
    }

    // --- log in ---------------------------------------------------------------

    fn login_page(
        &mut self,
        query: &HashMap<String, String>,
        error: Option<&str>,
        email: &str,
    ) -> Response<GatewayBody> {
        let return_to = return_to::safe(query.get("return_to").map(String::as_str));
        let notice = match query.get("notice").map(String::as_str) {
            Some("verified") => "Your email address is verified. You can log in now.",
            Some("password") => "Your password was changed. Log in with the new one.",
            Some("email") => "Your email address was changed. Log in with the new one.",
            Some("logged_out") => "You are logged out.",
            _ => "",
        };
        let csrf = self.anyones_csrf_token();
        let status = if error.is_some() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        let can_register = self.can_register();
        // Already logged in (another tab, or the back button): say as whom,
        // with a log-out button bound to the session.
        let member = self.visitor.as_ref().map(|v| v.email.clone());
        let logout_csrf = member.is_some().then(|| self.csrf_token());
        self.page(
            status,
            "login.html",
            context! { csrf, logout_csrf, return_to, error, email, notice, can_register, member },
        )
    }

    async fn login(&mut self, form: &HashMap<String, String>) -> Response<GatewayBody> {
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        let canonical = email::canonical(field("email")).ok();
        let browser = self.browser_of(canonical.as_deref());
        let ip = self.client;
        if self
            .m
            .limits
            .exceeded(Action::Login, ip, canonical.as_deref(), browser)
        {
            self.m.counters.login("limited");
            return self.too_many();
        }
        let return_to = return_to::safe(form.get("return_to").map(String::as_str));
        let member = match &canonical {
            Some(e) => self.m.store.member_by_email(e).await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "member lookup failed during login");
                None
            }),
            None => None,
        };
        let password = field("password").to_owned();
        let stored = member.as_ref().and_then(|m| m.password_hash.clone());
        let check = match password::off_thread(move || match stored {
            Some(hash) => password::verify(&password, &hash),
            None => {
                password::verify_dummy(&password);
                Check::Wrong
            }
        })
        .await
        {
            Ok(check) => check,
            Err(NotDone::Busy) => {
                self.m.counters.login("busy");
                return self.busy();
            }
            Err(NotDone::Failed) => Check::Wrong,
        };
        // The right password for a confirmed address that waits for approval:
        // say so. Only the mailbox's owner can have confirmed it. A password
        // for an unconfirmed registration proves nothing (anyone may register
        // any free address with a password of their own and log in to see
        // whether it was free), so it gets the answer a wrong one gets, which
        // names that case.
        if check != Check::Wrong
            && self.config.require_verification
            && member
                .as_ref()
                .is_some_and(|m| m.status == Status::AwaitingApproval)
        {
            self.m.counters.login("not_ready");
            return self.message(
                StatusCode::FORBIDDEN,
                "Waiting for approval",
                "Your address is confirmed. Your account will be ready once the site's team approves it.",
                None,
            );
        }
        let member = member.filter(|m| check != Check::Wrong && m.status == Status::Active);
        let Some(member) = member else {
            self.m.counters.login("failed");
            let query = HashMap::from([("return_to".to_owned(), return_to)]);
            let shown = field("email").chars().take(254).collect::<String>();
            return self.login_page(&query, Some(self.login_refused_text()), &shown);
        };
        if check == Check::RightNeedsRehash {
            let (store, id, password) = (
                self.m.store.clone(),
                member.id,
                field("password").to_owned(),
            );
            let old = member.password_hash.clone().unwrap_or_default();
            tokio::spawn(async move {
                if let Ok(Ok(hash)) = password::off_thread(move || password::hash(&password)).await
                {
                    // Only over the hash that was checked: a password
                    // changed meanwhile stays changed.
                    let _ = store.rehash_password(id, &old, &hash).await;
                }
            });
        }
        let _ = self.m.store.record_login(member.id, now()).await;
        self.m.counters.login("ok");
        // Someone else used this browser last (their session is still on,
        // or their device cookie is here): the chat widget may hold their
        // conversation, and the caches their pages. Whether or not they
        // logged out, and whether or not a page delivered that reset.
        let after_someone_else = self
            .visitor
            .as_ref()
            .is_some_and(|old| old.member_id != member.id)
            || (browser == Browser::Unknown && self.m.devices.present(&self.headers));
        if after_someone_else {
            self.reset_browser();
        }
        if let Some(canonical) = &canonical {
            // This browser is now known for the account (see portal::device).
            let device = self.m.devices.set_cookie(canonical, now());
            self.set_cookies.push(device);
        }
        self.start_session(&member, &return_to).await
    }

    /// Ends any current session and starts a new one (a fresh id: catalogue D1).
    async fn start_session(&mut self, member: &Member, return_to: &str) -> Response<GatewayBody> {
        if let Some(old) = &self.visitor {
            self.m.sessions.destroy(old.id_hash, old.member_id).await;
        }
        match self.m.sessions.create(member).await {
            Ok(created) => {
                self.set_cookies
                    .push(self.m.sessions.set_cookie(&created.cookie_value));
                self.visitor = Some(created.visitor);
                see_other(return_to)
            }
            Err(e) => {
                tracing::error!(error = %e, "could not create a session");
                self.message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Try again",
                    "You could not be logged in just now. Please try again.",
                    None,
                )
            }
        }
    }

    // --- log out ----------------------------------------------------------------

    async fn logout(&mut self, form: &HashMap<String, String>) -> Response<GatewayBody> {
        if let Some(visitor) = &self.visitor {
            if form.get("everywhere").is_some_and(|v| v == "1") {
                let _ = self
                    .m
                    .store
                    .delete_member_sessions(visitor.member_id, now())
                    .await;
                self.m.sessions.forget_member(visitor.member_id);
            } else {
                self.m
                    .sessions
                    .destroy(visitor.id_hash, visitor.member_id)
                    .await;
            }
        }
        // Already queued when the request's session had ended.
        self.set_cookie(self.m.sessions.clear_cookie());
        self.reset_browser();
        self.visitor = None;
        let return_to = return_to::safe(form.get("return_to").map(String::as_str));
        see_other(&return_to)
    }

    // --- register -----------------------------------------------------------------

    fn register_page(
        &mut self,
        query: &HashMap<String, String>,
        error: Option<&str>,
        form: &HashMap<String, String>,
    ) -> Response<GatewayBody> {
        if !self.can_register() {
            return self.message(
                StatusCode::FORBIDDEN,
                "Membership by invitation",
                "Accounts on this site are created by invitation. Ask the site's team for one.",
                None,
            );
        }
        let return_to = return_to::safe(query.get("return_to").map(String::as_str));
        let csrf = self.anyones_csrf_token();
        let status = if error.is_some() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        };
        let value = |k: &str| {
            form.get(k)
                .map(|v| v.chars().take(254).collect::<String>())
                .unwrap_or_default()
        };
        self.page(
            status,
            "register.html",
            context! { csrf, return_to, error, email => value("email"), first_name => value("first_name"), last_name => value("last_name") },
        )
    }

    async fn register(&mut self, form: &HashMap<String, String>) -> Response<GatewayBody> {
        let query = HashMap::from([(
            "return_to".to_owned(),
            return_to::safe(form.get("return_to").map(String::as_str)),
        )]);
        if !self.can_register() {
            self.m.counters.registration("refused");
            return self.register_page(&query, None, form);
        }
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        let canonical = match email::canonical_new(field("email")) {
            Ok(e) => e,
            Err(e) => return self.register_page(&query, Some(&e.to_string()), form),
        };
        if self.m.limits.exceeded(
            Action::Register,
            self.client,
            Some(&canonical),
            Browser::Unknown,
        ) {
            self.m.counters.registration("limited");
            return self.too_many();
        }
        let (first, last) = match (
            clean_name(field("first_name")),
            clean_name(field("last_name")),
        ) {
            (Ok(f), Ok(l)) => (f, l),
            (Err(e), _) | (_, Err(e)) => return self.register_page(&query, Some(e), form),
        };
        if let Err(e) = password::acceptable(field("password")) {
            return self.register_page(&query, Some(e), form);
        }
        if let Some(domains) = self.outside_allowed_domains(&canonical) {
            let text = format!("Registration is open to addresses at {domains}.");
            self.m.counters.registration("refused");
            return self.register_page(&query, Some(&text), form);
        }
        let password = field("password").to_owned();
        let hash = match password::off_thread(move || password::hash(&password)).await {
            Ok(Ok(hash)) => hash,
            Err(NotDone::Busy) => return self.busy(),
            _ => {
                return self.message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Try again",
                    "Your account could not be created just now. Please try again.",
                    None,
                );
            }
        };
        let status = if self.config.require_verification {
            Status::Pending
        } else if self.config.registration == Registration::Approval {
            Status::AwaitingApproval
        } else {
            Status::Active
        };
        let new = NewMember {
            email: canonical.clone(),
            first_name: first,
            last_name: last,
            password_hash: Some(hash),
            status,
        };
        let signup = Signup {
            mailing: self.mailing(),
            new,
            return_to: query["return_to"].clone(),
        };
        if self.config.require_verification || self.config.registration == Registration::Approval {
            // Stored and mailed after the answer, in a task of its own: a new
            // address costs a member and a token written, a taken one a
            // refused insert, and an answer that waited for either would
            // tell them apart by its time (catalogue E3). The answer promises
            // only mail, or an approval later.
            tokio::spawn(signup.run());
        } else if signup.run().await.is_err() {
            // The account is said to be ready: it must be, before the answer.
            return self.message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                "Your account could not be created just now. Please try again.",
                None,
            );
        }
        // The same answer whether or not the address was already registered (E3).
        let login = format!(
            "{PREFIX}/login?return_to={}",
            urlencode(&query["return_to"])
        );
        match (self.config.require_verification, self.config.registration) {
            (true, _) => self.message(StatusCode::OK, "Check your email", "We sent a link to confirm your address. Open it to finish creating your account.", None),
            (false, Registration::Approval) => self.message(StatusCode::OK, "Almost there", "Your account will be ready once the site's team approves it. We will not email you about it: try logging in later.", None),
            (false, _) => self.message(StatusCode::OK, "Account created", "Your account is ready.", Some((&login, "Log in"))),
        }
    }

    /// The domains a member's address must be at, when `canonical` is at
    /// none of them (registration mode `domain`): registering and changing
    /// one's address are held to the same ones.
    fn outside_allowed_domains(&self, canonical: &str) -> Option<String> {
        let domain = canonical.rsplit('@').next().unwrap_or("");
        let allowed = &self.config.allowed_domains;
        let outside = self.config.registration == Registration::Domain
            && !allowed.iter().any(|d| d == domain);
        outside.then(|| allowed.join(", "))
    }

    /// The one answer to every refused login: it names each reason an
    /// account may not be ready under this configuration, since the right
    /// password for an unconfirmed registration must get it too (anyone may
    /// register a free address with a password of their own).
    fn login_refused_text(&self) -> &'static str {
        let approval = self.config.registration == Registration::Approval;
        match (self.config.require_verification, approval) {
            (true, true) => {
                "The email or password is not right, or the account is not ready yet: its address is not confirmed, or it waits for approval."
            }
            (true, false) => {
                "The email or password is not right, or the address is not confirmed yet."
            }
            (false, true) => {
                "The email or password is not right, or the account waits for approval."
            }
            (false, false) => "The email or password is not right.",
        }
    }

    /// What the portal's mail needs, for a task of its own.
    fn mailing(&self) -> Mailing {
        Mailing {
            store: self.m.store.clone(),
            mailer: self.m.mailer.clone(),
            public_url: self.config.public_url.clone(),
            site_name: self.site_name.to_owned(),
            cooldown: self.m.mail_cooldown.clone(),
            counters: self.m.counters.clone(),
        }
    }

    /// The mailed link's page. It spends nothing: a scanner that fetches
    /// every link in a mail would otherwise confirm an address on behalf of
    /// whoever registered it, password and all (account pre-hijacking).
    fn verify_page(&mut self, query: &HashMap<String, String>) -> Response<GatewayBody> {
        let csrf = self.anyones_csrf_token();
        let token = query.get("token").map(String::as_str).unwrap_or("");
        let return_to = return_to::safe(query.get("return_to").map(String::as_str));
        self.page(
            StatusCode::OK,
            "verify_confirm.html",
            context! { csrf, token, return_to },
        )
    }

    /// Spends a mailed link's token: its member and the epoch the token was
    /// checked against, or `None` for a link spent, expired, unknown or
    /// unreadable.
    async fn take_link(&self, purpose: TokenPurpose, token: &str) -> Option<(Member, i64)> {
        let taken = self
            .m
            .store
            .take_token(purpose, hash_id(token.as_bytes()), now())
            .await
            .ok()??;
        let member = self.m.store.member_by_id(taken.member_id).await.ok()??;
        Some((member, taken.epoch))
    }

    async fn verify(&mut self, form: &HashMap<String, String>) -> Response<GatewayBody> {
        let token = form.get("token").map(String::as_str).unwrap_or("");
        let member = self
            .take_link(TokenPurpose::Verify, token)
            .await
            .map(|(member, _)| member);
        let link_spent = |req: &Self| {
            req.message(
                StatusCode::BAD_REQUEST,
                "Link not valid",
                "This link is not valid any more. Links work once and expire after a day; \
                 if your address is already confirmed, log in.",
                Some(("/_membergate/login", "Log in")),
            )
        };
        let Some(member) = member.filter(|m| m.status == Status::Pending) else {
            return link_spent(self);
        };
        let next = if self.config.registration == Registration::Approval {
            Status::AwaitingApproval
        } else {
            Status::Active
        };
        match self
            .m
            .store
            .set_status(member.id, Status::Pending, next, now())
            .await
        {
            Ok(()) => {}
            // Disabled (or confirmed) since it was read: the link is spent.
            Err(StoreError::Stale) => return link_spent(self),
            Err(e) => {
                tracing::error!(error = %e, "could not activate a member");
                return self.message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Try again",
                    "Your address could not be confirmed just now. Open the link again.",
                    None,
                );
            }
        }
        if next == Status::AwaitingApproval {
            return self.message(
                StatusCode::OK,
                "Address confirmed",
                "Thank you. Your account will be ready once the site's team approves it.",
                None,
            );
        }
        let return_to = return_to::safe(form.get("return_to").map(String::as_str));
        if return_to == "/" {
            return see_other(&format!("{PREFIX}/login?notice=verified"));
        }
        see_other(&format!(
            "{PREFIX}/login?notice=verified&return_to={}",
            urlencode(&return_to)
        ))
    }

    // --- reset ------------------------------------------------------------------

    fn reset_page(
        &mut self,
        query: &HashMap<String, String>,
        error: Option<&str>,
    ) -> Response<GatewayBody> {
        let csrf = self.anyones_csrf_token();
        let status = if error.is_some() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        };
        match query.get("token") {
            Some(token) => self.page(
                status,
                "reset_confirm.html",
                context! { csrf, token, error },
            ),
            None => self.page(status, "reset_request.html", context! { csrf, error }),
        }
    }

    async fn reset_request(&mut self, form: &HashMap<String, String>) -> Response<GatewayBody> {
        let canonical = email::canonical(form.get("email").map(String::as_str).unwrap_or("")).ok();
        // A browser that logged in to the account before is outside the
        // account-wide ceiling here too: guesses at the account's login
        // spread over many addresses must not also keep its owner from a reset.
        let browser = self.browser_of(canonical.as_deref());
        if self
            .m
            .limits
            .exceeded(Action::Reset, self.client, canonical.as_deref(), browser)
        {
            return self.too_many();
        }
        if let Some(canonical) = canonical {
            // Looked up, stored and mailed after the answer, in a task of its
            // own: an answer that waited for the token and the mail would
            // take longer for a registered address than for any other
            // (catalogue E3). The rate limit above still holds.
            tokio::spawn(self.mailing().reset_link(canonical));
        }
        self.message(
            StatusCode::OK,
            "Check your email",
            "If an account exists for that address, we sent it a link to choose a new password.",
            None,
        )
    }

    async fn reset_confirm(&mut self, form: &HashMap<String, String>) -> Response<GatewayBody> {
        let token = form.get("token").cloned().unwrap_or_default();
        let new_password = form.get("password").cloned().unwrap_or_default();
        if let Err(e) = password::acceptable(&new_password) {
            let query = HashMap::from([("token".to_owned(), token)]);
            return self.reset_page(&query, Some(e));
        }
        // A slot first: a full queue answers "busy" before the link is spent.
        let slot = match password::slot().await {
            Ok(slot) => slot,
            Err(NotDone::Busy) => return self.busy(),
            Err(NotDone::Failed) => return self.hashing_failed(),
        };
        let member = self.take_link(TokenPurpose::Reset, &token).await;
        let link_spent = |req: &Self| {
            req.message(
                StatusCode::BAD_REQUEST,
                "Link not valid",
                "This link is not valid any more. Links work once and expire after an hour; \
                 if you just chose a password with it, log in with that password. \
                 Otherwise ask for a new link.",
                Some(("/_membergate/reset", "Ask for a new link")),
            )
        };
        let Some((member, epoch)) = member.filter(|(m, _)| m.status != Status::Disabled) else {
            return link_spent(self);
        };
        let hash = match slot.run(move || password::hash(&new_password)).await {
            Ok(Ok(hash)) => hash,
            _ => return self.hashing_failed(),
        };
        let at = now();
        // Written at the epoch the link was taken at: whatever moved the
        // epoch on while this password was hashed (another of the member's
        // links, a password change, a disable) stands, and this link is spent.
        match self
            .m
            .store
            .set_password(member.id, &hash, Some(epoch), at)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Stale) => return link_spent(self),
            Err(e) => {
                tracing::error!(error = %e, "could not set a password from a reset link");
                return self.message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Try again",
                    "Your password could not be changed just now.",
                    None,
                );
            }
        }
        // The link proved the address: a pending (or invited) member is
        // verified now. An invited one (pending without a password, which
        // registration always sets) was let in by an administrator: the
        // invitation is the approval.
        if member.status == Status::Pending {
            let invited = member.password_hash.is_none();
            let next = if self.config.registration == Registration::Approval && !invited {
                Status::AwaitingApproval
            } else {
                Status::Active
            };
            // Not over a disable made while the password was hashed.
            let _ = self
                .m
                .store
                .set_status(member.id, Status::Pending, next, at)
                .await;
        }
        self.m.sessions.forget_member(member.id);
        see_other(&format!("{PREFIX}/login?notice=password"))
    }

    // --- account ----------------------------------------------------------------

    fn visitor(&self) -> Option<Arc<Visitor>> {
        self.visitor.clone()
    }

    async fn account_page(
        &mut self,
        query: &HashMap<String, String>,
        error: Option<&str>,
    ) -> Response<GatewayBody> {
        let Some(visitor) = self.visitor() else {
            return see_other(&format!(
                "{PREFIX}/login?return_to={}",
                urlencode(&format!("{PREFIX}/account"))
            ));
        };
        let notice = match query.get("saved").map(String::as_str) {
            Some("name") => "Your name is saved.",
            Some("password") => "Your password is changed. Your other sessions are logged out.",
            Some("email") => "Your email address is changed. Your other sessions are logged out.",
            _ => "",
        };
        let csrf = self.csrf_token();
        let status = if error.is_some() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        };
        self.page(
            status,
            "account.html",
            context! {
                csrf, notice, error,
                email => visitor.email.clone(),
                first_name => visitor.first_name.clone(),
                last_name => visitor.last_name.clone(),
                groups => visitor.groups.clone(),
            },
        )
    }

    async fn account_name(&mut self, form: &HashMap<String, String>) -> Response<GatewayBody> {
        let Some(visitor) = self.visitor() else {
            return see_other(&format!("{PREFIX}/login"));
        };
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        let (first, last) = match (
            clean_name(field("first_name")),
            clean_name(field("last_name")),
        ) {
            (Ok(f), Ok(l)) => (f, l),
            (Err(e), _) | (_, Err(e)) => return self.account_page(&HashMap::new(), Some(e)).await,
        };
        if self
            .m
            .store
            .set_name(visitor.member_id, &first, &last, now())
            .await
            .is_err()
        {
            return self
                .account_page(
                    &HashMap::new(),
                    Some("Your name could not be saved just now."),
                )
                .await;
        }
        self.m.sessions.forget_member(visitor.member_id);
        see_other(&format!("{PREFIX}/account?saved=name"))
    }

    /// The member behind this session, once `current` is shown to be their
    /// password; `then` runs right after the check, in the same hashing
    /// slot (a new password's hash). A guess at the current password is a
    /// guess at the login's: it spends the same budget, so a borrowed
    /// session is no way round it. `Err` is the answer to give instead: the
    /// login page for a member gone meanwhile, 429, 503, or the account page
    /// saying the password is not right, or `failed` when the check failed.
    async fn prove_current_password<T: Send + 'static>(
        &mut self,
        visitor: &Visitor,
        current: String,
        failed: &str,
        then: impl FnOnce() -> T + Send + 'static,
    ) -> Result<(Member, T), Response<GatewayBody>> {
        let member = self
            .m
            .store
            .member_by_id(visitor.member_id)
            .await
            .ok()
            .flatten();
        let Some(member) = member else {
            return Err(see_other(&format!("{PREFIX}/login")));
        };
        let browser = self.browser_of(Some(&member.email));
        if self
            .m
            .limits
            .exceeded(Action::Login, self.client, Some(&member.email), browser)
        {
            return Err(self.too_many());
        }
        let stored = member.password_hash.clone().unwrap_or_default();
        let work = password::off_thread(move || {
            (password::verify(&current, &stored) != Check::Wrong).then(then)
        })
        .await;
        match work {
            Ok(Some(done)) => Ok((member, done)),
            Err(NotDone::Busy) => Err(self.busy()),
            Ok(None) => Err(self
                .account_page(&HashMap::new(), Some("The current password is not right."))
                .await),
            Err(NotDone::Failed) => Err(self.account_page(&HashMap::new(), Some(failed)).await),
        }
    }

    async fn account_password(&mut self, form: &HashMap<String, String>) -> Response<GatewayBody> {
        let Some(visitor) = self.visitor() else {
            return see_other(&format!("{PREFIX}/login"));
        };
        let current = form.get("current").cloned().unwrap_or_default();
        let new_password = form.get("password").cloned().unwrap_or_default();
        if let Err(e) = password::acceptable(&new_password) {
            return self.account_page(&HashMap::new(), Some(e)).await;
        }
        const NOT_CHANGED: &str = "Your password could not be changed just now.";
        let proved = self
            .prove_current_password(&visitor, current, NOT_CHANGED, move || {
                password::hash(&new_password)
            })
            .await;
        let (member, hash) = match proved {
            Ok((member, Ok(hash))) => (member, hash),
            Ok((_, Err(_))) => return self.account_page(&HashMap::new(), Some(NOT_CHANGED)).await,
            Err(answer) => return answer,
        };
        // Written at the epoch the current password was checked at: a reset
        // or a disable made meanwhile is not overwritten.
        match self
            .m
            .store
            .set_password(member.id, &hash, Some(member.epoch), now())
            .await
        {
            Ok(()) => {}
            Err(StoreError::Stale) => {
                // That change ended the member's sessions, this one too.
                self.m.sessions.forget_member(member.id);
                return see_other(&format!("{PREFIX}/login"));
            }
            Err(_) => return self.account_page(&HashMap::new(), Some(NOT_CHANGED)).await,
        }
        self.m.sessions.forget_member(member.id);
        self.renew_own_session(member.id, &format!("{PREFIX}/account?saved=password"))
            .await
    }

    /// After a change that ended every session of the member (a new
    /// password, a new address), this browser, theirs, gets a new one.
    async fn renew_own_session(
        &mut self,
        member: crate::members::MemberId,
        return_to: &str,
    ) -> Response<GatewayBody> {
        let Ok(Some(fresh)) = self.m.store.member_by_id(member).await else {
            return see_other(&format!("{PREFIX}/login"));
        };
        self.visitor = None;
        self.start_session(&fresh, return_to).await
    }

    /// Deletes the member's account at their request, once they gave their
    /// password: the member, their sessions and links go; this browser is
    /// logged out as `logout` does it (the chat widget reset), and forgets
    /// the account (its device cookie). The address is told, so a borrowed
    /// session cannot erase someone unnoticed.
    async fn account_delete(&mut self, form: &HashMap<String, String>) -> Response<GatewayBody> {
        let Some(visitor) = self.visitor() else {
            return see_other(&format!("{PREFIX}/login"));
        };
        const NOT_DELETED: &str = "Your account could not be deleted just now.";
        let current = form.get("current").cloned().unwrap_or_default();
        let member = match self
            .prove_current_password(&visitor, current, NOT_DELETED, || ())
            .await
        {
            Ok((member, ())) => member,
            Err(answer) => return answer,
        };
        // At the epoch the password was checked at: after a reset or a
        // disable made meanwhile, this session is over and nothing is deleted.
        let deleted = self
            .m
            .store
            .delete_member(member.id, Some(member.epoch), now())
            .await;
        match &deleted {
            // Gone already: a second click, or an administrator.
            Ok(_) | Err(StoreError::NotFound) => {}
            Err(StoreError::Stale) => {
                self.m.sessions.forget_member(member.id);
                return see_other(&format!("{PREFIX}/login"));
            }
            Err(e) => {
                tracing::error!(error = %e, member = member.id, "could not delete a member at their request");
                return self.account_page(&HashMap::new(), Some(NOT_DELETED)).await;
            }
        }
        self.m.sessions.forget_member(member.id);
        self.identifier.forget_member(member.id);
        self.set_cookie(self.m.sessions.clear_cookie());
        self.reset_browser();
        self.set_cookie(self.m.devices.clear_cookie());
        self.visitor = None;
        if let Ok(gone) = deleted {
            tracing::info!(
                member = member.id,
                sessions = gone.sessions,
                links = gone.links,
                "member deleted their account"
            );
            // Failures are logged by the mailer; the deletion stands.
            self.m
                .mailer
                .send(Message {
                    to: member.email.clone(),
                    subject: format!("Your account at {} was deleted", self.site_name),
                    body: format!("Hello,\n\nyour account at {} was deleted just now, at your request from a logged-in browser, with everything stored with it. Nothing more will be sent to this address.\n\nIf it was not you, someone used your password: your account cannot be brought back, but you can register again with this address.\n", self.site_name),
                })
                .await;
        }
        self.message(
            StatusCode::OK,
            "Account deleted",
            "Your account and everything stored with it are deleted, and you are logged out. You can register again with the same address at any time.",
            Some(("/", "Back to the site")),
        )
    }

    // --- email change -------------------------------------------------------------

    /// Asks for a new email address: once the current password is proved,
    /// a link goes to the new address and a notice to the current one, and
    /// nothing changes until the link is used. The answer is the same
    /// whether the new address is free or another member's (catalogue E3).
    async fn account_email(&mut self, form: &HashMap<String, String>) -> Response<GatewayBody> {
        let Some(visitor) = self.visitor() else {
            return see_other(&format!("{PREFIX}/login"));
        };
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        let new_email = match email::canonical_new(field("email")) {
            Ok(address) => address,
            Err(e) => {
                return self
                    .account_page(&HashMap::new(), Some(&e.to_string()))
                    .await;
            }
        };
        if new_email == visitor.email {
            return self
                .account_page(&HashMap::new(), Some("That is your email address already."))
                .await;
        }
        if let Some(domains) = self.outside_allowed_domains(&new_email) {
            let text = format!("Only addresses at {domains} can be used here.");
            return self.account_page(&HashMap::new(), Some(&text)).await;
        }
        let failed = "Your email address could not be changed just now.";
        let current = field("current").to_owned();
        let member = match self
            .prove_current_password(&visitor, current, failed, || ())
            .await
        {
            Ok((member, ())) => member,
            Err(answer) => return answer,
        };
        let text = format!(
            "We sent a link to {new_email}. Your address changes when you open it and press its \
             button; until then, log in with {}.",
            member.email
        );
        // Looked up, stored and mailed after the answer, in a task of its
        // own: an answer that waited for them would take longer for a free
        // address than for a taken one (catalogue E3).
        tokio::spawn(self.mailing().email_change(member, new_email));
        self.message(
            StatusCode::OK,
            "Check your email",
            &text,
            Some(("/_membergate/account", "Back to your account")),
        )
    }

    /// The new address's link: a page with one button, which spends nothing
    /// (mail scanners fetch links; decision 0027).
    fn email_confirm_page(&mut self, query: &HashMap<String, String>) -> Response<GatewayBody> {
        let csrf = self.anyones_csrf_token();
        let token = query.get("token").map(String::as_str).unwrap_or("");
        self.page(
            StatusCode::OK,
            "email_confirm.html",
            context! { csrf, token },
        )
    }

    /// Spends the new address's link and makes the change: every session
    /// of the member ends (as with a new password), and this browser, if it
    /// is theirs, gets a new one. The old address is told.
    async fn email_confirm(&mut self, form: &HashMap<String, String>) -> Response<GatewayBody> {
        let token = form.get("token").map(String::as_str).unwrap_or("");
        let link_spent = |req: &Self| {
            req.message(
                StatusCode::BAD_REQUEST,
                "Link not valid",
                "This link is not valid any more. Links work once and expire after a day, \
                 and a new password cancels them; if you just used it, log in with your new \
                 address. Otherwise ask for a new link on your account page.",
                Some(("/_membergate/account", "Your account")),
            )
        };
        let taken = self
            .m
            .store
            .take_email_change(hash_id(token.as_bytes()), now())
            .await;
        let change = match taken {
            Ok(Some(change)) => change,
            Ok(None) => return link_spent(self),
            Err(e) => {
                tracing::error!(error = %e, "could not read an email change");
                return link_spent(self);
            }
        };
        let member = self
            .m
            .store
            .member_by_id(change.member_id)
            .await
            .ok()
            .flatten();
        let Some(member) = member.filter(|m| m.status == Status::Active) else {
            return link_spent(self);
        };
        // At the epoch the change was asked at: a new password or a disable
        // since then cancelled it.
        match self
            .m
            .store
            .set_email(member.id, &change.new_email, Some(change.epoch), now())
            .await
        {
            Ok(()) => {}
            Err(StoreError::Stale) => return link_spent(self),
            // Only the new address's owner holds the link, and may learn
            // that their address has an account now.
            Err(StoreError::Duplicate) => {
                return self.message(
                    StatusCode::CONFLICT,
                    "Address in use",
                    "This address belongs to another account now, so it cannot be this one's. \
                     Nothing has changed.",
                    None,
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "could not change a member's email");
                return self.message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Try again",
                    "Your email address could not be changed just now. Ask for a new link on \
                     your account page.",
                    None,
                );
            }
        }
        self.m.sessions.forget_member(member.id);
        tokio::spawn(
            self.mailing()
                .email_changed(member.email.clone(), change.new_email.clone()),
        );
        let own = self
            .visitor
            .as_ref()
            .is_some_and(|v| v.member_id == member.id);
        if !own {
            return see_other(&format!("{PREFIX}/login?notice=email"));
        }
        // This browser is known for the new address as it was for the old.
        let device = self.m.devices.set_cookie(&change.new_email, now());
        self.set_cookie(device);
        self.renew_own_session(member.id, &format!("{PREFIX}/account?saved=email"))
            .await
    }
}

fn urlencode(value: &str) -> String {
    serde_urlencoded::to_string([("v", value)])
        .map(|s| s[2..].to_owned())
        .unwrap_or_default()
}

fn see_other(location: &str) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::Empty);
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn html_response(status: StatusCode, html: String) -> Response<GatewayBody> {
    let mut response = crate::proxy::respond::own(status, "text/html; charset=utf-8", html);
    let h = response.headers_mut();
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    response
}

/// A bare message page, for answers given before templates can be used.
fn message_response(status: StatusCode, heading: &str, text: &str) -> Response<GatewayBody> {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width, initial-scale=1\"><title>{heading}</title></head><body><h1>{heading}</h1><p>{text}</p></body></html>"
    );
    html_response(status, html)
}

/// A random secret for a mailed link; only its hash is stored.
fn link_secret() -> Option<String> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).ok()?;
    Some(base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        raw,
    ))
}

/// A random single-use token for `member`, stored hashed; `None` (logged)
/// when the store refuses it.
async fn new_token(
    store: &dyn crate::members::MemberStore,
    purpose: TokenPurpose,
    member: &Member,
    lifetime: i64,
) -> Option<String> {
    let token = link_secret()?;
    let stored = store
        .create_token(
            purpose,
            hash_id(token.as_bytes()),
            member.id,
            member.epoch,
            now() + lifetime,
        )
        .await;
    if let Err(e) = stored {
        tracing::error!(error = %e, "could not store a token");
        return None;
    }
    Some(token)
}

/// A password-reset link, sent after the request has been answered.
/// The portal's mail, with what it needs to run in a task of its own.
struct Mailing {
    store: Arc<dyn crate::members::MemberStore>,
    mailer: crate::mail::Mailer,
    public_url: String,
    site_name: String,
    cooldown: MailCooldown,
    counters: crate::admin::metrics::MembershipCounters,
}

/// A registration past its checks: the member to store and what to mail.
struct Signup {
    mailing: Mailing,
    new: NewMember,
    return_to: String,
}

impl Signup {
    /// Stores the member and mails them: a verification link for a new
    /// address that needs one, a note for one that already has an account.
    /// `Err` when the store failed (logged and counted).
    async fn run(self) -> Result<(), ()> {
        let pending = self.new.status == Status::Pending;
        let canonical = self.new.email.clone();
        let created = self.mailing.store.create_member(self.new, now()).await;
        let counted = match &created {
            Ok(_) => "created",
            Err(StoreError::Duplicate) => "duplicate",
            Err(_) => "failed",
        };
        self.mailing.counters.registration(counted);
        match created {
            Ok(member) if pending => self.mailing.verification(&member, &self.return_to).await,
            Ok(_) => {}
            Err(StoreError::Duplicate) => self.mailing.already_registered(&canonical).await,
            Err(e) => {
                tracing::error!(error = %e, "registration failed");
                return Err(());
            }
        }
        Ok(())
    }
}

impl Mailing {
    /// Mails the verification link; it carries `return_to` (already checked
    /// to be a local path, and checked again when the link is opened) so the
    /// new member lands where they started.
    async fn verification(&self, member: &Member, return_to: &str) {
        let Some(token) = new_token(
            self.store.as_ref(),
            TokenPurpose::Verify,
            member,
            VERIFY_LIFETIME,
        )
        .await
        else {
            return;
        };
        let back = if return_to == "/" {
            String::new()
        } else {
            format!("&return_to={}", urlencode(return_to))
        };
        let link = format!("{}{PREFIX}/verify?token={token}{back}", self.public_url);
        self.mailer.send(Message {
            to: member.email.clone(),
            subject: format!("Confirm your email for {}", self.site_name),
            body: format!("Hello,\n\nopen this link and press its button to confirm your email address and finish creating your account:\n\n{link}\n\nThe link works once and expires in 24 hours. If you did not register, ignore this message.\n"),
        })
        .await;
    }

    /// Whether a mail of `kind` may go to `canonical` now (see
    /// [`MailCooldown`]); one held back is counted.
    fn may_send(&self, kind: MailKind, canonical: &str) -> bool {
        let free = self.cooldown.may_send(kind, canonical);
        if !free {
            self.counters.mail_held_back(kind.as_str());
        }
        free
    }

    async fn already_registered(&self, canonical: &str) {
        if !self.may_send(MailKind::AlreadyRegistered, canonical) {
            return;
        }
        let link = format!("{}{PREFIX}/reset", self.public_url);
        self.mailer.send(Message {
            to: canonical.to_owned(),
            subject: format!("Your email already has an account at {}", self.site_name),
            body: format!("Hello,\n\nsomeone, perhaps you, asked to create an account at {} with your email address, which already has one.\n\nIf you registered before but did not confirm your address (or the link expired), ask for a link here: it confirms your address and lets you choose a password. The same page resets a forgotten password:\n\n{link}\n\nIf it was not you, ignore this message: nothing has changed.\n", self.site_name),
        })
        .await;
    }

    /// Mails a link to the member with this canonical address, if there is
    /// one that may log in and no link went to it within the cooldown;
    /// nothing otherwise.
    async fn reset_link(self, canonical: String) {
        let member = self.store.member_by_email(&canonical).await.ok().flatten();
        let Some(member) = member.filter(|m| m.status != Status::Disabled) else {
            return;
        };
        // Before the token: a request held back stores none either.
        if !self.may_send(MailKind::Reset, &canonical) {
            return;
        }
        let Some(token) = new_token(
            self.store.as_ref(),
            TokenPurpose::Reset,
            &member,
            RESET_LIFETIME,
        )
        .await
        else {
            return;
        };
        let link = format!("{}{PREFIX}/reset?token={token}", self.public_url);
        self.mailer
            .send(Message {
                to: member.email.clone(),
                subject: format!("Choose a new password for {}", self.site_name),
                body: format!("Hello,\n\nopen this link to choose a new password:\n\n{link}\n\nThe link works once and expires in one hour. If you did not ask for it, ignore this message: your password stays as it is.\n"),
            })
            .await;
    }

    /// The mail an address change asks for: to the new address a link, or,
    /// when another member has it, a note that someone tried to use it (at
    /// most one of either per cooldown); to the current address a notice,
    /// so that a session in someone else's hands cannot move the account
    /// away unseen.
    async fn email_change(self, member: Member, new_email: String) {
        // Before anything is mailed or stored: a request held back sends no
        // second notice or link, and the link sent before still works. Held
        // per member and address: one member's request to an address does
        // not hold back another's.
        let key = format!("{}:{new_email}", member.id);
        if !self.may_send(MailKind::EmailChange, &key) {
            return;
        }
        self.email_change_requested(&member, &new_email).await;
        match self.store.member_by_email(&new_email).await {
            Ok(None) => {}
            Ok(Some(_)) => return self.address_in_use(&new_email).await,
            Err(e) => {
                tracing::error!(error = %e, "member lookup failed during an email change");
                return;
            }
        }
        let Some(token) = link_secret() else { return };
        let stored = self
            .store
            .create_email_change(
                hash_id(token.as_bytes()),
                member.id,
                &new_email,
                member.epoch,
                now() + EMAIL_CHANGE_LIFETIME,
            )
            .await;
        if let Err(e) = stored {
            tracing::error!(error = %e, "could not store an email change");
            return;
        }
        let link = format!("{}{PREFIX}/account/email?token={token}", self.public_url);
        self.mailer
            .send(Message {
                to: new_email,
                subject: format!("Confirm your new email for {}", self.site_name),
                body: format!("Hello,\n\nopen this link and press its button to make this the email address of your account at {}:\n\n{link}\n\nThe link works once and expires in 24 hours. If you did not ask for it, ignore this message: nothing changes.\n", self.site_name),
            })
            .await;
    }

    async fn email_change_requested(&self, member: &Member, new_email: &str) {
        let reset = format!("{}{PREFIX}/reset", self.public_url);
        self.mailer
            .send(Message {
                to: member.email.clone(),
                subject: format!("A new email address was asked for at {}", self.site_name),
                body: format!("Hello,\n\nsomeone logged in to your account at {site}, perhaps you, asked to change its email address to {new_email}. Nothing changes until the link we sent to that address is used.\n\nIf it was not you, choose a new password now: that cancels the change and logs everyone else out.\n\n{reset}\n", site = self.site_name),
            })
            .await;
    }

    async fn address_in_use(&self, new_email: &str) {
        self.mailer
            .send(Message {
                to: new_email.to_owned(),
                subject: format!("Your email was given for another account at {}", self.site_name),
                body: format!("Hello,\n\nsomeone, perhaps you, asked to move another account at {site} to your email address. Your address has an account there already, and an address belongs to one account, so nothing has changed.\n\nIf it was not you, ignore this message.\n", site = self.site_name),
            })
            .await;
    }

    /// Tells the old address that the change was made.
    async fn email_changed(self, old_email: String, new_email: String) {
        self.mailer
            .send(Message {
                to: old_email,
                subject: format!("Your email address at {} was changed", self.site_name),
                body: format!("Hello,\n\nthe email address of your account at {site} is now {new_email}: log in with it from now on. This address no longer logs in.\n\nIf you did not make this change, tell the site's team at once: whoever made it knew your password.\n", site = self.site_name),
            })
            .await;
    }
}
