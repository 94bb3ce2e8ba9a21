//! Membership end to end: the real gateway, a real SQLite file, real cookies.
//! The origin echoes what it received, so each test can see the identity the
//! gateway passed on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::browser::{Browser, Page};
use support::chat::PageOrigin;
use support::{EchoOrigin, Gateway, Setup};

const PASSWORD: &str = "correct horse battery";
/// For tests that make many attempts from one address on purpose.
const GENEROUS_LIMITS: &str = "max_attempts_per_ip = 1000\nmax_attempts_per_account = 1000\nmax_attempts_per_account_per_ip = 1000";

async fn start(extra: impl FnOnce(Setup) -> Setup) -> (Gateway, EchoOrigin) {
    let origin = EchoOrigin::start().await;
    let setup = Setup::new()
        .route("/", &origin.url())
        .rule("/members", "members", &[])
        .rule("/vip", "groups", &["vip"]);
    (Gateway::start(extra(setup)).await, origin)
}

/// Registers and verifies through the outbox link; returns a logged-in browser.
async fn member(gw: &Gateway, email: &str, first: &str) -> Browser {
    let mut b = Browser::new(gw);
    let page = b.register(email, PASSWORD, first, "Tester").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let link = Gateway::link_in(&gw.mail_to(email).await);
    let verified = b.confirm_address(&link).await;
    assert_eq!(verified.status, 303);
    let login = b.login(email, PASSWORD).await;
    assert_eq!(login.status, 303, "{}", login.body);
    b
}

/// A fresh browser whose connections come from 127.0.0.`last`.
fn browser_from(gw: &Gateway, last: u8) -> Browser {
    let address = std::net::IpAddr::from([127, 0, 0, last]);
    let client = gw.client_builder().local_address(address).build().unwrap();
    Browser::with_client(gw, client)
}

/// Logs an existing member in from a fresh browser; returns the session cookie.
async fn member_login(gw: &Gateway, email: &str) -> String {
    let mut b = Browser::new(gw);
    assert_eq!(b.login(email, PASSWORD).await.status, 303);
    b.session_cookie().unwrap()
}

fn query_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Polls until `path` answers `status` (admin CLI changes arrive within ~1 s).
async fn eventually(b: &mut Browser, path: &str, status: u16) {
    for _ in 0..60 {
        if b.get(path).await.status == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never answered {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_verify_login_read_and_log_out() {
    let (gw, origin) = start(|s| s).await;
    let mut b = Browser::new(&gw);
    // Anonymous: the members page sends us to log in, remembering where we were.
    let page = b.get("/members/welcome?x=1").await;
    assert_eq!(page.status, 302);
    assert_eq!(
        page.location(),
        "/_membergate/login?return_to=%2Fmembers%2Fwelcome%3Fx%3D1"
    );
    assert!(origin.requests().is_empty());

    let page = b
        .register("Ada@Example.com", PASSWORD, "Ada", "Lovelace")
        .await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Check your email"));
    // Not verified yet: logging in fails, with the right password or a
    // wrong one alike (catalogue E3), and the message names the case.
    let early = b.login("ada@example.com", PASSWORD).await;
    assert_eq!(early.status, 401);
    assert!(early.body.contains("not confirmed yet"), "{}", early.body);
    let wrong = b.login("ada@example.com", "not the password at all").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("not confirmed yet"), "{}", wrong.body);

    let mail = gw.mail_to("ada@example.com").await;
    let link = Gateway::link_in(&mail);
    assert!(link.starts_with("/_membergate/verify?token="), "{link}");
    // A return_to slipped into the mailed link is checked again: not off-site.
    let link = format!("{link}&return_to=%2F%2Fevil.example%2Fx");
    // A mail scanner's HEAD and GET do not spend the link, nor confirm the
    // address for whoever registered it: only the page's button does.
    let head = gw.client().head(gw.https_url(&link)).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let scanner = gw.client().get(gw.https_url(&link)).send().await.unwrap();
    assert_eq!(scanner.status(), 200);
    assert!(scanner.text().await.unwrap().contains("Confirm my address"));
    assert_eq!(b.login("ada@example.com", PASSWORD).await.status, 401);
    let page = b.get(&link).await;
    assert_eq!(page.field("return_to"), "/");
    // Posted by hand, the off-site return_to is refused again.
    let fields = [
        ("csrf", page.csrf()),
        ("token", page.field("token")),
        ("return_to", "//evil.example/x".to_owned()),
    ];
    let fields = fields.each_ref().map(|(k, v)| (*k, v.as_str()));
    let verified = b.post("/_membergate/verify", &fields).await;
    assert_eq!(
        (verified.status, verified.location()),
        (303, "/_membergate/login?notice=verified")
    );
    // The link works once.
    assert_eq!(b.confirm_address(&link).await.status, 400);

    let login = b
        .login_to("Ada@example.com ", PASSWORD, "/members/welcome?x=1")
        .await;
    assert_eq!(
        (login.status, login.location()),
        (303, "/members/welcome?x=1")
    );
    let cookie = login
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-membergate="))
        .unwrap();
    for attribute in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/", "Max-Age="] {
        assert!(
            cookie.contains(attribute),
            "{attribute} missing in {cookie}"
        );
    }
    assert!(!cookie.to_ascii_lowercase().contains("domain"), "{cookie}");

    let page = b.get("/members/welcome?x=1").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["cache-control"], "private, no-store");
    assert_eq!(page.headers["x-robots-tag"], "noindex");
    let seen = origin.only_request();
    assert_eq!(seen.header("x-member-email"), Some("ada@example.com"));
    assert_eq!(seen.header("x-member-name"), Some("Ada Lovelace"));
    assert_eq!(seen.header("x-member-groups"), Some(""));
    assert!(seen.header("x-member-id").unwrap().parse::<i64>().is_ok());
    // Public pages get the identity too (for personalisation), but stay cacheable.
    let public = b.get("/blog/").await;
    assert_eq!(public.status, 200);
    assert!(public.headers.get("x-robots-tag").is_none());

    // Log out: the cookie is cleared and the old value is dead (D4).
    let old = b.session_cookie().unwrap();
    let out = b.logout().await;
    assert_eq!(out.status, 303);
    assert!(b.session_cookie().is_none());
    assert_eq!(b.get("/members/").await.status, 302);
    b.cookies.insert("__Host-membergate".into(), old);
    let replay = b.get("/members/").await;
    assert_eq!(replay.status, 302);
    assert!(
        replay
            .set_cookies()
            .iter()
            .any(|c| c.starts_with("__Host-membergate=;")),
        "dead cookie not cleared"
    );
}

/// D4 under load: requests with the session cookie that are in flight while
/// the member logs out must not bring the ended session back into memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_a_session_in_use_while_it_logs_out_stays_dead() {
    let (gw, _origin) = start(|s| s).await;
    let mut b = member(&gw, "ada@example.com", "Ada").await;
    let client = gw.client();
    for trial in 0..5 {
        if trial > 0 {
            assert_eq!(b.login("ada@example.com", PASSWORD).await.status, 303);
        }
        let cookie = format!("__Host-membergate={}", b.session_cookie().unwrap());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hammers: Vec<_> = (0..8)
            .map(|_| {
                let (client, cookie, stop) = (client.clone(), cookie.clone(), stop.clone());
                let url = gw.https_url("/members/");
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = client.get(&url).header("cookie", &cookie).send().await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(b.logout().await.status, 303);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for hammer in hammers {
            hammer.await.unwrap();
        }
        for _ in 0..2 {
            let replay = client
                .get(gw.https_url("/members/"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(
                replay.status(),
                302,
                "trial {trial}: the ended session let a request in"
            );
        }
    }
}

/// Also attack catalogue D6: the member's session is in the cache from a
/// members-only page, and a rule that needs more is still checked on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_clients_get_401_and_members_without_the_group_get_403() {
    let (gw, _origin) = start(|s| s).await;
    let mut anon = Browser::new(&gw);
    let page = anon
        .get_with("/members/x", &[("accept", "application/json")])
        .await;
    assert_eq!(page.status, 401);
    assert!(page.body.contains("\"status\":401"));
    let mut b = member(&gw, "bob@example.com", "Bob").await;
    assert_eq!(b.get("/members/").await.status, 200);
    let page = b.get("/vip/").await;
    assert_eq!(page.status, 403);
    assert!(page.body.contains("does not have access"));
    // Somewhere to go from there: another account, or this one.
    assert!(
        page.body
            .contains("<a href=\"/_membergate/login\">Log in as someone else</a>")
    );
    assert!(
        page.body
            .contains("<a href=\"/_membergate/account\">Your account</a>")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_granted_and_revoked_by_the_cli_apply_to_the_next_request() {
    let (gw, origin) = start(|s| s).await;
    let mut b = member(&gw, "vera@example.com", "Vera").await;
    let before = b.session_cookie().unwrap();
    assert_eq!(b.get("/vip/").await.status, 403);
    let (ok, out) = gw.cli(&["group", "add", "vera@example.com", "vip"], "");
    assert!(ok, "{out}");
    eventually(&mut b, "/vip/", 200).await;
    // Granted by another process: still a new session id (D1).
    assert_ne!(b.session_cookie().unwrap(), before);
    assert_eq!(
        origin.requests().last().unwrap().header("x-member-groups"),
        Some("vip")
    );
    // Removing a group ends the member's sessions (D5).
    let (ok, out) = gw.cli(&["group", "remove", "vera@example.com", "vip"], "");
    assert!(ok, "{out}");
    eventually(&mut b, "/members/", 302).await;
    let (_, list) = gw.cli(&["group", "list"], "");
    assert!(!list.contains("vip"), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_ends_the_other_sessions() {
    let (gw, _origin) = start(|s| s).await;
    let mut a = member(&gw, "carol@example.com", "Carol").await;
    let mut b = Browser::new(&gw);
    assert_eq!(b.login("carol@example.com", PASSWORD).await.status, 303);
    assert_eq!(b.get("/members/").await.status, 200);
    let csrf = a.get("/_membergate/account").await.csrf();
    let changed = a
        .post(
            "/_membergate/account/password",
            &[
                ("csrf", &csrf),
                ("current", PASSWORD),
                ("password", "a brand new secret"),
            ],
        )
        .await;
    assert_eq!(
        (changed.status, changed.location()),
        (303, "/_membergate/account?saved=password")
    );
    // A keeps a fresh session; B's is gone on its very next request.
    assert_eq!(a.get("/members/").await.status, 200);
    assert_eq!(b.get("/members/").await.status, 302);
    assert_eq!(b.login("carol@example.com", PASSWORD).await.status, 401);
    assert_eq!(
        b.login("carol@example.com", "a brand new secret")
            .await
            .status,
        303
    );
}

/// E1 through the account page: whoever holds a session (a shared
/// computer) cannot guess the current password faster than at the login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_at_the_current_password_are_limited_like_logins() {
    let (gw, _origin) = start(|s| s).await;
    let mut a = member(&gw, "carl@example.com", "Carl").await;
    let csrf = a.get("/_membergate/account").await.csrf();
    let mut limited = None;
    for i in 0..20 {
        let guess = format!("guess number {i}");
        // Deleting the account asks for the password too, from the same budget.
        let form = if i % 2 == 0 { "password" } else { "delete" };
        let page = a
            .post(
                &format!("/_membergate/account/{form}"),
                &[
                    ("csrf", &csrf),
                    ("current", &guess),
                    ("password", "a brand new secret"),
                ],
            )
            .await;
        if page.status == 429 {
            limited = Some(i);
            break;
        }
        assert_eq!(page.status, 422, "guess {i}");
    }
    // The login spent one attempt of the (account, address) budget of 10.
    let attempt = limited.expect("guesses at the current password were never limited");
    assert_eq!(attempt, 9);
    assert!(gw.cli(&["member", "show", "carl@example.com"], "").0);
}

/// The Set-Cookie values of `page` that delete the cookie `name`.
fn clears(page: &support::browser::Page, name: &str) -> bool {
    page.set_cookies()
        .iter()
        .any(|c| c.starts_with(&format!("{name}=;")) && c.contains("Max-Age=0"))
}

fn resets_the_chat(page: &support::browser::Page) -> bool {
    page.set_cookies()
        .iter()
        .any(|c| c.starts_with("__Host-membergate-chat-reset=2"))
}

/// Registers `email` anew after an earlier member at it was deleted, waiting
/// for the new verification mail (the outbox still holds the old mail);
/// returns the logged-in browser.
async fn register_again(gw: &Gateway, email: &str) -> Browser {
    let mut b = Browser::new(gw);
    let seen = gw.mail_count(email);
    let page = b.register(email, PASSWORD, "Again", "Tester").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let link = Gateway::link_in(&gw.next_mail_to(email, seen).await);
    assert_eq!(b.confirm_address(&link).await.status, 303);
    assert_eq!(b.login(email, PASSWORD).await.status, 303);
    b
}

/// The member id `membergate member show` prints first.
fn member_id(gw: &Gateway, email: &str) -> i64 {
    let (ok, shown) = gw.cli(&["member", "show", email], "");
    assert!(ok, "{shown}");
    shown.split('\t').next().unwrap().trim().parse().unwrap()
}

/// A member deletes their account from the account page with their
/// password: they and every session of theirs are gone, this browser is
/// logged out with the chat reset and forgets the account, and the address
/// is told. A wrong password, or a form without this browser's token,
/// deletes nothing. The address can register again, as a new member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_deletes_their_account_with_their_password() {
    let (gw, _origin) = start(|s| s).await;
    let mut a = member(&gw, "del@example.com", "Del").await;
    assert!(a.cookies.contains_key("__Host-membergate-device"));
    let first_id = member_id(&gw, "del@example.com");
    let mut other = Browser::new(&gw);
    assert_eq!(other.login("del@example.com", PASSWORD).await.status, 303);
    let other_session = other.session_cookie().unwrap();

    let account = a.get("/_membergate/account").await;
    assert!(
        account.body.contains("Delete my account"),
        "{}",
        account.body
    );
    let csrf = account.csrf();
    let wrong = a
        .post(
            "/_membergate/account/delete",
            &[("csrf", &csrf), ("current", "not the password")],
        )
        .await;
    assert_eq!(wrong.status, 422, "{}", wrong.body);
    assert!(wrong.body.contains("The current password is not right."));
    let forged = a
        .post("/_membergate/account/delete", &[("current", PASSWORD)])
        .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert_eq!(member_id(&gw, "del@example.com"), first_id);
    assert_eq!(a.get("/members/").await.status, 200);
    assert_eq!(other.get("/members/").await.status, 200);

    let mails = gw.mail_count("del@example.com");
    let deleted = a
        .post(
            "/_membergate/account/delete",
            &[("csrf", &csrf), ("current", PASSWORD)],
        )
        .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert!(deleted.body.contains("Account deleted"), "{}", deleted.body);
    assert!(
        clears(&deleted, "__Host-membergate"),
        "{:?}",
        deleted.set_cookies()
    );
    assert!(
        clears(&deleted, "__Host-membergate-device"),
        "{:?}",
        deleted.set_cookies()
    );
    assert!(resets_the_chat(&deleted), "{:?}", deleted.set_cookies());
    assert_eq!(deleted.headers["clear-site-data"], "\"cache\"");
    assert!(a.session_cookie().is_none());
    assert_eq!(a.get("/members/").await.status, 302);

    // The other browser's session died with the member, on its next request.
    let dead = other.get("/members/").await;
    assert_eq!(dead.status, 302);
    assert!(
        clears(&dead, "__Host-membergate"),
        "{:?}",
        dead.set_cookies()
    );
    assert!(resets_the_chat(&dead), "{:?}", dead.set_cookies());
    other
        .cookies
        .insert("__Host-membergate".into(), other_session);
    assert_eq!(other.get("/_membergate/account").await.status, 303);

    let (ok, out) = gw.cli(&["member", "show", "del@example.com"], "");
    assert!(!ok && out.contains("no member del@example.com"), "{out}");
    let notice = gw.next_mail_to("del@example.com", mails).await;
    assert!(notice.contains("was deleted"), "{notice}");
    assert!(
        !notice.contains("/_membergate/"),
        "a notice, no link: {notice}"
    );
    assert_eq!(a.login("del@example.com", PASSWORD).await.status, 401);

    let again = register_again(&gw, "del@example.com").await;
    assert!(again.session_cookie().is_some());
    assert!(member_id(&gw, "del@example.com") > first_id);
}

/// Asks on the account page for the member's address to become `new_email`.
async fn ask_for_email(b: &mut Browser, new_email: &str, current: &str) -> Page {
    let csrf = b.get("/_membergate/account").await.csrf();
    let fields = [
        ("csrf", csrf.as_str()),
        ("email", new_email),
        ("current", current),
    ];
    b.post("/_membergate/account/email", &fields).await
}

/// Opens an email-change link in `b` and presses its button.
async fn confirm_email(b: &mut Browser, link: &str) -> Page {
    let page = b.get(link).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let fields = [("csrf", page.csrf()), ("token", page.field("token"))];
    let fields = fields.each_ref().map(|(k, v)| (*k, v.as_str()));
    b.post("/_membergate/account/email/confirm", &fields).await
}

/// The chat widget's settings in a page, parsed.
fn chat_settings(page: &str) -> serde_json::Value {
    let open = membergate::inject::SETTINGS_SCRIPT_OPEN;
    let start = page
        .find(open)
        .unwrap_or_else(|| panic!("no settings in {page}"))
        + open.len();
    let end = page[start..].find(");</script>").unwrap() + start;
    serde_json::from_str(&page[start..end]).unwrap()
}

/// The email a self-minted identification token names.
fn token_email(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(2).unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&json).unwrap();
    claims["email"].as_str().unwrap().to_owned()
}

const BUILTIN_CHAT: &str =
    "provider = \"builtin\"\nwidget_url = \"https://chat.example.com/widget.js\"";

/// The whole self-service change: a link to the new address, a notice to
/// the old one, and once the link's button is pressed the new address is
/// the member's everywhere: the origin's identity headers, the chat
/// widget's identification (a token cached for the old address is not
/// served), the login. Other sessions end, this browser's lives on, and
/// links mailed to the old address die.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_changes_their_email_through_a_link_to_the_new_address() {
    let pages = PageOrigin::start(vec![]).await;
    let (gw, origin) = start(|s| s.route("/pages", &pages.url()).chat(BUILTIN_CHAT)).await;
    let mut a = member(&gw, "erin@example.com", "Erin").await;
    let mut other = Browser::new(&gw);
    assert_eq!(other.login("erin@example.com", PASSWORD).await.status, 303);
    let before = chat_settings(&a.get("/pages/tides").await.body);
    assert_eq!(before["identificationEmail"], "erin@example.com");
    // A reset link mailed to the old address before the change.
    let seen = gw.mail_count("erin@example.com");
    let fields = [("email", "erin@example.com")];
    let asked = Browser::new(&gw)
        .submit("/_membergate/reset", "/_membergate/reset", &fields)
        .await;
    assert_eq!(asked.status, 200);
    let reset_link = Gateway::link_in(&gw.next_mail_to("erin@example.com", seen).await);

    let seen = gw.mail_count("erin@example.com");
    let asked = ask_for_email(&mut a, " Erin.New@Example.ORG ", PASSWORD).await;
    assert_eq!(asked.status, 200, "{}", asked.body);
    assert!(
        asked.body.contains("erin.new@example.org"),
        "{}",
        asked.body
    );
    let notice = gw.next_mail_to("erin@example.com", seen).await;
    assert!(notice.contains("to change its email address to erin.new@example.org"));
    assert!(
        notice.contains("https://gw.test/_membergate/reset"),
        "{notice}"
    );
    let mail = gw.mail_to("erin.new@example.org").await;
    assert!(
        mail.contains("https://gw.test/_membergate/account/email?token="),
        "{mail}"
    );
    let link = Gateway::link_in(&mail);
    // Until the link's button is pressed, nothing changes: a mail
    // scanner's GET and HEAD spend nothing.
    let head = gw.client().head(gw.https_url(&link)).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let scanner = gw.client().get(gw.https_url(&link)).send().await.unwrap();
    assert!(
        scanner
            .text()
            .await
            .unwrap()
            .contains("Confirm my new address")
    );
    assert_eq!(a.get("/members/x").await.status, 200);
    let seen_by_origin = origin.requests().pop().unwrap();
    assert_eq!(
        seen_by_origin.header("x-member-email"),
        Some("erin@example.com")
    );
    let early = Browser::new(&gw)
        .login("erin.new@example.org", PASSWORD)
        .await;
    assert_eq!(early.status, 401);

    let confirmed = confirm_email(&mut a, &link).await;
    assert_eq!(
        (confirmed.status, confirmed.location()),
        (303, "/_membergate/account?saved=email"),
        "{}",
        confirmed.body
    );
    let account = a.get(confirmed.location()).await;
    assert!(
        account
            .body
            .contains("Signed in as <strong>erin.new@example.org</strong>")
    );
    assert!(account.body.contains("Your email address is changed."));
    assert_eq!(a.get("/members/x").await.status, 200);
    let seen_by_origin = origin.requests().pop().unwrap();
    assert_eq!(
        seen_by_origin.header("x-member-email"),
        Some("erin.new@example.org")
    );
    let after = chat_settings(&a.get("/pages/tides").await.body);
    assert_eq!(after["identificationEmail"], "erin.new@example.org");
    let token = after["identificationToken"].as_str().unwrap();
    assert_ne!(before["identificationToken"].as_str(), Some(token));
    assert_eq!(token_email(token), "erin.new@example.org");
    // The old address is told it happened.
    let done = gw.next_mail_to("erin@example.com", seen + 1).await;
    assert!(done.contains("is now erin.new@example.org"), "{done}");

    // The other session ended; the link works once; the reset link mailed
    // to the old address died with the change.
    assert_eq!(other.get("/members/x").await.status, 302);
    assert_eq!(confirm_email(&mut a, &link).await.status, 400);
    assert_eq!(
        follow_password_link(&gw, &reset_link, "taken over now").await,
        400
    );
    let mut fresh = Browser::new(&gw);
    assert_eq!(fresh.login("erin@example.com", PASSWORD).await.status, 401);
    assert_eq!(
        fresh.login("erin.new@example.org", PASSWORD).await.status,
        303
    );
}

/// Catalogue E3 for the change: a new address that has an account gets the
/// same answer as a free one, its owner is told someone tried (no link),
/// and nothing changes. A free address taken before its link is used stays
/// its new owner's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_change_to_a_taken_address_answers_the_same_and_changes_nothing() {
    let (gw, origin) = start(|s| s).await;
    let mut a = member(&gw, "fay@example.com", "Fay").await;
    let _gus = member(&gw, "gus@example.com", "Gus").await;
    let gus_mails = gw.mail_count("gus@example.com");
    let fay_before = gw.mail_count("fay@example.com");
    let free = ask_for_email(&mut a, "hal@example.com", PASSWORD).await;
    let taken = ask_for_email(&mut a, "GUS@example.com", PASSWORD).await;
    assert_eq!(free.status, 200);
    assert_eq!(free.status, taken.status);
    assert_eq!(
        free.body.replace("hal@example.com", "NEW"),
        taken.body.replace("gus@example.com", "NEW")
    );
    let note = gw.next_mail_to("gus@example.com", gus_mails).await;
    assert!(note.contains("another account"), "{note}");
    assert!(!note.contains("/_membergate/account/email"), "{note}");
    let link = Gateway::link_in(&gw.mail_to("hal@example.com").await);
    let fay_mails = gw.mail_count("fay@example.com");
    assert_eq!(
        fay_mails,
        fay_before + 2,
        "a notice for each address asked for"
    );
    // Asked again within the cooldown, no address is mailed again (Fay's
    // own neither), and the link sent first still works.
    for address in ["hal@example.com", "gus@example.com"] {
        assert_eq!(ask_for_email(&mut a, address, PASSWORD).await.status, 200);
    }
    let line = "membergate_mails_held_back_total{kind=\"email_change\"} 2";
    for _ in 0..100 {
        if gw.metrics().await.contains(line) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.metrics().await.contains(line));
    assert_eq!(gw.mail_count("hal@example.com"), 1);
    assert_eq!(gw.mail_count("gus@example.com"), gus_mails + 1);
    assert_eq!(gw.mail_count("fay@example.com"), fay_mails);
    // Another member's request for the same address is not held back by
    // Fay's: it gets a link of its own.
    let mut ivy = member(&gw, "ivy@example.com", "Ivy").await;
    assert_eq!(
        ask_for_email(&mut ivy, "hal@example.com", PASSWORD)
            .await
            .status,
        200
    );
    let ivys = Gateway::link_in(&gw.next_mail_to("hal@example.com", 1).await);
    assert_ne!(ivys, link);
    // Nothing changed for either member.
    assert_eq!(a.get("/members/").await.status, 200);
    let seen = origin.requests().pop().unwrap();
    assert_eq!(seen.header("x-member-email"), Some("fay@example.com"));
    assert_eq!(
        Browser::new(&gw)
            .login("gus@example.com", PASSWORD)
            .await
            .status,
        303
    );

    // Someone registers the free address before Fay's link is used: the
    // address stays theirs.
    let hal_mails = gw.mail_count("hal@example.com");
    let mut hal = Browser::new(&gw);
    let registered = hal
        .register("hal@example.com", PASSWORD, "Hal", "Tester")
        .await;
    assert_eq!(registered.status, 200);
    let verify = Gateway::link_in(&gw.next_mail_to("hal@example.com", hal_mails).await);
    assert_eq!(hal.confirm_address(&verify).await.status, 303);
    let late = confirm_email(&mut a, &link).await;
    assert_eq!(late.status, 409, "{}", late.body);
    let (ok, out) = gw.cli(&["member", "list"], "");
    assert!(ok, "{out}");
    assert_eq!(out.matches("hal@example.com").count(), 1, "{out}");
    assert!(out.contains("fay@example.com"), "{out}");
    assert_eq!(a.get("/members/").await.status, 200);
}

/// A wrong password asks for nothing and mails nobody; guesses at it spend
/// the login's budget, the same one the password form spends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_change_needs_the_current_password_and_guesses_are_limited() {
    let (gw, _origin) = start(|s| s).await;
    let mut a = member(&gw, "ida@example.com", "Ida").await;
    let ida_mails = gw.mail_count("ida@example.com");
    let wrong = ask_for_email(&mut a, "ida@new.example", "not the password").await;
    assert_eq!(wrong.status, 422);
    assert!(wrong.body.contains("The current password is not right."));
    // The login spent one attempt of the (account, address) budget of 10,
    // the wrong password above another; four guesses at the password form
    // and four more here, and the next is one too many.
    let csrf = a.get("/_membergate/account").await.csrf();
    for i in 0..4 {
        let guess = format!("guess number {i}");
        let fields = [
            ("csrf", csrf.as_str()),
            ("current", &guess),
            ("password", "a brand new secret"),
        ];
        let page = a.post("/_membergate/account/password", &fields).await;
        assert_eq!(page.status, 422, "guess {i}");
    }
    for i in 4..8 {
        let page = ask_for_email(&mut a, "ida@new.example", &format!("guess number {i}")).await;
        assert_eq!(page.status, 422, "guess {i}");
    }
    let limited = ask_for_email(&mut a, "ida@new.example", PASSWORD).await;
    assert_eq!(limited.status, 429);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.mail_count("ida@new.example"), 0);
    assert_eq!(gw.mail_count("ida@example.com"), ida_mails);
    // Addresses the change refuses before the password is checked.
    let own = ask_for_email(&mut a, "IDA@example.com", PASSWORD).await;
    assert_eq!(own.status, 422);
    assert!(own.body.contains("That is your email address already."));
    let bad = ask_for_email(&mut a, "ida@localhost", PASSWORD).await;
    assert_eq!(bad.status, 422);
}

/// A link that expired, or whose change a new password cancelled, changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_or_cancelled_email_change_link_changes_nothing() {
    let (gw, _origin) = start(|s| s).await;
    let mut a = member(&gw, "jo@example.com", "Jo").await;
    assert_eq!(
        ask_for_email(&mut a, "jo@one.example", PASSWORD)
            .await
            .status,
        200
    );
    let expired = Gateway::link_in(&gw.mail_to("jo@one.example").await);
    let mut db = support::store_connection(&gw.dir.path().join("data/membergate.db")).await;
    sqlx::query("UPDATE email_changes SET expires_at = 1")
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(
        ask_for_email(&mut a, "jo@two.example", PASSWORD)
            .await
            .status,
        200
    );
    let cancelled = Gateway::link_in(&gw.mail_to("jo@two.example").await);
    let csrf = a.get("/_membergate/account").await.csrf();
    let fields = [
        ("csrf", csrf.as_str()),
        ("current", PASSWORD),
        ("password", "a brand new secret"),
    ];
    assert_eq!(
        a.post("/_membergate/account/password", &fields)
            .await
            .status,
        303
    );

    for link in [expired, cancelled] {
        let page = confirm_email(&mut a, &link).await;
        assert_eq!(page.status, 400, "{link}");
        assert!(page.body.contains("This link is not valid any more."));
    }
    let account = a.get("/_membergate/account").await;
    assert!(
        account
            .body
            .contains("Signed in as <strong>jo@example.com</strong>")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_reset_links_are_single_use_and_die_with_a_password_change() {
    let (gw, _origin) = start(|s| s).await;
    let m = member(&gw, "dan@example.com", "Dan").await;
    let mut other = Browser::new(&gw);
    let seen = gw.mail_count("dan@example.com");
    let asked = other
        .submit(
            "/_membergate/reset",
            "/_membergate/reset",
            &[("email", "DAN@example.com")],
        )
        .await;
    assert_eq!(asked.status, 200);
    let first = Gateway::link_in(&gw.next_mail_to("dan@example.com", seen).await);
    assert!(first.starts_with("/_membergate/reset?token="));
    // A second link within the mail cooldown is held back; a restart forgets
    // the cooldown, not the links or the session.
    let session = m.session_cookie().unwrap();
    let gw = gw.restart().await;
    let mut m = Browser::new(&gw);
    m.cookies.insert("__Host-membergate".into(), session);
    assert_eq!(m.get("/members/").await.status, 200);
    let mut other = Browser::new(&gw);
    other
        .submit(
            "/_membergate/reset",
            "/_membergate/reset",
            &[("email", "dan@example.com")],
        )
        .await;
    let second = Gateway::link_in(&gw.next_mail_to("dan@example.com", seen + 1).await);
    assert_ne!(first, second);
    let token = first.split("token=").nth(1).unwrap().to_owned();
    let page = other.get(&first).await;
    assert_eq!(page.status, 200);
    let csrf = page.csrf();
    let done = other
        .post(
            "/_membergate/reset/confirm",
            &[
                ("csrf", &csrf),
                ("token", &token),
                ("password", "reset password 1"),
            ],
        )
        .await;
    assert_eq!(
        (done.status, done.location()),
        (303, "/_membergate/login?notice=password")
    );
    // Single use, and the password change killed the second link and the old session.
    let again = other
        .post(
            "/_membergate/reset/confirm",
            &[
                ("csrf", &csrf),
                ("token", &token),
                ("password", "reset password 2"),
            ],
        )
        .await;
    assert_eq!(again.status, 400);
    let token2 = second.split("token=").nth(1).unwrap().to_owned();
    let stale = other
        .post(
            "/_membergate/reset/confirm",
            &[
                ("csrf", &csrf),
                ("token", &token2),
                ("password", "reset password 3"),
            ],
        )
        .await;
    assert_eq!(stale.status, 400);
    assert_eq!(m.get("/members/").await.status, 302);
    assert_eq!(
        other
            .login("dan@example.com", "reset password 1")
            .await
            .status,
        303
    );
}

/// Two reset links for one member, confirmed at the same moment with two
/// passwords: both links pass the token check before either password is
/// hashed and written. One password is written; the other link is spent,
/// not answered "password changed" over a password nobody can log in with.
/// "Save the password" pressed twice: the second press finds the link
/// spent, and says that a password just chosen with it is the one to log
/// in with (asking for a new link would be held back by the mail cooldown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_saved_twice_says_to_log_in_with_the_new_password() {
    let (gw, _origin) = start(|s| s).await;
    member(&gw, "oda@example.com", "Oda").await;
    let mut b = Browser::new(&gw);
    let seen = gw.mail_count("oda@example.com");
    let email = [("email", "oda@example.com")];
    b.submit("/_membergate/reset", "/_membergate/reset", &email)
        .await;
    let link = Gateway::link_in(&gw.next_mail_to("oda@example.com", seen).await);
    let page = b.get(&link).await;
    let new_password = "an entirely new passphrase";
    let (csrf, token) = (page.csrf(), page.field("token"));
    let fields = [
        ("csrf", csrf.as_str()),
        ("token", token.as_str()),
        ("password", new_password),
    ];
    let first = b.post("/_membergate/reset/confirm", &fields).await;
    assert_eq!(first.status, 303, "{}", first.body);
    let second = b.post("/_membergate/reset/confirm", &fields).await;
    assert_eq!(second.status, 400);
    assert!(
        second
            .body
            .contains("if you just chose a password with it, log in with that password"),
        "{}",
        second.body
    );
    assert_eq!(b.login("oda@example.com", new_password).await.status, 303);
}

/// A registration sent again before the address was confirmed (a double
/// click, or after the link expired) finds the address taken: the note
/// mailed to it says how to finish, and the page it links to does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_again_before_confirming_mails_how_to_finish() {
    let (gw, _origin) = start(|s| s).await;
    let email = "pia@example.com";
    let mut b = Browser::new(&gw);
    assert_eq!(b.register(email, PASSWORD, "Pia", "T").await.status, 200);
    let verification = gw.mail_to(email).await;
    assert!(verification.contains("/_membergate/verify?token="));
    assert_eq!(b.register(email, PASSWORD, "Pia", "T").await.status, 200);
    let note = gw.next_mail_to(email, 1).await;
    assert!(
        note.contains("Subject: Your email already has an account at main\r\n"),
        "{note}"
    );
    assert!(
        note.contains("If you registered before but did not confirm your address"),
        "{note}"
    );
    assert_eq!(Gateway::link_in(&note), "/_membergate/reset");
    // That page's link confirms the address and sets the password.
    b.submit(
        "/_membergate/reset",
        "/_membergate/reset",
        &[("email", email)],
    )
    .await;
    let link = Gateway::link_in(&gw.next_mail_to(email, 2).await);
    let page = b.get(&link).await;
    let new_password = "an entirely new passphrase";
    let (csrf, token) = (page.csrf(), page.field("token"));
    let fields = [
        ("csrf", csrf.as_str()),
        ("token", token.as_str()),
        ("password", new_password),
    ];
    assert_eq!(
        b.post("/_membergate/reset/confirm", &fields).await.status,
        303
    );
    assert_eq!(b.login(email, new_password).await.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_reset_links_confirmed_at_once_one_sets_the_password() {
    let (gw, _origin) = start(|s| s).await;
    // Two links from one address without two reset requests: an invitation
    // and a reset (both are reset links), which also keeps invitations in
    // the race.
    let (ok, out) = gw.cli(&["member", "add", "jo@example.com", "--invite"], "");
    assert!(ok, "{out}");
    let invitation = Gateway::link_in(&gw.mail_to("jo@example.com").await);
    let asked = Browser::new(&gw)
        .submit(
            "/_membergate/reset",
            "/_membergate/reset",
            &[("email", "jo@example.com")],
        )
        .await;
    assert_eq!(asked.status, 200);
    let reset = Gateway::link_in(&gw.next_mail_to("jo@example.com", 1).await);
    let passwords = ["the invitation's password", "the reset link's password"];
    let mut browsers = Vec::new();
    let mut forms = Vec::new();
    for (link, password) in [&invitation, &reset].into_iter().zip(passwords) {
        let mut b = Browser::new(&gw);
        let page = b.get(link).await;
        browsers.push(b);
        forms.push([
            ("csrf", page.csrf()),
            ("token", page.field("token")),
            ("password", password.to_owned()),
        ]);
    }
    let forms: Vec<_> = forms
        .iter()
        .map(|form| form.each_ref().map(|(k, v)| (*k, v.as_str())))
        .collect();
    let [a, b] = &mut browsers[..] else {
        unreachable!()
    };
    let (first, second) = tokio::join!(
        a.post("/_membergate/reset/confirm", &forms[0]),
        b.post("/_membergate/reset/confirm", &forms[1]),
    );
    let statuses = [first.status, second.status];
    let (set, spent) = match statuses {
        [303, 400] => (passwords[0], &second),
        [400, 303] => (passwords[1], &first),
        _ => panic!("both links answered {statuses:?}"),
    };
    assert!(spent.body.contains("Link not valid"), "{}", spent.body);
    let mut c = Browser::new(&gw);
    assert_eq!(c.login("jo@example.com", set).await.status, 303);
    let lost = passwords.iter().find(|p| **p != set).unwrap();
    assert_eq!(c.login("jo@example.com", lost).await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_duplicate_cookies_mean_anonymous_never_an_error() {
    let (gw, _origin) = start(|s| s).await;
    let b = member(&gw, "erin@example.com", "Erin").await;
    let good = b.session_cookie().unwrap();
    let mut flipped = good.clone().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let variants = [
        flipped,
        good[..40].to_owned(),
        "A".repeat(4096),
        String::new(),
        "0".repeat(64),
        "%00".into(),
    ];
    for value in variants {
        let mut x = Browser::new(&gw);
        x.cookies.insert("__Host-membergate".into(), value.clone());
        let page = x.get("/members/").await;
        assert_eq!(page.status, 302, "{value:?}");
        // D2: a bad cookie is cleared, not left to be sent again.
        assert!(
            page.set_cookies()
                .iter()
                .any(|c| c.starts_with("__Host-membergate=;") && c.contains("Max-Age=0")),
            "{value:?}: {:?}",
            page.set_cookies()
        );
        let mut y = Browser::new(&gw);
        y.cookies.insert("__Host-membergate".into(), value.clone());
        let public = y.get("/").await;
        assert_eq!(public.status, 200, "{value:?}");
    }
    // Ids are random and long: two logins of one member share nothing.
    let again = member_login(&gw, "erin@example.com").await;
    assert_ne!(again, good);
    assert!(good.len() >= 43 && again.len() >= 43, "{good} {again}");
    // Two session cookies: refused rather than guessed (D3, B6).
    let mut x = Browser::new(&gw);
    let page = x
        .get_with(
            "/members/",
            &[(
                "cookie",
                &format!("__Host-membergate={good}; __Host-membergate=x"),
            )],
        )
        .await;
    assert_eq!(page.status, 400);
    // The genuine cookie still works.
    let mut y = Browser::new(&gw);
    y.cookies.insert("__Host-membergate".into(), good);
    assert_eq!(y.get("/members/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_refuse_cross_site_posts_and_missing_tokens() {
    let (gw, _origin) = start(|s| s).await;
    let mut victim = member(&gw, "fay@example.com", "Fay").await;
    let csrf = victim.get("/_membergate/account").await.csrf();
    let fields = [("csrf", csrf.as_str())];
    let cases: [&[(&str, &str)]; 4] = [
        &[("origin", "https://evil.com")],
        &[("origin", "null")],
        &[],
        &[("sec-fetch-site", "cross-site")],
    ];
    for headers in cases {
        let page = victim
            .post_with("/_membergate/logout", &fields, headers)
            .await;
        assert_eq!(page.status, 403, "{headers:?}");
        // Said as it is: the token was fine, where the form came from was not.
        assert!(
            page.body.contains("not sent from this site"),
            "{}",
            page.body
        );
    }
    // Right origin, no or wrong token.
    let page = victim.post("/_membergate/logout", &[]).await;
    assert_eq!(page.status, 403);
    assert!(page.body.contains("Form expired"), "{}", page.body);
    assert_eq!(
        victim
            .post("/_membergate/logout", &[("csrf", "forged")])
            .await
            .status,
        403
    );
    // Logout is POST only.
    assert_eq!(victim.get("/_membergate/logout").await.status, 405);
    assert_eq!(
        victim.get("/members/").await.status,
        200,
        "the victim is still logged in"
    );
    // Login CSRF: a token from the attacker's own pre-session does not work in the victim's browser.
    let mut attacker = Browser::new(&gw);
    let attacker_token = attacker.get("/_membergate/login").await.csrf();
    let mut fresh = Browser::new(&gw);
    fresh.get("/_membergate/login").await;
    let forced = fresh
        .post(
            "/_membergate/login",
            &[
                ("csrf", &attacker_token),
                ("email", "fay@example.com"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(forced.status, 403);
}

/// A member's own forms take only the token bound to the session: the
/// log-in form's token, bound to the pre-session cookie so that it outlives
/// a log-in in another tab, does not log the member out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_own_forms_refuse_the_pre_session_token() {
    let (gw, _origin) = start(|s| s).await;
    let mut b = member(&gw, "gil@example.com", "Gil").await;
    let login = b.get("/_membergate/login").await;
    // The page's second form, log in again, carries the pre-session token.
    let marker = "name=\"csrf\" value=\"";
    let anyones = login.body.rsplit(marker).next().unwrap();
    let anyones = &anyones[..anyones.find('"').unwrap()];
    assert_ne!(anyones, login.csrf(), "{}", login.body);
    let page = b.post("/_membergate/logout", &[("csrf", anyones)]).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("Form expired"), "{}", page.body);
    assert_eq!(b.get("/members/").await.status, 200, "still logged in");
}

/// Posts the log-in form with `token`, as a tab opened earlier would.
async fn log_in(b: &mut Browser, token: &str, email: &str, to: &str) -> support::browser::Page {
    let fields = [
        ("csrf", token),
        ("email", email),
        ("password", PASSWORD),
        ("return_to", to),
    ];
    b.post("/_membergate/login", &fields).await
}

/// "Log out" from a browser whose session is already over (ended from
/// another device, idled out, or a second click) logs out: a 303 that clears
/// the cookie and resets the chat, not "Form expired". Its token is bound to
/// the dead session, so none is asked for then; the origin still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_out_works_when_the_session_is_already_over() {
    let (gw, _origin) = start(|s| s).await;
    let mut b = member(&gw, "lia@example.com", "Lia").await;
    let session = b.session_cookie().unwrap();
    let token = b.get("/_membergate/account").await.csrf();
    let fields = [("csrf", token.as_str()), ("return_to", "/blog/")];
    let logged_out = |page: &support::browser::Page| {
        let cookies = page.set_cookies();
        page.status == 303
            && page.location() == "/blog/"
            && cookies
                .iter()
                .any(|c| c.starts_with("__Host-membergate=;") && c.contains("Max-Age=0"))
            && cookies
                .iter()
                .any(|c| c.starts_with("__Host-membergate-chat-reset=2"))
    };
    // A double click: the second post carries the cookie the first ended.
    let first = b.post("/_membergate/logout", &fields).await;
    assert!(logged_out(&first), "{:?}", first.set_cookies());
    b.cookies.insert("__Host-membergate".into(), session);
    let second = b.post("/_membergate/logout", &fields).await;
    assert!(
        logged_out(&second),
        "{} {:?}",
        second.status,
        second.set_cookies()
    );
    // Nor does a browser with no session cookie left need a token.
    let third = b
        .post("/_membergate/logout", &[("return_to", "/blog/")])
        .await;
    assert_eq!((third.status, third.location()), (303, "/blog/"));

    // Ended from elsewhere while the account page was open.
    assert_eq!(b.login("lia@example.com", PASSWORD).await.status, 303);
    let token = b.get("/_membergate/account").await.csrf();
    let (ok, out) = gw.cli(&["session", "revoke", "--member", "lia@example.com"], "");
    assert!(ok, "{out}");
    let mut probe = Browser::new(&gw);
    probe.cookies = b.cookies.clone();
    eventually(&mut probe, "/members/", 302).await;
    let fields = [("csrf", token.as_str()), ("return_to", "/blog/")];
    let out = b.post("/_membergate/logout", &fields).await;
    assert!(logged_out(&out), "{} {}", out.status, out.body);

    // Without a session a cross-site post is still refused, and sets nothing.
    for headers in [&[("origin", "https://evil.com")][..], &[]] {
        let page = b
            .post_with("/_membergate/logout", &[("csrf", "x")], headers)
            .await;
        assert_eq!(page.status, 403, "{headers:?}");
        assert!(page.set_cookies().is_empty(), "{:?}", page.set_cookies());
    }
}

/// Two tabs opened on the log-in page (say from two links in a newsletter):
/// the member logs in in the first, then in the second, whose page was made
/// before the session existed. Its token, bound to the browser's
/// pre-session cookie, still logs in; a logged-in member's own forms (the
/// account page, log-out) still take only the session's tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_tab_logs_in_after_the_first_did() {
    let (gw, _origin) = start(|s| s).await;
    member(&gw, "max@example.com", "Max").await;
    member(&gw, "ned@example.com", "Ned").await;
    let mut b = Browser::new(&gw);
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(
            b.get("/_membergate/login?return_to=%2Fmembers%2F")
                .await
                .csrf(),
        );
    }
    let first = log_in(&mut b, &tokens[0], "max@example.com", "/members/").await;
    assert_eq!((first.status, first.location()), (303, "/members/"));
    let second = log_in(&mut b, &tokens[1], "max@example.com", "/members/x").await;
    assert_eq!(
        (second.status, second.location()),
        (303, "/members/x"),
        "{}",
        second.body
    );
    assert_eq!(b.get("/members/").await.status, 200);
    // The log-in page says who is logged in, and offers to log out.
    let page = b.get("/_membergate/login").await;
    assert!(
        page.body
            .contains("You are logged in as <strong>max@example.com</strong>")
    );
    assert!(page.body.contains("action=\"/_membergate/logout\""));
    // A third tab logs in as someone else.
    let third = log_in(&mut b, &tokens[2], "ned@example.com", "/members/").await;
    assert_eq!(third.status, 303, "{}", third.body);
    let account = b.get("/_membergate/account").await;
    assert!(account.body.contains("ned@example.com"), "{}", account.body);
    assert!(account.body.contains("<a href=\"/\">Back to main</a>"));

    // The member's own forms do not take a pre-session token.
    let stale = tokens[0].as_str();
    let name = [
        ("csrf", stale),
        ("first_name", "Mallory"),
        ("last_name", "M"),
    ];
    let refused = b.post("/_membergate/account/name", &name).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let refused = b.post("/_membergate/logout", &[("csrf", stale)]).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let account = b.get("/_membergate/account").await;
    assert!(account.body.contains("Ned") && !account.body.contains("Mallory"));
    // A token from another browser's pre-session is refused as before.
    let stranger = Browser::new(&gw).get("/_membergate/login").await.csrf();
    let forced = log_in(&mut b, &stranger, "max@example.com", "/").await;
    assert_eq!(forced.status, 403, "{}", forced.body);
}

/// D7: every form, not just logout, refuses a cross-site post even with a
/// valid token, and the refused post changes nothing.
/// A sidecar behind a TLS-terminating ingress (`http_mode = "serve"`): the
/// gateway sees plain HTTP, the browser an https page, and says so in
/// `Origin`. Its forms work; a cross-site one still does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_work_behind_a_tls_terminating_ingress() {
    let (gw, _origin) = start(|s| s).await;
    member(&gw, "ivy@example.com", "Ivy").await;
    let mut b = Browser::behind_ingress(&gw);
    let login = b.login_to("ivy@example.com", PASSWORD, "/members/").await;
    assert_eq!((login.status, login.location()), (303, "/members/"));
    assert_eq!(b.get("/members/").await.status, 200);
    let csrf = b.get("/_membergate/account").await.csrf();
    let fields = [("csrf", csrf.as_str())];
    for origin in ["https://evil.com", "https://127.0.0.1.evil.com", "null"] {
        let page = b
            .post_with("/_membergate/logout", &fields, &[("origin", origin)])
            .await;
        assert_eq!(page.status, 403, "{origin}");
    }
    assert_eq!(b.get("/members/").await.status, 200);
    assert_eq!(b.logout().await.status, 303);
    assert_eq!(b.get("/members/").await.status, 302);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_refuses_cross_site_posts_and_changes_nothing() {
    let (gw, _origin) = start(|s| s.members(GENEROUS_LIMITS)).await;
    let mut victim = member(&gw, "gia@example.com", "Gia").await;
    let session = victim.session_cookie().unwrap();
    let csrf = victim.get("/_membergate/account").await.csrf();
    let new_password = "an entirely new passphrase";
    let forms: [(&str, Vec<(&str, &str)>); 7] = [
        (
            "/_membergate/account/password",
            vec![("current", PASSWORD), ("password", new_password)],
        ),
        (
            "/_membergate/account/email",
            vec![("email", "mallory@example.com"), ("current", PASSWORD)],
        ),
        (
            "/_membergate/account/name",
            vec![("first_name", "Mallory"), ("last_name", "M")],
        ),
        ("/_membergate/logout", vec![]),
        ("/_membergate/reset", vec![("email", "gia@example.com")]),
        (
            "/_membergate/register",
            vec![
                ("email", "planted@example.com"),
                ("password", PASSWORD),
                ("first_name", "P"),
                ("last_name", "P"),
            ],
        ),
        (
            "/_membergate/login",
            vec![("email", "gia@example.com"), ("password", PASSWORD)],
        ),
    ];
    let cross_site: [&[(&str, &str)]; 3] = [
        &[("origin", "https://evil.com")],
        &[],
        &[("sec-fetch-site", "cross-site")],
    ];
    for (action, fields) in &forms {
        for headers in cross_site {
            let mut all = fields.clone();
            all.push(("csrf", &csrf));
            let page = victim.post_with(action, &all, headers).await;
            assert_eq!(page.status, 403, "{action} {headers:?}");
            assert!(
                page.set_cookies().is_empty(),
                "{action} {headers:?} set a cookie"
            );
        }
    }
    // Nothing happened: the session lives, the password and name are the
    // old ones, no reset mail went out, nobody was registered.
    assert_eq!(victim.session_cookie().unwrap(), session);
    let account = victim.get("/_membergate/account").await;
    assert_eq!(account.status, 200);
    assert!(account.body.contains("Gia") && !account.body.contains("Mallory"));
    let mut again = Browser::new(&gw);
    assert_eq!(again.login("gia@example.com", PASSWORD).await.status, 303);
    assert_eq!(
        gw.mail_count("gia@example.com"),
        1,
        "only the verification mail"
    );
    assert_eq!(gw.mail_count("planted@example.com"), 0);
    assert_eq!(gw.mail_count("mallory@example.com"), 0);
}

/// B6: two `Cookie` fields that both carry the session, in either order and
/// over either protocol, are refused like two in one field; a session cookie
/// beside other cookies in its own field (HTTP/2 sends one field per cookie)
/// is fine, and the origin gets only the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cookie_fields_with_a_session_are_refused_in_either_order() {
    let (gw, origin) = start(|s| s).await;
    let b = member(&gw, "hal@example.com", "Hal").await;
    let good = format!("__Host-membergate={}", b.session_cookie().unwrap());
    let before = origin.requests().len();
    let h1 = gw.client_builder().http1_only().build().unwrap();
    let h2 = gw.client();
    for (protocol, client) in [("HTTP/1.1", &h1), ("HTTP/2", &h2)] {
        for (first, second) in [
            (&*good, "__Host-membergate=x"),
            ("__Host-membergate=x", &*good),
        ] {
            let response = client
                .get(gw.https_url("/members/"))
                .header("cookie", first)
                .header("cookie", second)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400, "{protocol}: {first} / {second}");
        }
        let response = client
            .get(gw.https_url("/members/"))
            .header("cookie", "theme=dark")
            .header("cookie", &good)
            .header("cookie", "lang=en")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{protocol}");
    }
    let seen = origin.requests();
    assert_eq!(
        seen.len(),
        before + 2,
        "only the two good requests reached the origin"
    );
    for request in &seen[before..] {
        assert_eq!(request.header("cookie"), Some("theme=dark; lang=en"));
        assert_eq!(request.header("x-member-email"), Some("hal@example.com"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_to_only_goes_to_paths_on_this_site() {
    let (gw, _origin) = start(|s| s.members(GENEROUS_LIMITS)).await;
    member(&gw, "gus@example.com", "Gus").await;
    let payloads = [
        "//evil.com",
        "/\\evil.com",
        "/\t/evil.com",
        "/./\\evil.com",
        "https:evil.com",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "data:text/html,x",
        "https://gw.evil.com",
        "https://gw@evil.com",
        "\r\nSet-Cookie:x=1",
        "evil.com",
    ];
    for payload in payloads {
        let mut b = Browser::new(&gw);
        let page = b.login_to("gus@example.com", PASSWORD, payload).await;
        assert_eq!((page.status, page.location()), (303, "/"), "{payload:?}");
        // Logout and the register form take return_to through the same check.
        let out = b
            .submit(
                "/_membergate/account",
                "/_membergate/logout",
                &[("return_to", payload)],
            )
            .await;
        assert_eq!(
            (out.status, out.location()),
            (303, "/"),
            "logout {payload:?}"
        );
        let form = Browser::new(&gw)
            .get(&format!(
                "/_membergate/register?return_to={}",
                query_encode(payload)
            ))
            .await;
        assert!(
            form.body.contains("name=\"return_to\" value=\"&#x2f;\""),
            "register {payload:?}: {}",
            form.body
        );
    }
    // Percent-encoded in the query of the login page, decoded once: still refused.
    for query in [
        "/%2f%2fevil.com",
        "/%09/evil.com",
        "/%5cevil.com",
        "JaVaScRiPt%3aalert(1)",
        "%0d%0aSet-Cookie:x=1",
        "/%E2%80%A8/evil.com",
        "%2F%2Fevil.com",
    ] {
        let mut b = Browser::new(&gw);
        let page = b
            .get(&format!("/_membergate/login?return_to={query}"))
            .await;
        assert!(
            page.body.contains("name=\"return_to\" value=\"&#x2f;\""),
            "{query}: {}",
            page.body
        );
        // Sent on as it stands (decoded twice by nobody): a path on this
        // site, wherever a browser resolves it.
        let page = b.login_to("gus@example.com", PASSWORD, query).await;
        assert_eq!(page.status, 303, "{query}");
        let base = url::Url::parse(&gw.https_url("/_membergate/login")).unwrap();
        let landed = base.join(page.location()).unwrap();
        assert_eq!(
            landed.origin(),
            base.origin(),
            "{query} -> {}",
            page.location()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_do_not_reveal_whether_an_email_is_registered() {
    let (gw, _origin) = start(|s| s).await;
    member(&gw, "hana@example.com", "Hana").await;
    let mut a = Browser::new(&gw);
    let mut b = Browser::new(&gw);
    let taken = a.register("HANA@example.com", PASSWORD, "X", "Y").await;
    let fresh = b.register("nobody@example.com", PASSWORD, "X", "Y").await;
    assert_eq!(
        (taken.status, taken.body.clone()),
        (fresh.status, fresh.body.clone())
    );
    // The real owner hears about the attempt; nobody else learns anything.
    assert!(
        gw.mail_to("hana@example.com")
            .await
            .contains("already has one")
    );
    let known = a
        .submit(
            "/_membergate/reset",
            "/_membergate/reset",
            &[("email", "hana@example.com")],
        )
        .await;
    let unknown = b
        .submit(
            "/_membergate/reset",
            "/_membergate/reset",
            &[("email", "ghost@example.com")],
        )
        .await;
    assert_eq!(
        (known.status, known.body.clone()),
        (unknown.status, unknown.body.clone())
    );
    let wrong = a.login("hana@example.com", "not the password").await;
    let missing = b.login("ghost@example.com", "not the password").await;
    assert_eq!(wrong.status, missing.status);
    let mask = |page: &support::browser::Page, email: &str| {
        page.body.replace(&page.csrf(), "T").replace(email, "E")
    };
    assert_eq!(
        mask(&wrong, "hana@example.com"),
        mask(&missing, "ghost@example.com")
    );
}

/// Anyone may ask for mail to any address. Asked again and again, in any
/// spelling, the gateway mails the address one reset link and one "someone
/// tried to register" note per cooldown; the answers do not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_requests_mail_an_address_once_per_cooldown() {
    let (gw, _origin) = start(|s| s).await;
    member(&gw, "kai@example.com", "Kai").await;
    member(&gw, "lou@example.com", "Lou").await;
    let seen = gw.mail_count("kai@example.com");
    let mut b = Browser::new(&gw);
    let mut resets = Vec::new();
    let mut registrations = Vec::new();
    for email in ["kai@example.com", "KAI@example.com", "kai@example.com."] {
        let page = b
            .submit(
                "/_membergate/reset",
                "/_membergate/reset",
                &[("email", email)],
            )
            .await;
        resets.push((page.status, page.body));
        let page = b.register(email, PASSWORD, "X", "Y").await;
        registrations.push((page.status, page.body));
    }
    assert_eq!(resets[0].0, 200);
    assert_eq!(registrations[0].0, 200);
    assert!(resets.iter().all(|r| *r == resets[0]), "{resets:?}");
    assert!(
        registrations.iter().all(|r| *r == registrations[0]),
        "{registrations:?}"
    );
    // Another address is not held back by this one's.
    let lou = gw.mail_count("lou@example.com");
    b.submit(
        "/_membergate/reset",
        "/_membergate/reset",
        &[("email", "lou@example.com")],
    )
    .await;
    assert!(
        gw.next_mail_to("lou@example.com", lou)
            .await
            .contains("new password")
    );
    // Mail goes out after the answers, in tasks of their own: wait until
    // the two held back of each kind are counted, then count the mail.
    let held_back = |text: &str, kind: &str| {
        let line = format!("membergate_mails_held_back_total{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .map_or(0.0, |v| v.parse::<f64>().unwrap())
    };
    let mut counted = (0.0, 0.0);
    for _ in 0..100 {
        let text = gw.metrics().await;
        counted = (
            held_back(&text, "reset"),
            held_back(&text, "already_registered"),
        );
        if counted == (2.0, 2.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.next_mail_to("kai@example.com", seen + 1).await;
    assert_eq!(
        gw.mail_count("kai@example.com"),
        seen + 2,
        "held back: {counted:?}"
    );
    assert_eq!(counted, (2.0, 2.0));
    // A reset held back stores no token either: one live link per address.
    let mut db = support::store_connection(&gw.dir.path().join("data/membergate.db")).await;
    let tokens: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tokens JOIN members ON members.id = tokens.member_id \
         WHERE purpose = 'reset' AND email = 'kai@example.com'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(tokens, 1);
}

/// Registrations and reset requests have attempt limits of their own (the
/// login's are tested below): with `max_attempts_per_ip = 3`, the fourth of
/// each from one address, each naming another account, gets 429, and one
/// kind's count does not spend the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_and_reset_requests_are_rate_limited_per_address() {
    let (gw, _origin) = start(|s| s.members("max_attempts_per_ip = 3")).await;
    let mut b = Browser::new(&gw);
    let mut registered = Vec::new();
    for i in 0..4 {
        let page = b
            .register(&format!("new{i}@example.com"), PASSWORD, "", "")
            .await;
        registered.push(page.status);
    }
    assert_eq!(registered, [200, 200, 200, 429]);
    let mut reset = Vec::new();
    for i in 0..4 {
        let page = b
            .submit(
                "/_membergate/reset",
                "/_membergate/reset",
                &[("email", &format!("someone{i}@example.com"))],
            )
            .await;
        reset.push(page.status);
    }
    assert_eq!(reset, [200, 200, 200, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_attempts_are_rate_limited_per_account_in_any_spelling() {
    let (gw, _origin) = start(|s| s).await;
    member(&gw, "ivan@example.com", "Ivan").await;
    let spellings = [
        "ivan@example.com",
        "ivan@EXAMPLE.com",
        " ivan@example.com ",
        "ivan@example.com.",
    ];
    let mut limited = None;
    for i in 0..14 {
        let mut b = Browser::new(&gw);
        let page = b
            .login(spellings[i % spellings.len()], "wrong password!")
            .await;
        if page.status == 429 {
            limited = Some((i, page));
            break;
        }
        assert_eq!(page.status, 401);
    }
    let (attempt, page) = limited.expect("never rate limited");
    assert!(attempt >= 9, "limited too early, at attempt {attempt}");
    assert_eq!(page.headers["retry-after"], "60");
}

/// E1: the account-wide limit holds when every guess comes from another
/// address, and the address limit holds when every guess names another
/// account, even with forwarding headers the gateway does not trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_limits_hold_across_addresses_and_across_accounts() {
    // The account-wide ceiling lowered to the per-(account, IP) default, so
    // 14 addresses are enough to reach it.
    let (gw, _origin) = start(|s| s.members("max_attempts_per_account = 10")).await;
    member(&gw, "jon@example.com", "Jon").await;
    let mut limited = None;
    for i in 0..14u8 {
        let page = browser_from(&gw, 10 + i)
            .login("jon@example.com", "wrong password!")
            .await;
        if page.status == 429 {
            limited = Some(i);
            break;
        }
        assert_eq!(page.status, 401, "from 127.0.0.{}", 10 + i);
    }
    let attempt = limited.expect("guesses from many addresses were never limited");
    assert!(attempt >= 9, "limited too early, at attempt {attempt}");

    // One address, a new account each time, a new X-Forwarded-For each time.
    let mut limited = None;
    for i in 0..40 {
        let mut b = Browser::new(&gw);
        let csrf = b.get("/_membergate/login").await.csrf();
        let email = format!("ghost{i}@example.com");
        let forwarded = format!("10.0.0.{i}");
        let origin = b.origin.clone();
        let page = b
            .post_with(
                "/_membergate/login",
                &[("csrf", &csrf), ("email", &email), ("password", "guess")],
                &[
                    ("origin", &origin),
                    ("x-forwarded-for", &forwarded),
                    ("x-real-ip", &forwarded),
                ],
            )
            .await;
        if page.status == 429 {
            limited = Some(i);
            break;
        }
        assert_eq!(page.status, 401, "{email}");
    }
    let attempt = limited.expect("guesses at many accounts from one address were never limited");
    assert!(
        (29..=31).contains(&attempt),
        "limited at attempt {attempt}, not at the default 30"
    );
}

/// Wrong logins as a flood sends them from visitors behind a trusted proxy:
/// one browser's form token and cookies, a connection per login in flight
/// (HTTP/1.1), each visitor named in `X-Forwarded-For`.
#[derive(Clone)]
struct FloodLogins {
    client: reqwest::Client,
    url: String,
    cookie: String,
    csrf: String,
    origin: String,
}

impl FloodLogins {
    async fn new(gw: &Gateway) -> FloodLogins {
        let mut shared = Browser::new(gw);
        let csrf = shared.get("/_membergate/login").await.csrf();
        FloodLogins {
            client: gw.client_builder().http1_only().build().unwrap(),
            url: gw.https_url("/_membergate/login"),
            cookie: shared.cookie_header().unwrap(),
            csrf,
            origin: shared.origin.clone(),
        }
    }

    fn request(&self, forwarded: &str, email: &str) -> reqwest::RequestBuilder {
        self.client
            .post(&self.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", &self.cookie)
            .header("origin", &self.origin)
            .header("x-forwarded-for", forwarded)
            .body(format!(
                "csrf={}&email={}&password=guess",
                self.csrf,
                email.replace('@', "%40")
            ))
    }
}

/// Password hashing is shared by every visitor: logins from many addresses,
/// each within its own limits, wait for the same few hashing slots. Past
/// about a second's work in the queue a login is refused at once with 503
/// and `Retry-After`, rather than answered after minutes of others' hashing;
/// once the flood has drained, the member logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_from_many_addresses_is_shed_not_queued() {
    let (gw, _origin) = start(|s| {
        s.server("trusted_proxies = [\"127.0.0.0/8\"]")
            .limits("max_connections_per_ip = 0")
    })
    .await;
    member(&gw, "mia@example.com", "Mia").await;
    // More than the gateway's queue holds, as it sizes it on this machine.
    let slots = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
    let flood = 2 * slots * (membergate::members::password::WAITING_PER_SLOT + 1) + 64;
    let logins = FloodLogins::new(&gw).await;
    let mut statuses = std::collections::BTreeMap::new();
    // A machine busy with other work may take the flood in slowly enough to
    // keep up: then another, from other visitors, until one is shed.
    for round in 0..5 {
        let mut answers = Vec::new();
        for i in 0..flood {
            // 20 logins per visitor, under the 30 a minute each may make.
            let request = logins.request(
                &format!("10.{round}.{}.{}", i / 20 / 250, i / 20 % 250 + 1),
                &format!("nobody{round}x{i}@example.com"),
            );
            answers.push(tokio::spawn(async move {
                let response = request.send().await.unwrap();
                let retry_after = response.headers().get("retry-after").cloned();
                (response.status().as_u16(), retry_after)
            }));
        }
        for answer in answers {
            let (status, retry_after) = answer.await.unwrap();
            if status == 503 {
                assert_eq!(retry_after.unwrap(), "5");
            }
            *statuses.entry(status).or_insert(0) += 1;
        }
        if statuses.contains_key(&503) {
            break;
        }
    }
    assert!(
        statuses.contains_key(&503),
        "no login was shed: {statuses:?}"
    );
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        [401, 503],
        "{statuses:?}"
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(&format!(
            "membergate_logins_total{{result=\"busy\"}} {}",
            statuses[&503]
        )),
        "{metrics}"
    );
    let mut mia = Browser::new(&gw);
    assert_eq!(mia.login("mia@example.com", PASSWORD).await.status, 303);
    // The places of the logins refused were given back: a burst larger than
    // the hashing slots, far smaller than the queue, waits its turn.
    let burst: Vec<_> = (0..6 * slots)
        .map(|i| {
            let request = logins.request(
                &format!("203.0.113.{}", i + 1),
                &format!("later{i}@example.com"),
            );
            tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
        })
        .collect();
    for answer in burst {
        assert_eq!(
            answer.await.unwrap(),
            401,
            "a login was shed with the queue all but empty"
        );
    }
}

/// Behind a trusted ingress every visitor arrives from its address: limits
/// key on the visitor's address from `X-Forwarded-For`, so one guesser does
/// not spend everyone's budget, and a guesser who prepends addresses of
/// their own to the header still meets their limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_limits_follow_the_visitor_not_the_proxy() {
    let (gw, _origin) = start(|s| s.server("trusted_proxies = [\"127.0.0.0/8\"]")).await;
    member(&gw, "lea@example.com", "Lea").await;
    let login = |email: String, password: &'static str, forwarded: String| {
        let mut b = Browser::new(&gw);
        async move {
            let csrf = b.get("/_membergate/login").await.csrf();
            let origin = b.origin.clone();
            b.post_with(
                "/_membergate/login",
                &[("csrf", &csrf), ("email", &email), ("password", password)],
                &[("origin", &origin), ("x-forwarded-for", &forwarded)],
            )
            .await
            .status
        }
    };
    let mut limited = None;
    for i in 0..40 {
        // What the ingress sends: whatever the client claimed, then the
        // client's own address.
        let forwarded = format!("10.9.{i}.1, 198.51.100.7");
        let status = login(format!("ghost{i}@example.com"), "guess", forwarded).await;
        if status == 429 {
            limited = Some(i);
            break;
        }
        assert_eq!(status, 401);
    }
    let attempt = limited.expect("one visitor behind the proxy was never limited");
    assert!((29..=31).contains(&attempt), "limited at attempt {attempt}");
    // Another visitor through the same proxy is not held.
    let other = login("lea@example.com".into(), PASSWORD, "198.51.100.8".into()).await;
    assert_eq!(other, 303);
    let held = login("lea@example.com".into(), PASSWORD, "198.51.100.7".into()).await;
    assert_eq!(held, 429);

    // An IPv6 visitor is counted by its /64: a new address from it each
    // time is still the same visitor.
    let mut limited = None;
    for i in 1..40 {
        let forwarded = format!("2001:db8:7:7::{i:x}");
        let status = login(format!("ghost6-{i}@example.com"), "guess", forwarded).await;
        if status == 429 {
            limited = Some(i);
            break;
        }
        assert_eq!(status, 401);
    }
    let attempt = limited.expect("addresses of one /64 were never limited");
    assert!((30..=32).contains(&attempt), "limited at attempt {attempt}");
    let other = login("lea@example.com".into(), PASSWORD, "2001:db8:7:8::1".into()).await;
    assert_eq!(other, 303, "another /64 is another visitor");
}

/// E1, lockout as a denial of service: guesses at an account from one
/// address meet the per-(account, IP) limit, and the account's owner, at
/// another address, still logs in while the guesser is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_from_one_address_does_not_lock_the_owner_out() {
    let (gw, _origin) = start(|s| s).await;
    member(&gw, "kim@example.com", "Kim").await;
    let from = |last: u8| browser_from(&gw, last);
    let mut limited = None;
    for i in 0..14 {
        let page = from(66).login("kim@example.com", "wrong password!").await;
        if page.status == 429 {
            limited = Some(i);
            break;
        }
        assert_eq!(page.status, 401);
    }
    let attempt = limited.expect("guesses from one address were never limited");
    assert!(
        (9..=10).contains(&attempt),
        "limited at attempt {attempt}, not at the default 10"
    );
    let mut owner = from(77);
    let login = owner.login("kim@example.com", PASSWORD).await;
    assert_eq!(
        login.status, 303,
        "the owner was locked out: {}",
        login.body
    );
    assert!(owner.session_cookie().is_some());
    let held = from(66).login("kim@example.com", PASSWORD).await;
    assert_eq!(
        held.status, 429,
        "the guesser's address is held for the minute"
    );
}

/// E1, guesses from many addresses: they reach the account-wide ceiling,
/// which then holds a browser that never logged in to the account, but not
/// the owner's, which carries the device cookie of an earlier login. The
/// cookie never reaches the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_logged_in_before_is_outside_the_account_wide_limit() {
    let (gw, origin) = start(|s| s.members("max_attempts_per_account = 4")).await;
    let mut owner = member(&gw, "lea@example.com", "Lea").await;
    let device = "__Host-membergate-device";
    assert!(owner.cookies.contains_key(device), "{:?}", owner.cookies);
    assert_eq!(owner.logout().await.status, 303);
    let from = |last: u8| browser_from(&gw, last);
    let mut limited = false;
    for i in 0..8 {
        let page = from(100 + i)
            .login("lea@example.com", "wrong password!")
            .await;
        if page.status == 429 {
            limited = true;
            break;
        }
        assert_eq!(page.status, 401);
    }
    assert!(
        limited,
        "guesses from eight addresses never met the ceiling"
    );
    let stranger = from(120).login("lea@example.com", PASSWORD).await;
    assert_eq!(
        stranger.status, 429,
        "a browser unknown to the account passed"
    );
    // Resets asked for from many addresses meet the ceiling too, but not
    // the owner's own browser: they can still ask for a link.
    let reset = |mut b: Browser| async move {
        b.submit(
            "/_membergate/reset",
            "/_membergate/reset",
            &[("email", "lea@example.com")],
        )
        .await
        .status
    };
    for i in 0..4 {
        assert_eq!(reset(from(130 + i)).await, 200);
    }
    assert_eq!(
        reset(from(140)).await,
        429,
        "a stranger's reset passed the ceiling"
    );
    let mut known = Browser::new(&gw);
    known
        .cookies
        .insert(device.into(), owner.cookies[device].clone());
    assert_eq!(reset(known).await, 200, "the owner's browser was held");
    let login = owner.login("lea@example.com", PASSWORD).await;
    assert_eq!(
        login.status, 303,
        "the owner was locked out: {}",
        login.body
    );
    // Another account's device cookie, or a forged one, is no pass.
    let max = member(&gw, "max@example.com", "Max").await;
    for value in [
        max.cookies[device].clone(),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
    ] {
        let mut other = from(121);
        other.cookies.insert(device.into(), value);
        let page = other.login("lea@example.com", PASSWORD).await;
        assert_eq!(page.status, 429, "{:?} passed", other.cookies);
    }
    owner.get("/members/x").await;
    let sent = origin
        .requests()
        .last()
        .unwrap()
        .header("cookie")
        .map(str::to_owned);
    assert!(
        !sent.as_deref().unwrap_or("").contains("device"),
        "the origin saw {sent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_forge_identity_and_names_cannot_inject_headers() {
    let (gw, origin) = start(|s| s).await;
    let mut bob = member(&gw, "bob@example.com", "Zoë").await;
    bob.get_with(
        "/members/",
        &[
            ("x-member-email", "alice@example.com"),
            ("x-member-groups", "admin"),
            ("x_member_id", "1"),
        ],
    )
    .await;
    let seen = origin.requests().pop().unwrap();
    assert_eq!(seen.all("x-member-email"), ["bob@example.com"]);
    assert_eq!(seen.all("x-member-groups"), [""]);
    assert_eq!(seen.header("x_member_id"), None);
    assert_eq!(
        seen.header("x-member-name"),
        Some("UTF-8''Zo%C3%AB%20Tester")
    );
    // A name with control characters is refused at registration (B5).
    let mut eve = Browser::new(&gw);
    let page = eve
        .register(
            "eve@example.com",
            PASSWORD,
            "Eve\r\nX-Member-Groups: admin",
            "",
        )
        .await;
    assert_eq!(page.status, 422);
    assert_eq!(gw.mail_count("eve@example.com"), 0);
    // Nor can a value that already looks encoded (RFC 8187 reads the
    // charset in any case, with a language): it is encoded again, so it
    // decodes to exactly what the member registered.
    let email = "utf-8''admin%40corp.example@example.org";
    let mut mal = Browser::new(&gw);
    let page = mal
        .register(email, PASSWORD, "utf-8'en'Mal%0D%0AX", "Tester")
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    // The outbox names its files with `_` for such characters.
    let mail = gw.mail_to("utf_8__admin_40corp.example@example.org").await;
    assert_eq!(
        mal.confirm_address(&Gateway::link_in(&mail)).await.status,
        303
    );
    assert_eq!(mal.login(email, PASSWORD).await.status, 303);
    mal.get("/members/").await;
    let seen = origin.requests().pop().unwrap();
    assert_eq!(
        seen.header("x-member-email"),
        Some("UTF-8''utf-8%27%27admin%2540corp.example%40example.org")
    );
    assert_eq!(
        seen.header("x-member-name"),
        Some("UTF-8''utf-8%27en%27Mal%250D%250AX%20Tester")
    );
    // Anonymous requests carry no identity at all (B1).
    let mut anon = Browser::new(&gw);
    anon.get_with("/blog/", &[("x-member-email", "admin@example.com")])
        .await;
    assert!(
        origin
            .requests()
            .pop()
            .unwrap()
            .under_prefix("x-member-")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_never_receive_the_gateway_cookies() {
    let (gw, origin) = start(|s| s).await;
    let mut ada = member(&gw, "ada@example.com", "Ada").await;
    let session = ada.session_cookie().unwrap();
    ada.cookies.insert("theme".into(), "dark".into());
    assert_eq!(ada.get("/members/").await.status, 200);
    let seen = origin.requests().pop().unwrap();
    assert_eq!(seen.all("cookie"), ["theme=dark"]);
    assert!(!format!("{seen:?}").contains(&session));

    // HTTP/2 clients send one field per cookie (as browsers do): the origin
    // gets them joined into one header, still without ours.
    let client = gw.client_builder().http2_prior_knowledge().build().unwrap();
    let response = client
        .get(gw.https_url("/members/"))
        .header("cookie", "a=1")
        .header("cookie", format!("__Host-membergate={session}"))
        .header("cookie", "__Host-membergate-csrf=x")
        .header("cookie", "b=2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let seen = origin.requests().pop().unwrap();
    assert_eq!(seen.all("cookie"), ["a=1; b=2"]);
    assert_eq!(seen.header("x-member-email"), Some("ada@example.com"));
}

/// Everything the gateway keeps under its data folder (the secret, the
/// member database, the outbox with its sign-in links) is its user's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_folder_is_the_gateway_users_alone() {
    use std::os::unix::fs::PermissionsExt;
    let (gw, _origin) = start(|s| s).await;
    member(&gw, "ada@example.com", "Ada").await;
    let mut pending = vec![gw.dir.path().join("data")];
    let mut files = 0;
    while let Some(dir) = pending.pop() {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
            files += 1;
        }
    }
    // The secret, the database and its WAL files, the lock, one mail.
    assert!(files >= 5, "{files}");
    assert!(!gw.log().contains("readable by other users"));

    // A secret file others can read (a restore, a hand-made file) is used,
    // with a warning: whoever reads it can forge sessions.
    let secret = gw.dir.path().join("data/membergate.secret");
    let (dir, config) = gw.stop().await;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let gw = Gateway::start_with_file(dir, config).await;
    gw.wait_for_log("readable by other users").await;
}

/// Sessions are built at start: a reload that renames the session cookie
/// applies after a restart, and until then the cookie the sessions accept is
/// still the one withheld from origins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_renames_the_session_cookie_keeps_it_from_origins() {
    let (gw, origin) = start(|s| s).await;
    let mut ada = member(&gw, "ada@example.com", "Ada").await;
    let session = ada.session_cookie().unwrap();
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    let renamed = config.replacen("[members]\n", "[members]\ncookie_name = \"renamed\"\n", 1);
    assert_ne!(config, renamed);
    std::fs::write(&gw.config_path, renamed).unwrap();
    gw.signal("HUP");
    gw.wait_for_log("configuration reloaded").await;
    assert!(gw.log().contains("members.cookie_name"), "{}", gw.log());
    assert_eq!(ada.get("/members/").await.status, 200);
    let seen = origin.requests().pop().unwrap();
    assert_eq!(seen.header("x-member-email"), Some("ada@example.com"));
    assert!(!format!("{seen:?}").contains(&session), "{seen:?}");
}

/// The portal's templates are read with the configuration: a reload serves
/// an edited one; one that does not compile is refused, naming its file, and
/// the last good one keeps serving; a new `templates_dir` applies too, and a
/// template gone from it gives the built-in page back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_edited_portal_templates_and_refuses_broken_ones() {
    let login = include_str!("../src/portal/templates/login.html");
    let titled = |title: &str| login.replace("<h1>Log in</h1>", &format!("<h1>{title}</h1>"));
    let (gw, _origin) = start(|s| {
        s.members("templates_dir = \"tpl\"")
            .file("tpl/login.html", &titled("Version one"))
    })
    .await;
    let mut b = Browser::new(&gw);
    let body = b.get("/_membergate/login").await.body;
    assert!(body.contains("Version one"), "{body}");

    let tpl = gw.dir.path().join("tpl");
    std::fs::write(tpl.join("login.html"), titled("Version two")).unwrap();
    gw.signal("HUP");
    gw.wait_for_log("configuration reloaded").await;
    assert!(
        b.get("/_membergate/login")
            .await
            .body
            .contains("Version two")
    );

    std::fs::write(tpl.join("login.html"), "{% if %}").unwrap();
    gw.signal("HUP");
    gw.wait_for_log("reload rejected").await;
    assert!(
        gw.log().contains("tpl/login.html: syntax error"),
        "{}",
        gw.log()
    );
    let still = b.get("/_membergate/login").await;
    assert_eq!(still.status, 200);
    assert!(still.body.contains("Version two"), "{}", still.body);

    let other = gw.dir.path().join("tpl2");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("login.html"), titled("Version three")).unwrap();
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    let moved = config.replace("templates_dir = \"tpl\"", "templates_dir = \"tpl2\"");
    assert_ne!(config, moved);
    std::fs::write(&gw.config_path, moved).unwrap();
    gw.signal("HUP");
    until_login_page_shows(&mut b, "Version three").await;
    assert!(!gw.log().contains("apply after a restart"), "{}", gw.log());

    std::fs::remove_file(other.join("login.html")).unwrap();
    gw.signal("HUP");
    until_login_page_shows(&mut b, "<h1>Log in</h1>").await;
}

/// Waits up to 5 s for the login page to contain `text` (a reload is
/// asynchronous; the log's "configuration reloaded" is already there from an
/// earlier one).
async fn until_login_page_shows(b: &mut Browser, text: &str) {
    let mut body = String::new();
    for _ in 0..100 {
        body = b.get("/_membergate/login").await.body;
        if body.contains(text) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the login page never showed {text:?}:\n{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_replaces_any_earlier_session_id() {
    let (gw, _origin) = start(|s| s).await;
    let mut b = member(&gw, "jo@example.com", "Jo").await;
    let first = b.session_cookie().unwrap();
    let again = b.login("jo@example.com", PASSWORD).await;
    assert_eq!(again.status, 303);
    let second = b.session_cookie().unwrap();
    assert_ne!(first, second);
    let mut replay = Browser::new(&gw);
    replay.cookies.insert("__Host-membergate".into(), first);
    assert_eq!(replay.get("/members/").await.status, 302);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_of_one_address_make_one_member() {
    let (gw, _origin) = start(|s| s.members(GENEROUS_LIMITS)).await;
    let spellings = [
        "kim@example.com",
        "kim@EXAMPLE.com",
        " kim@example.com",
        "kim@example.com.",
    ];
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut b = Browser::new(&gw);
        let csrf = b.get("/_membergate/register").await.csrf();
        let email = spellings[i % spellings.len()];
        tasks.push(tokio::spawn(async move {
            b.post(
                "/_membergate/register",
                &[("csrf", &csrf), ("email", email), ("password", PASSWORD)],
            )
            .await
            .status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    let (ok, list) = gw.cli(&["member", "list"], "");
    assert!(ok, "{list}");
    assert_eq!(list.matches("kim@example.com").count(), 1, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_and_sessions_survive_a_restart() {
    let (gw, _origin) = start(|s| s).await;
    let b = member(&gw, "lee@example.com", "Lee").await;
    let cookie = b.session_cookie().unwrap();
    let gw = gw.restart().await;
    let mut again = Browser::new(&gw);
    again.cookies.insert("__Host-membergate".into(), cookie);
    assert_eq!(again.get("/members/").await.status, 200);
    let mut fresh = Browser::new(&gw);
    assert_eq!(fresh.login("lee@example.com", PASSWORD).await.status, 303);
}

/// A store left by the first schema (before session renewal) is migrated in
/// place on start: its members and sessions live on, and renewal works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_store_keeps_its_members_and_sessions() {
    let (gw, _origin) = start(|s| s).await;
    let cookie = member(&gw, "uma@example.com", "Uma")
        .await
        .session_cookie()
        .unwrap();
    let (dir, config_path) = gw.stop().await;

    // Back to what the first schema had: no grants, no replaced sessions.
    let mut db = support::store_connection(&dir.path().join("data/membergate.db")).await;
    for statement in [
        "ALTER TABLE sessions DROP COLUMN replaced",
        "ALTER TABLE sessions DROP COLUMN grants",
        "ALTER TABLE members DROP COLUMN grants",
        "DELETE FROM _sqlx_migrations WHERE version = 2",
    ] {
        sqlx::query(statement).execute(&mut db).await.unwrap();
    }
    let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info('sessions')")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert!(!columns.iter().any(|c| c == "grants"), "{columns:?}");
    sqlx::Connection::close(db).await.unwrap();

    let gw = Gateway::start_with_file(dir, config_path).await;
    let mut b = Browser::new(&gw);
    b.cookies.insert("__Host-membergate".into(), cookie.clone());
    assert_eq!(b.get("/members/").await.status, 200, "{}", gw.log());
    assert_eq!(b.session_cookie().unwrap(), cookie);
    let (ok, out) = gw.cli(&["group", "add", "uma@example.com", "vip"], "");
    assert!(ok, "{out}");
    eventually(&mut b, "/vip/", 200).await;
    assert_ne!(
        b.session_cookie().unwrap(),
        cookie,
        "renewed after the grant"
    );
    let mut fresh = Browser::new(&gw);
    assert_eq!(fresh.login("uma@example.com", PASSWORD).await.status, 303);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_cannot_set_the_gateway_cookie() {
    // Every cookie of the gateway's, in the spellings a browser still reads
    // as that name: any case, spaces around the name, and a byte outside
    // visible ASCII further on (a browser keeps such a cookie).
    let origin = support::origins::CookieOrigin::start(&[
        b"__Host-membergate=evil; Path=/",
        b"__Host-membergate=evil; Path=/; Secure; x=\xc3\xa9",
        b" __HOST-MEMBERGATE =evil; Path=/",
        b"__Host-membergate-csrf=evil",
        b"__Host-membergate-device=evil; x=\xff",
        b"__Host-membergate-chat-reset=0",
    ])
    .await;
    let passed = |gw: Gateway| async move {
        let response = gw.client().get(gw.https_url("/")).send().await.unwrap();
        let cookies: Vec<Vec<u8>> = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect();
        cookies
    };
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    assert_eq!(passed(gw).await, [b"theme=dark; Path=/".to_vec()]);

    // A cookie with an empty name is kept by browsers and sent back as its
    // value alone: `=mg=x` comes back as `Cookie: mg=x`. (Browsers refuse
    // that for a `__Host-` value, so this needs a name without the prefix.)
    let origin = support::origins::CookieOrigin::start(&[
        b"=mg=forged; Path=/",
        b" = MG =forged",
        b"mg",
        b"=mg-device=z",
        b"=theme=light",
    ])
    .await;
    let gw = Gateway::start(
        Setup::new()
            .route("/", &origin.url())
            .members("cookie_name = \"mg\""),
    )
    .await;
    assert_eq!(
        passed(gw).await,
        [b"=theme=light".to_vec(), b"theme=dark; Path=/".to_vec()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_domain_and_approval_registration_modes() {
    // invite: no self-service; the CLI invites, the member sets a password by mail.
    let (gw, _origin) = start(|s| s.members("registration = \"invite\"")).await;
    let mut b = Browser::new(&gw);
    assert_eq!(b.get("/_membergate/register").await.status, 403);
    let (ok, out) = gw.cli(
        &[
            "member",
            "add",
            "mia@example.com",
            "--invite",
            "--first-name",
            "Mia",
        ],
        "",
    );
    assert!(ok, "{out}");
    let invitation = gw.mail_to("mia@example.com").await;
    assert!(
        invitation.contains("Subject: You are invited to main\r\n"),
        "{invitation}"
    );
    let link = Gateway::link_in(&invitation);
    let page = b.get(&link).await;
    let token = link.split("token=").nth(1).unwrap().to_owned();
    let set = b
        .post(
            "/_membergate/reset/confirm",
            &[
                ("csrf", &page.csrf()),
                ("token", &token),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(set.status, 303);
    assert_eq!(b.login("mia@example.com", PASSWORD).await.status, 303);
    assert_eq!(b.get("/members/").await.status, 200);
    drop(gw);

    // domain: only listed domains may register.
    let (gw, _origin) =
        start(|s| s.members("registration = \"domain\"\nallowed_domains = [\"club.example\"]"))
            .await;
    let mut b = Browser::new(&gw);
    let page = b.register("ned@other.example", PASSWORD, "", "").await;
    assert_eq!(page.status, 422);
    assert!(page.body.contains("club.example"));
    assert_eq!(
        b.register("ned@club.example", PASSWORD, "", "")
            .await
            .status,
        200
    );
    // A member's new address is held to the same domains.
    let link = Gateway::link_in(&gw.mail_to("ned@club.example").await);
    assert_eq!(b.confirm_address(&link).await.status, 303);
    assert_eq!(b.login("ned@club.example", PASSWORD).await.status, 303);
    let page = ask_for_email(&mut b, "ned@other.example", PASSWORD).await;
    assert_eq!(page.status, 422);
    assert!(
        page.body.contains("Only addresses at club.example"),
        "{}",
        page.body
    );
    drop(gw);

    // approval: verified members wait for an administrator.
    let (gw, _origin) = start(|s| s.members("registration = \"approval\"")).await;
    let mut b = Browser::new(&gw);
    b.register("ola@example.com", PASSWORD, "", "").await;
    let link = Gateway::link_in(&gw.mail_to("ola@example.com").await);
    let page = b.confirm_address(&link).await;
    assert!(page.body.contains("approves"), "{}", page.body);
    let early = b.login("ola@example.com", PASSWORD).await;
    assert_eq!(early.status, 403);
    assert!(
        early.body.contains("Waiting for approval"),
        "{}",
        early.body
    );
    let (ok, out) = gw.cli(&["member", "approve", "ola@example.com"], "");
    assert!(ok, "{out}");
    assert_eq!(b.login("ola@example.com", PASSWORD).await.status, 303);

    // An administrator's invitation is the approval: the invited member is
    // active once they have set a password.
    let (ok, out) = gw.cli(&["member", "add", "ivy@example.com", "--invite"], "");
    assert!(ok, "{out}");
    let link = Gateway::link_in(&gw.mail_to("ivy@example.com").await);
    let mut ivy = Browser::new(&gw);
    let page = ivy.get(&link).await;
    let fields = [
        ("csrf", page.csrf()),
        ("token", page.field("token")),
        ("password", PASSWORD.to_owned()),
    ];
    let fields = fields.each_ref().map(|(k, v)| (*k, v.as_str()));
    assert_eq!(
        ivy.post("/_membergate/reset/confirm", &fields).await.status,
        303
    );
    assert_eq!(ivy.login("ivy@example.com", PASSWORD).await.status, 303);
}

/// A `public_url` written with a trailing slash makes links with one slash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_url_with_a_trailing_slash_makes_clean_links() {
    let (gw, _origin) = start(|s| s.members("public_url = \"https://gw.test/\"")).await;
    let mut b = Browser::new(&gw);
    assert_eq!(
        b.register("rui@example.com", PASSWORD, "Rui", "T")
            .await
            .status,
        200
    );
    let mail = gw.mail_to("rui@example.com").await;
    assert!(
        mail.contains("\nhttps://gw.test/_membergate/verify?token="),
        "{mail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_members_and_explains_policy_decisions() {
    let (gw, _origin) = start(|s| s).await;
    let (ok, out) = gw.cli(
        &[
            "member",
            "add",
            "Pat@Example.com",
            "--first-name",
            "Pat",
            "--group",
            "vip",
        ],
        "a long password\n",
    );
    assert!(ok, "{out}");
    let (ok, out) = gw.cli(&["member", "add", "pat@example.com"], "a long password\n");
    assert!(!ok, "duplicate accepted: {out}");
    let (_, out) = gw.cli(&["member", "add", "short@example.com"], "short\n");
    assert!(out.contains("at least 10"), "{out}");
    let (_, out) = gw.cli(&["group", "add", "pat@example.com", "bad name"], "");
    assert!(out.contains("not a group name"), "{out}");

    let url = format!("https://localhost:{}/vip/x", gw.https.port());
    let (ok, out) = gw.cli(&["policy", "check", "--url", &url], "");
    assert!(ok, "{out}");
    assert!(out.starts_with("login required"), "{out}");
    assert!(out.contains("sites[main].rules[1]"), "{out}");
    let (_, out) = gw.cli(
        &[
            "policy",
            "check",
            "--url",
            &url,
            "--member",
            "Pat@example.com",
        ],
        "",
    );
    assert!(out.starts_with("allow"), "{out}");
    let (_, out) = gw.cli(
        &[
            "policy",
            "check",
            "--url",
            "https://localhost/public/%2e%2e/vip/",
        ],
        "",
    );
    assert!(out.contains("400"), "{out}");

    let mut b = Browser::new(&gw);
    assert_eq!(
        b.login("Pat@example.com", "a long password").await.status,
        303
    );
    assert_eq!(b.get("/vip/").await.status, 200);
    let (ok, out) = gw.cli(&["member", "disable", "Pat@example.com"], "");
    assert!(ok, "{out}");
    eventually(&mut b, "/vip/", 302).await;
    assert_eq!(
        b.login("Pat@example.com", "a long password").await.status,
        401
    );
    let (ok, _) = gw.cli(&["member", "enable", "Pat@example.com"], "");
    assert!(ok);
    assert_eq!(
        b.login("Pat@example.com", "a long password").await.status,
        303
    );
    let (ok, out) = gw.cli(&["session", "revoke", "--member", "Pat@example.com"], "");
    assert!(ok && out.contains("ended 1 session"), "{out}");
    eventually(&mut b, "/vip/", 302).await;
}

/// `member delete` from the command line (another process): the running
/// gateway treats the member's session cookie as a dead one on the next
/// request after the change log reached it (cleared, with the chat reset),
/// the address registers again as a new member, and deleting or showing
/// the old one says there is none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_deletes_a_member_and_their_session_dies() {
    let (gw, _origin) = start(|s| s).await;
    let mut b = member(&gw, "gone@example.com", "Gone").await;
    let (ok, out) = gw.cli(&["group", "add", "gone@example.com", "vip"], "");
    assert!(ok, "{out}");
    eventually(&mut b, "/vip/", 200).await;
    let first_id = member_id(&gw, "gone@example.com");
    let session = b.session_cookie().unwrap();

    let (ok, out) = gw.cli(&["member", "delete", "Gone@Example.com"], "");
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "deleted gone@example.com (member {first_id}, active, groups vip): 1 session(s) ended"
        )),
        "{out}"
    );
    // The change follower polls every second; until then a cached session
    // may still be served. The first answer without it clears it.
    let mut dead = None;
    for _ in 0..60 {
        b.cookies
            .insert("__Host-membergate".into(), session.clone());
        let page = b.get("/vip/").await;
        if page.status == 302 {
            dead = Some(page);
            break;
        }
        assert_eq!(page.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = dead.expect("the deleted member's session was never ended");
    assert!(
        clears(&dead, "__Host-membergate"),
        "{:?}",
        dead.set_cookies()
    );
    assert!(resets_the_chat(&dead), "{:?}", dead.set_cookies());

    let (ok, out) = gw.cli(&["member", "show", "gone@example.com"], "");
    assert!(!ok && out.contains("no member gone@example.com"), "{out}");
    let (ok, out) = gw.cli(&["member", "delete", "gone@example.com"], "");
    assert!(!ok && out.contains("no member gone@example.com"), "{out}");
    let (_, groups) = gw.cli(&["group", "list"], "");
    assert!(!groups.contains("vip"), "{groups}");

    let mut again = register_again(&gw, "gone@example.com").await;
    assert!(member_id(&gw, "gone@example.com") > first_id);
    assert_eq!(again.get("/members/").await.status, 200);
    assert_eq!(
        again.get("/vip/").await.status,
        403,
        "the groups went with the old member"
    );
}

/// Sets a password through a mailed reset (or invitation) link; returns the answer's status.
async fn follow_password_link(gw: &Gateway, link: &str, password: &str) -> u16 {
    let mut b = Browser::new(gw);
    let page = b.get(link).await;
    let token = link.split("token=").nth(1).unwrap().to_owned();
    let fields = [
        ("csrf", page.csrf()),
        ("token", token),
        ("password", password.to_owned()),
    ];
    let fields = fields.each_ref().map(|(k, v)| (*k, v.as_str()));
    b.post("/_membergate/reset/confirm", &fields).await.status
}

/// An invited member whose mail never came: the administrator sets their
/// password, and they are in, as if they had followed the invitation (under
/// `approval` too: the invitation is the approval). The invitation's link
/// is spent. Before, the member stayed pending, and `enable` and `approve`
/// both refused them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_an_invited_members_password_lets_them_in() {
    let (gw, _origin) = start(|s| s.members("registration = \"approval\"")).await;
    let (ok, out) = gw.cli(&["member", "add", "ivy@example.com", "--invite"], "");
    assert!(ok, "{out}");
    let invitation = Gateway::link_in(&gw.mail_to("ivy@example.com").await);
    let (ok, out) = gw.cli(&["member", "set-password", "ivy@example.com"], PASSWORD);
    assert!(ok, "{out}");
    assert!(
        out.contains("ivy@example.com is active and can log in with it"),
        "{out}"
    );
    let (_, shown) = gw.cli(&["member", "show", "ivy@example.com"], "");
    assert!(shown.contains("\tactive\t"), "{shown}");
    let mut b = Browser::new(&gw);
    assert_eq!(b.login("ivy@example.com", PASSWORD).await.status, 303);
    assert_eq!(b.get("/members/x").await.status, 200);
    assert_eq!(
        follow_password_link(&gw, &invitation, "another long password").await,
        400,
        "the invitation still sets a password"
    );
}

/// What `set-password` does to the others: one awaiting approval still
/// waits, a disabled one stays disabled (the output says which command
/// lets them in); one who registered and has not confirmed their address
/// is refused (the password would not let them in, and would end the link
/// that confirms it), and so is a disabled invited one, until enabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_a_password_keeps_every_other_status() {
    let (gw, _origin) = start(|s| s.members("registration = \"approval\"")).await;
    let set = |email: &str, password: &str| gw.cli(&["member", "set-password", email], password);

    // Registered and confirmed: awaiting approval, before and after.
    let mut ola = Browser::new(&gw);
    ola.register("ola@example.com", PASSWORD, "", "").await;
    let link = Gateway::link_in(&gw.mail_to("ola@example.com").await);
    ola.confirm_address(&link).await;
    let (ok, out) = set("ola@example.com", "ola's new password");
    assert!(ok, "{out}");
    assert!(
        out.contains("still awaiting approval: membergate member approve ola@example.com"),
        "{out}"
    );
    assert_eq!(
        ola.login("ola@example.com", "ola's new password")
            .await
            .status,
        403
    );
    assert!(gw.cli(&["member", "approve", "ola@example.com"], "").0);
    assert_eq!(
        ola.login("ola@example.com", "ola's new password")
            .await
            .status,
        303
    );

    // Disabled: stays disabled.
    assert!(gw.cli(&["member", "disable", "ola@example.com"], "").0);
    let (ok, out) = set("ola@example.com", "ola's third password");
    assert!(ok, "{out}");
    assert!(
        out.contains("stays disabled: membergate member enable ola@example.com"),
        "{out}"
    );
    assert_eq!(
        ola.login("ola@example.com", "ola's third password")
            .await
            .status,
        401
    );
    assert!(gw.cli(&["member", "enable", "ola@example.com"], "").0);
    assert_eq!(
        ola.login("ola@example.com", "ola's third password")
            .await
            .status,
        303
    );

    // Registered, not confirmed: refused, and the confirmation link still works.
    let mut pat = Browser::new(&gw);
    pat.register("pat@example.com", PASSWORD, "", "").await;
    // Stored after the answer: the mail says it is.
    let link = Gateway::link_in(&gw.mail_to("pat@example.com").await);
    let (ok, out) = set("pat@example.com", "pat's new password");
    assert!(!ok, "{out}");
    assert!(
        out.contains("has not confirmed their email address"),
        "{out}"
    );
    let confirmed = pat.confirm_address(&link).await;
    assert!(confirmed.body.contains("approves"), "{}", confirmed.body);

    // Invited, then disabled: refused until enabled (invited again), then active.
    assert!(
        gw.cli(&["member", "add", "kim@example.com", "--invite"], "")
            .0
    );
    assert!(gw.cli(&["member", "disable", "kim@example.com"], "").0);
    let (ok, out) = set("kim@example.com", PASSWORD);
    assert!(!ok, "{out}");
    assert!(out.contains("enable them first"), "{out}");
    assert!(gw.cli(&["member", "enable", "kim@example.com"], "").0);
    let (ok, out) = set("kim@example.com", PASSWORD);
    assert!(ok && out.contains("is active"), "{out}");
    assert_eq!(
        Browser::new(&gw)
            .login("kim@example.com", PASSWORD)
            .await
            .status,
        303
    );
}

/// A password piped the way `passwd`-style tools are fed (twice, one per
/// line) used to be stored with the line break inside, and nobody can type
/// that at the login page. One line end (`echo`, CRLF) is not the
/// password's; control characters are refused in any new password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piped_password_with_a_line_break_inside_is_refused() {
    let (gw, _origin) = start(|s| s).await;
    let twice = format!("{PASSWORD}\n{PASSWORD}\n");
    let (ok, out) = gw.cli(&["member", "add", "leo@example.com"], &twice);
    assert!(
        !ok,
        "a password with a line break inside was accepted: {out}"
    );
    assert!(out.contains("line break inside"), "{out}");
    let (ok, _) = gw.cli(&["member", "show", "leo@example.com"], "");
    assert!(!ok, "leo was stored");

    let (ok, out) = gw.cli(
        &["member", "add", "leo@example.com"],
        &format!("{PASSWORD}\r\n"),
    );
    assert!(ok, "{out}");
    let mut b = Browser::new(&gw);
    assert_eq!(b.login("leo@example.com", PASSWORD).await.status, 303);
    let (ok, out) = gw.cli(
        &["member", "set-password", "leo@example.com"],
        "correct\thorse battery",
    );
    assert!(!ok, "{out}");
    assert!(out.contains("control characters"), "{out}");
    assert_eq!(b.login("leo@example.com", PASSWORD).await.status, 303);
}

/// Only new passwords are checked for control characters: a member whose
/// password was stored with one before (a piped line break) still logs in
/// with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_stored_before_the_control_character_check_still_logs_in() {
    let (gw, _origin) = start(|s| s).await;
    let (ok, out) = gw.cli(&["member", "add", "old@example.com"], PASSWORD);
    assert!(ok, "{out}");
    let old = format!("{PASSWORD}\n{PASSWORD}");
    let hash = membergate::members::password::hash(&old).unwrap();
    let mut db = support::store_connection(&gw.dir.path().join("data/membergate.db")).await;
    sqlx::query("UPDATE members SET password_hash = ? WHERE email = 'old@example.com'")
        .bind(hash)
        .execute(&mut db)
        .await
        .unwrap();
    let mut b = Browser::new(&gw);
    assert_eq!(b.login("old@example.com", &old).await.status, 303);
}

/// A reset (or invitation) link confirmed while a login flood fills password
/// hashing is answered "busy, try again in a few seconds", and the link is
/// still good when the visitor does: the queue is asked for a slot before
/// the link is spent, or a flood would burn every link confirmed meanwhile.
/// A confirm may find a free place in the queue (then it simply succeeds):
/// a fresh invitation is confirmed until one is turned away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_confirmed_while_hashing_is_full_keeps_its_link() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    let (gw, _origin) = start(|s| {
        s.server("trusted_proxies = [\"127.0.0.0/8\"]")
            .limits("max_connections_per_ip = 0")
    })
    .await;
    let logins = FloodLogins::new(&gw).await;
    let client = logins.client.clone();
    let (shed, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut workers = Vec::new();
    // 300 visitors logging in over and over until the test is done, each
    // attempt from an address of its own (within every per-address limit).
    for w in 0..300usize {
        let (logins, shed, stop) = (logins.clone(), shed.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(SeqCst) && n < 5_000 {
                n += 1;
                let status = logins
                    .request(
                        &format!("10.{}.{}.{}", w / 250, w % 250, n % 250),
                        &format!("nobody{w}x{n}@example.com"),
                    )
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                if status == 503 {
                    shed.fetch_add(1, SeqCst);
                }
            }
        }));
    }
    while shed.load(SeqCst) < 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut kept = None;
    for attempt in 0..10 {
        let email = format!("inv{attempt}@example.com");
        let (ok, out) =
            tokio::task::block_in_place(|| gw.cli(&["member", "add", &email, "--invite"], ""));
        assert!(ok, "{out}");
        let link = Gateway::link_in(&gw.mail_to(&email).await);
        let token = link.split("token=").nth(1).unwrap().to_owned();
        let mut invitee = Browser::new(&gw);
        let reset_csrf = invitee.get(&link).await.csrf();
        let reset_cookie = invitee.cookie_header().unwrap();
        let confirm = || {
            client
                .post(gw.https_url("/_membergate/reset/confirm"))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("cookie", &reset_cookie)
                .header("origin", &invitee.origin)
                .header("x-forwarded-for", "203.0.113.77")
                .body(format!(
                    "csrf={reset_csrf}&token={token}&password=reset+password+1"
                ))
                .send()
        };
        if confirm().await.unwrap().status() != 503 {
            continue;
        }
        stop.store(true, SeqCst);
        // "Try again in a few seconds": once the queue drains, the link works.
        let mut again = confirm().await.unwrap();
        for _ in 0..50 {
            if again.status() != 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            again = confirm().await.unwrap();
        }
        kept = Some((again.status().as_u16(), again.text().await.unwrap()));
        break;
    }
    stop.store(true, SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let (status, body) = kept.expect("no confirm was turned away by the flood in ten tries");
    assert_eq!(
        status, 303,
        "the retry after a 503 Busy found the link spent: {status} {body}"
    );
}
