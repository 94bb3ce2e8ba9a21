//! A real browser end to end: headless Chromium, driven over WebDriver,
//! registers, verifies by the emailed link, logs in through the forms and
//! reads a members-only page. Unlike `support::browser`, nothing here sets
//! `Origin`, cookies or CSRF fields by hand: Chromium does, as it would for a
//! visitor, so this catches what only a real browser does differently.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian: `apt-get
//! install chromium chromium-driver`); fails, rather than skips, without them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use support::webdriver::WebDriver;
use support::{EchoOrigin, Gateway, Setup};

const PASSWORD: &str = "correct horse battery";
const COOKIE: &str = "__Host-membergate";

/// The JSON the echo origin answered, as the page shows it. Chromium wraps a
/// JSON response in its own viewer page; the raw text is in the first `<pre>`.
async fn echoed(wd: &WebDriver) -> Value {
    let text = wd
        .execute(
            "const pre = document.querySelector('pre'); \
             return pre ? pre.textContent : document.body.innerText;",
            json!([]),
        )
        .await;
    let text = text.as_str().unwrap_or_default();
    serde_json::from_str(text).unwrap_or_else(|e| panic!("the page is not the echo ({e}): {text}"))
}

/// The value of header `name` in the echo's `headers` (a list of pairs).
fn echoed_header<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("no headers in {echo}"))
        .iter()
        .filter(|pair| {
            pair[0]
                .as_str()
                .is_some_and(|k| k.eq_ignore_ascii_case(name))
        })
        .filter_map(|pair| pair[1].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_registers_verifies_logs_in_and_reads_a_members_page() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url()).rule(
        "/members",
        "members",
        &[],
    ))
    .await;
    let wd = WebDriver::start().await;
    let base = gw.https_url("");
    let email = "ada.browser@example.com";

    // Anonymous: the members page sends the browser to the login page.
    wd.goto(&gw.https_url("/members/")).await;
    let url = wd
        .wait_for_url("the login page", |u| u.contains("/_membergate/login"))
        .await;
    assert_eq!(
        url,
        format!("{base}/_membergate/login?return_to=%2Fmembers%2F")
    );
    assert!(
        origin
            .requests()
            .iter()
            .all(|r| !r.target.starts_with("/members")),
        "the origin saw an anonymous members request"
    );

    // Follow the page's own link to registration; return_to comes along.
    let register = wd.find("a[href^='/_membergate/register']").await;
    wd.click(&register).await;
    let url = wd
        .wait_for_url("the registration page", |u| {
            u.contains("/_membergate/register")
        })
        .await;
    // The link's `urlencode` leaves `/` as is; either spelling means /members/.
    assert_eq!(
        url.replace("%2F", "/"),
        format!("{base}/_membergate/register?return_to=/members/")
    );
    wd.fill("#first_name", "Ada").await;
    wd.fill("#last_name", "Lovelace").await;
    wd.fill("#email", "Ada.Browser@Example.com").await;
    wd.fill("#password", PASSWORD).await;
    let submit = wd.find("form button[type=submit]").await;
    wd.click(&submit).await;
    // The browser's own Origin and the form's CSRF field got the POST through.
    wd.wait_for_text("Check your email").await;

    // The verification link from the outbox, opened in the browser.
    let mail = gw.mail_to(email).await;
    let link = Gateway::link_in(&mail);
    assert!(link.starts_with("/_membergate/verify?token="), "{link}");
    wd.goto(&gw.https_url(&link)).await;
    // Opening the link confirms nothing by itself (mail scanners open links too).
    wd.wait_for_text("Confirm my address").await;
    let confirm = wd.find("form button[type=submit]").await;
    wd.click(&confirm).await;
    let url = wd
        .wait_for_url("the verified notice", |u| u.contains("notice=verified"))
        .await;
    // The link remembers where the visitor started: logging in goes back there.
    assert_eq!(
        url,
        format!("{base}/_membergate/login?notice=verified&return_to=%2Fmembers%2F")
    );
    wd.wait_for_text("Your email address is verified").await;

    wd.fill("#email", email).await;
    wd.fill("#password", PASSWORD).await;
    let submit = wd.find("form button[type=submit]").await;
    wd.click(&submit).await;
    let url = wd
        .wait_for_url("the members page", |u| u.ends_with("/members/"))
        .await;
    assert_eq!(url, format!("{base}/members/"));

    // The page is what the origin served, with the member's identity.
    let echo = echoed(&wd).await;
    assert_eq!(echo["target"], "/members/", "{echo}");
    assert_eq!(echoed_header(&echo, "x-member-email"), [email], "{echo}");
    assert_eq!(
        echoed_header(&echo, "x-member-name"),
        ["Ada Lovelace"],
        "{echo}"
    );
    let seen = origin
        .requests()
        .into_iter()
        .rfind(|r| r.target == "/members/")
        .expect("the origin never saw /members/");
    assert_eq!(seen.header("x-member-email"), Some(email));
    // The origin never gets the gateway's cookies (Chromium sends one field per cookie over HTTP/2).
    assert!(
        seen.all("cookie").iter().all(|c| !c.contains(COOKIE)),
        "the origin saw the session cookie: {:?}",
        seen.all("cookie")
    );

    // The browser holds the session cookie, but scripts cannot read it.
    let cookies = wd.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c["name"] == COOKIE)
        .unwrap_or_else(|| panic!("no {COOKIE} cookie in the browser: {cookies:?}"));
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["secure"], true, "{session}");
    let script_cookies = wd.execute("return document.cookie", json!([])).await;
    let script_cookies = script_cookies.as_str().unwrap();
    assert!(
        !script_cookies.contains(COOKIE),
        "document.cookie exposes the session: {script_cookies:?}"
    );
}

/// A gateway in front of `origin` with the builtin chat widget on every page.
async fn with_widget(origin: &support::chat::PageOrigin) -> Gateway {
    Gateway::start(
        Setup::new()
            .route("/", &origin.url())
            .chat("provider = \"builtin\"\nwidget_url = \"/no-widget-here.js\""),
    )
    .await
}

/// Chromium, logged in as `email` through the login form.
async fn logged_in(gw: &Gateway, email: &str) -> WebDriver {
    let wd = WebDriver::start().await;
    wd.goto(&gw.https_url("/_membergate/login")).await;
    wd.fill("#email", email).await;
    wd.fill("#password", PASSWORD).await;
    let submit = wd.find("form button[type=submit]").await;
    wd.click(&submit).await;
    wd.wait_for_url("a page after login", |u| !u.contains("/_membergate/"))
        .await;
    wd
}

/// A member whose name is a script injection attempt: in a real browser the
/// page holds exactly the page's nodes plus our two scripts, nothing of the
/// name runs, and the widget settings hold the exact email and token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_runs_nothing_from_a_hostile_member_name() {
    use support::chat::{PAGE, PageOrigin};
    let origin = PageOrigin::start(vec![]).await;
    let gw = with_widget(&origin).await;
    let evil = "</script><script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>";
    // The rest of attack catalogue F1's spellings: another case and a space,
    // a comment that would swallow the next script, a quote that would end
    // a string, a backslash that would escape one.
    let evil_too = "</SCRIPT ><!--<script>\";window.__pwned=3//\\'`${x}";
    let email = "mallory@example.com";
    let (ok, out) = gw.cli(
        &[
            "member",
            "add",
            email,
            "--first-name",
            evil,
            "--last-name",
            evil_too,
        ],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{out}");

    let wd = logged_in(&gw, email).await;
    wd.goto(&gw.https_url("/tides")).await;
    wd.wait_for_text("High water at noon.").await;

    let seen = wd
        .execute(
            "return {
               scripts: Array.from(document.scripts).map(s => s.getAttribute('data-membergate')),
               images: document.images.length,
               pwned: window.__pwned === undefined ? null : window.__pwned,
               email: window.hsConversationsSettings.identificationEmail,
               token: window.hsConversationsSettings.identificationToken,
               body: document.body.innerHTML
             };",
            json!([]),
        )
        .await;
    assert_eq!(seen["scripts"], json!(["settings", "loader"]), "{seen}");
    assert_eq!(seen["images"], 0, "{seen}");
    assert_eq!(seen["pwned"], Value::Null, "{seen}");
    assert_eq!(seen["email"], email);
    // The token names the member exactly, hostile name and all.
    let token = seen["token"].as_str().unwrap();
    let payload = token.split('.').nth(2).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["firstName"], evil);
    assert_eq!(claims["lastName"], evil_too);
    assert_eq!(claims["email"], email);
    // The page's own content is untouched.
    assert!(
        PAGE.contains(seen["body"].as_str().unwrap().trim()),
        "{seen}"
    );
}

/// A page that loads the widget itself, with HubSpot's embed code: its own
/// script assigns `window.hsConversationsSettings = {...}` just before its
/// loader, after ours ran in the head. In Chromium the settings the loader
/// reads hold both the page's option and the member's identification, and
/// the page's script runs on, with a plain assignment, a `var` declaration
/// and a frozen object alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_keeps_the_identification_when_the_page_sets_its_own_settings() {
    use support::chat::{Page, PageOrigin};
    let page = |assignment: &str| {
        format!(
            "<!doctype html><html><head><title>t</title></head><body><p>High water at noon.</p>\
             <script>{assignment};window.pageScriptRan = true;</script>\
             <script type=\"text/javascript\" id=\"hs-script-loader\" async defer src=\"/no-loader-here.js\"></script>\
             </body></html>"
        )
    };
    let origin = PageOrigin::start(vec![
        (
            "/embed",
            Page::html(&page(
                "window.hsConversationsSettings = { loadImmediately: false }",
            )),
        ),
        (
            "/embed-var",
            Page::html(&page(
                "var hsConversationsSettings = { loadImmediately: false }",
            )),
        ),
        (
            "/embed-frozen",
            Page::html(&page(
                "window.hsConversationsSettings = Object.freeze({ loadImmediately: false })",
            )),
        ),
    ])
    .await;
    let gw =
        Gateway::start(Setup::new().route("/", &origin.url()).chat(
            "provider = \"builtin\"\nwidget_url = \"/no-widget-here.js\"\nloader = \"page\"",
        ))
        .await;
    let email = "kim@example.com";
    let (ok, out) = gw.cli(&["member", "add", email], &format!("{PASSWORD}\n"));
    assert!(ok, "{out}");
    let wd = logged_in(&gw, email).await;
    for path in ["/embed", "/embed-var", "/embed-frozen"] {
        wd.goto(&gw.https_url(path)).await;
        wd.wait_for_text("High water at noon.").await;
        let ran = wd
            .execute("return window.pageScriptRan === true;", json!([]))
            .await;
        assert_eq!(ran, true, "{path}: the page's own script stopped");
        let settings = wd
            .execute("return window.hsConversationsSettings;", json!([]))
            .await;
        assert_eq!(settings["identificationEmail"], email, "{path}: {settings}");
        assert!(
            settings["identificationToken"].is_string(),
            "{path}: {settings}"
        );
        assert_eq!(settings["loadImmediately"], false, "{path}: {settings}");
    }
}

/// A gateway in front of `origin`, which serves the stand-in widget
/// (`support::chat::STAND_IN_WIDGET`, ready `delay_ms` after it ran) at
/// `/widget.js`; `chat` adds to the site's chat table.
async fn with_stand_in_widget(delay_ms: u64, chat: &str) -> (support::chat::PageOrigin, Gateway) {
    use support::chat::{Page, PageOrigin};
    let origin = PageOrigin::start(vec![
        ("/widget.js", Page::stand_in_widget(delay_ms)),
        ("/support", Page::html(EMBEDDED)),
    ])
    .await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url()).chat(&format!(
        "provider = \"builtin\"\nwidget_url = \"/widget.js\"\n{chat}"
    )))
    .await;
    (origin, gw)
}

/// A page with the widget's own embed code (for `loader = "page"`).
const EMBEDDED: &str = "<!doctype html><html><head><title>Support</title></head><body>\
    <p>High water at noon.</p>\
    <script id=\"hs-script-loader\" async defer src=\"/widget.js\"></script></body></html>";

/// What the stand-in widget on the current page shows, once it is ready:
/// whose conversation (`thread`), how many resets this browser ran
/// (`clears`), and whom the settings identify (`email`).
async fn widget(wd: &WebDriver) -> Value {
    let seen = "return window.widgetReady === true ? {
          thread: window.widgetThread,
          clears: Number(localStorage.getItem('clears') || 0),
          email: (window.hsConversationsSettings || {}).identificationEmail || null
        } : null;";
    for _ in 0..200 {
        let state = wd.execute(seen, json!([])).await;
        if !state.is_null() {
            return state;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the widget never got ready on {}", wd.current_url().await);
}

async fn add_member(gw: &Gateway, email: &str) {
    let (ok, out) = gw.cli(&["member", "add", email], &format!("{PASSWORD}\n"));
    assert!(ok, "{out}");
}

/// Logs in through the form, in a browser that may be logged in already.
async fn log_in_as(wd: &WebDriver, gw: &Gateway, email: &str) {
    wd.goto(&gw.https_url("/_membergate/login")).await;
    wd.fill("#email", email).await;
    wd.fill("#password", PASSWORD).await;
    let submit = wd
        .find("form[action='/_membergate/login'] button[type=submit]")
        .await;
    wd.click(&submit).await;
    wd.wait_for_url("a page after login", |u| !u.contains("/_membergate/"))
        .await;
}

/// Logs out with the account page's button; returns where it landed.
async fn log_out(wd: &WebDriver, gw: &Gateway) -> String {
    wd.goto(&gw.https_url("/_membergate/account")).await;
    let logout = wd
        .find("form[action='/_membergate/logout'] button[type=submit]")
        .await;
    wd.click(&logout).await;
    wd.wait_for_url("a page after log-out", |u| !u.contains("/_membergate/"))
        .await
}

async fn reset_pending(wd: &WebDriver) -> bool {
    wd.cookies()
        .await
        .iter()
        .any(|c| c["name"].as_str().unwrap().ends_with("-chat-reset"))
}

/// After a log-out, the next page's widget forgets the member: the
/// conversation it shows is a new, anonymous one. The reset runs once: the
/// widget's reset clears its cookie, and the page after has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_forgets_the_chat_visitor_once_after_log_out() {
    let (_origin, gw) = with_stand_in_widget(0, "").await;
    let email = "kim@example.com";
    add_member(&gw, email).await;
    let wd = WebDriver::start().await;
    log_in_as(&wd, &gw, email).await;
    wd.goto(&gw.https_url("/tides")).await;
    assert_eq!(
        widget(&wd).await,
        json!({"thread": email, "clears": 0, "email": email})
    );
    // The log-out lands on the site's front page, which has the widget.
    assert_eq!(log_out(&wd, &gw).await, gw.https_url("/"));
    let anonymous = json!({"thread": "anonymous", "clears": 1, "email": null});
    assert_eq!(widget(&wd).await, anonymous);
    assert!(!reset_pending(&wd).await);
    wd.goto(&gw.https_url("/tides")).await;
    assert_eq!(widget(&wd).await, anonymous);
}

/// The request for a reset stays until a widget really ran it: not spent by
/// a page without the widget (the page loads it itself, elsewhere), nor by a
/// page left before its widget was ready (HubSpot's loads after the page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_keeps_the_chat_reset_until_a_widget_ran_it() {
    let email = "kim@example.com";
    let (_origin, gw) = with_stand_in_widget(0, "loader = \"page\"").await;
    add_member(&gw, email).await;
    let wd = WebDriver::start().await;
    log_in_as(&wd, &gw, email).await;
    wd.goto(&gw.https_url("/support")).await;
    assert_eq!(widget(&wd).await["thread"], email);
    // The front page, where the log-out lands, has no widget.
    assert_eq!(log_out(&wd, &gw).await, gw.https_url("/"));
    wd.wait_for_text("High water at noon.").await;
    assert!(reset_pending(&wd).await);
    wd.goto(&gw.https_url("/support")).await;
    assert_eq!(widget(&wd).await["thread"], "anonymous");
    assert!(!reset_pending(&wd).await);

    // A widget ready two seconds after its script ran, and a visitor who
    // goes on at once.
    let (_origin, gw) = with_stand_in_widget(2000, "").await;
    add_member(&gw, email).await;
    let wd = WebDriver::start().await;
    log_in_as(&wd, &gw, email).await;
    wd.goto(&gw.https_url("/tides")).await;
    assert_eq!(widget(&wd).await["thread"], email);
    log_out(&wd, &gw).await;
    wd.goto(&gw.https_url("/tides")).await;
    assert_eq!(widget(&wd).await["thread"], "anonymous");
}

/// A session ended elsewhere (here revoked by an administrator): the first
/// page Chromium loads after it resets the widget, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_forgets_the_chat_visitor_once_after_the_session_ended_elsewhere() {
    let (_origin, gw) = with_stand_in_widget(0, "").await;
    let email = "kim@example.com";
    add_member(&gw, email).await;
    let wd = WebDriver::start().await;
    log_in_as(&wd, &gw, email).await;
    wd.goto(&gw.https_url("/tides")).await;
    assert_eq!(widget(&wd).await["thread"], email);
    let (ok, out) = gw.cli(&["session", "revoke", "--member", email], "");
    assert!(ok, "{out}");
    // The CLI's change reaches the gateway within its change follower's second.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    wd.goto(&gw.https_url("/tides")).await;
    let anonymous = json!({"thread": "anonymous", "clears": 1, "email": null});
    assert_eq!(widget(&wd).await, anonymous);
    let names: Vec<String> = wd
        .cookies()
        .await
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n == COOKIE || n.ends_with("-chat-reset")),
        "{names:?}"
    );
    wd.goto(&gw.https_url("/")).await;
    assert_eq!(widget(&wd).await, anonymous);
}

/// A session that runs to the end of its lifetime, with nobody pressing log
/// out: Chromium still holds the cookie afterwards (it outlives the session),
/// so the first page after the end finds the session dead and resets the
/// widget. Were the cookie to expire with the session, Chromium would drop it
/// unseen and the next person would be anonymous in the member's chat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_forgets_the_chat_visitor_once_after_the_session_lifetime() {
    use support::chat::{Page, PageOrigin};
    let origin = PageOrigin::start(vec![("/widget.js", Page::stand_in_widget(0))]).await;
    let gw = Gateway::start(
        Setup::new()
            .route("/", &origin.url())
            .chat("provider = \"builtin\"\nwidget_url = \"/widget.js\"")
            .members("session_lifetime = \"3s\"\nsession_idle = \"3s\""),
    )
    .await;
    let email = "ray@example.com";
    add_member(&gw, email).await;
    let wd = WebDriver::start().await;
    log_in_as(&wd, &gw, email).await;
    wd.goto(&gw.https_url("/tides")).await;
    assert_eq!(widget(&wd).await["thread"], email);
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    wd.goto(&gw.https_url("/")).await;
    let anonymous = json!({"thread": "anonymous", "clears": 1, "email": null});
    assert_eq!(widget(&wd).await, anonymous);
    wd.goto(&gw.https_url("/tides")).await;
    assert_eq!(widget(&wd).await, anonymous);
}

/// One member logs in where another was: over their live session (the log-in
/// page's "log in as someone else"), or later, after a log-out whose reset no
/// page delivered (the widget is for members only, so no anonymous page has
/// it; and the reset cookie expired). The widget forgets the one before
/// either way: the browser's device cookie names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_forgets_the_chat_visitor_when_another_member_logs_in() {
    let (_origin, gw) = with_stand_in_widget(0, "show = \"members\"").await;
    let (ann, bob) = ("ann@example.com", "bob@example.com");
    add_member(&gw, ann).await;
    add_member(&gw, bob).await;
    let wd = WebDriver::start().await;
    log_in_as(&wd, &gw, ann).await;
    wd.goto(&gw.https_url("/tides")).await;
    assert_eq!(widget(&wd).await["thread"], ann);
    log_in_as(&wd, &gw, bob).await;
    wd.goto(&gw.https_url("/tides")).await;
    assert_eq!(
        widget(&wd).await,
        json!({"thread": bob, "clears": 1, "email": bob})
    );

    log_out(&wd, &gw).await;
    wd.wait_for_text("High water at noon.").await;
    assert!(
        reset_pending(&wd).await,
        "no widget for anonymous visitors ran it"
    );
    wd.delete_cookie(&format!("{COOKIE}-chat-reset")).await;
    log_in_as(&wd, &gw, ann).await;
    wd.goto(&gw.https_url("/tides")).await;
    assert_eq!(
        widget(&wd).await,
        json!({"thread": ann, "clears": 2, "email": ann})
    );
    // The same member again: nothing to forget.
    log_in_as(&wd, &gw, ann).await;
    wd.goto(&gw.https_url("/tides")).await;
    assert_eq!(widget(&wd).await["clears"], 2);
}

/// A public page the origin made for the member (it greets them by their
/// `X-Member-Email`), with no widget and no caching header: after a log-out,
/// the browser's Back button must not show it to the next person (Chromium's
/// back-forward cache kept it, and the gateway calls it only `private`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_no_page_of_the_member_on_back_after_log_out() {
    let greeting = support::chat::serve(|req: hyper::Request<hyper::body::Incoming>| async move {
        let who = req
            .headers()
            .get("x-member-email")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("guest")
            .to_owned();
        hyper::Response::builder()
            .header("content-type", "text/html; charset=utf-8")
            .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                "<!doctype html><html><head><title>Hello</title></head><body><p>Hello {who}</p></body></html>"
            ))))
            .unwrap()
    })
    .await;
    let gw = Gateway::start(Setup::new().route("/", &format!("http://{greeting}"))).await;
    let email = "ann@example.com";
    add_member(&gw, email).await;
    let wd = WebDriver::start().await;
    log_in_as(&wd, &gw, email).await;
    wd.goto(&gw.https_url("/hello")).await;
    wd.wait_for_text(&format!("Hello {email}")).await;
    // Only a page kept whole (the back-forward cache) still has this mark.
    wd.execute("window.__mark = 1; return null;", json!([]))
        .await;
    log_out(&wd, &gw).await;
    wd.wait_for_text("Hello guest").await;
    for _ in 0..2 {
        wd.execute("history.back(); return null;", json!([])).await;
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    }
    assert_eq!(wd.current_url().await, gw.https_url("/hello"));
    let text = wd.text().await;
    assert!(!text.contains(email), "{text}");
    assert_eq!(
        wd.execute("return window.__mark === 1;", json!([])).await,
        false
    );
}

/// The page's Content-Security-Policy in a real browser: our settings script
/// runs under it (by the page's nonce, or by the hash the gateway adds), and
/// nothing else the policy blocked before runs now. One of the pages sends
/// two policies joined in one field, as an intermediary that folds repeated
/// fields does; each policy must allow our script on its own. Another keeps
/// its policy in a `<meta>`, as pages on static hosts without headers do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_runs_our_script_under_the_page_csp_and_nothing_it_blocked() {
    use support::chat::{Page, PageOrigin};
    let page_with = |nonce: &str, head: &str| {
        format!(
            "<!doctype html><html><head>{head}<title>Tides</title></head><body>\
             <p>High water at noon.</p>\
             <script>window.__inline = 1</script>\
             <script nonce=\"{nonce}\">window.__nonced = 1</script></body></html>"
        )
    };
    let body = |nonce: &str| page_with(nonce, "");
    let origin = PageOrigin::start(vec![
        (
            "/hash",
            Page::html(&body("none")).with("content-security-policy", "default-src 'self'"),
        ),
        (
            "/nonce",
            Page::html(&body("r4nd0m")).with(
                "content-security-policy",
                "script-src 'nonce-r4nd0m' 'strict-dynamic'; object-src 'none'",
            ),
        ),
        (
            "/joined",
            Page::html(&body("none")).with(
                "content-security-policy",
                "script-src 'self', object-src 'none'; script-src 'self' 'unsafe-inline'",
            ),
        ),
        (
            "/meta",
            Page::html(&page_with(
                "r4nd0m",
                "<meta http-equiv=\"Content-Security-Policy\" content=\"script-src 'self'\">",
            )),
        ),
        (
            "/two-fields",
            Page::html(&body("r4nd0m"))
                .with("content-security-policy", "script-src 'nonce-r4nd0m'")
                .with("content-security-policy", "default-src 'self'"),
        ),
    ])
    .await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url()).chat(
        "provider = \"builtin\"\nwidget_url = \"/no-widget-here.js\"\nload_immediately = false",
    ))
    .await;
    let wd = WebDriver::start().await;
    // (path, whether the page's own nonced script may run)
    for (path, nonced_runs) in [
        ("/hash", false),
        ("/nonce", true),
        ("/joined", false),
        ("/meta", false),
        ("/two-fields", false),
    ] {
        wd.goto(&gw.https_url(path)).await;
        wd.wait_for_text("High water at noon.").await;
        let seen = wd
            .execute(
                "return {
                   settings: window.hsConversationsSettings === undefined
                     ? null : window.hsConversationsSettings,
                   inline: window.__inline === undefined ? null : window.__inline,
                   nonced: window.__nonced === undefined ? null : window.__nonced
                 };",
                json!([]),
            )
            .await;
        assert_eq!(
            seen["settings"],
            json!({"loadImmediately": false}),
            "{path}: our script did not run: {seen}"
        );
        assert_eq!(
            seen["inline"],
            Value::Null,
            "{path}: the policy was loosened: {seen}"
        );
        let nonced = if nonced_runs { json!(1) } else { Value::Null };
        assert_eq!(seen["nonced"], nonced, "{path}: {seen}");
    }
}
