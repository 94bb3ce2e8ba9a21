//! Catalogue C2 and E2: reset links an attacker tries to point at their own
//! host, and login timing that would tell registered addresses from others.

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
                 max_attempts_per_ip = 100000\nmax_attempts_per_account = 100000"
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
