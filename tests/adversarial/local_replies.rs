//! Catalogue A1, A4, A9, G1, G2, G3, G6, G7 and I5, over raw HTTP/1.1
//! sockets: what the gateway decides on its own (login redirects, refusals,
//! CSRF refusals) and how it frames what it sends back, asserting both what
//! the client read off the wire and what every origin received.
//!
//! The default site routes `/members` and `/public` to origins of their own
//! and everything else to a third, so a request that goes astray is visible;
//! `/members` needs a member and nothing else has a rule, so `/admin/` is open
//! on purpose: a request smuggled to it would reach an origin and be seen.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::origins::SMALL_HTML;
use crate::support::{EchoOrigin, Fault, FaultyOrigin, Gateway, Setup, ThreeOrigins};

/// How long any single wait on the gateway may take before the test says so.
const PATIENCE: Duration = Duration::from_secs(5);

/// The three-origin site with `/members` = members; `setup` may add more.
async fn world(setup: Setup) -> ThreeOrigins {
    ThreeOrigins::start(
        setup
            .rule("/members", "members", &[])
            .limits("header_timeout = \"2s\""),
    )
    .await
}

/// Where the login redirect for `return_to` (already form-encoded) points.
fn login(return_to: &str) -> String {
    format!("/_membergate/login?return_to={return_to}")
}

/// One response as read off the wire.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The trailer section of a chunked body, as sent.
    trailers: String,
}

/// The body as text, so failure messages show what came back.
impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &self.text())
            .field("trailers", &self.trailers)
            .finish()
    }
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn assert_login(&self, return_to: &str, what: &str) {
        assert_eq!(self.status, 302, "{what}: {self:?}");
        assert_eq!(
            self.header("location"),
            Some(login(return_to).as_str()),
            "{what}: {self:?}"
        );
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses one response from the front of `buf`, framed as RFC 9112 §6.3 says
/// (no body for `HEAD`, 1xx, 204 and 304; chunked; Content-Length; else up to
/// the close). `Ok(None)`: not all of it has arrived. `Err`: not a well-framed
/// response (which includes being framed two ways at once).
fn parse_reply(buf: &[u8], head_only: bool, eof: bool) -> Result<Option<(Reply, usize)>, String> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if eof && !buf.is_empty() {
            Err(format!(
                "a truncated head: {:?}",
                String::from_utf8_lossy(buf)
            ))
        } else {
            Ok(None)
        };
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    // hyper answers an HTTP/1.0 request in HTTP/1.0.
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("not a status line: {status_line:?} in {head:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("not a header line: {line:?}"))?;
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let all = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let lengths = all("content-length");
    let codings = all("transfer-encoding");
    if !lengths.is_empty() && !codings.is_empty() {
        return Err(format!("framed by length and by coding: {head:?}"));
    }
    if lengths.len() > 1 {
        return Err(format!("two Content-Length fields: {head:?}"));
    }
    let body_start = head_end + 4;
    let rest = &buf[body_start..];
    let no_body = head_only || (100..200).contains(&status) || status == 204 || status == 304;
    let mut reply = Reply {
        status,
        headers: headers.clone(),
        body: Vec::new(),
        trailers: String::new(),
    };
    if no_body {
        return Ok(Some((reply, body_start)));
    }
    if let [coding] = codings.as_slice() {
        if !coding.eq_ignore_ascii_case("chunked") {
            return Err(format!("a coding this parser does not know: {head:?}"));
        }
        let mut at = 0;
        loop {
            let Some(line_end) = find(&rest[at..], b"\r\n") else {
                return if eof {
                    Err(format!("a truncated chunked body: {head:?}"))
                } else {
                    Ok(None)
                };
            };
            let line = String::from_utf8_lossy(&rest[at..at + line_end]).into_owned();
            let size_text = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| format!("not a chunk size: {line:?}"))?;
            at += line_end + 2;
            if size == 0 {
                let Some(end) = find(&rest[at..], b"\r\n").and_then(|first| {
                    if first == 0 {
                        Some(0)
                    } else {
                        find(&rest[at..], b"\r\n\r\n").map(|e| e + 2)
                    }
                }) else {
                    return if eof {
                        Err(format!("a truncated trailer section: {head:?}"))
                    } else {
                        Ok(None)
                    };
                };
                reply.trailers = String::from_utf8_lossy(&rest[at..at + end]).into_owned();
                return Ok(Some((reply, body_start + at + end + 2)));
            }
            if rest.len() < at + size + 2 {
                return if eof {
                    Err(format!("a truncated chunk: {head:?}"))
                } else {
                    Ok(None)
                };
            }
            if &rest[at + size..at + size + 2] != b"\r\n" {
                return Err(format!("a chunk longer than its size: {head:?}"));
            }
            reply.body.extend_from_slice(&rest[at..at + size]);
            at += size + 2;
        }
    }
    if !codings.is_empty() {
        return Err(format!("more than one Transfer-Encoding: {head:?}"));
    }
    if let [length] = lengths.as_slice() {
        let length: usize = length
            .parse()
            .map_err(|_| format!("not a length: {head:?}"))?;
        if rest.len() < length {
            return if eof {
                Err(format!("a body shorter than its length: {head:?}"))
            } else {
                Ok(None)
            };
        }
        reply.body = rest[..length].to_vec();
        return Ok(Some((reply, body_start + length)));
    }
    // Delimited by the close.
    if !eof {
        return Ok(None);
    }
    reply.body = rest.to_vec();
    Ok(Some((reply, buf.len())))
}

/// A raw HTTP/1.1 connection to the gateway's plain listener.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The gateway closed (or reset) the connection.
    closed: bool,
}

impl Wire {
    async fn open(addr: SocketAddr) -> Wire {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the gateway");
        Wire {
            stream,
            buf: Vec::new(),
            closed: false,
        }
    }

    /// Writes `bytes`; false when the gateway no longer takes them (closed).
    async fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// Reads what arrives before `deadline`; false on close or timeout.
    async fn read_more(&mut self, deadline: Instant) -> bool {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.closed = true;
                false
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => false,
        }
    }

    /// The next complete response, or `None` if the connection closed (or
    /// stayed silent for [`PATIENCE`]) first. Panics on a badly framed one.
    async fn reply(&mut self, head_only: bool) -> Option<Reply> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match parse_reply(&self.buf, head_only, self.closed) {
                Ok(Some((reply, used))) => {
                    self.buf.drain(..used);
                    return Some(reply);
                }
                Ok(None) if self.closed => return None,
                Ok(None) => {
                    if !self.read_more(deadline).await && !self.closed {
                        return None;
                    }
                }
                Err(e) => panic!("the gateway sent a badly framed response: {e}"),
            }
        }
    }

    /// Every response until the gateway closes; panics if it has not closed
    /// within [`PATIENCE`] of the last byte.
    async fn replies_until_close(&mut self, head_only: bool) -> Vec<Reply> {
        let mut replies = Vec::new();
        while let Some(reply) = self.reply(head_only).await {
            replies.push(reply);
        }
        assert!(
            self.closed,
            "the connection was still open {PATIENCE:?} after {replies:#?}, with {:?} unread",
            String::from_utf8_lossy(&self.buf)
        );
        assert!(
            self.buf.is_empty(),
            "bytes after the last response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        replies
    }

    /// After a local reply: asks for `/public/after` on the same connection
    /// and returns what came back until the close. Empty when the gateway had
    /// closed; otherwise exactly the answer to that request (checked here).
    async fn follow_up(&mut self) -> Vec<Reply> {
        let asked = self
            .send(b"GET /public/after HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
            .await;
        let replies = self.replies_until_close(false).await;
        if !asked {
            assert!(replies.is_empty(), "{replies:#?}");
        }
        assert!(
            replies.len() <= 1,
            "more answers than requests: {replies:#?}"
        );
        if let Some(reply) = replies.first() {
            assert_eq!(reply.status, 200, "{reply:?}");
            assert!(reply.text().contains("\"/public/after\""), "{reply:?}");
        }
        replies
    }
}

/// Sends `request` on a new connection and returns every response until the close.
async fn exchange(gw: &Gateway, request: &str) -> Vec<Reply> {
    let mut wire = Wire::open(gw.http).await;
    assert!(wire.send(request.as_bytes()).await, "{request:?}");
    wire.replies_until_close(false).await
}

/// `GET target` with `headers` (lines ending in CRLF) and `Connection: close`.
async fn get_one(gw: &Gateway, host: &str, target: &str, headers: &str) -> Reply {
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n");
    let mut replies = exchange(gw, &request).await;
    assert_eq!(replies.len(), 1, "{request:?} -> {replies:#?}");
    replies.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1_a4_a9_path_tricks_meet_the_access_rule() {
    // A second site where nothing is open unless a rule says so (Malcolm's
    // lesson, catalogue A4): only `/public` is public.
    let strict = EchoOrigin::start().await;
    let strict_site = format!(
        "[[sites]]\nname = \"strict\"\nhosts = [\"strict.test\"]\ndefault_policy = \"members\"\n\
         [[sites.routes]]\npath = \"/\"\nupstream = {:?}\n\
         [[sites.rules]]\npath = \"/public\"\npolicy = \"public\"\n",
        strict.url()
    );
    let w = world(Setup::new().site(&strict_site)).await;

    let members_x = "%2Fmembers%2Fx";
    let cases: [(&str, &str, &str); 10] = [
        // A1, A3: dot and empty segments are resolved before the check.
        ("/public/../members/x", "", members_x),
        ("//members/x", "", members_x),
        ("/./members/x", "", members_x),
        // A4: rules ignore ASCII case, like routes (src/policy).
        ("/MEMBERS/x", "", "%2FMEMBERS%2Fx"),
        // A6: the query takes no part in the decision.
        ("/members/x?y=.css", "", "%2Fmembers%2Fx%3Fy%3D.css"),
        // A9: neither a health-check User-Agent nor a path-override header
        // changes the decision.
        ("/members/x", "User-Agent: kube-probe/1.0\r\n", members_x),
        ("/members/x", "X-Original-URI: /public/\r\n", members_x),
        ("/members/x", "X-Forwarded-Uri: /public/\r\n", members_x),
        ("/members/x", "X-Rewrite-URL: /public/\r\n", members_x),
        (
            "/members/x",
            "User-Agent: kube-probe/1.0\r\nX-Original-URI: /public/\r\nX-Forwarded-Uri: /public/\r\nX-Rewrite-URL: /public/\r\n",
            members_x,
        ),
    ];
    for (target, headers, return_to) in cases {
        let reply = get_one(&w.gw, "gw.test", target, headers).await;
        reply.assert_login(return_to, &format!("{target} {headers:?}"));
    }
    // A4: a `;` in the path is refused outright (src/hygiene/path.rs), before
    // any rule is tried: a 400, as safe as the redirect and never the page.
    let reply = get_one(&w.gw, "gw.test", "/members/x;.css", "").await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(w.seen(), Vec::<String>::new());

    // The strict site: a different first segment is simply not `/public`,
    // so the default (members) applies.
    for (target, return_to) in [
        ("/members./x", "%2Fmembers.%2Fx"),
        ("/members%20/x", "%2Fmembers%2520%2Fx"),
        ("/publicx", "%2Fpublicx"),
        ("/public./x", "%2Fpublic.%2Fx"),
        ("/public/../members/x", members_x),
    ] {
        let reply = get_one(&w.gw, "strict.test", target, "").await;
        reply.assert_login(return_to, &format!("strict.test{target}"));
    }
    // The one open prefix is open (so the redirects above are the policy's).
    let reply = get_one(&w.gw, "strict.test", "/public/x", "").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen: Vec<String> = strict.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(seen, ["/public/x"]);
    assert_eq!(w.seen(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_smuggling_bytes_get_one_answer_and_a_closed_connection() {
    let w = world(Setup::new()).await;
    let smuggled = "GET /members/x HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let request = format!(
        "POST /public/ HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\n{smuggled}"
    );
    let started = Instant::now();
    let mut wire = Wire::open(w.gw.http).await;
    assert!(wire.send(request.as_bytes()).await);
    let replies = wire.replies_until_close(false).await;
    assert!(started.elapsed() < PATIENCE, "{:?}", started.elapsed());
    // hyper reads such a message by its Transfer-Encoding alone and will not
    // keep the connection (RFC 9112 §6.1): the empty chunked body is the
    // body, the request is answered, and the bytes after it are never read.
    assert_eq!(replies.len(), 1, "{replies:#?}");
    assert_eq!(replies[0].status, 200, "{:?}", replies[0]);
    let seen = w.public.only_request();
    assert_eq!(
        (
            seen.method.as_str(),
            seen.target.as_str(),
            seen.body.as_slice()
        ),
        ("POST", "/public/", b"".as_slice())
    );
    assert!(seen.header("content-length").is_none_or(|l| l == "0"));
    assert!(w.members.requests().is_empty());
    assert!(w.rest.requests().is_empty());
    w.nobody_saw("/members/x");
}

/// What the gateway did with one oddly framed request.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Answered with this status, nothing reached an origin.
    Refused(u16),
    /// Forwarded once: the status the client got, and the origin's method,
    /// target and body.
    Forwarded(u16, String, String, String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_g3_duplicate_lengths_and_odd_codings_never_forward_a_body() {
    let w = world(Setup::new()).await;
    // Each request is the whole of what is sent; a request hidden in it
    // (`/public/smuggled`, which would be forwarded if it were ever read as
    // one) must never run.
    let smuggled = "GET /public/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let post = |headers: &str, body: &str| {
        format!("POST /public/ HTTP/1.1\r\nHost: gw.test\r\n{headers}\r\n{body}")
    };
    let forwarded =
        |body: &str| Outcome::Forwarded(200, "POST".into(), "/public/".into(), body.into());
    let cases: [(&str, String, Outcome); 8] = [
        (
            // A list is not a length (hyper CVE-2021-32715): 400.
            "Content-Length: 5, 5",
            post("Content-Length: 5, 5\r\n", &format!("hello{smuggled}")),
            Outcome::Refused(400),
        ),
        (
            // Two equal lengths agree (RFC 9110 §8.6 allows reading them as
            // one): the five bytes are the body, and nothing after them is
            // read since the client asked to close.
            "two Content-Length: 5 lines",
            post(
                "Content-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n",
                &format!("hello{smuggled}"),
            ),
            forwarded("hello"),
        ),
        (
            // Two `chunked` lines: chunked applied twice, which RFC 9112
            // 6.1 forbids; a peer could read the framing otherwise: 400.
            "two Transfer-Encoding: chunked lines",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n",
                &format!("5\r\nhello\r\n0\r\n\r\n{smuggled}"),
            ),
            Outcome::Refused(400),
        ),
        (
            // A coding before chunked that nobody here decodes; taken as
            // chunked alone, the origin would get gzip bytes as the body.
            "Transfer-Encoding: gzip, chunked",
            post(
                "Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n",
                &format!("5\r\nhello\r\n0\r\n\r\n{smuggled}"),
            ),
            Outcome::Refused(400),
        ),
        (
            // The same split over two fields.
            "Transfer-Encoding: gzip, then a chunked line",
            post(
                "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n",
                &format!("5\r\nhello\r\n0\r\n\r\n{smuggled}"),
            ),
            Outcome::Refused(400),
        ),
        (
            // A tab after the value is optional whitespace (RFC 9110
            // 5.5), not part of it: chunked, read as such, and the bytes
            // after the last chunk are not read as a request.
            "Transfer-Encoding: chunked + tab",
            post(
                "Transfer-Encoding: chunked\t\r\nConnection: close\r\n",
                &format!("5\r\nhello\r\n0\r\n\r\n{smuggled}"),
            ),
            forwarded("hello"),
        ),
        (
            // HTTP/1.0 has no chunked coding (RFC 9112 §6.1): 400.
            "HTTP/1.0 with Transfer-Encoding: chunked",
            format!(
                "POST /public/ HTTP/1.0\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
            Outcome::Refused(400),
        ),
        (
            // HTTP/1.0, no length: the request has no body (RFC 9112 §6.3),
            // and an HTTP/1.0 connection closes after one answer, so the
            // bytes that follow are never read as anything.
            "HTTP/1.0 with a body and no Content-Length",
            format!("POST /public/ HTTP/1.0\r\nHost: gw.test\r\n\r\n{smuggled}"),
            forwarded(""),
        ),
    ];
    for (name, request, expected) in cases {
        let before = w.public.requests().len();
        let replies = exchange(&w.gw, &request).await;
        assert_eq!(replies.len(), 1, "{name}: {replies:#?}");
        let status = replies[0].status;
        // The recording origin's full list (every method), not a filter.
        let public = w.public.requests();
        let outcome = match &public[before..] {
            [] => Outcome::Refused(status),
            [r] => Outcome::Forwarded(
                status,
                r.method.clone(),
                r.target.clone(),
                String::from_utf8_lossy(&r.body).into_owned(),
            ),
            more => panic!("{name}: more than one request reached the origin: {more:#?}"),
        };
        assert_eq!(outcome, expected, "{name}: {:?}", replies[0]);
        assert!(w.members.requests().is_empty() && w.rest.requests().is_empty());
    }
    // HTTP/1.0 with keep-alive and no length: what follows the head is, by
    // the RFC, the next request, and it meets the access rule like any other.
    let request = "POST /public/ HTTP/1.0\r\nHost: gw.test\r\nConnection: keep-alive\r\n\r\n\
                   GET /members/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n";
    let before = w.public.requests().len();
    let replies = exchange(&w.gw, request).await;
    assert!(!replies.is_empty() && replies.len() <= 2, "{replies:#?}");
    assert_eq!(replies[0].status, 200, "{:?}", replies[0]);
    if let Some(second) = replies.get(1) {
        second.assert_login("%2Fmembers%2Fx", "the request after an HTTP/1.0 POST");
    }
    let public = w.public.requests();
    assert_eq!(public.len(), before + 1, "{public:#?}");
    assert!(public[before].body.is_empty(), "{:?}", public[before]);
    assert!(w.members.requests().is_empty());
    assert!(w.rest.requests().is_empty());
    w.nobody_saw("/public/smuggled");
    w.nobody_saw("/members/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g6_a_local_reply_never_runs_the_body_as_a_request() {
    let w = world(Setup::new()).await;
    let inner = "GET /admin/ HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let length = format!(
        "Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    );
    let chunked = format!(
        "Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{inner}\r\n0\r\n\r\n",
        inner.len()
    );
    for (target, framing, framed) in [
        ("/members/x", "Content-Length", &length),
        ("/members/x", "chunked", &chunked),
        ("/_membergate/logout", "Content-Length", &length),
        ("/_membergate/logout", "chunked", &chunked),
    ] {
        let what = format!("POST {target} ({framing})");
        // Keep-alive, anonymous, and (for the portal) no Origin header.
        let request = format!("POST {target} HTTP/1.1\r\nHost: gw.test\r\n{framed}");
        let mut wire = Wire::open(w.gw.http).await;
        assert!(wire.send(request.as_bytes()).await, "{what}");
        let reply = wire
            .reply(false)
            .await
            .unwrap_or_else(|| panic!("{what}: no answer"));
        if target == "/members/x" {
            reply.assert_login("%2Fmembers%2Fx", &what);
        } else {
            // A POST from nowhere is a forgery until shown otherwise (D7).
            assert_eq!(reply.status, 403, "{what}: {reply:?}");
        }
        // Then the connection is closed, or the next answer is to our next
        // request; nothing ever answers the body.
        let after = wire.follow_up().await;
        assert!(
            after.iter().all(|r| !r.text().contains("/admin/")),
            "{what}: {after:#?}"
        );
        println!(
            "{what}: {}",
            if after.is_empty() {
                "closed"
            } else {
                "drained, kept alive"
            }
        );
    }
    w.nobody_saw("/admin/");
    assert!(w.members.requests().is_empty());
    assert!(w.rest.requests().is_empty());
    assert!(
        w.public
            .requests()
            .iter()
            .all(|r| r.target == "/public/after")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g7_an_upgrade_that_is_refused_does_not_tunnel_the_next_request() {
    // `/ws` on the catch-all origin really is a WebSocket endpoint (it
    // answers 101 and echoes); here it needs a member.
    let w = world(Setup::new().rule("/ws", "members", &[])).await;
    let handshake = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

    // An origin that answers a handshake with 200: no tunnel, and the request
    // pipelined behind it is an HTTP request that meets the access rule.
    let request = format!(
        "GET /plain HTTP/1.1\r\nHost: gw.test\r\n{handshake}\r\n\
         GET /members/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"
    );
    let replies = exchange(&w.gw, &request).await;
    assert!(!replies.is_empty() && replies.len() <= 2, "{replies:#?}");
    assert_eq!(replies[0].status, 200, "{:?}", replies[0]);
    assert!(replies[0].text().contains("\"/plain\""), "{:?}", replies[0]);
    if let Some(second) = replies.get(1) {
        second.assert_login("%2Fmembers%2Fx", "the request after a refused upgrade");
    }
    let plain = w.rest.only_request();
    assert_eq!(plain.target, "/plain");
    assert_eq!(plain.header("upgrade"), Some("websocket"));

    // Anonymous handshakes to members-only paths: 302, never 101, and what
    // follows on the connection is HTTP again (or nothing), never a tunnel.
    for target in ["/members/ws", "/ws"] {
        let mut wire = Wire::open(w.gw.http).await;
        let request = format!("GET {target} HTTP/1.1\r\nHost: gw.test\r\n{handshake}\r\n");
        assert!(wire.send(request.as_bytes()).await);
        let reply = wire
            .reply(false)
            .await
            .unwrap_or_else(|| panic!("{target}: no answer"));
        reply.assert_login(&target.replace('/', "%2F"), target);
        assert_eq!(reply.header("upgrade"), None, "{reply:?}");
        wire.follow_up().await;
    }
    assert!(
        w.members.requests().is_empty(),
        "{:?}",
        w.members.requests()
    );
    assert_eq!(w.rest.requests().len(), 1);
    w.nobody_saw("/members/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i5_early_hints_and_trailers_on_html_pages() {
    let hints = FaultyOrigin::start(Fault::EarlyHintsHtml).await;
    let trailer = FaultyOrigin::start(Fault::ChunkedHtmlTrailer).await;
    let gw = Gateway::start(
        Setup::new()
            .route("/hints", &hints.url())
            .route("/trailer", &trailer.url())
            .chat(
                "provider = \"builtin\"\nwidget_url = \"https://chat.example.com/widget.js\"\nshow = \"everyone\"",
            ),
    )
    .await;
    let loader = "<script data-membergate=\"loader\" async defer src=\"https://chat.example.com/widget.js\"></script>";
    let page = SMALL_HTML.replace("</head>", &format!("{loader}</head>"));
    for (origin, prefix) in [(&hints, "/hints"), (&trailer, "/trailer")] {
        let mut wire = Wire::open(gw.http).await;
        for (i, path) in ["/page", "/again"].iter().enumerate() {
            // The second request on the same connection shows the first
            // response ended exactly where its framing said.
            let close = if i == 1 { "Connection: close\r\n" } else { "" };
            let request = format!(
                "GET {prefix}{path} HTTP/1.1\r\nHost: gw.test\r\nTE: trailers\r\n{close}\r\n"
            );
            assert!(wire.send(request.as_bytes()).await, "{prefix}{path}");
            let mut reply = wire
                .reply(false)
                .await
                .unwrap_or_else(|| panic!("{prefix}{path}: no answer"));
            // An interim 103 may be passed on; it carries no body either way.
            while (100..200).contains(&reply.status) {
                reply = wire
                    .reply(false)
                    .await
                    .unwrap_or_else(|| panic!("{prefix}{path}: nothing after {}", reply.status));
            }
            assert_eq!(reply.status, 200, "{prefix}{path}: {reply:?}");
            assert_eq!(reply.text(), page, "{prefix}{path}: {reply:?}");
            assert_eq!(reply.text().matches("data-membergate").count(), 1);
            // The origin's length (of the page before the widget) is not
            // reused for the longer page.
            let length = page.len().to_string();
            assert!(
                reply.header("content-length").is_none_or(|l| l == length),
                "{prefix}{path}: {reply:?}"
            );
            println!(
                "{prefix}{path}: Trailer {:?}, trailer section {:?}",
                reply.header("trailer"),
                reply.trailers
            );
        }
        assert!(wire.replies_until_close(false).await.is_empty());
        // A HEAD is not rewritten and has no body, whatever its head says.
        let mut wire = Wire::open(gw.http).await;
        let request =
            format!("HEAD {prefix}/page HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
        assert!(wire.send(request.as_bytes()).await);
        let replies = wire.replies_until_close(true).await;
        let finals: Vec<&Reply> = replies.iter().filter(|r| r.status >= 200).collect();
        assert_eq!(finals.len(), 1, "{prefix} HEAD: {replies:#?}");
        assert_eq!(finals[0].status, 200, "{prefix} HEAD: {replies:#?}");
        assert_eq!(
            origin.request_lines(),
            [
                format!("GET {prefix}/page HTTP/1.1"),
                format!("GET {prefix}/again HTTP/1.1"),
                format!("HEAD {prefix}/page HTTP/1.1"),
            ]
        );
    }
}
