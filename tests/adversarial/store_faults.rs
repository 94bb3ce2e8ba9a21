//! A member record the store cannot read (here, a status this version does
//! not know, as a newer replica might write during a rolling upgrade) is a
//! fault of the store, not of the visitor: the session is not ended, the
//! cookie is kept, a members-only page answers 503 with `Retry-After`
//! instead of a login form (as do the account pages and logging out),
//! public pages are served anonymously, and the same cookie works again
//! once the record can be read.

use crate::support::browser::Browser;
use crate::support::{self, EchoOrigin, Gateway, Setup};

const PASSWORD: &str = "correct horse battery";
const COOKIE: &str = "__Host-membergate";

/// The status of `email` in the store, written past its CHECK constraint.
async fn set_status(gw: &Gateway, email: &str, status: &str) {
    let mut db = support::store_connection(&gw.dir.path().join("data/membergate.db")).await;
    sqlx::query("PRAGMA ignore_check_constraints = ON")
        .execute(&mut db)
        .await
        .unwrap();
    let done = sqlx::query("UPDATE members SET status = ? WHERE email = ?")
        .bind(status)
        .bind(email)
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
    sqlx::Connection::close(db).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_member_record_logs_nobody_out() {
    let origin = EchoOrigin::start().await;
    let setup = Setup::new()
        .route("/", &origin.url())
        .rule("/members", "members", &[])
        .members("require_verification = false");
    let gw = Gateway::start(setup).await;
    let mut b = Browser::new(&gw);
    assert_eq!(
        b.register("ada@example.com", PASSWORD, "Ada", "Lovelace")
            .await
            .status,
        200
    );
    assert_eq!(b.login("ada@example.com", PASSWORD).await.status, 303);
    let session = b.session_cookie().unwrap();
    assert_eq!(b.get("/members/").await.status, 200);

    set_status(&gw, "ada@example.com", "suspended-by-v2").await;
    // A restart empties the session cache, so the record is read again.
    let gw = gw.restart().await;
    let client = gw.client();
    let get = |path: &str, json: bool| {
        let mut request = client
            .get(gw.https_url(path))
            .header("cookie", format!("{COOKIE}={session}"));
        if json {
            request = request.header("accept", "application/json");
        }
        request.send()
    };
    // Neither the session cookie nor the chat reset (`{COOKIE}-chat-reset`):
    // a session that could not be checked may well be alive.
    let sets_session = |r: &reqwest::Response| {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap().starts_with(COOKIE))
    };

    let page = get("/members/", false).await.unwrap();
    assert_eq!(page.status(), 503);
    assert_eq!(page.headers()["retry-after"], "5");
    assert!(!sets_session(&page), "the cookie must be kept");
    assert!(page.text().await.unwrap().contains("still logged in"));
    let api = get("/members/data", true).await.unwrap();
    assert_eq!(api.status(), 503);
    assert!(api.text().await.unwrap().contains("\"status\":503"));
    // The member's own pages, and logging out (which must end the stored
    // session), wait for the store too.
    let account = get("/_membergate/account", false).await.unwrap();
    assert_eq!(account.status(), 503);
    assert!(!sets_session(&account));
    let logout = client
        .post(gw.https_url("/_membergate/logout"))
        .header("cookie", format!("{COOKIE}={session}"))
        .header("origin", gw.https_url(""))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=irrelevant")
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 503);
    assert!(!sets_session(&logout));
    let seen_before = origin.requests().len();
    let public = get("/", false).await.unwrap();
    assert_eq!(public.status(), 200);
    assert!(!sets_session(&public));
    let seen = origin.requests();
    assert_eq!(seen.len(), seen_before + 1, "only the public page went on");
    assert_eq!(seen.last().unwrap().header("x-member-email"), None);

    // Readable again: the same cookie is the same member.
    set_status(&gw, "ada@example.com", "active").await;
    let page = get("/members/", false).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(!sets_session(&page));
    assert_eq!(
        origin.requests().last().unwrap().header("x-member-email"),
        Some("ada@example.com")
    );
    assert!(gw.log().contains("member lookup failed"), "{}", gw.log());
    // Counted, for an alert: the members-only page, its JSON twin, the
    // account page, the logout and the public page.
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("membergate_session_store_failures_total 5\n"),
        "{metrics}"
    );
}

/// A database file removed (or replaced, as by a careless restore) under a
/// running gateway: the connections still open keep the old file, and a new
/// one used to create an empty database beside it, so requests were served
/// from two files. New connections now fail instead of creating one, and
/// `/readyz` says what happened, so an orchestrator stops sending traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_removed_under_the_gateway_is_not_recreated_and_not_ready() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    let (ok, out) = gw.cli(
        &["member", "add", "ada@example.com"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{out}");
    let ready = || gw.client().get(gw.admin_url("/readyz")).send();
    assert_eq!(ready().await.unwrap().status(), 200);
    let database = gw.dir.path().join("data/membergate.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", database.display()));
    }
    // Logins need connections; some are new ones, which must not create a file.
    for _ in 0..8 {
        let mut b = Browser::new(&gw);
        let _ = b.login("ada@example.com", PASSWORD).await;
    }
    assert!(!database.exists(), "a new, empty database was created");
    // `/readyz` shares an answer for a second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let ready = ready().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(body.contains("was removed or replaced"), "{body}");
}

/// A database file its user cannot write (a restore done as another user):
/// SQLite opens it read-only without a word, and the gateway used to start,
/// say it was ready, and answer registrations it could not store. It now
/// refuses to start and says why. The file is made immutable (`chattr +i`),
/// which stops root too; that needs root and a file system that supports
/// it, and the test says so rather than pass without running.
#[test]
fn a_database_the_gateway_cannot_write_stops_it_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("membergate.toml");
    let setup = Setup::new().route("/", "http://127.0.0.1:9");
    std::fs::write(&config, setup.render(dir.path())).unwrap();
    let add = |args: &[&str], stdin: &str| {
        let out = support::run_cli(&config, dir.path(), args, stdin, &[]);
        (out.ok, out.stdout + &out.stderr)
    };
    let (ok, out) = add(
        &["member", "add", "ada@example.com"],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{out}");
    let database = dir.path().join("data/membergate.db");
    let immutable = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&database)
        .status()
        .is_ok_and(|s| s.success());
    if !immutable {
        assert!(
            std::env::var_os("MEMBERGATE_SKIP_ROOT_TESTS").is_some(),
            "chattr +i failed: this test needs root and a file system with immutable files \
             (set MEMBERGATE_SKIP_ROOT_TESTS to skip it)"
        );
        return;
    }
    // Made writable again whatever happens, or the temporary folder stays.
    struct Mutable<'a>(&'a std::path::Path);
    impl Drop for Mutable<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(self.0)
                .status();
        }
    }
    let _mutable = Mutable(&database);
    let mut serve = std::process::Command::new(support::binary())
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .env("MEMBERGATE_SECRET", "x".repeat(64))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut exited = None;
    for _ in 0..150 {
        exited = serve.try_wait().unwrap();
        if exited.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if exited.is_none() {
        let _ = serve.kill();
    }
    let out = serve.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        exited.is_some_and(|status| !status.success()),
        "the gateway started on a database it cannot write: {text}"
    );
    assert!(text.contains("cannot be written by this user"), "{text}");
}
