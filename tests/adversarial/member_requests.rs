//! Catalogue B2, B3, C2 and A-rows aimed at the gateway's own pages, with a
//! logged-in member where that is what the attack needs: forged identity
//! headers beside a real session, spellings of the portal's paths, a reset
//! requested through a host the gateway does not serve, and a body withheld
//! behind `Expect: 100-continue` on a path the visitor may not open.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::browser::Browser;
use crate::support::{Gateway, Setup, ThreeOrigins, status_of};

const PASSWORD: &str = "correct horse battery";

async fn world() -> ThreeOrigins {
    ThreeOrigins::start(Setup::new().rule("/members", "members", &[])).await
}

/// Adds a member through the CLI and returns a session cookie for them.
async fn session(gw: &Gateway, email: &str) -> String {
    let (ok, out) = gw.cli(
        &[
            "member",
            "add",
            email,
            "--first-name",
            "Ada",
            "--last-name",
            "Lovelace",
        ],
        &format!("{PASSWORD}\n"),
    );
    assert!(ok, "{out}");
    let mut b = Browser::new(gw);
    assert_eq!(b.login(email, PASSWORD).await.status, 303);
    b.session_cookie().unwrap()
}

/// B2 and B3 with a real session: every spelling of the identity headers a
/// member might forge, and a `Connection` header naming them, leave the
/// origin with exactly the gateway's values, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_b3_a_member_cannot_add_to_or_strip_their_identity() {
    let w = world().await;
    let cookie = session(&w.gw, "ada@example.com").await;
    let raw = format!(
        "GET /members/x HTTP/1.1\r\nHost: gw.test\r\nCookie: __Host-membergate={cookie}\r\n\
         Connection: close, X-Member-Email, X-Member-Id, X-Member-Groups\r\n\
         X-Member-Email: boss@example.com\r\nx_member_email: boss@example.com\r\n\
         X.Member.Groups: admin\r\nX-MEMBER-GROUPS: admin\r\nX-Member-Id: 999\r\n\
         X-Member-Name: Boss\r\n\r\n"
    );
    let answer = w.gw.raw(raw.as_bytes()).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = w.members.only_request();
    assert_eq!(seen.all("x-member-email"), ["ada@example.com"]);
    assert_eq!(seen.all("x-member-name"), ["Ada Lovelace"]);
    assert_eq!(seen.all("x-member-groups"), [""]);
    assert_eq!(seen.all("x-member-id").len(), 1);
    assert_ne!(seen.all("x-member-id"), ["999"]);
    // Nothing else under the prefix, in any spelling.
    let names: Vec<String> = seen
        .under_prefix("x-member-")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    for (name, _) in &seen.headers {
        let normal = name.replace(['_', '.'], "-").to_ascii_lowercase();
        assert!(
            !normal.starts_with("x-member-") || names.contains(name),
            "{name} reached the origin"
        );
    }
    assert_eq!(seen.header("connection"), None);
}

/// The portal's pages in other spellings are the portal's pages (never an
/// origin's), and their forms keep their CSRF check however they are spelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_paths_in_any_spelling_stay_with_the_gateway() {
    let w = world().await;
    for spelling in [
        "/_MEMBERGATE/login",
        "/_Membergate/Login",
        "/%5Fmembergate/login",
        "/%5fmembergate/%6Cogin",
        "/_membergate//login",
        "/_membergate/./login",
        "/_membergate/x/../login",
    ] {
        let raw = format!("GET {spelling} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
        let answer = w.gw.raw(raw.as_bytes()).await;
        assert_eq!(status_of(&answer), 200, "{spelling}: {answer}");
        assert!(answer.contains("name=\"csrf\""), "{spelling}: {answer}");
    }
    assert_eq!(w.total_requests(), 0, "{:?}", w.seen());
    let cookie = session(&w.gw, "ada@example.com").await;
    for spelling in ["/_MEMBERGATE/LOGOUT", "/%5Fmembergate/logout"] {
        let raw = format!(
            "POST {spelling} HTTP/1.1\r\nHost: gw.test\r\nCookie: __Host-membergate={cookie}\r\n\
             Origin: https://evil.example\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let answer = w.gw.raw(raw.as_bytes()).await;
        assert_eq!(status_of(&answer), 403, "{spelling}: {answer}");
    }
    // The session survived both.
    let raw = format!(
        "GET /members/x HTTP/1.1\r\nHost: gw.test\r\nCookie: __Host-membergate={cookie}\r\n\
         Connection: close\r\n\r\n"
    );
    assert_eq!(status_of(&w.gw.raw(raw.as_bytes()).await), 200);
    assert_eq!(w.total_requests(), 1);
}

/// C2: a reset requested through a host the gateway does not serve is
/// refused before any form is read, and no mail goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2_a_reset_for_a_foreign_host_is_refused_and_sends_nothing() {
    let w = world().await;
    session(&w.gw, "ada@example.com").await;
    let body = "email=ada%40example.com&csrf=x";
    for host in ["evil.example", "gw.test.evil.example", "evil.example:443"] {
        let raw = format!(
            "POST /_membergate/reset HTTP/1.1\r\nHost: {host}\r\nOrigin: https://{host}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = w.gw.raw(raw.as_bytes()).await;
        assert_eq!(status_of(&answer), 421, "{host}: {answer}");
    }
    // Absolute form naming a foreign host, with our Host beside it.
    let raw = format!(
        "POST http://evil.example/_membergate/reset HTTP/1.1\r\nHost: gw.test\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = w.gw.raw(raw.as_bytes()).await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.gw.mail_count("ada@example.com"), 0);
    assert_eq!(w.total_requests(), 0);
}

/// A client that sends `Expect: 100-continue` waits for the go-ahead before
/// its body. On a path it may not open the answer is the refusal, at once:
/// no `100 Continue`, no body read, nothing at the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_on_a_members_path_gets_the_refusal_not_a_go_ahead() {
    let w = world().await;
    let mut stream = TcpStream::connect(w.gw.http).await.unwrap();
    let head = "POST /members/upload HTTP/1.1\r\nHost: gw.test\r\nExpect: 100-continue\r\n\
                Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("no answer while the body was withheld")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 302 "), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert!(
        answer.contains("location: /_membergate/login?return_to=%2Fmembers%2Fupload"),
        "{answer}"
    );
    assert_eq!(w.total_requests(), 0);

    // A member's upload gets the go-ahead and reaches the origin whole.
    let cookie = session(&w.gw, "ada@example.com").await;
    let mut stream = TcpStream::connect(w.gw.http).await.unwrap();
    let head = format!(
        "POST /members/upload HTTP/1.1\r\nHost: gw.test\r\nExpect: 100-continue\r\n\
         Cookie: __Host-membergate={cookie}\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("no go-ahead for a member")
        .unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    stream.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    let answer = String::from_utf8_lossy(&rest).into_owned();
    assert!(
        answer.contains("HTTP/1.1 200 ") || interim.contains("HTTP/1.1 200 "),
        "{interim}{answer}"
    );
    assert_eq!(w.members.only_request().body, b"hello");
}

/// B5: a name that could split a header or bloat every request (control
/// characters, line and paragraph separators, 10 KB) is refused with 422 at
/// registration and on the account page; nothing is stored, no mail goes
/// out, and the origin keeps getting the member's old name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b5_names_that_could_split_a_header_are_refused_at_every_door() {
    // Sixteen tries at one address: more than the default limits allow.
    let limits = "max_attempts_per_ip = 1000\nmax_attempts_per_account = 1000\n\
                  max_attempts_per_account_per_ip = 1000";
    let w = ThreeOrigins::start(
        Setup::new()
            .rule("/members", "members", &[])
            .members(limits),
    )
    .await;
    let long = "n".repeat(10 * 1024);
    let bad = [
        "Eve\r\nX-Member-Groups: admin",
        "a\0b",
        "line\u{2028}break",
        "para\u{2029}graph",
        "next\u{85}line",
        "tab\there",
        "del\u{7f}",
        long.as_str(),
    ];
    for name in bad {
        let mut eve = Browser::new(&w.gw);
        let first = eve.register("eve@example.com", PASSWORD, name, "E").await;
        assert_eq!(first.status, 422, "first name {name:?}");
        let last = eve.register("eve@example.com", PASSWORD, "Eve", name).await;
        assert_eq!(last.status, 422, "last name {name:?}");
        assert!(last.set_cookies().is_empty());
    }
    assert_eq!(w.gw.mail_count("eve@example.com"), 0);
    let mut login = Browser::new(&w.gw);
    assert_eq!(
        login.login("eve@example.com", PASSWORD).await.status,
        401,
        "nobody was registered"
    );

    session(&w.gw, "ada@example.com").await;
    let mut ada = Browser::new(&w.gw);
    assert_eq!(ada.login("ada@example.com", PASSWORD).await.status, 303);
    for name in bad {
        let page = ada
            .submit(
                "/_membergate/account",
                "/_membergate/account/name",
                &[("first_name", name), ("last_name", "L")],
            )
            .await;
        assert_eq!(page.status, 422, "{name:?}");
    }
    assert_eq!(ada.get("/members/x").await.status, 200);
    let seen = w.members.only_request();
    assert_eq!(seen.header("x-member-name"), Some("Ada Lovelace"));
    assert_eq!(seen.all("x-member-groups"), [""]);
}
