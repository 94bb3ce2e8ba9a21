//! Operating the gateway: signals, reload, configuration checking, shipped files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{EchoOrigin, Gateway, Setup, binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let origin = EchoOrigin::start().await;
    let mut gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    let client = gw.client();
    let slow = tokio::spawn({
        let url = gw.https_url("/slow");
        let client = client.clone();
        async move { client.get(url).send().await }
    });
    // Wait until the slow request is at the origin, then ask the gateway to stop.
    for _ in 0..100 {
        if !origin.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(origin.requests().len(), 1);
    gw.signal("TERM");
    gw.wait_for_log("shutting down").await;
    // New connections are no longer accepted...
    let fresh = gw.client().get(gw.https_url("/late")).send().await;
    assert!(fresh.is_err(), "a new connection was served after SIGTERM");
    // ...but the request in flight completes.
    let response = slow.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "slow");
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
}

/// Listen addresses apply after a restart, as the reload says: a file that
/// turns the HTTPS listener off leaves the bound one serving, with TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_listeners_keeps_the_running_ones_serving() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    let line = config
        .lines()
        .find(|l| l.trim_start().starts_with("https_listen"))
        .unwrap();
    std::fs::write(&gw.config_path, config.replace(line, "https_listen = \"\"")).unwrap();
    gw.signal("HUP");
    gw.wait_for_log("configuration reloaded").await;
    assert!(gw.log().contains("apply after a restart"), "{}", gw.log());
    let response = gw
        .client()
        .get(gw.https_url("/still"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(origin.only_request().target, "/still");
}

/// A file that turns HTTPS off and drops its certificates is valid on its
/// own, but not with the HTTPS listener that runs until a restart: the
/// reload is refused, and HTTPS keeps its certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_is_checked_with_the_listeners_that_keep_running() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    let without_https: Vec<&str> = config
        .lines()
        .filter(|l| {
            !(l.starts_with("[[tls.certificates]]")
                || l.starts_with("cert_file")
                || l.starts_with("key_file")
                || *l == "hosts = [\"localhost\"]")
        })
        .map(|l| {
            if l.starts_with("https_listen") {
                "https_listen = \"\""
            } else {
                l
            }
        })
        .collect();
    std::fs::write(&gw.config_path, without_https.join("\n")).unwrap();
    gw.signal("HUP");
    gw.wait_for_log("reload rejected").await;
    assert!(
        gw.log()
            .contains("https_listen is set, so at least one certificate is needed"),
        "{}",
        gw.log()
    );
    let response = gw
        .client()
        .get(gw.https_url("/still"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_keeps_the_old_config_when_the_new_one_is_bad() {
    let first = EchoOrigin::start().await;
    let second = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &first.url())).await;
    let client = gw.client();
    assert_eq!(
        client
            .get(gw.https_url("/a"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(first.requests().len(), 1);

    // A good new file: requests go to the second origin from now on.
    let good = Setup::new().route("/", &second.url()).render(gw.dir.path());
    std::fs::write(&gw.config_path, good).unwrap();
    gw.signal("HUP");
    gw.wait_for_log("configuration reloaded").await;
    assert_eq!(
        client
            .get(gw.https_url("/b"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(second.only_request().target, "/b");

    // A bad file is refused, with the reason logged, and the second origin keeps serving.
    std::fs::write(&gw.config_path, "[server]\nhttp_mode = \"sideways\"\n").unwrap();
    gw.signal("HUP");
    gw.wait_for_log("reload rejected").await;
    assert!(gw.log().contains("server.http_mode"), "{}", gw.log());
    assert_eq!(
        client
            .get(gw.https_url("/c"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(second.requests().len(), 2);
    assert_eq!(first.requests().len(), 1);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("membergate_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("membergate_config_reloads_total{result=\"rejected\"} 1"),
        "{metrics}"
    );
}

/// A reload is refused with every reason at once, as `check-config` gives
/// them: the file's values and the files they name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_reload_names_every_problem() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    let edited = config
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"soon\"")
        .replace(
            "[admin]\n",
            "[admin]\napi_key_file = \"/definitely/not/here.key\"\n",
        );
    assert_ne!(edited, config);
    std::fs::write(&gw.config_path, edited).unwrap();
    gw.signal("HUP");
    gw.wait_for_log("reload rejected").await;
    for expected in [
        "server.shutdown_grace: expected a duration",
        "admin.api_key_file: cannot read /definitely/not/here.key",
    ] {
        assert!(
            gw.log().contains(expected),
            "missing {expected:?} in:\n{}",
            gw.log()
        );
    }
    let response = gw
        .client()
        .get(gw.https_url("/still"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// A reload of a file with structural problems in several sections (a
/// value of the wrong type, unknown keys) names each of them, and nothing
/// that the defaults standing in for those sections would make up: no
/// missing certificate, no site without a name. The running configuration
/// goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_reload_names_every_structural_problem() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    let edited = config
        .replace("workers = 2\n", "workers = \"2\"\n")
        .replace(
            "[[tls.certificates]]\ncert_file",
            "[[tls.certificates]]\ncert_fle",
        )
        .replace("upstream = ", "upstrem = ");
    assert_eq!(edited.matches("upstrem").count(), 1, "{edited}");
    std::fs::write(&gw.config_path, edited).unwrap();
    gw.signal("HUP");
    gw.wait_for_log("reload rejected").await;
    let log = gw.log();
    for expected in [
        "server.workers: invalid type",
        "tls.certificates[0].cert_fle: unknown field `cert_fle`",
        "sites[0].routes[0].upstrem: unknown field `upstrem`",
    ] {
        assert!(log.contains(expected), "missing {expected:?} in:\n{log}");
    }
    for made_up in [
        "at least one certificate",
        "sites[0].name",
        "sites[0].routes:",
    ] {
        assert!(!log.contains(made_up), "{made_up:?} in:\n{log}");
    }
    let response = gw
        .client()
        .get(gw.https_url("/still"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

fn check_config(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(binary())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap(), text)
}

#[test]
fn check_config_lists_every_problem_with_its_key_path() {
    let (code, out) = check_config(
        r#"
[server]
http_mode = "sideways"
trusted_proxies = ["10.0.0.0/8", "not-a-cidr"]
https_redirect_port = 0
[limits]
header_timeout = "soon"
body_idle_timeout = "2000years"
[log]
format = "xml"
[[sites]]
name = "a"
hosts = ["gw@evil"]
default_policy = "groups"
  [[sites.routes]]
  path = "/members/../x"
  upstream = "ftp://origin"
  [[sites.routes]]
  path = "/"
  upstream = "dir:/definitely/not/here"
"#,
    );
    assert_eq!(code, 2, "{out}");
    for expected in [
        "server.http_mode: expected one of redirect, serve; got \"sideways\"",
        "server.trusted_proxies[1]: expected a CIDR block",
        "limits.header_timeout: expected a duration",
        "limits.body_idle_timeout: expected a duration of at most 100 years",
        "server.https_redirect_port: expected a port from 1 to 65535",
        "log.format: expected one of human, json; got \"xml\"",
        "sites[0].hosts[0]: expected a host name",
        "sites[0].default_policy: expected public or members; for groups, end the rules with one for \"/\" that names them",
        "sites[0].routes[0].path: expected a path prefix",
        "sites[0].routes[0].upstream: expected http://host:port, https://host:port or dir:PATH; got \"ftp://origin\"",
        "sites[0].routes[1].upstream: directory /definitely/not/here does not exist",
        "tls.certificates: https_listen is set, so at least one certificate is needed",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}

/// Mistakes that would otherwise pass: a host a later site can never serve
/// (its rules would silently not apply), listeners on one address (the
/// gateway would fail at start as if another process held the port), and a
/// templates folder that is missing or does not compile.
#[test]
fn check_config_refuses_what_would_silently_not_apply() {
    let templates = tempfile::tempdir().unwrap();
    std::fs::write(templates.path().join("register.html"), "{% if %}").unwrap();
    let (code, out) = check_config(&format!(
        r#"
[server]
https_listen = ""
http_listen = "0.0.0.0:8080"
[admin]
listen = "127.0.0.1:8080"
[members]
templates_dir = {:?}
[[sites]]
name = "docs"
hosts = ["docs.example", "*.example"]
  [[sites.routes]]
  path = "/"
  upstream = "http://127.0.0.1:9"
[[sites]]
name = "club"
hosts = ["club.example", "DOCS.example.", "*.example"]
  [[sites.rules]]
  path = "/members"
  policy = "members"
  [[sites.routes]]
  path = "/"
  upstream = "http://127.0.0.1:9"
"#,
        templates.path().display().to_string()
    ));
    assert_eq!(code, 2, "{out}");
    for expected in [
        "sites[1].hosts: \"docs.example\" is already served by sites[0] (\"docs\")",
        "sites[1].hosts: \"*.example\" is already served by sites[0] (\"docs\")",
        "admin.listen: 127.0.0.1:8080 overlaps server.http_listen",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let broken = templates.path().join("register.html");
    let expected = format!(
        "members.templates_dir: template {}: syntax error",
        broken.display()
    );
    assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    assert!(!out.contains("club.example"), "{out}");
    let (code, out) = check_config(
        "[members]\ntemplates_dir = \"/definitely/not/here\"\n\
         [[sites]]\nname = \"a\"\nhosts = [\"*\"]\n[[sites.routes]]\npath = \"/\"\nupstream = \"http://127.0.0.1:9\"\n",
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("members.templates_dir: directory /definitely/not/here does not exist"),
        "{out}"
    );
}

/// What would pass the check but then fail, or go somewhere else, at
/// serving time: an SMTP URL the mailer cannot read, a port out of range
/// (it went to port 80), and a site name with a control character.
#[test]
fn check_config_refuses_what_serving_would_trip_on() {
    let (code, out) = check_config(
        r#"
[server]
https_listen = "127.0.0.1:0"
http_listen = ""
[mail]
smtp_url = "smtps://host:notaport"
[[tls.certificates]]
cert_file = "a.crt"
key_file = "a.key"
hosts = ["*"]
[[sites]]
name = "demo\tmain"
hosts = ["x.test"]
  [[sites.routes]]
  path = "/"
  upstream = "http://127.0.0.1:84535"
  [[sites.routes]]
  path = "/v6"
  upstream = "http://[::1]:8080"
"#,
    );
    assert_eq!(code, 2, "{out}");
    for expected in [
        "mail.smtp_url: expected smtps://user@host:465",
        "sites[0].name: expected a name on one line",
        "sites[0].routes[0].upstream: expected a port from 1 to 65535",
        "members.public_url: required when a site serves a name other than localhost \
         (sites[0].hosts has \"x.test\"): links in mails would point at https://localhost:0",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(!out.contains("routes[1]"), "{out}");
}

/// Problems found while loading the files a configuration names (its
/// certificates, the admin key) are all reported, each with its key path.
#[test]
fn check_config_reports_every_file_it_cannot_use() {
    let (code, out) = check_config(
        r#"
[server]
https_listen = "127.0.0.1:0"
http_listen = ""
[admin]
api_key_file = "/definitely/not/here.key"
[members]
public_url = "https://x.test"
[[tls.certificates]]
cert_file = "/definitely/not/here.crt"
key_file = "/definitely/not/here.key"
hosts = ["x.test"]
[[sites]]
name = "a"
hosts = ["x.test"]
  [[sites.routes]]
  path = "/"
  upstream = "http://127.0.0.1:9"
"#,
    );
    assert_eq!(code, 2, "{out}");
    for expected in [
        "tls.certificates[0].cert_file: cannot read certificate /definitely/not/here.crt",
        "admin.api_key_file: cannot read /definitely/not/here.key",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}

#[test]
fn check_config_names_unknown_keys_and_wrong_types() {
    let (code, out) = check_config(
        "[[sites]]\nname = \"a\"\nhosts = [\"*\"]\n[[sites.routes]]\npath = \"/\"\nupstrem = \"http://x\"\n",
    );
    assert_eq!(code, 2);
    assert!(
        out.contains("sites[0].routes[0]") && out.contains("upstrem"),
        "{out}"
    );
    let (code, out) = check_config("[limits]\nmax_headers = \"many\"\n");
    assert_eq!(code, 2);
    assert!(out.contains("limits.max_headers"), "{out}");
    let (code, out) = check_config("this is not toml");
    assert_eq!(code, 2);
    assert!(out.contains("invalid configuration"), "{out}");
}

/// Login limits of 0 were read as 1 a minute (the second login from an
/// address got 429), where `max_connections_per_ip = 0` turns its cap off:
/// a 0 that cannot mean "off" is refused, by its key path.
#[test]
fn check_config_refuses_a_zero_that_cannot_mean_off() {
    let (code, out) =
        support::check_config(&Setup::new().route("/", "http://127.0.0.1:9").members(
            "max_attempts_per_ip = 0\nmax_attempts_per_account = 0\n\
             max_attempts_per_account_per_ip = 0\nsession_cache_capacity = 0",
        ));
    assert_eq!(code, Some(2), "{out}");
    for key in [
        "members.max_attempts_per_ip",
        "members.max_attempts_per_account",
        "members.max_attempts_per_account_per_ip",
    ] {
        let expected = format!("{key}: expected at least 1; it is the attempts allowed per minute");
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }
    assert!(
        out.contains("members.session_cache_capacity: expected at least 1"),
        "{out}"
    );
    let (code, out) = support::check_config(
        &Setup::new()
            .route("/", "http://127.0.0.1:9")
            .limits("max_connections_per_ip = 0"),
    );
    assert_eq!(code, Some(0), "0 turns the per-address cap off: {out}");
}

/// Values the check used to pass and `serve` then failed on (without a key
/// path) or misused: empty paths, a worker count the system cannot start,
/// a prefixed cookie browsers drop, a certificate no client can get.
#[test]
fn check_config_refuses_what_serve_could_not_use() {
    let (code, out) = support::check_config(
        &Setup::new()
            .route("/", "http://127.0.0.1:9")
            .members(
                "database = \"\"\nsecret_file = \"\"\ntemplates_dir = \"\"\n\
                 cookie_name = \"__secure-id\"\ncookie_secure = false",
            )
            .mail("outbox_dir = \"\"")
            .admin("api_key_file = \"\"")
            .certificate(Path::new("a.crt"), Path::new("a.key"), &["a.test"])
            .certificate(Path::new("b.crt"), Path::new("b.key"), &[]),
    );
    assert_eq!(code, Some(2), "{out}");
    for expected in [
        "members.database: expected a path; got \"\"",
        "members.secret_file: expected a path; got \"\"",
        "members.templates_dir: expected a path; got \"\"",
        "mail.outbox_dir: expected a path; got \"\"",
        "admin.api_key_file: expected a path; got \"\"",
        "members.cookie_name: a __Secure- cookie must be Secure",
        "tls.certificates[1].hosts: no client would get this certificate",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let (code, out) = support::check_config(
        &Setup::new()
            .route("/", "http://127.0.0.1:9")
            .members("cookie_name = \"__HOST-id\"\ncookie_secure = false"),
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("members.cookie_name: a __Host- cookie must be Secure"),
        "{out}"
    );
    // A certificate with no hosts is the default for names no other lists,
    // as the first one; not when another says "*".
    let (code, out) =
        support::check_config(&Setup::new().route("/", "http://127.0.0.1:9").certificate(
            Path::new("a.crt"),
            Path::new("a.key"),
            &[],
        ));
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = support::check_config(
        &Setup::new()
            .route("/", "http://127.0.0.1:9")
            .certificate(Path::new("a.crt"), Path::new("a.key"), &[])
            .certificate(Path::new("b.crt"), Path::new("b.key"), &["*"]),
    );
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("tls.certificates[0].hosts: no client would get this certificate: tls.certificates[1] says \"*\""),
        "{out}"
    );
    let (code, out) = check_config("[server]\nworkers = 100000\n");
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("server.workers: expected 0 (one per core) to 1024; got 100000"),
        "{out}"
    );
}

/// A minimal valid file for `serve` in `dir`: plain HTTP on an ephemeral
/// port, state in `dir`, `server` lines added.
fn plain_http_config(dir: &Path, server: &str) -> PathBuf {
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nhttps_listen = \"\"\nhttp_listen = \"127.0.0.1:0\"\nhttp_mode = \"serve\"\n{server}\n\
             [admin]\nlisten = \"\"\n\
             [members]\ndatabase = \"m.db\"\nsecret_file = \"m.secret\"\n\
             [mail]\noutbox_dir = \"outbox\"\n\
             [[sites]]\nname = \"a\"\nhosts = [\"localhost\"]\n\
             [[sites.routes]]\npath = \"/\"\nupstream = \"http://127.0.0.1:9\"\n"
        ),
    )
    .unwrap();
    path
}

/// When the system refuses the worker threads (here a memory limit that
/// leaves room for a few hundred stacks, not 1,024), tokio panics, and
/// unwinding waited forever for the threads already started: `serve` hung.
#[test]
fn serve_exits_when_the_system_refuses_its_worker_threads() {
    let dir = tempfile::tempdir().unwrap();
    let config = plain_http_config(dir.path(), "workers = 1024");
    let mut child = Command::new("sh")
        .args([
            "-c",
            "ulimit -v 1000000 && exec \"$0\" serve --config \"$1\"",
        ])
        .arg(binary())
        .arg(&config)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("serve still runs 30 s after its runtime failed to start");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot start the async runtime with server.workers = 1024"),
        "{stderr}"
    );
}

/// A bad listen address in an environment variable is the variable's
/// problem: it is named, and the file's valid listener is not reported as
/// missing. Nor is one that the file sets but that does not parse.
#[test]
fn check_config_names_the_variable_a_bad_listen_address_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let config = plain_http_config(dir.path(), "");
    let out = Command::new(binary())
        .arg("check-config")
        .arg(&config)
        .current_dir(dir.path())
        .env("MEMBERGATE_HTTP_LISTEN", "0.0.0.0:80x")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "server.http_listen (from MEMBERGATE_HTTP_LISTEN): expected an address like \"127.0.0.1:8443\" or \"\" to disable; got \"0.0.0.0:80x\""
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("at least one of"), "{stderr}");
    let (code, out) =
        check_config("[server]\nhttps_listen = \"\"\nhttp_listen = \"0.0.0.0:80x\"\n");
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("server.http_listen: expected an address"),
        "{out}"
    );
    assert!(!out.contains("at least one of"), "{out}");
}

/// The values, the files they name and the secret in the environment are
/// checked in one run: a bad duration no longer hides a missing certificate
/// and key file. `serve` refuses the file with the same list.
#[test]
fn check_config_and_serve_report_values_and_files_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        r#"
[server]
https_listen = "127.0.0.1:0"
http_listen = ""
shutdown_grace = "soon"
[admin]
listen = ""
api_key_file = "/definitely/not/here.key"
[members]
public_url = "https://x.test"
database = "m.db"
secret_file = "m.secret"
[[tls.certificates]]
cert_file = "/definitely/not/here.crt"
key_file = "/definitely/not/here.key"
hosts = ["x.test"]
[[sites]]
name = "a"
hosts = ["x.test"]
  [[sites.routes]]
  path = "/"
  upstream = "http://127.0.0.1:9"
"#,
    )
    .unwrap();
    for command in ["check-config", "serve"] {
        let out = Command::new(binary())
            .args([command, "--config"])
            .arg(&path)
            .current_dir(dir.path())
            .env("MEMBERGATE_SECRET", "too short")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        for expected in [
            "server.shutdown_grace: expected a duration",
            "tls.certificates[0].cert_file: cannot read certificate /definitely/not/here.crt",
            "admin.api_key_file: cannot read /definitely/not/here.key",
            "MEMBERGATE_SECRET must be at least 32 characters",
        ] {
            assert!(
                stderr.contains(expected),
                "{command}: missing {expected:?} in:\n{stderr}"
            );
        }
    }
    // Refused before anything was made of it.
    assert!(!dir.path().join("m.db").exists());
}

/// Structural problems (a value of the wrong type, unknown keys) in
/// several sections are named together, each with its key path and line,
/// and the sections that have none are still checked: the missing
/// certificate is reported too. A section left out is not checked with its
/// defaults: `[members]` has a `public_url`, and no site lacks a name.
#[test]
fn check_config_and_serve_report_every_structural_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        r#"[server]
https_listen = "127.0.0.1:0"
http_listen = ""
workers = "2"
[admin]
listen = ""
[members]
public_url = "https://x.test"
session_idle = 30
[[tls.certificates]]
cert_file = "/definitely/not/here.crt"
key_file = "/definitely/not/here.key"
hosts = ["x.test"]
[[sites]]
name = "a"
hosts = ["x.test"]
  [[sites.routes]]
  path = "/"
  upstream = "http://127.0.0.1:9"
[[sites]]
name = "b"
hosts = ["y.test"]
  [[sites.routes]]
  path = "/"
  upstrem = "http://127.0.0.1:9"
[limit]
max_headers = 10
"#,
    )
    .unwrap();
    for command in ["check-config", "serve"] {
        let out = Command::new(binary())
            .args([command, "--config"])
            .arg(&path)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        for (start, end) in [
            ("server.workers: invalid type: string \"2\"", "(line 4)"),
            (
                "members.session_idle: invalid type: integer `30`",
                "(line 9)",
            ),
            (
                "sites[1].routes[0].upstrem: unknown field `upstrem`",
                "(line 25)",
            ),
            ("limit: unknown field `limit`", "(line 26)"),
            (
                "tls.certificates[0].cert_file: cannot read certificate /definitely/not/here.crt",
                "",
            ),
        ] {
            let line = stderr.lines().find(|l| l.starts_with(start));
            assert!(
                line.is_some_and(|l| l.ends_with(end)),
                "{command}: no {start:?} ... {end:?} in:\n{stderr}"
            );
        }
        for made_up in ["members.public_url", "sites[1].name", "sites[1].routes:"] {
            assert!(
                !stderr.contains(made_up),
                "{command}: {made_up:?} in:\n{stderr}"
            );
        }
    }

    // `[server]` left out: its default listeners are not the file's, so no
    // certificate is asked for and the admin listener clashes with nothing;
    // the site left out is not missing for the API key that names it.
    let (code, out) = check_config(&format!(
        r#"[server]
https_listen = ""
http_listen = "127.0.0.1:8081"
http_mode = "serve"
workers = "2"
[admin]
listen = "127.0.0.1:8080"
[[identification.api_keys]]
name = "crm"
key_sha256 = "{}"
scopes = ["verify"]
sites = ["a"]
[[sites]]
name = "a"
hosts = ["localhost"]
  [[sites.routes]]
  path = "/"
  upstrem = "http://127.0.0.1:9"
"#,
        "a".repeat(64)
    ));
    assert_eq!(code, 2, "{out}");
    for expected in ["server.workers: invalid type", "sites[0].routes[0].upstrem"] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    for made_up in ["certificate", "overlaps", "no site is named"] {
        assert!(!out.contains(made_up), "{made_up:?} in:\n{out}");
    }
}

#[test]
fn the_demo_and_container_configs_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(binary())
        .current_dir(root)
        .args(["check-config", "config/membergate.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 sites, 1 routes)"));
    // A secret in the environment that `serve` would refuse is reported too.
    let out = Command::new(binary())
        .current_dir(root)
        .args(["check-config", "config/membergate.toml"])
        .env("MEMBERGATE_SECRET", "too short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MEMBERGATE_SECRET must be at least 32"));
}

/// `membergate health` (the container's health check) asks the running
/// gateway's admin listener: healthy while it serves, whatever the file on
/// disk now says, and not once it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_asks_the_running_gateway() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = format!("0.0.0.0:{port}");
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(
        Setup::new()
            .route("/", &origin.url())
            .env("MEMBERGATE_ADMIN_LISTEN", &admin),
    )
    .await;
    let health = |config: &std::path::Path| {
        Command::new(binary())
            .args(["health", "--config"])
            .arg(config)
            .env("MEMBERGATE_ADMIN_LISTEN", &admin)
            .output()
            .unwrap()
    };
    let out = health(&gw.config_path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The file alone names the listener. An edit the gateway would reject
    // (here an origin folder that does not exist) does not make a serving
    // gateway unhealthy: a liveness probe would restart it into a crash loop.
    let edited = gw.config_path.with_file_name("edited.toml");
    std::fs::write(
        &edited,
        format!(
            "[admin]\nlisten = \"{admin}\"\n\n[[sites]]\nname = \"s\"\nhosts = [\"*\"]\n\n\
             [[sites.routes]]\nprefix = \"/\"\nupstream = \"dir:/no/such/folder\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["health", "--config"])
        .arg(&edited)
        .env_remove("MEMBERGATE_ADMIN_LISTEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = Command::new(binary())
        .arg("check-config")
        .arg(&edited)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2), "the edit is invalid");
    let (_dir, config) = gw.stop().await;
    let out = health(&config);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not healthy"));
}

#[test]
fn prints_its_version() {
    let out = Command::new(binary()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("membergate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn serve_refuses_a_bad_config_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[server]\nworkers = -1\n").unwrap();
    let out = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.workers"));
}

#[test]
fn docker_compose_is_consistent_with_the_repository() {
    use yaml_rust2::{Yaml, YamlLoader};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).unwrap();
    let services = &docs[0]["services"];
    let origin = &services["origin"];
    let gateway = &services["membergate"];
    assert!(origin["image"].as_str().unwrap().starts_with("nginx:"));
    assert_eq!(gateway["build"].as_str(), Some("."));
    assert!(root.join("Dockerfile").is_file());

    // Every bind-mounted host path exists; the gateway's config is the one we check.
    let mut config_file = None;
    for service in [origin, gateway] {
        for volume in service["volumes"].as_vec().unwrap() {
            let spec = volume.as_str().unwrap();
            let (source, target) = spec.split_once(':').unwrap();
            if source.starts_with("./") {
                assert!(root.join(source).exists(), "{source} does not exist");
                if target.starts_with("/etc/membergate/membergate.toml") {
                    config_file = Some(root.join(source));
                }
            }
        }
    }
    let config_file = config_file.expect("the gateway mounts its configuration");
    let command: Vec<&str> = gateway["command"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        command,
        ["serve", "--config", "/etc/membergate/membergate.toml"]
    );

    // The health check asks the running gateway, not the file.
    let test: Vec<&str> = gateway["healthcheck"]["test"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        test,
        [
            "CMD",
            "membergate",
            "health",
            "--config",
            "/etc/membergate/membergate.toml"
        ]
    );

    // The mounted configuration is valid, with the compose environment
    // applied, and reading the other bind mounts (the teasers) where they
    // come from.
    let mut translated = std::fs::read_to_string(&config_file).unwrap();
    for volume in gateway["volumes"].as_vec().unwrap() {
        let spec = volume.as_str().unwrap().trim_end_matches(":ro");
        if let Some((source, target)) = spec.split_once(':')
            && source.starts_with("./")
        {
            let source = root.join(source);
            translated = translated.replace(target, &source.display().to_string());
        }
    }
    let scratch = tempfile::tempdir().unwrap();
    let translated_file = scratch.path().join("membergate.toml");
    std::fs::write(&translated_file, translated).unwrap();
    let mut check = Command::new(binary());
    check.arg("check-config").arg(&translated_file);
    if let Yaml::Hash(env) = &gateway["environment"] {
        for (k, v) in env {
            check.env(k.as_str().unwrap(), v.as_str().unwrap());
        }
    }
    let out = check.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Published ports are the ports the configuration listens on; the
    // mailed links name the HTTPS one as the host publishes it.
    let config = std::fs::read_to_string(&config_file).unwrap();
    for port in gateway["ports"].as_vec().unwrap() {
        let mapping = port.as_str().unwrap();
        let inside = mapping.rsplit(':').next().unwrap();
        assert!(
            config.contains(&format!("0.0.0.0:{inside}\"")),
            "{mapping} is not a configured listener"
        );
    }
    let https_inside = config
        .lines()
        .find_map(|l| l.strip_prefix("https_listen = \"0.0.0.0:"))
        .unwrap()
        .trim_end_matches('"');
    let published = gateway["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .find_map(|m| m.strip_suffix(&format!(":{https_inside}")))
        .unwrap();
    let published = published.rsplit(':').next().unwrap();
    assert!(
        config.contains(&format!("public_url = \"https://localhost:{published}\"")),
        "members.public_url does not name the published port {published}"
    );
    // The origin the gateway routes to is the compose service.
    assert!(config.contains("upstream = \"http://origin:80\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_its_site_as_the_readme_says() {
    // The README's demo command, run from a scratch directory that sees the
    // repository's config and site, with ephemeral ports instead of 8443/8080/9090.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(root.join("examples"), dir.path().join("examples")).unwrap();
    let config = dir.path().join("membergate.toml");
    std::fs::copy(root.join("config/membergate.toml"), &config).unwrap();
    serve_and_browse_the_demo(dir, config).await;
}

async fn serve_and_browse_the_demo(dir: tempfile::TempDir, config: std::path::PathBuf) {
    use std::io::BufRead;
    // A port of its own rather than 0: the mailed links name it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .env("MEMBERGATE_HTTPS_LISTEN", format!("127.0.0.1:{port}"))
        .env("MEMBERGATE_HTTP_LISTEN", "127.0.0.1:0")
        .env("MEMBERGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let addr = |name: &str| -> std::net::SocketAddr {
        let word = line
            .split_whitespace()
            .find(|w| w.starts_with(&format!("{name}=")))
            .unwrap();
        word.split_once('=').unwrap().1.parse().unwrap()
    };
    let (https, http) = (addr("https"), addr("http"));
    assert_eq!(https.port(), port);
    let cert = std::fs::read(dir.path().join("certs/dev/localhost.crt")).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&cert).unwrap()])
        .resolve("localhost", https)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    for (path, needle) in [
        ("/", "Northwind Lighthouse Club"),
        ("/blog/", "Restoring the lens"),
        ("/kb/getting-started.html", "Getting started"),
        ("/assets/site.css", "--accent"),
        ("/_membergate/login", "Log in"),
        ("/_membergate/register", "Create an account"),
        // A teaser instead of the login redirect for this members-only article.
        ("/kb/keeper-logbook-access.html", "become a member"),
        // The demo chat widget, put into pages on their way.
        ("/blog/", "src=\"/assets/chat-widget.js\""),
    ] {
        let response = client
            .get(format!("https://localhost:{}{path}", https.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(response.text().await.unwrap().contains(needle), "{path}");
    }
    // Members-only pages send anonymous visitors to the login page.
    for path in ["/members/", "/vip/", "/kb/member-handbook.html"] {
        let response = client
            .get(format!("https://localhost:{}{path}", https.port()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 302, "{path}");
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        assert!(
            location.starts_with("/_membergate/login?return_to="),
            "{location}"
        );
    }
    // Mailed links follow the HTTPS port the demo was moved to.
    let base = format!("https://localhost:{port}");
    let form = client
        .get(format!("{base}/_membergate/register"))
        .send()
        .await
        .unwrap();
    let cookie = form.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let page = form.text().await.unwrap();
    let marker = "name=\"csrf\" value=\"";
    let csrf = page[page.find(marker).unwrap() + marker.len()..]
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let registered = client
        .post(format!("{base}/_membergate/register"))
        .header("cookie", cookie)
        .header("origin", &base)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("csrf", csrf.as_str()),
                ("email", "demo@example.com"),
                ("password", "correct horse battery"),
                ("first_name", "Demo"),
                ("last_name", "Visitor"),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 200);
    let outbox = dir.path().join("data/outbox");
    let mut mail = String::new();
    for _ in 0..100 {
        if let Some(file) = std::fs::read_dir(&outbox).ok().and_then(|mut d| d.next()) {
            mail = std::fs::read_to_string(file.unwrap().path()).unwrap();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        mail.contains(&format!("\n{base}/_membergate/verify?token=")),
        "{mail}"
    );
    // Plain HTTP redirects to the HTTPS listener.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap();
    let response = plain
        .get(format!("http://localhost:{}/blog/", http.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.headers()["location"],
        format!("https://localhost:{}/blog/", https.port()).as_str()
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// A reload keeps the TLS session cache and ticket keys: a client that
/// resumed before a SIGHUP still resumes after it, rather than paying for a
/// full handshake (every returning client did, after every reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_tls_sessions_resumable() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    // One client configuration: its resumption store carries the tickets.
    let config = gw.tls_client_config(b"http/1.1");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let exchange = || async {
        let tcp = tokio::net::TcpStream::connect(gw.https).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let kind = tls.get_ref().1.handshake_kind();
        tls.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        // Read to the end: the ticket comes after the handshake.
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
        kind
    };
    assert_eq!(exchange().await, Some(rustls::HandshakeKind::Full));
    assert_eq!(exchange().await, Some(rustls::HandshakeKind::Resumed));
    gw.signal("HUP");
    gw.wait_for_log("configuration reloaded").await;
    assert_eq!(
        exchange().await,
        Some(rustls::HandshakeKind::Resumed),
        "the reload forgot the sessions"
    );
}

/// The member database in the configuration is read from the working
/// directory when relative. An admin command run from elsewhere used to
/// create an empty database there and report success on it; now only adding
/// a member creates one, and says where.
#[test]
fn admin_commands_do_not_work_on_a_database_they_created_by_mistake() {
    let home = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let config = home.path().join("membergate.toml");
    let setup = Setup::new().route("/", "http://127.0.0.1:9");
    std::fs::write(&config, setup.render(home.path())).unwrap();
    let cli = |args: &[&str], dir: &std::path::Path, stdin: &str| {
        let out = support::run_cli(&config, dir, args, stdin, &[]);
        (out.ok, out.stdout, out.stderr)
    };
    let stray = elsewhere.path().join("data/membergate.db");
    for command in [
        &["member", "list"][..],
        &["member", "disable", "ada@example.com"],
        &["group", "list"],
        &[
            "policy",
            "check",
            "--url",
            "https://localhost/",
            "--member",
            "ada@example.com",
        ],
    ] {
        let (ok, _, err) = cli(command, elsewhere.path(), "");
        assert!(!ok, "{command:?} succeeded");
        assert!(err.contains("there is no member database at"), "{err}");
        assert!(err.contains(&stray.display().to_string()), "{err}");
        assert!(!stray.exists(), "{command:?} created {}", stray.display());
    }
    // An anonymous visitor's access decision needs no store (before the
    // first start, or in CI beside check-config), and makes none.
    let (ok, out, err) = cli(
        &["policy", "check", "--url", "https://localhost/members/"],
        elsewhere.path(),
        "",
    );
    assert!(ok && out.contains("visitor: anonymous"), "{out}{err}");
    assert!(!stray.exists(), "policy check created {}", stray.display());
    // Adding the first member before the first start creates the store, and says where.
    let (ok, out, err) = cli(
        &["member", "add", "ada@example.com"],
        home.path(),
        "a long enough password\n",
    );
    assert!(ok, "{out}{err}");
    let database = home.path().join("data/membergate.db");
    assert!(
        err.contains(&format!(
            "creating a new member database at {}",
            database.display()
        )),
        "{err}"
    );
    let (ok, out, err) = cli(&["member", "list"], home.path(), "");
    assert!(ok && out.contains("ada@example.com"), "{out}{err}");
    assert!(!err.contains("creating"), "{err}");
}

/// The member, group, session and backup commands read only the member
/// database, `[mail]` and what invitation links start with: an operator who
/// must disable a member or end their sessions is not stopped by a problem
/// elsewhere, here a HubSpot chat site whose token is exported for the
/// gateway but not in the operator's shell. `policy check` needs the sites,
/// and says what is wrong with them; so does a problem in what the member
/// commands read.
#[test]
fn member_commands_work_whatever_the_rest_of_the_configuration_says() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("membergate.toml");
    let setup = Setup::new()
        .route("/", "http://127.0.0.1:9")
        .chat("provider = \"hubspot\"\nportal_id = \"4242\"")
        .members("templates_dir = \"no/such/folder\"");
    let text = setup.render(home.path());
    std::fs::write(&config, &text).unwrap();
    let cli = |config: &std::path::Path, args: &[&str], stdin: &str| {
        let out = support::run_cli(config, home.path(), args, stdin, &[]);
        (out.ok, out.stdout + &out.stderr)
    };
    for (args, stdin) in [
        (
            &["member", "add", "ada@example.com"][..],
            "a long enough password\n",
        ),
        (&["member", "add", "bo@example.com", "--invite"], ""),
        (
            &["member", "set-password", "ada@example.com"],
            "another long password",
        ),
        (&["group", "add", "ada@example.com", "vip"], ""),
        (&["session", "revoke", "--member", "ada@example.com"], ""),
        (&["member", "disable", "ada@example.com"], ""),
        (&["member", "list"], ""),
        (&["backup", "copy.db"], ""),
    ] {
        let (ok, out) = cli(&config, args, stdin);
        assert!(ok, "{args:?}: {out}");
    }
    let mail = std::fs::read_dir(home.path().join("data/outbox"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect::<String>();
    assert!(
        mail.contains("https://gw.test/_membergate/reset?token="),
        "{mail}"
    );

    let (ok, out) = cli(
        &config,
        &["policy", "check", "--url", "https://gw.test/"],
        "",
    );
    assert!(!ok, "{out}");
    assert!(out.contains("sites[0].chat.access_token_env"), "{out}");
    assert!(out.contains("members.templates_dir"), "{out}");

    // What they do read is checked as the gateway checks it, with the key path.
    let edited = home.path().join("edited.toml");
    let broken = [
        (
            text.replace(
                "[mail]\n",
                "[mail]\nsmtp_url = \"ftp://mail.example.com\"\n",
            ),
            "mail.smtp_url",
        ),
        // Without a public_url, invitation links would point at localhost.
        (
            text.replace("public_url = \"https://gw.test\"\n", ""),
            "members.public_url: required when a site serves a name other than localhost",
        ),
        // A misspelt key would send the command to the default database.
        (
            text.replace("[members]\n", "[members]\ndatabse = \"other.db\"\n"),
            "members.databse",
        ),
    ];
    for (text, problem) in broken {
        std::fs::write(&edited, text).unwrap();
        let out = support::run_cli(&edited, home.path(), &["member", "list"], "", &[]);
        assert!(!out.ok);
        assert!(out.stderr.contains(problem), "{problem}: {}", out.stderr);
    }
}

/// The Kubernetes sidecar example holds together: its configuration passes
/// `check-config` with the pod's environment, the container listens where
/// the configuration does, the probes ask the running gateway through the
/// mounted file, the secrets come from a Secret, and it runs as the one
/// replica an embedded store allows, as the image's user.
#[test]
fn the_kubernetes_sidecar_example_is_consistent() {
    use yaml_rust2::YamlLoader;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/kubernetes/sidecar.yaml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).unwrap();
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(k))
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let config_text = kind("ConfigMap")["data"]["membergate.toml"]
        .as_str()
        .unwrap();
    let deployment = kind("Deployment");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"].as_i64(), Some(1));
    assert_eq!(spec["strategy"]["type"].as_str(), Some("Recreate"));
    let pod = &spec["template"]["spec"];
    let gateway = pod["containers"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some("membergate"))
        .unwrap();

    // The configuration, with the pod's environment (secrets stand in).
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("membergate.toml");
    std::fs::write(&config_file, config_text).unwrap();
    let mut check = Command::new(binary());
    check.arg("check-config").arg(&config_file);
    for var in gateway["env"].as_vec().unwrap() {
        let name = var["name"].as_str().unwrap();
        assert_eq!(
            var["valueFrom"]["secretKeyRef"]["name"].as_str(),
            Some("membergate"),
            "{name} is not from the Secret"
        );
        check.env(name, "x".repeat(64));
    }
    let out = check.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Mounted where the arguments and probes read it.
    let mounted = gateway["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| m["name"].as_str() == Some("config"))
        .unwrap()["mountPath"]
        .as_str()
        .unwrap();
    let path = format!("{mounted}/membergate.toml");
    let strings = |y: &yaml_rust2::Yaml| -> Vec<String> {
        y.as_vec()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(strings(&gateway["args"]), ["serve", "--config", &path]);
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            strings(&gateway[probe]["exec"]["command"]),
            ["membergate", "health", "--config", &path],
            "{probe}"
        );
    }

    // Listens where the container port says, on every interface.
    let port = gateway["ports"][0]["containerPort"].as_i64().unwrap();
    assert!(
        config_text.contains(&format!("http_listen = \"0.0.0.0:{port}\"")),
        "{config_text}"
    );
    // The data volume holds the store, and the grace period outlasts the drain.
    let data = gateway["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| m["name"].as_str() == Some("data"))
        .unwrap()["mountPath"]
        .as_str()
        .unwrap();
    assert!(config_text.contains(&format!("database = \"{data}/")));
    assert!(pod["terminationGracePeriodSeconds"].as_i64().unwrap() > 30);
    assert!(config_text.contains("shutdown_grace = \"30s\""));
    // The image's user (the Dockerfile's numeric USER).
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let uid = pod["securityContext"]["runAsUser"].as_i64().unwrap();
    assert!(
        dockerfile.contains(&format!("\nUSER {uid}\n")),
        "the pod runs as {uid}, the image as another user"
    );
}

/// `membergate backup FILE` writes a consistent copy of the member database
/// while the gateway runs (the database file alone is not one: recent
/// changes live in its -wal file), owner-only, never over an existing file;
/// a gateway started on the copy has the members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serving_restores_every_member() {
    use std::os::unix::fs::PermissionsExt;
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    for email in ["ada@example.com", "bob@example.com"] {
        let (ok, out) = gw.cli(&["member", "add", email], "a long enough password\n");
        assert!(ok, "{out}");
    }
    let (ok, out) = gw.cli(&["group", "add", "bob@example.com", "vip"], "");
    assert!(ok, "{out}");
    let backups = tempfile::tempdir().unwrap();
    let copy = backups.path().join("members.db");
    let copy_arg = copy.to_str().unwrap();
    let (ok, out) = gw.cli(&["backup", copy_arg], "");
    assert!(ok, "{out}");
    let mode = std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (ok, out) = gw.cli(&["backup", copy_arg], "");
    assert!(!ok && out.contains("never overwrites"), "{out}");

    // Restored into a new gateway's data folder: the members and groups are there.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("membergate.toml");
    let setup = Setup::new().route("/", &origin.url());
    std::fs::write(&config, setup.render(dir.path())).unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::copy(&copy, dir.path().join("data/membergate.db")).unwrap();
    let restored = Gateway::start_with_file(dir, config).await;
    let (ok, out) = restored.cli(&["member", "list"], "");
    assert!(ok, "{out}");
    assert!(out.contains("ada@example.com"), "{out}");
    assert!(
        out.contains("bob@example.com") && out.contains("groups=vip"),
        "{out}"
    );
}
