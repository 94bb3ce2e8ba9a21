//! Catalogue I1, I2 and I4: origins that fail, lie about framing or send
//! pages far larger than any buffer. Each is a raw TCP origin (`Fault`), so
//! the bytes are exactly the bad ones. (G8, poisoned connections, is in
//! `tests/proxy.rs`.) Also origins that stop halfway through taking a
//! request: one that never finishes the TLS handshake, one that stops
//! reading an upload.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::origins::{HUGE_HTML_BYTES, SilentOrigin};
use crate::support::{EchoOrigin, Fault, FaultyOrigin, Gateway, Setup, status_of};

async fn gateway_for(fault: Fault) -> (Gateway, FaultyOrigin) {
    let origin = FaultyOrigin::start(fault).await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    (gw, origin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i1_a_post_is_never_retried_when_the_origin_drops_it() {
    let (gw, origin) = gateway_for(Fault::CloseWithoutAnswer).await;
    let response = gw
        .client()
        .post(gw.https_url("/order"))
        .body("buy one lighthouse")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(
        origin.requests(),
        1,
        "the POST was sent to the origin again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i1_a_reset_after_the_head_is_not_passed_off_as_a_complete_response() {
    let (gw, _origin) = gateway_for(Fault::ResetAfterHead).await;
    // Keep-alive on purpose: a truncated body must end the connection, never
    // leave it open as if the response were complete.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    stream
        .write_all(b"GET /stream HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await
        .unwrap();
    let mut bytes = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut bytes),
    )
    .await;
    // A reset may end the read as an error rather than an EOF; either way
    // the connection is over, not kept for the next request.
    assert!(
        closed.is_ok(),
        "the connection stayed open after a truncated body"
    );
    let answer = String::from_utf8_lossy(&bytes).into_owned();
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(answer.contains("hello"), "{answer}");
    assert!(
        !answer.ends_with("0\r\n\r\n"),
        "the truncated body was terminated as complete: {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i2_responses_with_ambiguous_framing_get_502() {
    for fault in [Fault::LengthAndChunked, Fault::TwoLengths] {
        let (gw, _origin) = gateway_for(fault).await;
        let response = gw.client().get(gw.https_url("/x")).send().await.unwrap();
        assert_eq!(response.status(), 502, "{fault:?}");
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("hello") && !body.contains("ok!"),
            "{fault:?}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i4_a_huge_html_page_streams_through_the_rewriter_in_bounded_memory() {
    let origin = FaultyOrigin::start(Fault::HugeHtml).await;
    let gw = Gateway::start(
        Setup::new()
            .route("/", &origin.url())
            .chat("provider = \"builtin\"\nwidget_url = \"https://chat.example.com/widget.js\""),
    )
    .await;
    let before = gw.rss_kib();
    let mut stream = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    stream
        .write_all(b"GET /huge HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // Read slowly enough to see the gateway's memory while the page flows.
    let mut received = Vec::with_capacity(HUGE_HTML_BYTES + (1 << 20));
    let mut buf = vec![0u8; 1 << 16];
    let mut peak = before;
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buf[..n]);
        if received.len() % (8 << 20) < n {
            peak = peak.max(gw.rss_kib());
        }
    }
    let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    let body = &received[head_end + 4..];
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let snippet_at = body
        .windows(b"data-membergate=\"loader\"".len())
        .position(|w| w == b"data-membergate=\"loader\"")
        .expect("the widget was injected");
    assert!(
        snippet_at < 4096,
        "the snippet went in at byte {snippet_at}"
    );
    // Chunked framing adds a few bytes per chunk; the page itself is all there.
    assert!(body.len() > HUGE_HTML_BYTES, "{} bytes arrived", body.len());
    println!(
        "huge page: {} body bytes, RSS {before} KiB before, {peak} KiB at the peak",
        body.len()
    );
    assert!(
        peak.saturating_sub(before) < 32 * 1024,
        "memory grew with the page: {before} -> {peak} KiB"
    );
}

/// A gateway whose only route goes to an https origin that never accepts:
/// TCP connects (into the listen backlog), the TLS handshake never ends.
async fn gateway_for_silent_tls() -> (Gateway, SilentOrigin) {
    let origin = SilentOrigin::start().await;
    let gw = Gateway::start(Setup::new().route_with(
        "/",
        &origin.https_url(),
        "connect_timeout = \"1s\"\nresponse_timeout = \"30s\"",
    ))
    .await;
    (gw, origin)
}

/// `connect_timeout` covers the TLS handshake, not only the TCP connect: a
/// 502 after about a second, not a 504 after `response_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_ends_is_a_connect_failure() {
    let (gw, _origin) = gateway_for_silent_tls().await;
    let request = gw.client().get(gw.https_url("/page")).send();
    let response = tokio::time::timeout(Duration::from_secs(15), request)
        .await
        .expect("not answered within 15 s: the handshake was not timed")
        .unwrap();
    assert_eq!(response.status(), 502);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("membergate_upstream_errors_total{upstream=\"https://127.0.0.1:"),
        "{metrics}"
    );
}

/// The same with a body: the answer does not wait for the body to be sent to
/// a connection that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_to_an_origin_whose_handshake_never_ends_is_answered() {
    let (gw, _origin) = gateway_for_silent_tls().await;
    let request = gw.client().post(gw.https_url("/form")).body("a=1").send();
    let response = tokio::time::timeout(Duration::from_secs(15), request)
        .await
        .expect("not answered within 15 s: the POST waited on its body")
        .unwrap();
    assert_eq!(response.status(), 502);
}

/// An origin that reads a request's head and then nothing more: the upload
/// fills the socket buffers, and the origin's connection stops asking for
/// the body. The gateway gives up with a 504 once the origin has taken
/// nothing for `response_timeout`, and lets go of the client's connection
/// (with a cap of one per address, the next request gets in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_stops_reading_an_upload_gets_504_and_frees_the_connection() {
    // Far more than the socket buffers between client, gateway and origin.
    const BODY: usize = 64 << 20;
    let origin = FaultyOrigin::start(Fault::Hang).await;
    let echo = EchoOrigin::start().await;
    let gw = Gateway::start(
        Setup::new()
            .limits("max_connections_per_ip = 1")
            .route("/ok", &echo.url())
            .route_with(
                "/",
                &origin.url(),
                "max_body_bytes = 100000000\nresponse_timeout = \"1s\"",
            ),
    )
    .await;
    let stream = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!("POST /upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {BODY}\r\n\r\n");
    writer.write_all(head.as_bytes()).await.unwrap();
    // Written alongside the read: it blocks once every buffer is full.
    let upload = tokio::spawn(async move {
        let chunk = vec![b'u'; 1 << 16];
        for _ in 0..BODY / chunk.len() {
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    // The gateway closes with the upload unread, which may end the read with
    // a reset after the answer.
    let read = tokio::time::timeout(Duration::from_secs(15), reader.read_to_end(&mut answer)).await;
    upload.abort();
    assert!(
        read.is_ok(),
        "the connection was still open after 15 s, with {:?}",
        String::from_utf8_lossy(&answer)
    );
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert_eq!(status_of(&answer), 504, "{answer}");
    assert_eq!(origin.requests(), 1);
    // Given up while the body was under way, not after it was all sent.
    gw.wait_for_log("upstream stopped taking the request body")
        .await;

    // The gateway may count the connection a moment after it closed it.
    let mut last = String::new();
    for _ in 0..50 {
        last = gw
            .raw(b"GET /ok HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
            .await;
        if last.starts_with("HTTP/1.1 200") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the stuck upload's connection still counts against the cap: {last:?}");
}
