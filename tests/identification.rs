//! Visitor identification and chat-widget injection end to end: real pages
//! from a real origin, rewritten on their way through the real gateway, with
//! tokens minted here or by a local stand-in for HubSpot's API.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use base64::Engine;
use membergate::inject::SETTINGS_SCRIPT_OPEN;
use support::browser::Browser;
use support::chat::{FakeHubSpot, HUBSPOT_TOKEN, HubSpotMode, PAGE, Page, PageOrigin};
use support::origins::HEAD_THEN_SILENCE;
use support::{Fault, FaultyOrigin, Gateway, Setup};

const PASSWORD: &str = "correct horse battery";
const BUILTIN: &str = "provider = \"builtin\"\nwidget_url = \"https://chat.example.com/widget.js\"";

async fn start(origin: &PageOrigin, chat: &str, extra: impl FnOnce(Setup) -> Setup) -> Gateway {
    let setup = Setup::new()
        .route("/", &origin.url())
        .rule("/members", "members", &[])
        .chat(chat);
    Gateway::start(extra(setup)).await
}

/// A logged-in browser for a new member (created with the admin CLI).
async fn member(gw: &Gateway, email: &str, first: &str, groups: &[&str]) -> Browser {
    let mut args = vec![
        "member",
        "add",
        email,
        "--first-name",
        first,
        "--last-name",
        "Tester",
    ];
    for g in groups {
        args.extend(["--group", g]);
    }
    let (ok, out) = gw.cli(&args, &format!("{PASSWORD}\n"));
    assert!(ok, "{out}");
    let mut b = Browser::new(gw);
    assert_eq!(b.login(email, PASSWORD).await.status, 303);
    b
}

/// What `membergate policy check --url URL [--member EMAIL]` prints.
fn policy_check(gw: &Gateway, url: &str, member: Option<&str>) -> String {
    let mut args = vec!["policy", "check", "--url", url];
    if let Some(member) = member {
        args.extend(["--member", member]);
    }
    let (ok, out) = gw.cli(&args, "");
    assert!(ok, "{out}");
    out
}

/// The JSON object the settings script assigns, parsed.
fn settings(page: &str) -> Option<serde_json::Value> {
    let start = page.find(SETTINGS_SCRIPT_OPEN)?;
    let rest = &page[start + SETTINGS_SCRIPT_OPEN.len()..];
    let end = rest.find(");</script>")?;
    Some(serde_json::from_str(&rest[..end]).unwrap())
}

/// The CSP source that allows the page's settings script: `'sha256-…'` of
/// its text.
fn settings_hash(page: &str) -> String {
    let open = "<script data-membergate=\"settings\">";
    let start = page.find(open).unwrap() + open.len();
    let end = page[start..].find("</script>").unwrap() + start;
    let digest = <sha2::Sha256 as sha2::Digest>::digest(&page.as_bytes()[start..end]);
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(2).unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&json).unwrap()
}

/// The `Accept-Encoding` the origin got for an anonymous visitor's request
/// for a page, sent with `headers` and `Accept-Encoding: gzip`.
async fn origin_asked(
    gw: &Gateway,
    origin: &PageOrigin,
    headers: &[(&str, &str)],
) -> Option<String> {
    let mut headers = headers.to_vec();
    headers.push(("accept-encoding", "gzip"));
    Browser::new(gw).get_with("/blog/tides", &headers).await;
    origin
        .accept_encodings
        .lock()
        .unwrap()
        .last()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_identified_and_anonymous_visitors_get_the_loader() {
    let origin = PageOrigin::start(vec![(
        "/cached",
        Page::html(PAGE)
            .with("cache-control", "public, max-age=3600")
            .with("accept-ranges", "bytes")
            .with("content-digest", "sha-256=:AAAA:")
            .with("repr-digest", "sha-256=:AAAA:")
            .with("digest", "SHA-256=AAAA")
            .with("content-md5", "AAAA")
            .with("etag", "\"v2\""),
    )])
    .await;
    let gw = start(
        &origin,
        &format!("{BUILTIN}\nload_immediately = true"),
        |s| s,
    )
    .await;

    let mut anon = Browser::new(&gw);
    let page = anon.get("/blog/tides").await;
    assert_eq!(page.status, 200);
    let loader = "<script data-membergate=\"loader\" async defer src=\"https://chat.example.com/widget.js\"></script>";
    assert_eq!(
        page.body,
        PAGE.replace("</head>", &format!(
            "<script data-membergate=\"settings\">{SETTINGS_SCRIPT_OPEN}{{\"loadImmediately\":true}});</script>{loader}</head>"
        ))
    );
    assert!(!page.headers.contains_key("content-length"));
    assert_eq!(page.headers["etag"], "W/\"v1\"");
    assert!(page.headers.get_all("vary").iter().any(|v| v == "Cookie"));
    // A browser's page load: the origin is asked for the page uncompressed,
    // so it can be rewritten. A script or a fetch keeps the client's wish.
    let html = "text/html,application/xhtml+xml,*/*;q=0.8";
    assert_eq!(origin_asked(&gw, &origin, &[("accept", html)]).await, None);
    assert_eq!(
        origin_asked(
            &gw,
            &origin,
            &[("sec-fetch-dest", "document"), ("accept", "*/*")]
        )
        .await,
        None
    );
    assert_eq!(
        origin_asked(&gw, &origin, &[("sec-fetch-dest", "iframe")]).await,
        None
    );
    let gzip = Some("gzip".to_owned());
    assert_eq!(origin_asked(&gw, &origin, &[("accept", "*/*")]).await, gzip);
    assert_eq!(
        origin_asked(
            &gw,
            &origin,
            &[("sec-fetch-dest", "script"), ("accept", html)]
        )
        .await,
        gzip
    );
    assert_eq!(
        origin_asked(&gw, &origin, &[("sec-fetch-dest", "empty")]).await,
        gzip
    );

    let mut ada = member(&gw, "ada@example.com", "Ada", &[]).await;
    let page = ada.get("/blog/tides").await;
    let s = settings(&page.body).unwrap();
    assert_eq!(s["identificationEmail"], "ada@example.com");
    assert_eq!(s["loadImmediately"], true);
    let token = s["identificationToken"].as_str().unwrap();
    let c = claims(token);
    assert_eq!(
        (&c["email"], &c["firstName"], &c["lastName"], &c["aud"]),
        (
            &"ada@example.com".into(),
            &"Ada".into(),
            &"Tester".into(),
            &"main".into()
        )
    );
    assert_eq!(page.headers["cache-control"], "private, no-store");
    assert_eq!(page.body.matches("data-membergate=\"settings\"").count(), 1);
    // F5: a page the origin calls public is private once it names the member,
    // and carries no validator.
    let cached = ada.get("/cached").await;
    assert!(settings(&cached.body).is_some());
    // Ranges of the origin's bytes are not ranges of these, and its digests
    // are not digests of these.
    assert!(!cached.headers.contains_key("accept-ranges"));
    for digest in ["content-digest", "repr-digest", "digest", "content-md5"] {
        assert!(!cached.headers.contains_key(digest), "{digest}");
    }
    let cache_control: Vec<_> = cached.headers.get_all("cache-control").iter().collect();
    assert_eq!(cache_control, ["private, no-store"]);
    assert!(!cached.headers.contains_key("etag"));
    assert!(cached.headers.get_all("vary").iter().any(|v| v == "Cookie"));
    // The same token on the next pages: it comes from the cache.
    let again = settings(&ada.get("/kb/lamps").await.body).unwrap();
    assert_eq!(again["identificationToken"], token);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("membergate_identification_tokens_total{result=\"cached\"} 2"),
        "{metrics}"
    );
    // J2: two members taking turns each get only their own identity and token.
    let mut bob = member(&gw, "bob@example.com", "Bob", &[]).await;
    for round in 0..5 {
        for (browser, email) in [(&mut ada, "ada@example.com"), (&mut bob, "bob@example.com")] {
            let page = browser.get(&format!("/blog/turn-{round}")).await;
            let s = settings(&page.body).unwrap();
            assert_eq!(s["identificationEmail"], email);
            let token = s["identificationToken"].as_str().unwrap();
            assert_eq!(claims(token)["email"], email, "round {round}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeting_rules_choose_who_sees_the_widget_where() {
    let origin = PageOrigin::start(vec![]).await;
    let chat = format!(
        "{BUILTIN}\n\
         [[sites.chat.rules]]\npath = \"/checkout\"\nshow = \"never\"\n\
         [[sites.chat.rules]]\npath = \"/kb/**/*.html\"\nshow = \"members\"\n\
         [[sites.chat.rules]]\npath = \"/vip\"\nshow = \"groups\"\ngroups = [\"vip\"]\n\
         [[sites.chat.rules]]\npath = \"/blog\"\nquery = \"chat=off\"\nshow = \"never\"\n"
    );
    let gw = start(&origin, &chat, |s| s).await;
    let mut anon = Browser::new(&gw);
    let mut plain = member(&gw, "plain@example.com", "Pat", &[]).await;
    let mut vip = member(&gw, "vip@example.com", "Val", &["vip"]).await;
    let shown = |body: &str| body.contains("data-membergate=\"loader\"");
    let identified =
        |body: &str| settings(body).is_some_and(|s| s.get("identificationToken").is_some());

    for (who, path, want_shown, want_identified) in [
        ("anon", "/", true, false),
        ("plain", "/", true, true),
        ("anon", "/checkout/pay", false, false),
        ("vip", "/checkout/pay", false, false),
        ("anon", "/kb/a/b.html", false, false),
        ("plain", "/kb/a/b.html", true, true),
        ("plain", "/vip/lounge", false, false),
        ("vip", "/vip/lounge", true, true),
        ("anon", "/vip/lounge", false, false),
        ("anon", "/blog/tides?chat=off", false, false),
        ("plain", "/blog/tides?x=1&chat=off", false, false),
        ("plain", "/blog/tides?chat=on", true, true),
    ] {
        let browser = match who {
            "anon" => &mut anon,
            "plain" => &mut plain,
            _ => &mut vip,
        };
        let page = browser.get(path).await;
        assert_eq!(page.status, 200, "{who} {path}");
        assert_eq!(shown(&page.body), want_shown, "{who} {path}: {}", page.body);
        assert_eq!(identified(&page.body), want_identified, "{who} {path}");
        if !want_shown {
            assert_eq!(page.body, PAGE, "{who} {path}");
        }
    }

    // `policy check` shows the same decision, with the rule that made it.
    let url = gw.https_url("/kb/a/b.html");
    let out = policy_check(&gw, &url, None);
    assert!(
        out.contains("chat: off (sites[main].chat.rules[1], path \"/kb/**/*.html\")"),
        "{out}"
    );
    let out = policy_check(&gw, &url, Some("plain@example.com"));
    assert!(
        out.contains("chat: identified (sites[main].chat.rules[1]"),
        "{out}"
    );
    let out = policy_check(&gw, &gw.https_url("/"), None);
    assert!(
        out.contains("chat: anonymous (site \"main\" chat default)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_logout_the_next_widget_page_resets_the_widget_once() {
    let origin = PageOrigin::start(vec![("/fragment", Page::html("<tr><td>x</td></tr>"))]).await;
    let gw = start(
        &origin,
        &format!("{BUILTIN}\n[[sites.chat.rules]]\npath = \"/private\"\nshow = \"members\""),
        |s| s,
    )
    .await;
    let mut b = member(&gw, "kim@example.com", "Kim", &[]).await;
    assert!(settings(&b.get("/").await.body).is_some());
    let out = b.logout().await;
    assert_eq!(out.status, 303);
    assert!(b.cookies.contains_key("__Host-membergate-chat-reset"));
    // The request waits a week for a page whose widget runs it, and the
    // browser drops the site's pages from its caches.
    let reset_cookie = out
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-membergate-chat-reset="));
    assert!(
        reset_cookie
            .as_ref()
            .is_some_and(|c| c.contains("Max-Age=604800")),
        "{reset_cookie:?}"
    );
    assert_eq!(out.headers["clear-site-data"], "\"cache\"");
    // A page without the widget for anonymous visitors keeps the request for later.
    let page = b.get("/private/x").await;
    assert_eq!(page.body, PAGE);
    assert!(b.cookies.contains_key("__Host-membergate-chat-reset"));
    let reset = "window.HubSpotConversations.clear({resetWidget:true})";
    // The page that carries the reset clears the cookie once its widget
    // reset, not before: the gateway cannot tell from the headers whether
    // the snippet will find its place (a fragment, say, has none), nor can
    // the page tell whether its widget will load before the visitor leaves.
    let clearing =
        "document.cookie=\"__Host-membergate-chat-reset=;Max-Age=0;Path=/;SameSite=Lax;Secure\";";
    let page = b.get("/").await;
    assert!(
        page.body
            .contains(&format!("{reset};{clearing}}}]);</script>")),
        "{}",
        page.body
    );
    assert!(!page.body.contains("identificationEmail"));
    assert!(page.set_cookies().is_empty(), "{:?}", page.set_cookies());
    // This browser's alone: no shared cache may hand the reset to others.
    assert_eq!(page.headers["cache-control"], "private, no-store");
    assert!(b.get("/fragment").await.body.starts_with("<tr>"));
    assert!(b.get("/").await.body.contains(reset));
    // The browser ran the script (as tests/browser.rs shows in Chromium).
    b.cookies.remove("__Host-membergate-chat-reset");
    assert!(!b.get("/").await.body.contains(reset));
    // A cookie set before the script cleared it (`HttpOnly`, value 1) cannot
    // be cleared by the script: it is ignored, not a reset on every page.
    b.cookies
        .insert("__Host-membergate-chat-reset".into(), "1".into());
    assert!(!b.get("/").await.body.contains(reset));
}

/// A session that ends without the log-out button (revoked from another
/// device or by an administrator, or idled out) resets the widget all the
/// same: the first page that finds the session over carries the reset and
/// sets the chat-reset cookie, as a log-out does, or the next person at a
/// shared computer reads the member's conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_elsewhere_resets_the_widget_once() {
    let origin = PageOrigin::start(vec![]).await;
    let gw = start(&origin, BUILTIN, |s| s.members("session_idle = \"2s\"")).await;
    let reset = "window.HubSpotConversations.clear({resetWidget:true})";
    let chat_reset = "__Host-membergate-chat-reset";
    let mut b = member(&gw, "lee@example.com", "Lee", &[]).await;
    assert!(settings(&b.get("/").await.body).unwrap()["identificationEmail"].is_string());
    let (ok, out) = gw.cli(&["session", "revoke", "--member", "lee@example.com"], "");
    assert!(ok, "{out}");
    // The CLI's change reaches the gateway within its change follower's second.
    let mut page = b.get("/").await;
    for _ in 0..50 {
        if !page.body.contains("identificationEmail") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        page = b.get("/").await;
    }
    assert!(page.body.contains(reset), "{}", page.body);
    assert!(!page.body.contains("identificationEmail"), "{}", page.body);
    assert!(b.session_cookie().is_none(), "the dead cookie is cleared");
    assert_eq!(page.headers["clear-site-data"], "\"cache\"");
    assert!(
        b.cookies.contains_key(chat_reset),
        "{:?}",
        page.set_cookies()
    );
    assert_eq!(page.headers["cache-control"], "private, no-store");
    // The page's script cleared the cookie (see tests/browser.rs): once only.
    b.cookies.remove(chat_reset);
    let page = b.get("/").await;
    assert!(!page.body.contains(reset), "{}", page.body);
    assert!(page.set_cookies().is_empty(), "{:?}", page.set_cookies());

    // Idled out: the same, on whatever the first request is (here a log-in
    // page of the gateway's own), for the next page with the widget.
    assert_eq!(b.login("lee@example.com", PASSWORD).await.status, 303);
    assert!(b.get("/").await.body.contains("identificationEmail"));
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let login = b.get("/_membergate/login").await;
    assert_eq!(login.status, 200);
    assert!(b.session_cookie().is_none(), "{:?}", login.set_cookies());
    assert!(
        b.cookies.contains_key(chat_reset),
        "{:?}",
        login.set_cookies()
    );
    let page = b.get("/").await;
    assert!(page.body.contains(reset), "{}", page.body);
}

/// A session renewed moments ago (its member gained a group) is alive: a
/// page asked for with its old id, from a tab that had not got the new
/// cookie yet, is served without identification, but does not reset the
/// widget, as a session that is over does: the member's conversation stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_with_a_just_renewed_session_does_not_reset_the_widget() {
    let origin = PageOrigin::start(vec![]).await;
    let gw = start(&origin, BUILTIN, |s| s).await;
    let reset = "window.HubSpotConversations.clear({resetWidget:true})";
    let chat_reset = "__Host-membergate-chat-reset";
    let mut b = member(&gw, "rue@example.com", "Rue", &[]).await;
    assert!(settings(&b.get("/").await.body).unwrap()["identificationEmail"].is_string());
    let mut other_tab = Browser::new(&gw);
    other_tab.cookies = b.cookies.clone();
    let (ok, out) = gw.cli(&["group", "add", "rue@example.com", "vip"], "");
    assert!(ok, "{out}");
    // The CLI's change reaches the gateway within its change follower's
    // second; the first page after it renews the session.
    let before = b.session_cookie();
    for _ in 0..50 {
        b.get("/").await;
        if b.session_cookie() != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(b.session_cookie(), before, "the session was not renewed");
    let page = other_tab.get("/").await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains(reset), "{}", page.body);
    assert!(
        !other_tab.cookies.contains_key(chat_reset),
        "{:?}",
        page.set_cookies()
    );
    assert!(settings(&b.get("/").await.body).unwrap()["identificationEmail"].is_string());
}

/// A member deleted by the admin CLI, another process: within the change
/// follower's second, the running gateway drops their identification
/// tokens too, each holding their name and address (an erasure request
/// leaves nothing of them in memory for the tokens' twelve hours).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_deleted_elsewhere_leaves_no_token_in_memory() {
    let origin = PageOrigin::start(vec![]).await;
    let gw = start(&origin, BUILTIN, |s| s).await;
    let mut ada = member(&gw, "ada@example.com", "Ada", &[]).await;
    let mut bob = member(&gw, "bob@example.com", "Bob", &[]).await;
    for b in [&mut ada, &mut bob] {
        assert!(settings(&b.get("/").await.body).unwrap()["identificationToken"].is_string());
    }
    let cached = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("membergate_identification_cache_entries "))
            .map(str::to_owned)
    };
    assert_eq!(cached(&gw.metrics().await).as_deref(), Some("2"));
    let (ok, out) = gw.cli(&["member", "delete", "ada@example.com"], "");
    assert!(ok, "{out}");
    let mut left = cached(&gw.metrics().await);
    for _ in 0..50 {
        if left.as_deref() == Some("1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = cached(&gw.metrics().await);
    }
    assert_eq!(left.as_deref(), Some("1"), "bob's token stays, ada's goes");
}

/// A page seen before logging in stays in the browser's cache with its weak
/// ETag. After the log-in, Chromium revalidates it with that ETag although
/// `Vary: Cookie` no longer matches, and an origin that compares ETags (as
/// nginx, Apache and Django do) answers 304: the member would be shown the
/// anonymous copy, unidentified. A member's page is asked for whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_from_before_the_log_in_is_not_revalidated() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let unchanged = head
                    .lines()
                    .any(|l| l.starts_with("if-none-match:") && l.contains("\"v1\""));
                let response = if unchanged {
                    "HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\nconnection: close\r\n\r\n"
                        .to_owned()
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\netag: \"v1\"\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{PAGE}",
                        PAGE.len()
                    )
                };
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    let gw = Gateway::start(
        Setup::new()
            .route("/", &format!("http://{addr}"))
            .chat(BUILTIN),
    )
    .await;
    let page_load = [("accept", "text/html"), ("sec-fetch-dest", "document")];
    let anonymous = Browser::new(&gw).get_with("/blog/tides", &page_load).await;
    assert_eq!(anonymous.headers["etag"], "W/\"v1\"");
    // An anonymous visitor's copy is still theirs to revalidate.
    let revalidate = [page_load[0], page_load[1], ("if-none-match", "W/\"v1\"")];
    let again = Browser::new(&gw).get_with("/blog/tides", &revalidate).await;
    assert_eq!(again.status, 304);

    let mut ada = member(&gw, "ada@example.com", "Ada", &[]).await;
    let page = ada.get_with("/blog/tides", &revalidate).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        settings(&page.body).unwrap()["identificationEmail"],
        "ada@example.com"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_plain_html_pages_are_touched() {
    let pages = vec![
        (
            "/data.json",
            Page::html("{\"a\":\"</head>\"}").with("content-type", "application/json"),
        ),
        (
            "/compress",
            Page::html("<head></head>").with("content-encoding", "compress"),
        ),
        ("/gone", Page::html("<head></head>").status(404)),
        (
            "/unchanged",
            Page::html("").status(304).with("etag", "\"v1\""),
        ),
        ("/nohead", Page::html("<body><p>x</p></body>")),
        (
            "/part",
            Page::html("<head></head>")
                .status(206)
                .with("content-range", "bytes 0-12/100"),
        ),
    ];
    // F2: not an HTML document to show; F3: not an ASCII-compatible charset.
    let untouched: Vec<(&'static str, Page)> = vec![
        ("/plain", typed("text/plain", b"<head></head>")),
        ("/svg", typed("image/svg+xml", b"<svg><head></head></svg>")),
        (
            "/xhtml",
            typed("application/xhtml+xml", b"<html><head></head></html>"),
        ),
        (
            "/untyped",
            Page {
                headers: vec![],
                ..Page::html("<head></head>")
            },
        ),
        (
            "/download",
            Page::html("<head></head>").with("content-disposition", "attachment; filename=a.html"),
        ),
        // Downloads too, to browsers: a file name in raw UTF-8, a type that
        // is not `inline` (RFC 6266, 4.2), a second type they would go by.
        (
            "/download-utf8",
            Page::html("<head></head>")
                .with("content-disposition", "attachment; filename=\"Résumé été.html\""),
        ),
        (
            "/download-misspelt",
            Page::html("<head></head>")
                .with("content-disposition", "attachement; filename=\"a.html\""),
        ),
        (
            "/two-types",
            Page::html("<head></head>").with("content-type", "application/octet-stream"),
        ),
        (
            "/iso-2022-jp",
            typed(
                "text/html; charset=ISO-2022-JP",
                b"<head></head>\x1b$B$3\x1b(B",
            ),
        ),
        (
            "/utf-7",
            typed("text/html; charset=UTF-7", b"<head></head>+ZeVnLIqe-"),
        ),
        (
            "/utf-16",
            typed("text/html; charset=utf-16le", &utf16le("<head></head>")),
        ),
        (
            "/bom",
            typed(
                "text/html",
                &[&[0xFF, 0xFE][..], &utf16le(SPELLS_HEAD)].concat(),
            ),
        ),
        // No charset in the header: the page's own <meta> names one the
        // snippet cannot be written in, or one no browser knows.
        (
            "/meta-iso-2022-jp",
            typed(
                "text/html",
                b"<head><meta charset=ISO-2022-JP>\x1b$B$3\x1b(B</head>",
            ),
        ),
        (
            "/meta-utf-7",
            typed("text/html", b"<head><meta charset=utf-7></head>+ZeVnLIqe-"),
        ),
        (
            "/meta-http-equiv",
            typed(
                "text/html",
                b"<head><meta http-equiv=content-type content=\"text/html; charset=iso-2022-jp\"></head>",
            ),
        ),
        // The first </head> in the bytes is inside a comment (F4): the
        // <meta> after it still counts.
        (
            "/meta-after-a-commented-head",
            typed(
                "text/html",
                b"<head><!-- </head> --><meta charset=ISO-2022-JP>\x1b$B$3\x1b(B</head>",
            ),
        ),
    ];
    let mut pages = pages;
    pages.extend(untouched.iter().cloned());
    pages.push(("/fragment", Page::html("<tr><td>x</td></tr>")));
    pages.push((
        "/latin",
        typed(
            "text/html",
            b"<head><meta charset=windows-1252><title>Caf\xE9</title></head>",
        ),
    ));
    pages.push((
        "/labelled",
        typed(
            "text/html; charset=utf-8",
            b"<head><meta charset=iso-2022-jp></head>",
        ),
    ));
    let origin = PageOrigin::start(pages).await;
    let gw = start(&origin, BUILTIN, |s| s).await;
    let mut b = Browser::new(&gw);
    let page = b.get("/data.json").await;
    assert_eq!(page.body, "{\"a\":\"</head>\"}");
    // A coding the gateway does not decode: passed through byte for byte.
    let raw = gw
        .client()
        .get(gw.https_url("/compress"))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.headers()["content-encoding"], "compress");
    assert_eq!(raw.text().await.unwrap(), "<head></head>");
    assert_eq!(b.get("/gone").await.body, "<head></head>");
    let unchanged = b
        .get_with("/unchanged", &[("if-none-match", "\"v1\"")])
        .await;
    assert_eq!((unchanged.status, unchanged.body.as_str()), (304, ""));
    assert_eq!(unchanged.headers["etag"], "\"v1\"");
    assert_eq!(b.get("/part").await.body, "<head></head>");
    assert!(
        b.get("/nohead")
            .await
            .body
            .starts_with("<body><script data-membergate=\"loader\"")
    );
    // HEAD: no body, and the headers the GET gets (RFC 9110, 9.3.2).
    let head = gw
        .client()
        .head(gw.https_url("/page"))
        .send()
        .await
        .unwrap();
    let get = gw.client().get(gw.https_url("/page")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    for name in [
        "etag",
        "vary",
        "cache-control",
        "content-length",
        "content-encoding",
    ] {
        let values = |r: &reqwest::Response| -> Vec<String> {
            r.headers()
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(values(&head), values(&get), "{name}");
    }
    assert_eq!(head.headers()["etag"], "W/\"v1\"");
    assert!(head.bytes().await.unwrap().is_empty());
    for (path, page) in &untouched {
        let got = gw.client().get(gw.https_url(path)).send().await.unwrap();
        assert_eq!(got.status(), 200, "{path}");
        assert_eq!(got.bytes().await.unwrap(), page.body, "{path} was changed");
    }
    // An htmx-style fragment has no head or body to take the widget.
    assert_eq!(b.get("/fragment").await.body, "<tr><td>x</td></tr>");
    // A page labelled only by its <meta>: injected, its other bytes kept.
    let latin = gw
        .client()
        .get(gw.https_url("/latin"))
        .send()
        .await
        .unwrap();
    let latin = latin.bytes().await.unwrap();
    assert!(latin.starts_with(b"<head><meta charset=windows-1252><title>Caf\xE9</title><script data-membergate=\"loader\""));
    assert!(latin.ends_with(b"</script></head>"));
    // The header's charset outranks the page's <meta>, as in browsers.
    let labelled = b.get("/labelled").await.body;
    assert!(
        labelled.starts_with("<head><meta charset=iso-2022-jp><script data-membergate=\"loader\""),
        "{labelled}"
    );
}

/// A page of the given type and bytes.
fn typed(content_type: &str, body: &[u8]) -> Page {
    Page {
        headers: vec![("content-type", content_type.to_owned())],
        body: body.to_vec(),
        ..Page::html("")
    }
}

/// Characters whose UTF-16LE bytes, read as ASCII, spell `<head></head> `.
const SPELLS_HEAD: &str = "\u{683C}\u{6165}\u{3E64}\u{2F3C}\u{6568}\u{6461}\u{203E}";

fn utf16le(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn compressed(coding: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "br" => {
            let mut out = Vec::new();
            {
                let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 20);
                e.write_all(data).unwrap();
            }
            out
        }
        "zstd" => zstd::encode_all(data, 3).unwrap(),
        other => panic!("{other}"),
    }
}

fn decompressed(coding: &str, data: &[u8]) -> String {
    use std::io::Read;
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .unwrap();
        }
        "br" => {
            brotli::BrotliDecompress(&mut &data[..], &mut out).unwrap();
        }
        "identity" => out = data.to_vec(),
        other => panic!("{other}"),
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_pages_are_read_as_browsers_read_them() {
    let page = "<!doctype html><html><head><title>Tides</title></head><body><p>high water</p></body></html>";
    let (first, second) = page.split_at(page.find("<body>").unwrap());
    let mut two_members = compressed("gzip", first.as_bytes());
    two_members.extend(compressed("gzip", second.as_bytes()));
    let mut stray_newline = compressed("gzip", page.as_bytes());
    stray_newline.push(b'\n');
    let raw_deflate = {
        use std::io::Write;
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(page.as_bytes()).unwrap();
        e.finish().unwrap()
    };
    let coded = |coding: &str, body: Vec<u8>| {
        Page::html("")
            .with("content-encoding", coding)
            .with_body(body)
    };
    let origin = PageOrigin::start(vec![
        ("/two-members", coded("gzip", two_members)),
        ("/stray-newline", coded("gzip", stray_newline)),
        ("/raw-deflate", coded("deflate", raw_deflate)),
        ("/empty", coded("gzip", Vec::new())),
    ])
    .await;
    let gw = start(&origin, BUILTIN, |s| s).await;
    let loader = "<script data-membergate=\"loader\" async defer src=\"https://chat.example.com/widget.js\"></script>";
    let rewritten = page.replace("</head>", &format!("{loader}</head>"));
    for path in ["/two-members", "/stray-newline", "/raw-deflate", "/empty"] {
        let response = gw
            .client()
            .get(gw.https_url(path))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let body = response.text().await.unwrap();
        let expected = if path == "/empty" { "" } else { &rewritten };
        assert_eq!(body, expected, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_too_large_to_rewrite_arrives_as_it_came() {
    // One tag in the head larger than the rewriter's memory (1 MiB).
    let page = format!(
        "<!doctype html><html><head><title>Map</title><script src=\"data:,{}\"></script></head><body>x</body></html>",
        "a".repeat(1_200_000)
    );
    let origin = PageOrigin::start(vec![("/map", Page::html(&page))]).await;
    let gw = start(&origin, BUILTIN, |s| s).await;
    for coding in ["identity", "gzip"] {
        let response = gw
            .client()
            .get(gw.https_url("/map"))
            .header("accept", "text/html")
            .header("accept-encoding", coding)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = decompressed(coding, &response.bytes().await.unwrap());
        assert!(body == page, "{coding}: {} bytes", body.len());
    }
    gw.wait_for_log("the page passes as it came").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_rewrite_sends_what_it_has_while_the_origin_is_silent() {
    use std::io::Write;
    let origin = FaultyOrigin::start(Fault::HtmlHeadThenSilence).await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url()).chat(BUILTIN)).await;
    for coding in ["gzip", "br"] {
        let mut response = gw
            .client()
            .get(gw.https_url("/later"))
            .header("accept", "text/html")
            .header("accept-encoding", coding)
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["content-encoding"], coding);
        // Decoded as it arrives: the rewritten start must come while the
        // origin still holds the rest of the page.
        let mut gzip = flate2::write::GzDecoder::new(Vec::new());
        let mut br = brotli::DecompressorWriter::new(Vec::new(), 4096);
        loop {
            let chunk = response.chunk().await.unwrap();
            let chunk = chunk.expect("the body ended before its start was sent");
            let decoded = if coding == "gzip" {
                gzip.write_all(&chunk).unwrap();
                gzip.flush().unwrap();
                gzip.get_ref()
            } else {
                br.write_all(&chunk).unwrap();
                br.flush().unwrap();
                br.get_ref()
            };
            let text = String::from_utf8_lossy(decoded);
            if text.contains("<p>loading</p>") {
                assert_eq!(
                    text,
                    HEAD_THEN_SILENCE.replace(
                        "</head>",
                        "<script data-membergate=\"loader\" async defer src=\"https://chat.example.com/widget.js\"></script></head>"
                    ),
                    "{coding}"
                );
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_pages_are_decoded_rewritten_and_compressed_for_the_client() {
    let long_page = format!(
        "<!doctype html><html><head><title>Tides</title></head><body>{}</body></html>",
        "<p>High water at noon.</p>".repeat(2000)
    );
    let mut pages = Vec::new();
    for coding in ["gzip", "deflate", "br", "zstd"] {
        let path: &'static str = Box::leak(format!("/{coding}").into_boxed_str());
        pages.push((
            path,
            Page {
                status: 200,
                headers: vec![
                    ("content-type", "text/html; charset=utf-8".into()),
                    ("content-encoding", coding.into()),
                ],
                body: compressed(coding, long_page.as_bytes()),
            },
        ));
    }
    // 32 MiB of spaces in a few KiB of each coding, and a stream that is
    // not gzip at all.
    let mut bomb_page = b"<html><head>".to_vec();
    bomb_page.extend(std::iter::repeat_n(b' ', 32 << 20));
    let mut bombs = Vec::new();
    for coding in ["gzip", "deflate", "br", "zstd"] {
        let path: &'static str = Box::leak(format!("/bomb-{coding}").into_boxed_str());
        pages.push((
            path,
            Page::html("")
                .with("content-encoding", coding)
                .with_body(compressed(coding, &bomb_page)),
        ));
        bombs.push(path);
    }
    // Codings stacked in one field or in two: not one the gateway decodes
    // alone, so the page passes as it came, coding and all.
    let stacked = compressed("br", &compressed("gzip", long_page.as_bytes()));
    pages.push((
        "/stacked",
        Page::html("")
            .with("content-encoding", "gzip, br")
            .with_body(stacked.clone()),
    ));
    pages.push((
        "/stacked-fields",
        Page::html("")
            .with("content-encoding", "gzip")
            .with("content-encoding", "br")
            .with_body(stacked.clone()),
    ));
    let mut corrupt = compressed("gzip", long_page.as_bytes());
    corrupt[40] ^= 0x55;
    pages.push((
        "/corrupt",
        Page {
            status: 200,
            headers: vec![
                ("content-type", "text/html".into()),
                ("content-encoding", "gzip".into()),
            ],
            body: corrupt,
        },
    ));
    let origin = PageOrigin::start(pages).await;
    let gw = start(&origin, BUILTIN, |s| {
        s.limits("max_rewrite_bytes = 1048576")
    })
    .await;
    let expected_marker = "<script data-membergate=\"loader\"";
    for coding in ["gzip", "deflate", "br", "zstd"] {
        for (accept, sent) in [
            (None, "identity"),
            (Some("gzip, deflate"), "gzip"),
            (Some("gzip, br"), "br"),
        ] {
            // A browser's page load, which asks for HTML.
            let mut request = gw
                .client()
                .get(gw.https_url(&format!("/{coding}")))
                .header("accept", "text/html");
            if let Some(accept) = accept {
                request = request.header("accept-encoding", accept);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let got = response
                .headers()
                .get("content-encoding")
                .map_or("identity", |v| v.to_str().unwrap())
                .to_owned();
            assert_eq!(got, sent, "{coding} {accept:?}");
            let vary: Vec<_> = response.headers().get_all("vary").iter().collect();
            assert!(vary.iter().any(|v| *v == "Accept-Encoding"), "{vary:?}");
            let body = decompressed(sent, &response.bytes().await.unwrap());
            let expected = long_page.replacen("</head>", expected_marker, 1);
            assert!(body.starts_with(&expected[..expected.find(expected_marker).unwrap()]));
            assert_eq!(
                body.matches(expected_marker).count(),
                1,
                "{coding} {accept:?}"
            );
            assert!(body.ends_with("</body></html>"), "{coding} {accept:?}");
            assert_eq!(
                body.len() - long_page.len(),
                body.find("</head>").unwrap() - long_page.find("</head>").unwrap()
            );
        }
    }
    // The origin was never asked to compress; the client's wish is kept for the way back.
    assert!(
        origin
            .accept_encodings
            .lock()
            .unwrap()
            .iter()
            .all(Option::is_none)
    );
    // A bomb stops at the cap, a corrupt stream where it breaks: the response
    // is cut short, nothing is buffered past the cap, and the gateway lives on.
    for path in bombs.into_iter().chain(["/corrupt"]) {
        // Over HTTP/2 the stream is reset, before or after the head went out.
        let cut = match gw.client().get(gw.https_url(path)).send().await {
            Err(_) => true,
            Ok(response) => response.bytes().await.is_err(),
        };
        assert!(cut, "{path} was not cut short");
    }
    let after = gw.client().get(gw.https_url("/gzip")).send().await.unwrap();
    assert_eq!(after.status(), 200);
    gw.wait_for_log("response cut short").await;
    for path in ["/stacked", "/stacked-fields"] {
        let response = gw
            .client()
            .get(gw.https_url(path))
            .header("accept-encoding", "gzip, br")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let codings: Vec<_> = response
            .headers()
            .get_all("content-encoding")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(codings.join(", "), "gzip, br", "{path}");
        assert_eq!(response.bytes().await.unwrap(), stacked, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_names_cannot_break_out_of_the_script() {
    let origin = PageOrigin::start(vec![]).await;
    let gw = start(&origin, BUILTIN, |s| s).await;
    // U+2028 and control characters are refused in names at the door; the
    // rest must be made harmless by the escaping.
    let evil = "</script><script>alert(1)</script><!--&amp;";
    let evil_too = "</SCRIPT ><!--<script>\";alert(1)//\\";
    let (ok, out) = gw.cli(
        &[
            "member",
            "add",
            "mallory@example.com",
            "--first-name",
            evil,
            "--last-name",
            evil_too,
        ],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{out}");
    let mut b = Browser::new(&gw);
    assert_eq!(b.login("mallory@example.com", PASSWORD).await.status, 303);
    let page = b.get("/").await;
    assert_eq!(page.body.matches("<script").count(), 2, "{}", page.body);
    assert_eq!(page.body.matches("</script>").count(), 2, "{}", page.body);
    assert!(!page.body.contains("<!--"));
    let token = settings(&page.body).unwrap()["identificationToken"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(claims(&token)["firstName"], evil);
    assert_eq!(claims(&token)["lastName"], evil_too);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_csp_is_honoured_never_loosened() {
    let origin = PageOrigin::start(vec![
        (
            "/nonce",
            Page::html(PAGE).with(
                "content-security-policy",
                "script-src 'nonce-r4nd0m' 'strict-dynamic'; object-src 'none'",
            ),
        ),
        (
            "/strict",
            Page::html(PAGE).with("content-security-policy", "default-src 'self'"),
        ),
        (
            "/no-scripts",
            Page::html(PAGE).with(
                "content-security-policy",
                "default-src 'self'; script-src-elem 'none'",
            ),
        ),
        (
            "/no-transform",
            Page::html(PAGE).with("cache-control", "max-age=60, No-Transform"),
        ),
        (
            "/trying-a-policy",
            Page::html(PAGE).with(
                "content-security-policy-report-only",
                "script-src 'self'; report-uri /csp-reports",
            ),
        ),
    ])
    .await;
    let gw = start(
        &origin,
        &format!("{BUILTIN}\nload_immediately = false"),
        |s| s,
    )
    .await;
    let mut b = Browser::new(&gw);
    let page = b.get("/nonce").await;
    assert_eq!(
        page.body.matches("nonce=\"r4nd0m\"").count(),
        2,
        "{}",
        page.body
    );
    assert_eq!(
        page.headers["content-security-policy"],
        "script-src 'nonce-r4nd0m' 'strict-dynamic'; object-src 'none'"
    );
    let page = b.get("/strict").await;
    // HEAD gets the policy the GET gets, our script's hash and all.
    let head = gw
        .client()
        .head(gw.https_url("/strict"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.headers()["content-security-policy"],
        page.headers["content-security-policy"]
    );
    let csp = page.headers["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    let hash = settings_hash(&page.body);
    assert_eq!(csp, format!("default-src 'self'; script-src 'self' {hash}"));
    // A page that allows no script, or that intermediaries must not change,
    // passes byte for byte: a hash beside 'none' would switch it off.
    let page = b.get("/no-scripts").await;
    assert_eq!(page.body, PAGE);
    assert_eq!(
        page.headers["content-security-policy"],
        "default-src 'self'; script-src-elem 'none'"
    );
    let page = b.get("/no-transform").await;
    assert_eq!(page.body, PAGE);
    assert_eq!(page.headers["content-length"], PAGE.len().to_string());
    // A policy being tried out is not sent a report for our script on
    // every page, and is not made an enforced one.
    let page = b.get("/trying-a-policy").await;
    let hash = settings_hash(&page.body);
    assert_eq!(
        page.headers["content-security-policy-report-only"],
        format!("script-src 'self' {hash}; report-uri /csp-reports").as_str()
    );
    assert!(!page.headers.contains_key("content-security-policy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_tokens_are_minted_once_per_member_even_under_concurrency() {
    let hubspot = FakeHubSpot::start(HubSpotMode::Answer).await;
    let origin = PageOrigin::start(vec![]).await;
    let chat = format!(
        "provider = \"hubspot\"\nportal_id = \"4242\"\napi_base = \"{}\"",
        hubspot.url()
    );
    let gw = start(&origin, &chat, |s| {
        s.env("MEMBERGATE_HUBSPOT_TOKEN", HUBSPOT_TOKEN)
    })
    .await;
    let b = member(&gw, "grace@example.com", "Grace", &[]).await;
    let cookie = format!("__Host-membergate={}", b.session_cookie().unwrap());
    let client = gw.client();
    let views = (0..50).map(|i| {
        let (client, cookie) = (client.clone(), cookie.clone());
        let url = gw.https_url(&format!("/blog/{i}"));
        tokio::spawn(async move {
            client
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    });
    for view in views {
        let page = view.await.unwrap();
        let s = settings(&page).unwrap_or_else(|| panic!("no settings in {page}"));
        assert_eq!(s["identificationEmail"], "grace@example.com");
        assert_eq!(s["identificationToken"], "hs-token-1");
        assert!(page.contains(
            "<script data-membergate=\"loader\" type=\"text/javascript\" id=\"hs-script-loader\" async defer src=\"//js.hs-scripts.com/4242.js\"></script>"
        ));
    }
    assert_eq!(hubspot.calls(), 1);
    assert_eq!(
        hubspot.bodies.lock().unwrap()[0],
        serde_json::json!({"email": "grace@example.com", "firstName": "Grace", "lastName": "Tester"})
    );
}

/// A site whose pages load HubSpot's widget themselves (the embed code in
/// the body, as HubSpot and CMS plugins install it) sets `loader = "page"`:
/// a member's page gets the settings once, before the page's own loader,
/// and no second loader; an anonymous visitor's page is not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_that_load_the_widget_themselves_get_only_the_settings() {
    let hubspot = FakeHubSpot::start(HubSpotMode::Answer).await;
    let embed = "<script type=\"text/javascript\" id=\"hs-script-loader\" async defer src=\"//js.hs-scripts.com/4242.js\"></script>";
    let in_body = format!("<html><head><title>t</title></head><body><p>x</p>{embed}</body></html>");
    let in_head = format!("<html><head>{embed}</head><body><p>x</p></body></html>");
    let origin = PageOrigin::start(vec![
        ("/in-body", Page::html(&in_body)),
        ("/in-head", Page::html(&in_head)),
    ])
    .await;
    let chat = format!(
        "provider = \"hubspot\"\nportal_id = \"4242\"\napi_base = \"{}\"\nloader = \"page\"",
        hubspot.url()
    );
    let gw = start(&origin, &chat, |s| {
        s.env("MEMBERGATE_HUBSPOT_TOKEN", HUBSPOT_TOKEN)
    })
    .await;
    let mut anonymous = Browser::new(&gw);
    for (path, page) in [("/in-body", &in_body), ("/in-head", &in_head)] {
        let got = anonymous.get(path).await;
        assert_eq!(&got.body, page, "{path}");
        // Not rewritten at all: the origin's length stands.
        assert_eq!(
            got.headers["content-length"],
            page.len().to_string().as_str()
        );
    }
    let mut b = member(&gw, "lin@example.com", "Lin", &[]).await;
    for path in ["/in-body", "/in-head"] {
        let page = b.get(path).await.body;
        assert_eq!(
            page.matches("hs-script-loader").count(),
            1,
            "{path}: {page}"
        );
        assert_eq!(page.matches("data-membergate").count(), 1, "{path}: {page}");
        let settings = settings(&page).unwrap();
        assert_eq!(settings["identificationEmail"], "lin@example.com");
        assert!(
            settings["identificationToken"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        );
        // The settings come before the page's loader runs: at the end of
        // the head, and the loader is async/defer or in the body.
        assert!(page.find("data-membergate").unwrap() < page.find("</head>").unwrap());
    }
    // `policy check` says what the setting means for each visitor.
    let url = gw.https_url("/in-body");
    let out = policy_check(&gw, &url, None);
    assert!(
        out.contains("chat: anonymous, nothing added (loader = page)"),
        "{out}"
    );
    let out = policy_check(&gw, &url, Some("lin@example.com"));
    assert!(
        out.contains("chat: identified, settings only (loader = page)"),
        "{out}"
    );
    // Without the setting, the gateway's loader goes in, and a page that
    // loads the widget in its head is left to itself.
    let gw = start(&origin, &chat.replace("\nloader = \"page\"", ""), |s| {
        s.env("MEMBERGATE_HUBSPOT_TOKEN", HUBSPOT_TOKEN)
    })
    .await;
    assert_eq!(Browser::new(&gw).get("/in-head").await.body, in_head);
    let (code, out) = support::check_config(
        &Setup::new()
            .route("/", &origin.url())
            .chat("provider = \"builtin\"\nwidget_url = \"/w.js\"\nloader = \"origin\""),
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("loader: expected membergate"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_or_slow_minting_never_holds_up_or_breaks_the_page() {
    // Failing: the page comes with the widget but without identification.
    let failing = FakeHubSpot::start(HubSpotMode::Fail).await;
    let origin = PageOrigin::start(vec![]).await;
    let chat =
        |url: String| format!("provider = \"hubspot\"\nportal_id = \"1\"\napi_base = \"{url}\"");
    let gw = start(&origin, &chat(failing.url()), |s| {
        s.env("MEMBERGATE_HUBSPOT_TOKEN", HUBSPOT_TOKEN)
    })
    .await;
    let mut b = member(&gw, "ann@example.com", "Ann", &[]).await;
    let page = b.get("/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("id=\"hs-script-loader\""));
    assert!(settings(&page.body).is_none());
    assert!(failing.calls() >= 1);

    // Slow: the page does not wait past mint_timeout; the mint finishes in
    // the background and the next page has the token.
    let slow = FakeHubSpot::start(HubSpotMode::Slow(Duration::from_millis(1500))).await;
    let gw = start(&origin, &chat(slow.url()), |s| {
        s.env("MEMBERGATE_HUBSPOT_TOKEN", HUBSPOT_TOKEN)
            .identification("mint_timeout = \"200ms\"")
    })
    .await;
    let mut b = member(&gw, "ann@example.com", "Ann", &[]).await;
    let page = b.get("/").await;
    assert_eq!(page.status, 200);
    assert!(settings(&page.body).is_none(), "{}", page.body);
    gw.wait_for_log("not ready in time").await;
    let mut token = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(s) = settings(&b.get("/").await.body) {
            token = Some(s["identificationToken"].clone());
            break;
        }
    }
    assert_eq!(token, Some("hs-token-1".into()));
    assert_eq!(slow.calls(), 1);

    // Never answering: the call is given up after ten page waits (2 s
    // here), and once the pause that starts (1 s) is over, a page asks again.
    let hanging = FakeHubSpot::start(HubSpotMode::HangFirst).await;
    let gw = start(&origin, &chat(hanging.url()), |s| {
        s.env("MEMBERGATE_HUBSPOT_TOKEN", HUBSPOT_TOKEN)
            .identification("mint_timeout = \"200ms\"")
    })
    .await;
    let mut b = member(&gw, "ann@example.com", "Ann", &[]).await;
    assert!(settings(&b.get("/").await.body).is_none());
    gw.wait_for_log("HubSpot did not answer within").await;
    assert_eq!(
        identified_within(&mut b, 40).await,
        Some("hs-token-2".into())
    );
    assert_eq!(hanging.calls(), 2);
}

/// A member's image, script or fetch is rarely rewritten, and a `HEAD`
/// never: none of them starts a HubSpot call (or waits for one). Once a
/// page has the token, a fetched HTML document uses the cached one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_pages_start_hubspot_calls() {
    let hubspot = FakeHubSpot::start(HubSpotMode::Answer).await;
    let origin = PageOrigin::start(vec![(
        "/logo.png",
        Page {
            status: 200,
            headers: vec![("content-type", "image/png".into())],
            body: b"\x89PNG".to_vec(),
        },
    )])
    .await;
    let chat = format!(
        "provider = \"hubspot\"\nportal_id = \"1\"\napi_base = \"{}\"",
        hubspot.url()
    );
    let gw = start(&origin, &chat, |s| {
        s.env("MEMBERGATE_HUBSPOT_TOKEN", HUBSPOT_TOKEN)
    })
    .await;
    let mut ann = member(&gw, "ann@example.com", "Ann", &[]).await;
    let image = ann
        .get_with("/logo.png", &[("sec-fetch-dest", "image")])
        .await;
    assert_eq!(image.status, 200);
    let fetched = ann
        .get_with("/blog/tides", &[("sec-fetch-dest", "empty")])
        .await;
    assert!(settings(&fetched.body).is_none(), "{}", fetched.body);
    let head = gw
        .client()
        .head(gw.https_url("/blog/tides"))
        .header("cookie", ann.cookie_header().unwrap())
        .header("sec-fetch-dest", "document")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        hubspot.calls(),
        0,
        "a HubSpot call for a request that is not a page"
    );

    let page = ann
        .get_with("/blog/tides", &[("sec-fetch-dest", "document")])
        .await;
    assert_eq!(
        settings(&page.body).unwrap()["identificationToken"],
        "hs-token-1"
    );
    let fetched = ann
        .get_with("/blog/lamps", &[("sec-fetch-dest", "empty")])
        .await;
    assert_eq!(
        settings(&fetched.body).unwrap()["identificationToken"],
        "hs-token-1"
    );
    assert_eq!(hubspot.calls(), 1);
}

/// A page of a member who has just changed their name joins the HubSpot
/// call still running for the old name: that token is not theirs any more,
/// and the page gets one minted for the new name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_member_never_gets_the_old_names_token() {
    let hubspot = FakeHubSpot::start(HubSpotMode::Slow(Duration::from_millis(1500))).await;
    let origin = PageOrigin::start(vec![]).await;
    let chat = format!(
        "provider = \"hubspot\"\nportal_id = \"1\"\napi_base = \"{}\"",
        hubspot.url()
    );
    let gw = start(&origin, &chat, |s| {
        s.env("MEMBERGATE_HUBSPOT_TOKEN", HUBSPOT_TOKEN)
            .identification("mint_timeout = \"10s\"")
    })
    .await;
    let mut ann = member(&gw, "ann@example.com", "Ann", &[]).await;
    let mut same = Browser::new(&gw);
    same.cookies = ann.cookies.clone();
    let first = async { ann.get("/blog/a").await };
    let renamed = async {
        // Once the first page's call is under way.
        while hubspot.calls() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let r = same
            .submit(
                "/_membergate/account",
                "/_membergate/account/name",
                &[("first_name", "Anne"), ("last_name", "Tester")],
            )
            .await;
        assert_eq!(r.status, 303, "{}", r.body);
        same.get("/blog/b").await
    };
    let (first, second) = tokio::join!(first, renamed);
    assert_eq!(
        settings(&first.body).unwrap()["identificationToken"],
        "hs-token-1"
    );
    let bodies = hubspot.bodies.lock().unwrap().clone();
    let names: Vec<_> = bodies.iter().map(|b| b["firstName"].clone()).collect();
    assert_eq!(names, ["Ann", "Anne"]);
    assert_eq!(
        settings(&second.body).unwrap()["identificationToken"],
        "hs-token-2",
        "the page after the rename carries the token minted for the old name"
    );
}

/// The token on the first page of `b` that has one, polling every 100 ms.
async fn identified_within(b: &mut Browser, polls: usize) -> Option<String> {
    for _ in 0..polls {
        if let Some(s) = settings(&b.get("/").await.body) {
            return s["identificationToken"].as_str().map(str::to_owned);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// During an outage, pages do not each call HubSpot: a failed call pauses
/// calls to the account (for as long as a `Retry-After` asks), pages go out
/// at once without identification, and after the pause one call tries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hubspot_account_is_given_a_rest() {
    let limiting = FakeHubSpot::start(HubSpotMode::FailFirst {
        status: 429,
        calls: 1,
    })
    .await;
    let origin = PageOrigin::start(vec![]).await;
    let chat = format!(
        "provider = \"hubspot\"\nportal_id = \"1\"\napi_base = \"{}\"",
        limiting.url()
    );
    let gw = start(&origin, &chat, |s| {
        s.env("MEMBERGATE_HUBSPOT_TOKEN", HUBSPOT_TOKEN)
    })
    .await;
    let mut ann = member(&gw, "ann@example.com", "Ann", &[]).await;
    let mut bob = member(&gw, "bob@example.com", "Bob", &[]).await;
    let page = ann.get("/").await;
    assert!(page.body.contains("id=\"hs-script-loader\""));
    assert!(settings(&page.body).is_none());
    assert_eq!(limiting.calls(), 1);
    // Another member's pages, during the pause: no call, no wait.
    for _ in 0..3 {
        let page = bob.get("/").await;
        assert_eq!(page.status, 200);
        assert!(page.body.contains("id=\"hs-script-loader\""));
        assert!(settings(&page.body).is_none());
    }
    // Past the 1 s a first failure rests, but within the 3 s HubSpot asked for.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(settings(&bob.get("/").await.body).is_none());
    assert_eq!(limiting.calls(), 1);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("membergate_identification_tokens_total{result=\"paused\"} 4"),
        "{metrics}"
    );
    assert_eq!(
        identified_within(&mut bob, 60).await,
        Some("hs-token-2".into())
    );
    assert_eq!(
        identified_within(&mut ann, 1).await,
        Some("hs-token-3".into())
    );
    assert_eq!(limiting.calls(), 3);
}

/// HubSpot's refusal of one member (a 400) is remembered for a while: the
/// member's next pages do not call again, and other members are not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubspot_refusing_one_member_costs_one_call() {
    let refusing = FakeHubSpot::start(HubSpotMode::FailFirst {
        status: 400,
        calls: 1,
    })
    .await;
    let origin = PageOrigin::start(vec![]).await;
    let chat = format!(
        "provider = \"hubspot\"\nportal_id = \"1\"\napi_base = \"{}\"",
        refusing.url()
    );
    let gw = start(&origin, &chat, |s| {
        s.env("MEMBERGATE_HUBSPOT_TOKEN", HUBSPOT_TOKEN)
    })
    .await;
    let mut ann = member(&gw, "ann@example.com", "Ann", &[]).await;
    for _ in 0..3 {
        assert!(settings(&ann.get("/").await.body).is_none());
    }
    assert_eq!(refusing.calls(), 1);
    let mut bob = member(&gw, "bob@example.com", "Bob", &[]).await;
    assert_eq!(
        identified_within(&mut bob, 1).await,
        Some("hs-token-2".into())
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("membergate_identification_tokens_total{result=\"refused\"} 3"),
        "{metrics}"
    );
    // A new name is a new identity: HubSpot is asked again at once.
    let renamed = ann
        .submit(
            "/_membergate/account",
            "/_membergate/account/name",
            &[("first_name", "Anne"), ("last_name", "Tester")],
        )
        .await;
    assert_eq!(renamed.status, 303, "{}", renamed.body);
    assert_eq!(
        identified_within(&mut ann, 1).await,
        Some("hs-token-3".into())
    );
}

/// A token from one HubSpot portal is no token for another: after a reload
/// that changes the portal, the next page gets a token from the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_hubspot_portal_retires_cached_tokens() {
    let old = FakeHubSpot::start(HubSpotMode::Answer).await;
    let new = FakeHubSpot::start(HubSpotMode::Answer).await;
    let origin = PageOrigin::start(vec![]).await;
    let chat = |portal: &str, url: String| {
        format!("provider = \"hubspot\"\nportal_id = \"{portal}\"\napi_base = \"{url}\"")
    };
    let gw = start(&origin, &chat("2222", old.url()), |s| {
        s.env("MEMBERGATE_HUBSPOT_TOKEN", HUBSPOT_TOKEN)
    })
    .await;
    let mut b = member(&gw, "ann@example.com", "Ann", &[]).await;
    let page = b.get("/").await;
    assert!(page.body.contains("2222.js"));
    assert_eq!(
        settings(&page.body).unwrap()["identificationToken"],
        "hs-token-1"
    );

    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(
        &gw.config_path,
        config.replace(&chat("2222", old.url()), &chat("1111", new.url())),
    )
    .unwrap();
    gw.signal("HUP");
    gw.wait_for_log("configuration reloaded").await;
    let page = b.get("/").await;
    assert!(page.body.contains("1111.js"), "{}", page.body);
    assert_eq!(
        settings(&page.body).unwrap()["identificationToken"],
        "hs-token-1"
    );
    assert_eq!((old.calls(), new.calls()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_explains_chat_settings() {
    let setup = Setup::new()
        .route("/", "http://127.0.0.1:9")
        .chat(
            "provider = \"hubspot\"\nportal_id = \"abc\"\naccess_token_env = \"MG_TEST_UNSET_TOKEN\"\nshow = \"sometimes\"\n\
             [[sites.chat.rules]]\npath = \"/a\"\nshow = \"groups\"\n",
        )
        .identification(&format!(
            "token_lifetime = \"10s\"\n[[identification.keys]]\nid = \"k1\"\nsecret_env = \"MG_TEST_UNSET_KEY\"\n\
             [[identification.api_keys]]\nname = \"a\"\nkey_sha256 = \"{0}\"\nscopes = [\"create\"]\nsites = [\"main\"]\n\
             [[identification.api_keys]]\nname = \"b\"\nkey_sha256 = \"{0}\"\nscopes = [\"create\"]\n",
            sha256_hex("one key for two names")
        ));
    let (code, text) = support::check_config(&setup);
    assert_eq!(code, Some(2), "{text}");
    for expected in [
        "sites[0].chat.portal_id: expected the HubSpot account id",
        "sites[0].chat.access_token_env: the environment variable MG_TEST_UNSET_TOKEN",
        "sites[0].chat.show: expected one of everyone, members, groups, never",
        "sites[0].chat.rules[0].groups: show = \"groups\" needs a non-empty groups list",
        "identification.token_lifetime: expected at least 1m",
        "identification.keys[0]: the environment variable MG_TEST_UNSET_KEY is not set",
        "identification.api_keys[1].key_sha256: the same key as \"a\"; give each key its own",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

const API_KEY: &str = "mgk_backend_0123456789abcdefghijklmnop";
const VERIFY_KEY: &str = "mgk_verifier_0123456789abcdefghijklmn";

fn sha256_hex(text: &str) -> String {
    <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn api_setup(keys: &str) -> String {
    format!(
        "{keys}\n\
         [[identification.api_keys]]\nname = \"backend\"\nkey_sha256 = \"{}\"\nscopes = [\"create\", \"verify\"]\n\
         [[identification.api_keys]]\nname = \"verifier\"\nkey_sha256 = \"{}\"\nscopes = [\"verify\"]\n",
        sha256_hex(API_KEY),
        sha256_hex(VERIFY_KEY)
    )
}

const CREATE: &str = "/_membergate/api/conversations/v3/visitor-identification/tokens/create";
const VERIFY: &str = "/_membergate/api/visitor-identification/tokens/verify";

async fn call(gw: &Gateway, path: &str, key: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let mut request = gw
        .client()
        .post(gw.https_url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_api_mints_and_verifies_with_scoped_keys() {
    let origin = PageOrigin::start(vec![]).await;
    let keys = "[[identification.keys]]\nid = \"k1\"\nsecret_file = \"k1.key\"";
    let gw = start(&origin, BUILTIN, |s| {
        s.identification(&api_setup(keys))
            .file("k1.key", "k1-secret-0123456789-0123456789-0123456789")
            .file("k2.key", "k2-secret-0123456789-0123456789-0123456789")
    })
    .await;
    let ada = r#"{"email": " Ada@Example.com", "firstName": "Ada", "lastName": "Lovelace"}"#;

    let (status, body) = call(&gw, CREATE, None, ada).await;
    assert_eq!(
        (status, &body["category"]),
        (401, &"INVALID_AUTHENTICATION".into())
    );
    assert_eq!(body["message"], "send Authorization: Bearer <API key>");
    let (status, body) = call(
        &gw,
        CREATE,
        Some("mgk_wrong_0123456789abcdefghijklmnop"),
        ada,
    )
    .await;
    assert_eq!(
        (status, &body["message"]),
        (401, &"the API key is not valid".into())
    );
    // A key too short to be one is never compared, and the answer says why.
    let (status, body) = call(&gw, CREATE, Some(&API_KEY[..31]), ada).await;
    assert_eq!(
        (status, &body["message"]),
        (
            401,
            &"the API key is not valid: keys have at least 32 characters".into()
        )
    );
    let (status, body) = call(&gw, CREATE, Some(VERIFY_KEY), ada).await;
    assert_eq!((status, &body["category"]), (403, &"MISSING_SCOPES".into()));

    let (status, body) = call(&gw, CREATE, Some(API_KEY), ada).await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("mgv1.k1."), "{token}");
    let (status, claims) = call(
        &gw,
        VERIFY,
        Some(VERIFY_KEY),
        &serde_json::json!({ "token": token }).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{claims}");
    assert_eq!(
        (&claims["email"], &claims["firstName"], &claims["aud"]),
        (&"ada@example.com".into(), &"Ada".into(), &"main".into())
    );
    // J3: a hostile name is data: minted and verified back exactly.
    let hostile = "</script><script>alert(1)</script>";
    let mint = serde_json::json!({ "email": "eve@example.com", "firstName": hostile }).to_string();
    let (status, body) = call(&gw, CREATE, Some(API_KEY), &mint).await;
    assert_eq!(status, 200, "{body}");
    let verify = serde_json::json!({ "token": body["token"] }).to_string();
    let (status, claims) = call(&gw, VERIFY, Some(VERIFY_KEY), &verify).await;
    assert_eq!(
        (status, &claims["firstName"]),
        (200, &hostile.into()),
        "{claims}"
    );

    // Tampered: refused with the reason. (A character inside the signature:
    // the last one also carries padding bits, and changing it can make the
    // base64 itself invalid, which is "malformed" rather than "forged".)
    let mut forged = token.clone().into_bytes();
    let at = forged.len() - 5;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let (status, body) = call(
        &gw,
        VERIFY,
        Some(API_KEY),
        &serde_json::json!({ "token": forged }).to_string(),
    )
    .await;
    assert_eq!(
        (status, &body["category"]),
        (401, &"INVALID_TOKEN".into()),
        "{body}"
    );

    // Malformed input: a 4xx JSON error that says what is wrong.
    let long_email = format!("{{\"email\": \"{}@example.com\"}}", "a".repeat(10_000));
    for (body, status, needle) in [
        ("{\"email\": ", 400, "not the expected JSON"),
        ("[]", 400, "not the expected JSON"),
        ("{\"firstName\": \"x\"}", 400, "missing field `email`"),
        (
            "{\"email\": \"a@example.com\", \"role\": \"admin\"}",
            400,
            "unknown field",
        ),
        ("{\"email\": \"not an address\"}", 400, "email:"),
        (
            "{\"email\": \"a@example.com\", \"firstName\": \"a\\u0000b\"}",
            400,
            "control characters",
        ),
        // J3: the wrong type, two @s, and an address too long to be one
        // (under the body cap, so the validator and not the cap answers).
        (
            "{\"email\": [\"a@example.com\"]}",
            400,
            "not the expected JSON",
        ),
        ("{\"email\": \"a@b@example.com\"}", 400, "email:"),
        (long_email.as_str(), 400, "email:"),
    ] {
        let (got, answer) = call(&gw, CREATE, Some(API_KEY), body).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(needle),
            "{body}: {answer}"
        );
    }
    // `null` for a name is a missing name, as HubSpot's clients send it.
    let unnamed = r#"{"email": "ada@example.com", "firstName": null, "lastName": null}"#;
    let (status, body) = call(&gw, CREATE, Some(API_KEY), unnamed).await;
    assert_eq!(status, 200, "{body}");
    let minted = self::claims(body["token"].as_str().unwrap());
    assert_eq!(
        (&minted["firstName"], &minted["lastName"]),
        (&"".into(), &"".into())
    );
    let big = format!("{{\"email\": \"{}@example.com\"}}", "a".repeat(20_000));
    assert_eq!(call(&gw, CREATE, Some(API_KEY), &big).await.0, 413);
    let get = gw.client().get(gw.https_url(CREATE)).send().await.unwrap();
    assert_eq!(get.status(), 405);

    // Rotation: a new signing key first, the old one still verifies; then retired.
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    let rotated = config.replace(
        keys,
        "[[identification.keys]]\nid = \"k2\"\nsecret_file = \"k2.key\"\n[[identification.keys]]\nid = \"k1\"\nsecret_file = \"k1.key\"",
    );
    std::fs::write(&gw.config_path, &rotated).unwrap();
    gw.signal("HUP");
    gw.wait_for_log("configuration reloaded").await;
    let verify_old = serde_json::json!({ "token": token }).to_string();
    assert_eq!(call(&gw, VERIFY, Some(API_KEY), &verify_old).await.0, 200);
    let (_, body) = call(&gw, CREATE, Some(API_KEY), ada).await;
    let new_token = body["token"].as_str().unwrap().to_owned();
    assert!(new_token.starts_with("mgv1.k2."));
    // J2: with both keys known, a token relabelled with the other key id, an
    // empty signature or a signature moved from another token is refused.
    let verify = |token: &str| serde_json::json!({ "token": token }).to_string();
    let relabelled = new_token.replacen("mgv1.k2.", "mgv1.k1.", 1);
    let unsigned = format!("{}.", new_token.rsplit_once('.').unwrap().0);
    let (old_body, old_sig) = token.rsplit_once('.').unwrap();
    let (new_body, new_sig) = new_token.rsplit_once('.').unwrap();
    let swapped = [
        format!("{old_body}.{new_sig}"),
        format!("{new_body}.{old_sig}"),
    ];
    for forged in [&relabelled, &unsigned, &swapped[0], &swapped[1]] {
        let (status, body) = call(&gw, VERIFY, Some(API_KEY), &verify(forged)).await;
        assert_eq!(
            (status, &body["category"]),
            (401, &"INVALID_TOKEN".into()),
            "{forged}: {body}"
        );
    }
    let retired = rotated.replace(
        "[[identification.keys]]\nid = \"k1\"\nsecret_file = \"k1.key\"",
        "",
    );
    std::fs::write(&gw.config_path, &retired).unwrap();
    gw.signal("HUP");
    for _ in 0..100 {
        if call(&gw, VERIFY, Some(API_KEY), &verify_old).await.0 == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = call(&gw, VERIFY, Some(API_KEY), &verify_old).await;
    assert_eq!(status, 401);
    assert!(
        body["message"].as_str().unwrap().contains("unknown key"),
        "{body}"
    );

    // Guessing keys is limited per client address.
    let mut limited = false;
    for _ in 0..30 {
        if call(&gw, CREATE, Some("mgk_guess"), ada).await.0 == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "no rate limit on failed authentication");
    // The keys never reach the log.
    let log = gw.log();
    assert!(!log.contains(API_KEY) && !log.contains(VERIFY_KEY));
}

/// A page's token comes from the cache until shortly before it expires, but
/// never from a key that no longer signs: after a rotation the chat backend
/// may have retired it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_retires_cached_page_tokens() {
    let origin = PageOrigin::start(vec![]).await;
    let k1 = "[[identification.keys]]\nid = \"k1\"\nsecret_file = \"k1.key\"";
    let gw = start(&origin, BUILTIN, |s| {
        s.identification(k1)
            .file("k1.key", "k1-secret-0123456789-0123456789-0123456789")
            .file("k2.key", "k2-secret-0123456789-0123456789-0123456789")
    })
    .await;
    let mut ada = member(&gw, "ada@example.com", "Ada", &[]).await;
    let token = |page: &support::browser::Page| {
        settings(&page.body).unwrap()["identificationToken"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first = token(&ada.get("/blog/tides").await);
    assert!(first.starts_with("mgv1.k1."), "{first}");
    assert_eq!(token(&ada.get("/blog/lamps").await), first, "not cached");

    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    let rotated = config.replace(
        k1,
        "[[identification.keys]]\nid = \"k2\"\nsecret_file = \"k2.key\"\n\
         [[identification.keys]]\nid = \"k1\"\nsecret_file = \"k1.key\"",
    );
    std::fs::write(&gw.config_path, rotated).unwrap();
    gw.signal("HUP");
    gw.wait_for_log("configuration reloaded").await;
    let second = token(&ada.get("/blog/tides").await);
    assert!(second.starts_with("mgv1.k2."), "{second}");
    assert_eq!(claims(&second)["email"], "ada@example.com");
    assert_eq!(token(&ada.get("/blog/lamps").await), second, "not cached");

    // A secret replaced in place, under the same id (a Secret or Vault file
    // rotated): the cached token's signature no longer verifies anywhere.
    let k2_file = gw.config_path.parent().unwrap().join("k2.key");
    std::fs::write(&k2_file, "k2-replaced-9876543210-9876543210-987654").unwrap();
    gw.signal("HUP");
    gw.wait_for_logs("configuration reloaded", 2).await;
    let third = token(&ada.get("/blog/tides").await);
    assert!(third.starts_with("mgv1.k2."), "{third}");
    assert_ne!(third, second, "a token signed with the replaced secret");

    // The same secret under a new id (a key renamed): a token names its key
    // by id, and the old id is nowhere to verify it any more.
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(
        &gw.config_path,
        config.replacen("id = \"k2\"", "id = \"k3\"", 1),
    )
    .unwrap();
    gw.signal("HUP");
    gw.wait_for_logs("configuration reloaded", 3).await;
    let fourth = token(&ada.get("/blog/tides").await);
    assert!(
        fourth.starts_with("mgv1.k3."),
        "a token of the old id: {fourth}"
    );
}

/// A policy in the page's `<meta>`, in a compressed page: the page is
/// decoded, the meta's policy gets the settings script's hash (and nothing
/// else changes in it), and the page goes back compressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_policy_in_a_compressed_page_gets_the_settings_hash() {
    let page = "<!doctype html><html><head><meta http-equiv=\"Content-Security-Policy\" \
                content=\"script-src 'self'; object-src 'none'\"><title>Tides</title></head>\
                <body><p>High water at noon.</p></body></html>";
    let origin = PageOrigin::start(vec![(
        "/meta",
        Page::html("")
            .with("content-encoding", "gzip")
            .with_body(compressed("gzip", page.as_bytes())),
    )])
    .await;
    let gw = start(
        &origin,
        &format!("{BUILTIN}\nload_immediately = false"),
        |s| s,
    )
    .await;
    let response = gw
        .client()
        .get(gw.https_url("/meta"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    // The header carried no policy, and gets none.
    assert!(response.headers().get("content-security-policy").is_none());
    let body = decompressed("gzip", &response.bytes().await.unwrap());
    let hash = settings_hash(&body);
    let expected = page
        .replace(
            "content=\"script-src 'self'; object-src 'none'\"",
            &format!("content=\"script-src 'self' {hash}; object-src 'none'\""),
        )
        .replace("</head>", "");
    let snippet_start = body.find("<script data-membergate=\"settings\">").unwrap();
    let snippet_end = body.find("</head>").unwrap();
    let without_snippet = format!("{}{}", &body[..snippet_start], &body[snippet_end + 7..]);
    assert_eq!(without_snippet, expected, "{body}");
}

/// A token signed here costs nothing to make: a member's page fetched by
/// script (Turbo, htmx, pjax: `Sec-Fetch-Dest: empty`) is identified even
/// with no token cached. Only HubSpot calls are kept to pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_page_gets_a_builtin_token_without_a_cached_one() {
    let origin = PageOrigin::start(vec![]).await;
    let gw = start(&origin, BUILTIN, |s| s).await;
    let mut ada = member(&gw, "ada@example.com", "Ada", &[]).await;
    let fetched = ada
        .get_with("/blog/tides", &[("sec-fetch-dest", "empty")])
        .await;
    let s = settings(&fetched.body).expect("settings script");
    assert!(
        s.get("identificationToken").is_some(),
        "builtin member page fetched by script lost identification: {s}"
    );
}
