//! A tiny W3C WebDriver client over HTTP: starts `chromedriver` on a free
//! port, opens one headless Chromium session, and tears both down on drop.
//!
//! Only what the browser tests need: navigate, find by CSS, type, click, read
//! the URL and the page, run a script.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key under which W3C WebDriver returns an element reference (the
/// spec's "web element identifier").
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long the `wait_*` helpers poll before giving up.
const WAIT: Duration = Duration::from_secs(20);

/// An error answer from chromedriver: the W3C `error` code and its message.
#[derive(Debug)]
pub struct WebDriverError {
    pub error: String,
    pub message: String,
}

/// One element reference of the current page.
#[derive(Debug, Clone)]
pub struct Element(pub String);

/// A chromedriver process with one Chromium session.
pub struct WebDriver {
    driver: Child,
    addr: SocketAddr,
    base: String,
    session: String,
    http: reqwest::Client,
    log_path: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl WebDriver {
    /// Starts chromedriver and a headless Chromium that accepts the gateway's
    /// self-signed certificate. Panics, saying what to install, when the
    /// Debian packages are missing: this test must not skip silently.
    pub async fn start() -> WebDriver {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the browser tests need Chromium and chromedriver; \
                 install them with `apt-get install chromium chromium-driver` \
                 (package {package})"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("chromedriver.log");
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {CHROMEDRIVER}: {e}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut wd = WebDriver {
            driver,
            addr,
            base: format!("http://{addr}"),
            session: String::new(),
            http,
            log_path,
            dir,
        };
        wd.wait_until_ready().await;
        let profile = wd.dir.path().join("profile");
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": true,
                    "pageLoadStrategy": "normal",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--no-first-run",
                            "--no-default-browser-check",
                            format!("--user-data-dir={}", profile.display()),
                        ],
                    },
                },
            },
        });
        let created = wd
            .raw("POST", "/session", Some(capabilities))
            .await
            .unwrap_or_else(|e| panic!("chromedriver refused a session: {e:?}\n{}", wd.log()));
        wd.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {created}"))
            .to_owned();
        wd
    }

    async fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(response) = self.http.get(format!("{}/status", self.base)).send().await
                && let Ok(status) = response.json::<Value>().await
                && status["value"]["ready"] == json!(true)
            {
                return;
            }
            if let Ok(Some(exit)) = self.driver.try_wait() {
                panic!("chromedriver exited with {exit}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver never became ready on {}:\n{}",
                self.base,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// chromedriver's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends one command; returns the `value` of a success or the W3C error.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or_else(|| json!({}))),
        };
        let response = request.send().await.map_err(|e| WebDriverError {
            error: "transport".into(),
            message: e.to_string(),
        })?;
        let ok = response.status().is_success();
        let mut answer: Value = response.json().await.map_err(|e| WebDriverError {
            error: "bad answer".into(),
            message: e.to_string(),
        })?;
        let value = answer["value"].take();
        if ok {
            Ok(value)
        } else {
            Err(WebDriverError {
                error: value["error"].as_str().unwrap_or("unknown").to_owned(),
                message: value["message"].as_str().unwrap_or("").to_owned(),
            })
        }
    }

    /// A command of this session that must succeed.
    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let full = format!("/session/{}{path}", self.session);
        self.raw(method, &full, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {path} failed: {e:?}"))
    }

    /// Navigates and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn current_url(&self) -> String {
        let value = self.command("GET", "/url", None).await;
        value.as_str().unwrap_or_default().to_owned()
    }

    pub async fn page_source(&self) -> String {
        let value = self.command("GET", "/source", None).await;
        value.as_str().unwrap_or_default().to_owned()
    }

    /// Runs `script` (a function body) in the page and returns its result.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// The element matching `css` now, or chromedriver's answer.
    pub async fn try_find(&self, css: &str) -> Result<Element, WebDriverError> {
        let path = format!("/session/{}/element", self.session);
        let body = json!({ "using": "css selector", "value": css });
        let found = self.raw("POST", &path, Some(body)).await?;
        match found[ELEMENT_KEY].as_str() {
            Some(id) => Ok(Element(id.to_owned())),
            None => Err(WebDriverError {
                error: "bad answer".into(),
                message: format!("no element reference in {found}"),
            }),
        }
    }

    /// The element matching `css`, waiting for it to appear.
    pub async fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + WAIT;
        loop {
            let error = match self.try_find(css).await {
                Ok(element) => return element,
                Err(error) => error,
            };
            if Instant::now() > deadline {
                panic!(
                    "no element matches {css:?} on {} ({error:?}):\n{}",
                    self.current_url().await,
                    self.page_source().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Types `text` into the element (after focusing it).
    pub async fn send_keys(&self, element: &Element, text: &str) {
        let path = format!("/element/{}/value", element.0);
        self.command("POST", &path, Some(json!({ "text": text })))
            .await;
    }

    pub async fn click(&self, element: &Element) {
        let path = format!("/element/{}/click", element.0);
        self.command("POST", &path, Some(json!({}))).await;
    }

    /// Finds `css` and types `text` into it.
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.send_keys(&element, text).await;
    }

    /// The visible text of the page (`document.body.innerText`).
    pub async fn text(&self) -> String {
        let value = self
            .execute(
                "return document.body ? document.body.innerText : ''",
                json!([]),
            )
            .await;
        value.as_str().unwrap_or_default().to_owned()
    }

    /// Polls until the page's visible text contains `needle`.
    pub async fn wait_for_text(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.text().await.contains(needle) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "the page never showed {needle:?}; it is {}:\n{}",
                    self.current_url().await,
                    self.page_source().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every cookie the browser holds for the current page, as WebDriver
    /// reports them (`name`, `value`, `httpOnly`, `secure`, ...), which
    /// includes HttpOnly cookies that scripts cannot see.
    pub async fn cookies(&self) -> Vec<Value> {
        match self.command("GET", "/cookie", None).await {
            Value::Array(all) => all,
            other => panic!("cookies are not a list: {other}"),
        }
    }

    /// Deletes one cookie of the current page's site, as its expiry would.
    pub async fn delete_cookie(&self, name: &str) {
        self.command("DELETE", &format!("/cookie/{name}"), None)
            .await;
    }

    /// Polls until the current URL satisfies `done`; returns it.
    pub async fn wait_for_url(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let url = self.current_url().await;
            if done(&url)
                && self.execute("return document.readyState", json!([])).await == "complete"
            {
                return url;
            }
            if Instant::now() > deadline {
                panic!(
                    "the browser never reached {what}; it is on {url}:\n{}",
                    self.page_source().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        // Synchronous on purpose: no runtime is needed in drop. Deleting the
        // session makes chromedriver quit Chromium; then chromedriver goes.
        if !self.session.is_empty() {
            let _ = delete_session(self.addr, &self.session);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn delete_session(addr: SocketAddr, session: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "DELETE /session/{session} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    // Wait for the whole answer so that Chromium is gone before chromedriver
    // is killed. chromedriver keeps the connection open despite
    // `Connection: close`, so read by Content-Length rather than to the end.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                return Ok(());
            }
        }
    }
}

/// A TCP port that was free a moment ago (chromedriver wants a number).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
