//! Test DSL: the real `membergate` binary on ephemeral ports, real origins, real clients.
//!
//! ```ignore
//! let origin = EchoOrigin::start().await;
//! let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
//! let response = gw.client().get(gw.https_url("/")).send().await?;
//! ```
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod browser;
pub mod chat;
pub mod origins;
pub mod smtp;
pub mod webdriver;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[allow(unused_imports)]
pub use origins::{EchoOrigin, Fault, FaultyOrigin};

/// What to put in the gateway's configuration file.
pub struct Setup {
    pub http_mode: &'static str,
    /// The host part of the HTTPS and HTTP listen addresses.
    pub listen_host: &'static str,
    pub server_extra: String,
    pub limits: String,
    pub tls_extra: String,
    pub certificates: Vec<(PathBuf, PathBuf, Vec<String>)>,
    pub sites: Vec<String>,
    pub routes: Vec<String>,
    pub rules: Vec<String>,
    pub members: String,
    pub admin: String,
    pub mail: String,
    /// The default site's `[sites.chat]` table (lines after the header).
    pub chat: String,
    /// Lines for the `[identification]` table.
    pub identification: String,
    /// Files (relative path, contents) written into the gateway's directory before it starts.
    pub files: Vec<(String, String)>,
    pub access_log: bool,
}

impl Setup {
    pub fn new() -> Setup {
        Setup {
            http_mode: "serve",
            listen_host: "127.0.0.1",
            server_extra: String::new(),
            limits: String::new(),
            tls_extra: String::new(),
            certificates: Vec::new(),
            sites: Vec::new(),
            routes: Vec::new(),
            rules: Vec::new(),
            members: String::new(),
            admin: String::new(),
            mail: String::new(),
            chat: String::new(),
            identification: String::new(),
            files: Vec::new(),
            access_log: true,
        }
    }

    /// A route of the default site (`localhost`, `127.0.0.1`, `gw.test`).
    pub fn route(mut self, path: &str, upstream: &str) -> Setup {
        self.routes.push(format!(
            "[[sites.routes]]\npath = {path:?}\nupstream = {upstream:?}\n"
        ));
        self
    }

    /// A route with extra keys (TOML lines) of the default site.
    pub fn route_with(mut self, path: &str, upstream: &str, extra: &str) -> Setup {
        self.routes.push(format!(
            "[[sites.routes]]\npath = {path:?}\nupstream = {upstream:?}\n{extra}\n"
        ));
        self
    }

    /// A whole extra `[[sites]]` table, written after the default site.
    pub fn site(mut self, toml: &str) -> Setup {
        self.sites.push(toml.to_owned());
        self
    }

    /// An access rule of the default site: `policy` is public, members or groups.
    pub fn rule(mut self, path: &str, policy: &str, groups: &[&str]) -> Setup {
        self.rules.push(format!(
            "[[sites.rules]]\npath = {path:?}\npolicy = {policy:?}\ngroups = {groups:?}\n"
        ));
        self
    }

    /// An access rule with extra keys (TOML lines), e.g. a teaser.
    pub fn rule_with(mut self, path: &str, policy: &str, extra: &str) -> Setup {
        self.rules.push(format!(
            "[[sites.rules]]\npath = {path:?}\npolicy = {policy:?}\n{extra}\n"
        ));
        self
    }

    /// Lines for the `[admin]` table.
    pub fn admin(mut self, toml: &str) -> Setup {
        self.admin.push_str(toml);
        self.admin.push('\n');
        self
    }

    /// The default site's chat widget: lines of its `[sites.chat]` table
    /// (`[[sites.chat.rules]]` tables may follow).
    pub fn chat(mut self, toml: &str) -> Setup {
        self.chat.push_str(toml);
        self.chat.push('\n');
        self
    }

    /// An environment variable for the gateway process (kept across restarts).
    pub fn env(self, name: &str, value: &str) -> Setup {
        self.file(ENV_FILE, &format!("{name}={value}"))
    }

    /// Lines for the `[identification]` table.
    pub fn identification(mut self, toml: &str) -> Setup {
        self.identification.push_str(toml);
        self.identification.push('\n');
        self
    }

    /// Lines for the `[mail]` table.
    pub fn mail(mut self, toml: &str) -> Setup {
        self.mail.push_str(toml);
        self.mail.push('\n');
        self
    }

    /// A file written into the gateway's directory (its working directory) before it starts.
    pub fn file(mut self, path: &str, contents: &str) -> Setup {
        self.files.push((path.to_owned(), contents.to_owned()));
        self
    }

    /// Lines for the `[members]` table.
    pub fn members(mut self, toml: &str) -> Setup {
        self.members.push_str(toml);
        self.members.push('\n');
        self
    }

    pub fn http_mode(mut self, mode: &'static str) -> Setup {
        self.http_mode = mode;
        self
    }

    pub fn server(mut self, toml: &str) -> Setup {
        self.server_extra.push_str(toml);
        self.server_extra.push('\n');
        self
    }

    pub fn limits(mut self, toml: &str) -> Setup {
        self.limits.push_str(toml);
        self.limits.push('\n');
        self
    }

    pub fn certificate(mut self, cert: &Path, key: &Path, hosts: &[&str]) -> Setup {
        self.certificates.push((
            cert.into(),
            key.into(),
            hosts.iter().map(|h| h.to_string()).collect(),
        ));
        self
    }

    pub fn render(&self, dir: &Path) -> String {
        let mut certs = String::new();
        let dev_cert = dir.join("certs/dev.crt");
        let dev_key = dir.join("certs/dev.key");
        let mut all = vec![(dev_cert, dev_key, vec!["localhost".to_owned()])];
        all.extend(self.certificates.iter().cloned());
        // Explicit certificates go first so that the first one is the SNI default.
        if !self.certificates.is_empty() {
            all.rotate_left(1);
        }
        for (cert, key, hosts) in &all {
            certs.push_str(&format!(
                "[[tls.certificates]]\ncert_file = {:?}\nkey_file = {:?}\nhosts = {hosts:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            ));
        }
        // The site serves `gw.test`, a name that needs a `public_url`.
        let members = if self.members.contains("public_url") {
            self.members.clone()
        } else {
            format!("public_url = \"https://gw.test\"\n{}", self.members)
        };
        format!(
            "[server]\nworkers = 2\nhttps_listen = \"{host}:0\"\nhttp_listen = \"{host}:0\"\n\
             http_mode = {:?}\nshutdown_grace = \"5s\"\n{}\n\
             [limits]\n{}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n{}\n\
             [log]\nformat = \"json\"\nlevel = \"info\"\naccess_log = {}\n\
             [tls]\ndev_certificate = true\n{}\n{certs}\n\
             [members]\n{}\n\
             [mail]\n{}\n\
             [identification]\n{}\n\
             [[sites]]\nname = \"main\"\nhosts = [\"localhost\", \"127.0.0.1\", \"gw.test\"]\n{}\n{}\n{}\n{}\n",
            self.http_mode,
            self.server_extra,
            self.limits,
            self.admin,
            self.access_log,
            self.tls_extra,
            members,
            self.mail,
            self.identification,
            self.routes.join("\n"),
            self.rules.join("\n"),
            if self.chat.is_empty() {
                String::new()
            } else {
                format!("[sites.chat]\n{}", self.chat)
            },
            self.sites.join("\n"),
            host = self.listen_host,
        )
    }
}

/// Environment variables for the gateway, one `NAME=value` per line.
const ENV_FILE: &str = "gateway.env";

/// Runs `membergate check-config` on the setup's file (in a scratch folder);
/// returns the exit code and everything it printed.
pub fn check_config(setup: &Setup) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("membergate.toml");
    std::fs::write(&config, setup.render(dir.path())).unwrap();
    let out = Command::new(binary())
        .arg("check-config")
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// The variables of the env file in `dir`.
fn gateway_env(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join(ENV_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A running gateway process.
pub struct Gateway {
    child: Child,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    log_path: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_membergate")
}

impl Gateway {
    pub async fn start(setup: Setup) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("membergate.toml");
        std::fs::write(&config_path, setup.render(dir.path())).unwrap();
        for (path, contents) in &setup.files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            // Several `env` lines go into one file.
            let mut text = std::fs::read_to_string(&path).unwrap_or_default();
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(contents);
            std::fs::write(path, text).unwrap();
        }
        Gateway::start_with_file(dir, config_path).await
    }

    pub async fn start_with_file(dir: tempfile::TempDir, config_path: PathBuf) -> Gateway {
        let log_path = dir.path().join("gateway.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let env = gateway_env(dir.path());
        let mut child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(&config_path)
            .current_dir(dir.path())
            .envs(env)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await
        .unwrap()
        .unwrap();
        let mut addrs = std::collections::HashMap::new();
        for word in line.split_whitespace() {
            if let Some((k, v)) = word.split_once('=') {
                addrs.insert(k.to_owned(), v.parse::<SocketAddr>().unwrap());
            }
        }
        if addrs.len() < 3 {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("gateway did not start: {line:?}\n{log}");
        }
        Gateway {
            child,
            https: addrs["https"],
            http: addrs["http"],
            admin: addrs["admin"],
            dir,
            config_path,
            log_path,
        }
    }

    /// Stops the gateway (SIGTERM); its directory and configuration are
    /// handed back, for `start_with_file`.
    pub async fn stop(mut self) -> (tempfile::TempDir, PathBuf) {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(10)).await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, self.config_path.clone())
    }

    /// Stops the gateway (SIGTERM) and starts it again on the same files.
    pub async fn restart(self) -> Gateway {
        let (dir, config_path) = self.stop().await;
        Gateway::start_with_file(dir, config_path).await
    }

    /// Kills the gateway with SIGKILL (no shutdown code runs, nothing is
    /// flushed) and starts it again on the same files. Panics if the process
    /// had already died by itself: that is a crash, not our kill.
    pub async fn kill_and_restart(mut self) -> Gateway {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("gateway exited by itself ({status}):\n{}", self.log());
        }
        self.child.kill().unwrap(); // SIGKILL on Unix
        self.wait_exit(Duration::from_secs(10)).await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let config_path = self.config_path.clone();
        drop(self);
        Gateway::start_with_file(dir, config_path).await
    }

    pub fn dev_cert_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("certs/dev.crt")).unwrap()
    }

    /// A rustls client configuration that trusts only the dev certificate
    /// and offers `alpn`, for tests that speak TLS themselves.
    pub fn tls_client_config(&self, alpn: &[u8]) -> rustls::ClientConfig {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&self.dev_cert_pem()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        config
    }

    /// A client that trusts only the dev certificate and resolves the test
    /// host names to the gateway's HTTPS listener. It follows no redirects.
    pub fn client(&self) -> reqwest::Client {
        self.client_builder().build().unwrap()
    }

    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let cert = reqwest::Certificate::from_pem(&self.dev_cert_pem()).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([cert])
            .resolve("localhost", self.https)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(20))
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https.port())
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http.port())
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin.port())
    }

    /// The Prometheus text of the admin listener's `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The gateway process's resident memory in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {status}"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (or panics after 10 s).
    pub async fn wait_for_log(&self, needle: &str) {
        self.wait_for_logs(needle, 1).await;
    }

    /// Waits until the log holds `needle` `count` times (the second reload's line).
    pub async fn wait_for_logs(&self, needle: &str, count: usize) {
        for _ in 0..200 {
            if self.log().matches(needle).count() >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "log never contained {needle:?} {count} times:\n{}",
            self.log()
        );
    }

    /// Waits for the process to exit (or panics after `limit`).
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gateway did not exit:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The newest mail to `to` in the development outbox, waiting up to 5 s.
    pub async fn mail_to(&self, to: &str) -> String {
        let dir = self.dir.path().join("data/outbox");
        let suffix = format!("-{to}.eml");
        for _ in 0..100 {
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default();
            files.retain(|p| p.file_name().unwrap().to_string_lossy().ends_with(&suffix));
            files.sort();
            if let Some(newest) = files.last() {
                return std::fs::read_to_string(newest).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no mail to {to} in {}", dir.display());
    }

    /// The newest mail to `to` once there are more than `seen` of them,
    /// waiting up to 5 s: for mail the gateway sends after it has answered
    /// (a reset link), where `mail_to` could return an older one.
    pub async fn next_mail_to(&self, to: &str, seen: usize) -> String {
        for _ in 0..100 {
            if self.mail_count(to) > seen {
                return self.mail_to(to).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no new mail to {to} after {seen}");
    }

    /// Number of mails to `to` in the outbox.
    pub fn mail_count(&self, to: &str) -> usize {
        let dir = self.dir.path().join("data/outbox");
        let suffix = format!("-{to}.eml");
        std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(&suffix))
                    .count()
            })
            .unwrap_or(0)
    }

    /// The path and query of the first gateway link in `mail`.
    pub fn link_in(mail: &str) -> String {
        let start = mail
            .find("/_membergate/")
            .unwrap_or_else(|| panic!("no link in {mail}"));
        mail[start..].split_whitespace().next().unwrap().to_owned()
    }

    /// Runs an admin command against this gateway's configuration.
    pub fn cli(&self, args: &[&str], stdin: &str) -> (bool, String) {
        let env = gateway_env(self.dir.path());
        let out = run_cli(&self.config_path, self.dir.path(), args, stdin, &env);
        (out.ok, out.stdout + &out.stderr)
    }

    /// Sends raw bytes to the plain-HTTP listener and returns everything read
    /// until the gateway closes or 3 s pass without data.
    pub async fn raw(&self, request: &[u8]) -> String {
        raw_exchange(self.http, request).await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway whose `/members` and `/public` routes go to origins of their own
/// and everything else to a third, so a request that goes astray is visible.
/// `setup` may add rules, sites and limits.
pub struct ThreeOrigins {
    pub gw: Gateway,
    pub members: EchoOrigin,
    pub public: EchoOrigin,
    pub rest: EchoOrigin,
}

impl ThreeOrigins {
    pub async fn start(setup: Setup) -> ThreeOrigins {
        let members = EchoOrigin::start().await;
        let public = EchoOrigin::start().await;
        let rest = EchoOrigin::start().await;
        let gw = Gateway::start(
            setup
                .route("/members", &members.url())
                .route("/public", &public.url())
                .route("/", &rest.url()),
        )
        .await;
        ThreeOrigins {
            gw,
            members,
            public,
            rest,
        }
    }

    /// Sends `GET {target}` with `Host: gw.test` and returns the status.
    pub async fn get(&self, target: &str) -> u16 {
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
        status_of(&self.gw.raw(request.as_bytes()).await)
    }

    /// Every request any of the three origins received, as `METHOD target`.
    pub fn seen(&self) -> Vec<String> {
        [&self.members, &self.public, &self.rest]
            .iter()
            .flat_map(|o| o.requests())
            .map(|r| format!("{} {}", r.method, r.target))
            .collect()
    }

    pub fn total_requests(&self) -> usize {
        self.seen().len()
    }

    /// Asserts that no origin received a request whose target contains `needle`.
    pub fn nobody_saw(&self, needle: &str) {
        let seen = self.seen();
        assert!(
            seen.iter().all(|r| !r.contains(needle)),
            "an origin received {needle}: {seen:?}"
        );
    }
}

/// What an admin command printed.
pub struct CliOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `membergate ARGS --config CONFIG` from `dir`, with `env` and `stdin`.
pub fn run_cli(
    config: &Path,
    dir: &Path,
    args: &[&str],
    stdin: &str,
    env: &[(String, String)],
) -> CliOutput {
    use std::io::Write;
    let mut child = Command::new(binary())
        .args(args)
        .arg("--config")
        .arg(config)
        .current_dir(dir)
        .envs(env.iter().cloned())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    CliOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The gateway may answer an oversized request and close before all of it
    // is written; what it answered is still there to read.
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A direct connection to a gateway's SQLite store file (WAL mode lets it
/// read while the gateway runs).
pub async fn store_connection(path: &Path) -> sqlx::SqliteConnection {
    use sqlx::ConnectOptions;
    sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .unwrap()
}

/// SQLite's own consistency check of the store: `["ok"]` when intact.
pub async fn integrity_check(db: &mut sqlx::SqliteConnection) -> Vec<String> {
    sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(db)
        .await
        .unwrap()
}

/// The status code of the first response in a raw exchange.
pub fn status_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {raw:?}"))
}

/// A self-signed certificate for `names`, written as PEM files into `dir`.
pub fn make_certificate(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let generated =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (cert, key)
}
