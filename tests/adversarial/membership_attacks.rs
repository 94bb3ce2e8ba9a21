//! Catalogue C2, E2 and E3: reset links an attacker tries to point at their
//! own host, and login, registration and reset timing that would tell
//! registered addresses from others.

use std::time::{Duration, Instant};

use crate::support::browser::Browser;
use crate::support::{EchoOrigin, Gateway, Setup};

const PASSWORD: &str = "correct horse battery";
/// Where mail links point: the configured base URL, whatever a request says.
const PUBLIC_URL: &str = "https://members.example.org";

async fn start() -> (Gateway, EchoOrigin) {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url()).members(&format!(
        "require_verification = false\npublic_url = \"{PUBLIC_URL}\"\n\
                 max_attempts_per_ip = 100000\nmax_attempts_per_account = 100000\n\
                 max_attempts_per_account_per_ip = 100000"
    )))
    .await;
    (gw, origin)
}

async fn registered(gw: &Gateway, email: &str) {
    let mut b = Browser::new(gw);
    let page = b.register(email, PASSWORD, "Ada", "Lovelace").await;
    assert_eq!(page.status, 200, "{}", page.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2_reset_links_never_follow_forwarded_host_headers() {
    let (gw, _origin) = start().await;
    registered(&gw, "ada@example.com").await;
    let mut attacker = Browser::new(&gw);
    let form = attacker.get("/_membergate/reset").await;
    let csrf = form.csrf();
    let origin = attacker.origin.clone();
    let page = attacker
        .post_with(
            "/_membergate/reset",
            &[("email", "ada@example.com"), ("csrf", &csrf)],
            &[
                ("origin", &origin),
                ("x-forwarded-host", "evil.example"),
                ("forwarded", "host=evil.example;proto=https"),
                ("x-forwarded-proto", "http"),
                ("x-original-host", "evil.example"),
            ],
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let mail = gw.mail_to("ada@example.com").await;
    assert!(!mail.contains("evil.example"), "{mail}");
    let own = format!("{PUBLIC_URL}/_membergate/reset?token=");
    assert!(
        mail.contains(&own),
        "the link is not on the configured base URL: {mail}"
    );
}

/// The median time of `n` failed logins for `email`.
async fn median_login(gw: &Gateway, email: &str, n: usize) -> Duration {
    let mut b = Browser::new(gw);
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let form = b.get("/_membergate/login").await;
        let csrf = form.csrf();
        let fields = [
            ("email", email),
            ("password", "wrong password"),
            ("csrf", &csrf),
        ];
        let started = Instant::now();
        let page = b.post("/_membergate/login", &fields).await;
        times.push(started.elapsed());
        assert_ne!(page.status, 303, "a wrong password logged in");
    }
    times.sort();
    times[n / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2_failed_logins_take_as_long_for_unknown_addresses() {
    let (gw, _origin) = start().await;
    registered(&gw, "known@example.com").await;
    // Interleaved halves, so a slower stretch of the machine hits both.
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..3 {
        known.push(median_login(&gw, "known@example.com", 9).await);
        unknown.push(median_login(&gw, "nobody@example.com", 9).await);
    }
    known.sort();
    unknown.sort();
    let (known, unknown) = (known[1], unknown[1]);
    println!("failed login medians: known {known:?}, unknown {unknown:?}");
    // Without a dummy hash an unknown address answers in well under a tenth
    // of the time (no argon2id at all); a factor of two is far outside noise
    // and far inside that gap.
    let ratio = unknown.as_secs_f64() / known.as_secs_f64();
    assert!(
        (0.5..2.0).contains(&ratio),
        "unknown {unknown:?} against known {known:?}: timing tells them apart"
    );
}

/// The median time of `n` posts of the form on `page` to `action`, with
/// `fields(i)` for the i-th post (each from a fresh browser).
async fn median_post(
    gw: &Gateway,
    page: &str,
    action: &str,
    n: usize,
    fields: impl Fn(usize) -> Vec<(&'static str, String)>,
) -> Duration {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let mut b = Browser::new(gw);
        let csrf = b.get(page).await.csrf();
        let mut all: Vec<(&str, String)> = fields(i);
        all.push(("csrf", csrf));
        let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let started = Instant::now();
        let answer = b.post(action, &all).await;
        times.push(started.elapsed());
        assert_eq!(answer.status, 200, "{action}: {}", answer.body);
    }
    times.sort();
    times[n / 2]
}

/// Interleaved medians of two kinds of post; returns (a, b).
async fn interleaved(
    gw: &Gateway,
    page: &str,
    action: &str,
    a: impl Fn(usize) -> Vec<(&'static str, String)> + Copy,
    b: impl Fn(usize) -> Vec<(&'static str, String)> + Copy,
) -> (Duration, Duration) {
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for round in 0..3 {
        first.push(median_post(gw, page, action, 7, move |i| a(round * 7 + i)).await);
        second.push(median_post(gw, page, action, 7, move |i| b(round * 7 + i)).await);
    }
    first.sort();
    second.sort();
    (first[1], second[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e3_registration_and_reset_take_as_long_for_either_kind_of_address() {
    let (gw, _origin) = start().await;
    registered(&gw, "taken@example.com").await;
    let register = |email: String| {
        vec![
            ("email", email),
            ("password", PASSWORD.to_owned()),
            ("first_name", "Eve".to_owned()),
            ("last_name", "E".to_owned()),
        ]
    };
    let (taken, fresh) = interleaved(
        &gw,
        "/_membergate/register",
        "/_membergate/register",
        move |_| register("taken@example.com".to_owned()),
        move |i| register(format!("fresh{i}@example.com")),
    )
    .await;
    let reset = |email: &str| vec![("email", email.to_owned())];
    let (known, unknown) = interleaved(
        &gw,
        "/_membergate/reset",
        "/_membergate/reset",
        move |_| reset("taken@example.com"),
        move |i| reset(&format!("nobody{i}@example.com")),
    )
    .await;
    println!(
        "register medians: taken {taken:?}, new {fresh:?}; reset medians: known {known:?}, unknown {unknown:?}"
    );
    for (what, a, b) in [("register", taken, fresh), ("reset", known, unknown)] {
        let ratio = a.as_secs_f64() / b.as_secs_f64();
        assert!(
            (0.5..2.0).contains(&ratio),
            "{what}: {a:?} against {b:?}: timing tells registered addresses apart"
        );
    }
}

/// Registering a free address with a password of one's own, then logging in
/// with it, must not tell a free address from a taken one (the taken one's
/// password is the owner's, so that login fails). Before the address is
/// confirmed the login gets the answer a wrong password gets, in either mode
/// that stores a registration unconfirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e3_logging_in_to_ones_own_registration_tells_nothing() {
    for (mode, names) in [
        (
            "require_verification = true",
            "the address is not confirmed yet",
        ),
        (
            "require_verification = false\nregistration = \"approval\"",
            "the account waits for approval",
        ),
    ] {
        let origin = EchoOrigin::start().await;
        let gw = Gateway::start(Setup::new().route("/", &origin.url()).members(mode)).await;
        let (ok, out) = gw.cli(
            &["member", "add", "ada@example.com"],
            "the owner's own password\n",
        );
        assert!(ok, "{out}");
        let mut attacker = Browser::new(&gw);
        let mut answers = Vec::new();
        for email in ["ada@example.com", "free@example.com"] {
            let page = attacker.register(email, PASSWORD, "", "").await;
            assert_eq!(page.status, 200, "{mode}: {}", page.body);
        }
        // The registration is stored after its answer; the free address's
        // is there once a login with its password would pass the hash.
        let mut stored = false;
        for _ in 0..100 {
            stored = gw.cli(&["member", "show", "free@example.com"], "").0;
            if stored {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(stored, "{mode}: the registration was never stored");
        for email in ["ada@example.com", "free@example.com"] {
            let page = attacker.login(email, PASSWORD).await;
            answers.push((page.status, page.body.replace(email, "EMAIL")));
        }
        assert_eq!(answers[0].0, 401, "{mode}: the taken address");
        assert_eq!(answers[0], answers[1], "{mode}: the answers differ");
        assert!(
            answers[1].1.contains(names),
            "{mode}: the answer names the unconfirmed case: {}",
            answers[1].1
        );
    }
}
