//! Catalogue H2, H3 and H4 beyond the hygiene suite: a head made of huge
//! cookies, a body that never comes, a TLS handshake that stops halfway, a
//! client that stops reading, many connections from one address, and
//! endless bodies aimed at the gateway's own forms and token API.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{EchoOrigin, Gateway, Setup, status_of};

async fn start() -> (Gateway, EchoOrigin) {
    start_with_limits("body_idle_timeout = \"1s\"\ntls_handshake_timeout = \"1s\"").await
}

/// A gateway in front of an echo origin, with `limits` in its `[limits]`.
async fn start_with_limits(limits: &str) -> (Gateway, EchoOrigin) {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url()).limits(limits)).await;
    (gw, origin)
}

/// Reads until the peer closes or `limit` passes; true if it closed.
async fn closes_within(stream: &mut TcpStream, limit: Duration) -> (bool, Vec<u8>) {
    let mut got = Vec::new();
    let closed = tokio::time::timeout(limit, stream.read_to_end(&mut got))
        .await
        .is_ok();
    (closed, got)
}

/// One HTTP/2 GET for `path` from a client whose stream window is `window`
/// bytes and is never opened further (it answers pings); returns what the
/// gateway sent until it closed the connection or 15 s passed.
async fn get_with_shut_window(
    limits: &str,
    window: u32,
    path: &str,
) -> (Gateway, crate::h2_wire::Seen) {
    use crate::h2_wire::{
        END_HEADERS, END_STREAM, H2, HEADERS, SETTINGS_INITIAL_WINDOW_SIZE, frame, request_block,
    };
    let (gw, origin) = start_with_limits(limits).await;
    let mut h2 = H2::connect(&gw, &[(SETTINGS_INITIAL_WINDOW_SIZE, window)]).await;
    let block = request_block("GET", path);
    assert!(
        h2.send(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block))
            .await
    );
    let seen = h2.finish(Duration::from_secs(15)).await;
    assert_eq!(origin.requests().len(), 1);
    (gw, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_fifty_cookies_of_8_kb_get_431() {
    let (gw, origin) = start().await;
    let mut raw = String::from("GET / HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n");
    for i in 0..50 {
        raw.push_str(&format!("Cookie: c{i}={}\r\n", "v".repeat(8 * 1024)));
    }
    raw.push_str("\r\n");
    assert_eq!(status_of(&gw.raw(raw.as_bytes()).await), 431);
    assert!(origin.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_a_body_that_never_comes_is_given_up_on() {
    let (gw, _origin) = start().await;
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    let (closed, got) = closes_within(&mut stream, Duration::from_secs(10)).await;
    assert!(closed, "the gateway waited for the body forever");
    let answer = String::from_utf8_lossy(&got);
    assert_eq!(status_of(&answer), 408, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_a_half_sent_client_hello_is_cut_off() {
    let (gw, _origin) = start().await;
    let mut stream = TcpStream::connect(gw.https).await.unwrap();
    // A TLS record header announcing a 512-byte handshake message, then 5 bytes of it.
    stream
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])
        .await
        .unwrap();
    let (closed, got) = closes_within(&mut stream, Duration::from_secs(10)).await;
    assert!(closed, "a stalled handshake held its connection");
    assert!(got.is_empty(), "{got:?}");
}

/// Sends `head` then an endless chunked body; returns the gateway's answer
/// and how many body bytes went out before it answered.
pub(crate) async fn endless_body(addr: std::net::SocketAddr, head: String) -> (String, usize) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let sender = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await.unwrap();
        let chunk = format!("2000\r\n{}\r\n", "a".repeat(0x2000));
        // Bounded: 256 MiB, far past any limit the gateway should have.
        while counter.load(Ordering::SeqCst) < 256 << 20 {
            if writer.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
            counter.fetch_add(0x2000, Ordering::SeqCst);
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    // The answer is in; whatever the sender managed by now is the measure.
    sender.abort();
    let sent = sent.load(Ordering::SeqCst);
    (String::from_utf8_lossy(&got).into_owned(), sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h4_endless_bodies_to_the_gateway_forms_and_api_get_413_early() {
    let (gw, _origin) = start().await;
    for path in [
        "/_membergate/login",
        "/_membergate/register",
        "/_membergate/api/conversations/v3/visitor-identification/tokens/create",
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: gw.test\r\nOrigin: http://gw.test\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        let (answer, sent) = endless_body(gw.http, head).await;
        let status = status_of(&answer);
        // The token API checks the key first: without one it answers 401 at once.
        assert!(status == 413 || status == 401, "{path}: {answer}");
        assert!(
            sent < 64 << 20,
            "{path}: {sent} bytes were read before the answer"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_idle_http2_connections_are_closed_and_busy_ones_kept() {
    use crate::h2_wire::{END_HEADERS, END_STREAM, H2, HEADERS, frame, request_block};
    let (gw, _origin) = start_with_limits("http2_idle_timeout = \"1s\"").await;
    let block = request_block("GET", "/idle");
    // Busy: a request every 400 ms for 3 s keeps the connection.
    let mut busy = H2::connect(&gw, &[]).await;
    for i in 0..8u32 {
        assert!(
            busy.send(&frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, &block))
                .await
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let seen = busy.seen();
    assert_eq!(seen.goaway, None, "a busy connection was closed: {seen:?}");
    assert!(!seen.closed);
    // Idle from now on: GOAWAY with NO_ERROR, then the close.
    let seen = busy.finish(Duration::from_secs(10)).await;
    assert_eq!(seen.goaway, Some(0), "{seen:?}");
    assert!(seen.closed, "{seen:?}");
    assert_eq!(
        seen.count(HEADERS),
        8,
        "every request was answered: {seen:?}"
    );
}

/// H3, slow reads (`slowhttptest -X`): a client that asks for a large
/// response and stops reading is cut off once the gateway's writes have made
/// no progress for `send_timeout`, instead of holding the connection (and the
/// origin's) for as long as it likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_a_client_that_stops_reading_is_cut_off() {
    let (gw, _origin) = start_with_limits("send_timeout = \"1s\"").await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small window, so the gateway's writes stall at once.
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(gw.http).await.unwrap();
    stream
        .write_all(b"GET /huge HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "the connection stayed open after {got} bytes"
    );
    assert!(
        got < 64 << 20,
        "the whole 64 MiB came: the stalled writes were waited out"
    );
}

/// H3 over HTTP/2: a client that asks for a large response and never opens
/// its window for it keeps the socket busy (SETTINGS, pings), so no write
/// stalls; the stream alone stands still, holding the origin's response. The
/// gateway closes such a connection once the stream has waited `send_timeout`
/// for window, and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_an_http2_stream_whose_window_stays_shut_is_cut_off() {
    use crate::h2_wire::{DATA, HEADERS};
    // Alone, and with the idle close coming first: the stall is still
    // noticed while the connection waits for its streams to finish.
    for limits in [
        "send_timeout = \"1s\"",
        "send_timeout = \"1s\"\nhttp2_idle_timeout = \"200ms\"",
    ] {
        let (gw, seen) = get_with_shut_window(limits, 0, "/huge").await;
        assert!(
            seen.closed,
            "{limits}: the stalled connection stayed open: {seen:?}"
        );
        assert_eq!(seen.count(HEADERS), 1, "{seen:?}");
        assert_eq!(seen.count(DATA), 0, "{seen:?}");
        let metrics = gw.metrics().await;
        assert!(
            metrics.contains("membergate_http2_connections_stalled_total 1"),
            "{limits}: {metrics}"
        );
    }
}

/// The other side of the HTTP/2 stall check: a stream that waits on a slow
/// origin (a kilobyte every 20 ms for 2 s, with `send_timeout` at 1 s) is
/// not its client's fault, and is served to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_an_http2_stream_waiting_on_a_slow_origin_is_served() {
    let (gw, _origin) = start_with_limits("send_timeout = \"1s\"").await;
    let client = gw.client_builder().http2_prior_knowledge().build().unwrap();
    let response = client
        .get(gw.https_url("/stream/100"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();
    assert_eq!(body.len(), 100 * 1024);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("membergate_http2_connections_stalled_total 0"),
        "{metrics}"
    );
}

/// H3, per-IP caps over HTTP/2: each stream in flight holds an origin
/// connection, so it takes a place in its address's count as a connection
/// does (the first one the connection's own). With
/// `max_connections_per_ip = 4`, one connection carries four slow requests
/// at once; the others get 429 with `Retry-After`, and the places come back
/// when the responses end. With a cap of 1, one request at a time is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_http2_streams_count_against_the_per_ip_cap() {
    let (gw, origin) = start_with_limits("max_connections_per_ip = 4").await;
    let client = gw.client_builder().http2_prior_knowledge().build().unwrap();
    let get = |path: &'static str| {
        let (client, url) = (client.clone(), gw.https_url(path));
        async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.version(), reqwest::Version::HTTP_2);
            let status = response.status().as_u16();
            let retry = response.headers().get("retry-after").cloned();
            let body = response.bytes().await.unwrap();
            (status, retry, body.len())
        }
    };
    // One exchange first, so that the rest share its connection.
    assert_eq!(get("/x").await.0, 200);
    let slow: Vec<_> = (0..6).map(|_| tokio::spawn(get("/stream/50"))).collect();
    let mut answers = Vec::new();
    for task in slow {
        answers.push(task.await.unwrap());
    }
    let served = answers.iter().filter(|(status, ..)| *status == 200).count();
    let refused: Vec<_> = answers
        .iter()
        .filter(|(status, ..)| *status == 429)
        .collect();
    assert_eq!((served, refused.len()), (4, 2), "{answers:?}");
    for (_, retry, _) in &refused {
        assert_eq!(retry.as_ref().map(|v| v.as_bytes()), Some(&b"1"[..]));
    }
    for (_, _, len) in answers.iter().filter(|(status, ..)| *status == 200) {
        assert_eq!(*len, 50 * 1024, "a served stream was cut short");
    }
    // Refused streams never reached the origin.
    assert_eq!(origin.requests().len(), 1 + 4);
    let again: Vec<_> = (0..4).map(|_| tokio::spawn(get("/stream/5"))).collect();
    for task in again {
        assert_eq!(task.await.unwrap().0, 200, "the places were not given back");
    }

    let (gw, _origin) = start_with_limits("max_connections_per_ip = 1").await;
    let client = gw.client_builder().http2_prior_knowledge().build().unwrap();
    // One after the other, each sent once the last answer has ended: the
    // place is given back with the last frame, before the client sees it.
    for _ in 0..50 {
        let response = client.get(gw.https_url("/x")).send().await.unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), 200, "cap 1: the connection's own place");
        response.bytes().await.unwrap();
    }
}

/// H3, per-IP caps: with `max_connections_per_ip = 3`, a fourth connection
/// from the same address is closed on arrival, unanswered, and counted;
/// another address is served meanwhile, and a closed connection frees its
/// place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_connections_from_one_address_are_capped() {
    let (gw, _origin) = start_with_limits("max_connections_per_ip = 3").await;
    let request = b"GET /x HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    // Served and kept open: a keep-alive exchange on each proves it counted.
    let served = |mut stream: TcpStream| async move {
        stream.write_all(request).await.unwrap();
        let mut head = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut head))
            .await
            .expect("no answer")
            .unwrap();
        (stream, String::from_utf8_lossy(&head[..n]).into_owned())
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        let (stream, answer) = served(TcpStream::connect(gw.http).await.unwrap()).await;
        assert_eq!(status_of(&answer), 200, "{answer}");
        held.push(stream);
    }
    let mut fourth = TcpStream::connect(gw.http).await.unwrap();
    let _ = fourth.write_all(request).await;
    let (closed, got) = closes_within(&mut fourth, Duration::from_secs(5)).await;
    assert!(closed, "a fourth connection from one address was kept");
    assert!(
        got.is_empty(),
        "it was answered: {}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        gw.metrics()
            .await
            .contains("membergate_connections_over_ip_cap_total 1"),
        "{}",
        gw.metrics().await
    );

    let elsewhere = tokio::net::TcpSocket::new_v4().unwrap();
    elsewhere.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let (_other, answer) = served(elsewhere.connect(gw.http).await.unwrap()).await;
    assert_eq!(status_of(&answer), 200, "another address was held too");

    drop(held.pop());
    let mut freed = None;
    for _ in 0..50 {
        let mut stream = TcpStream::connect(gw.http).await.unwrap();
        let _ = stream.write_all(request).await;
        let mut head = vec![0u8; 4096];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_secs(2), stream.read(&mut head)).await
            && n > 0
        {
            freed = Some(String::from_utf8_lossy(&head[..n]).into_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = freed.expect("a closed connection never freed its place");
    assert_eq!(status_of(&answer), 200, "{answer}");
}

/// H3 over HTTP/2, the last frame: a response small enough to be handed to
/// HTTP/2 whole, while its client's window (100 bytes) lets only its start
/// out. Its body has ended, so no body waits, and the rest sits in HTTP/2's
/// send buffer; the client answers pings and starts nothing new. The
/// connection is closed once it is idle, buffered stream or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_an_http2_response_held_in_the_send_buffer_does_not_hold_the_connection() {
    use crate::h2_wire::{DATA, HEADERS};
    let limits = "send_timeout = \"1s\"\nhttp2_idle_timeout = \"1s\"";
    let (gw, seen) = get_with_shut_window(limits, 100, "/echo").await;
    assert!(seen.closed, "the connection stayed open: {seen:?}");
    // The start of the response got out, and the close was a graceful one
    // at first (GOAWAY), then a drop.
    assert_eq!((seen.count(HEADERS), seen.count(DATA)), (1, 1), "{seen:?}");
    assert_eq!(seen.goaway, Some(0), "{seen:?}");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("membergate_http2_connections_stalled_total 1"),
        "{metrics}"
    );
}

/// Writes `head`, then `drip` one byte at a time every 100 ms until the
/// gateway closes or stops taking them; returns whether it closed within
/// `limit`, what it answered, and how many drips it took.
async fn trickle(
    addr: std::net::SocketAddr,
    head: &[u8],
    drip: &[u8],
    limit: Duration,
) -> (bool, String, usize) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write.write_all(head).await.unwrap();
    let drip = drip.to_vec();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let writer = tokio::spawn(async move {
        for byte in drip.iter().cycle() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(limit, read.read_to_end(&mut got))
        .await
        .is_ok();
    writer.abort();
    let drips = sent.load(Ordering::Relaxed);
    (closed, String::from_utf8_lossy(&got).into_owned(), drips)
}

/// H3, slowloris (`slowhttptest -H`): a head that keeps arriving, a byte
/// every 100 ms, never ends; `header_timeout` bounds the whole head, not the
/// gap between bytes, so the connection is closed once it has passed, and
/// the origin never hears of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_a_head_dripped_a_byte_at_a_time_is_cut_off() {
    let (gw, origin) = start_with_limits("header_timeout = \"1s\"").await;
    let (closed, answer, drips) = trickle(
        gw.http,
        b"GET / HTTP/1.1\r\nHost: gw.test\r\n",
        b"X-Pad: v\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(closed, "a dripped head held its connection for 10 s");
    assert!(drips < 40, "{drips} bytes went in before the cut");
    assert!(answer.is_empty(), "{answer}");
    assert!(origin.requests().is_empty());
}

/// H3, slow bodies (`slowhttptest -B`) at the gateway's own forms: a login
/// form dripped a byte every 100 ms never goes 1 s without a byte, yet the
/// whole form is due within the body timeout, so it gets 408 long before
/// its declared length is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_a_form_dripped_a_byte_at_a_time_gets_408() {
    let (gw, _origin) = start().await;
    let head = "POST /_membergate/login HTTP/1.1\r\nHost: gw.test\r\nOrigin: http://gw.test\r\n\
                Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 4000\r\n\r\n";
    let (closed, answer, drips) = trickle(
        gw.http,
        head.as_bytes(),
        b"email=a%40example.com&",
        Duration::from_secs(10),
    )
    .await;
    assert!(closed, "a dripped form held its connection for 10 s");
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(drips < 40, "{drips} bytes went in before the answer");
}
