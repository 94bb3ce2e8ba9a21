//! Catalogue H1: HTTP/2 floods, frame by frame. Each attack runs on one
//! connection; the gateway must end it (GOAWAY) or shrug it off with bounded
//! work for the origin and bounded memory, and keep serving everyone else.

use std::time::Duration;

use super::h2_wire::*;
use crate::support::{EchoOrigin, Gateway, Setup};

async fn start() -> (Gateway, EchoOrigin) {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    (gw, origin)
}

/// Sends `per_stream(id)` for `streams` new client streams (ids 1, 3, 5, ...),
/// a hundred streams per write, until done or the gateway closes; returns
/// how many streams went out.
async fn flood_streams(h2: &mut H2, streams: u32, per_stream: impl Fn(u32) -> Vec<u8>) -> u32 {
    let mut sent = 0;
    while sent < streams {
        let batch: Vec<u8> = (sent..(sent + 100).min(streams))
            .flat_map(|i| per_stream(2 * i + 1))
            .collect();
        if !h2.send(&batch).await {
            break;
        }
        sent = (sent + 100).min(streams);
    }
    sent
}

/// The gateway's resident memory grew by less than 40 MiB during an attack:
/// far less than what the attack would make an unguarded server hold.
fn assert_rss_flat(attack: &str, before_kib: u64, during_kib: u64) {
    assert!(
        during_kib.saturating_sub(before_kib) < 40 * 1024,
        "{attack}: RSS grew from {before_kib} to {during_kib} KiB"
    );
}

/// A fresh client still gets an ordinary answer over HTTP/2.
async fn assert_still_serving(gw: &Gateway) {
    let response = gw
        .client_builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
        .get(gw.https_url("/after-the-flood"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_rapid_reset_ends_the_connection() {
    let (gw, origin) = start().await;
    let mut h2 = H2::connect(&gw, &[]).await;
    let block = request_block("GET", "/rapid-reset");
    let attempts = 10_000;
    let sent = flood_streams(&mut h2, attempts, |stream| {
        let mut bytes = frame(HEADERS, END_STREAM | END_HEADERS, stream, &block);
        bytes.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
        bytes
    })
    .await;
    let seen = h2.finish(Duration::from_secs(10)).await;
    let reached = origin.requests().len();
    println!("rapid reset: sent {sent} of {attempts}, origin saw {reached}, gateway sent {seen:?}");
    assert_eq!(seen.goaway, Some(ENHANCE_YOUR_CALM), "{seen:?}");
    assert!(seen.closed);
    assert!(
        reached < 1000,
        "{reached} reset requests reached the origin"
    );
    assert_still_serving(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_made_you_reset_ends_the_connection() {
    // MadeYouReset: requests the server must reset itself (a connection-
    // specific header makes a request malformed, a stream error), so no reset
    // from the client is there to count.
    let (gw, origin) = start().await;
    let mut h2 = H2::connect(&gw, &[]).await;
    let mut block = request_block("GET", "/made-you-reset");
    block.extend(hpack_field("connection", "keep-alive"));
    let attempts = 5_000;
    let sent = flood_streams(&mut h2, attempts, |stream| {
        frame(HEADERS, END_STREAM | END_HEADERS, stream, &block)
    })
    .await;
    let seen = h2.finish(Duration::from_secs(10)).await;
    let reached = origin.requests().len();
    println!(
        "made you reset: sent {sent} of {attempts}, origin saw {reached}, gateway sent {seen:?}"
    );
    assert_eq!(seen.goaway, Some(ENHANCE_YOUR_CALM), "{seen:?}");
    assert!(seen.closed);
    // It reset streams until its limit (1024), then gave up on the client.
    assert!(seen.count(RST_STREAM) <= 1024, "{seen:?}");
    assert_eq!(reached, 0, "malformed requests reached the origin");
    assert_still_serving(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_endless_continuation_is_cut_off() {
    let (gw, origin) = start().await;
    let mut h2 = H2::connect(&gw, &[]).await;
    let field = hpack_field("x-flood", &"a".repeat(1000));
    let mut sent_bytes = 0usize;
    let mut cut_off = !h2
        .send(&frame(
            HEADERS,
            0,
            1,
            &request_block("GET", "/continuation"),
        ))
        .await;
    // 16 MiB of header fields, if the gateway let it go on that long.
    while !cut_off && sent_bytes < 16 << 20 {
        let mut bytes = Vec::new();
        for _ in 0..16 {
            bytes.extend(frame(CONTINUATION, 0, 1, &field));
        }
        sent_bytes += bytes.len();
        cut_off = !h2.send(&bytes).await;
    }
    let seen = h2.finish(Duration::from_secs(10)).await;
    println!("continuation: sent {sent_bytes} bytes, gateway sent {seen:?}");
    assert!(seen.closed, "{seen:?}");
    assert!(seen.goaway.is_some(), "{seen:?}");
    assert!(
        sent_bytes < 16 << 20,
        "the gateway read 16 MiB of one header block"
    );
    assert!(origin.requests().is_empty());
    assert_still_serving(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_empty_data_frames_do_not_hold_the_gateway() {
    let (gw, origin) = start().await;
    let mut h2 = H2::connect(&gw, &[]).await;
    let mut open = h2
        .send(&frame(
            HEADERS,
            END_HEADERS,
            1,
            &request_block("POST", "/empty-data"),
        ))
        .await;
    let empty = frame(DATA, 0, 1, &[]);
    let mut sent = 0;
    while open && sent < 100_000 {
        open = h2.send(&empty.repeat(1000)).await;
        sent += 1000;
    }
    if open {
        h2.send(&frame(DATA, END_STREAM, 1, b"end")).await;
    }
    let during = tokio::spawn({
        let client = gw.client_builder().http2_prior_knowledge().build().unwrap();
        let url = gw.https_url("/meanwhile");
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    let seen = h2.finish(Duration::from_secs(5)).await;
    let reached = origin.requests().len();
    println!("empty data: sent {sent}, origin saw {reached}, gateway sent {seen:?}");
    assert_eq!(during.await.unwrap().unwrap(), 200);
    // The flood ends the connection with ENHANCE_YOUR_CALM (h2 0.4.20 allows
    // 100 empty DATA frames, MAX_RECV_EMPTY_DATA_FRAMES) before the request
    // can complete. This fails if a dependency update drops that guard.
    assert_eq!(seen.goaway, Some(ENHANCE_YOUR_CALM), "{seen:?}");
    assert!(seen.closed, "{seen:?}");
    // Its head may have gone out before the flood was cut (a race with the
    // connection's end), but never the end of its body.
    assert!(
        origin
            .requests()
            .iter()
            .all(|r| r.target != "/empty-data" || !r.body_complete),
        "the flooded stream's request reached the origin complete"
    );
    assert_still_serving(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_a_window_held_at_zero_keeps_memory_flat() {
    // 100 streams ask for 1 MiB each and never open their window: the gateway
    // must hold back the origin, not buffer 100 MiB for the client.
    let (gw, origin) = start().await;
    let before = gw.rss_kib();
    let mut h2 = H2::connect(&gw, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    let block = request_block("GET", "/big");
    let mut bytes = Vec::new();
    for i in 0..100u32 {
        bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, &block));
    }
    assert!(h2.send(&bytes).await);
    for _ in 0..100 {
        if origin.requests().len() == 100 && h2.seen().count(HEADERS) == 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = gw.rss_kib();
    let seen = h2.seen();
    println!(
        "zero window: origin saw {}, gateway sent {seen:?}, RSS {before} -> {during} KiB",
        origin.requests().len()
    );
    assert_eq!(seen.count(HEADERS), 100, "{seen:?}");
    assert_eq!(seen.count(DATA), 0, "{seen:?}");
    assert_rss_flat("zero window", before, during);
    drop(h2);
    assert_still_serving(&gw).await;
}

/// H1, going further: the 2019 floods that make a server write (ping flood,
/// CVE-2019-9512; settings flood, CVE-2019-9515) from a client that never
/// reads. Each frame asks for an answer; the answers back up on the socket,
/// and the gateway must neither queue them without bound nor keep reading:
/// h2 holds one answer at a time and stops reading, and the stalled socket
/// is cut off by `send_timeout` (1 s here). Others are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_ping_and_settings_floods_from_a_client_that_does_not_read() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(
        Setup::new()
            .route("/", &origin.url())
            .limits("send_timeout = \"1s\""),
    )
    .await;
    for (name, flood) in [
        ("PING", frame(PING, 0, 0, &[7u8; 8])),
        ("SETTINGS", frame(SETTINGS, 0, 0, &[])),
    ] {
        let before = gw.rss_kib();
        let mut h2 = H2::connect_without_reading(&gw).await;
        let batch = flood.repeat(10_000);
        // Far more answers than the socket buffers on both sides hold.
        let mut sent = 0u32;
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(10), h2.send(&batch)).await {
                Ok(true) if sent < 4_000_000 => sent += 10_000,
                Ok(true) => break false,
                Ok(false) => break true,
                Err(_) => {
                    panic!("{name} flood: a write blocked for 10 s and the gateway did not close")
                }
            }
        };
        let during = gw.rss_kib();
        println!("{name} flood: {sent} frames out, closed {closed}, RSS {before} -> {during} KiB");
        assert!(
            closed,
            "{name} flood: 4 million frames taken, connection still open"
        );
        assert_rss_flat(&format!("{name} flood"), before, during);
        assert_still_serving(&gw).await;
    }
}

/// H1, going further: an HPACK bomb (the decompression-bomb shape of
/// CVE-2016-6581). One 4,000-byte field goes into the dynamic table, then
/// each request refers to it 2,000 times at one byte a reference: 6 KB on
/// the wire, 8 MB of header list once decoded, on each of 50 streams. The
/// gateway must refuse by the decoded size without building the list, and
/// send nothing to the origin: h2 ends the connection (ENHANCE_YOUR_CALM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_an_hpack_bomb_is_refused_by_its_decoded_size() {
    let (gw, origin) = start().await;
    let before = gw.rss_kib();
    let mut h2 = H2::connect(&gw, &[]).await;
    let mut bytes = Vec::new();
    for i in 0..50u32 {
        let mut block = request_block("GET", "/hpack-bomb");
        if i == 0 {
            // Literal with incremental indexing, new name: dynamic index 62.
            block.push(0x40);
            block.extend(&hpack_field("x-bomb", &"b".repeat(4000))[1..]);
        }
        // Indexed field 62, two thousand times.
        block.extend(std::iter::repeat_n(0x80 | 62, 2000));
        bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, &block));
    }
    let accepted = h2.send(&bytes).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = gw.rss_kib();
    let seen = h2.finish(Duration::from_secs(2)).await;
    println!(
        "hpack bomb: accepted {accepted}, gateway sent {seen:?}, RSS {before} -> {during} KiB"
    );
    assert_eq!(seen.goaway, Some(ENHANCE_YOUR_CALM), "{seen:?}");
    assert!(seen.closed, "{seen:?}");
    assert!(
        origin.requests().is_empty(),
        "a bombed request reached the origin"
    );
    assert_rss_flat("hpack bomb", before, during);
    assert_still_serving(&gw).await;
}

/// H1: `http2_max_concurrent_streams` is what bounds the requests one
/// connection has in flight at once. The gateway advertises it in its
/// SETTINGS, and a client that opens more streams than that anyway gets
/// REFUSED_STREAM for the extra ones (RFC 9113 §5.1.2), which never reach
/// the origin, while the connection and its other streams carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_streams_past_the_concurrent_cap_are_refused() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(
        Setup::new()
            .route("/", &origin.url())
            .limits("http2_max_concurrent_streams = 7"),
    )
    .await;
    let mut h2 = H2::connect(&gw, &[]).await;
    // Ten requests whose bodies never end: all ten would stay in flight.
    let block = request_block("POST", "/held-open");
    let streams: Vec<u32> = (0..10).map(|i| 2 * i + 1).collect();
    let bytes: Vec<u8> = streams
        .iter()
        .flat_map(|stream| frame(HEADERS, END_HEADERS, *stream, &block))
        .collect();
    assert!(h2.send(&bytes).await);
    for _ in 0..100 {
        if h2.seen().resets.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then the bodies end: the seven streams taken are answered.
    let ends: Vec<u8> = streams[..7]
        .iter()
        .flat_map(|stream| frame(DATA, END_STREAM, *stream, b"end"))
        .collect();
    assert!(h2.send(&ends).await);
    for _ in 0..100 {
        if h2.seen().count(HEADERS) >= 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = h2.seen();
    let reached = origin.requests();
    println!(
        "concurrent cap: origin saw {}, gateway sent {seen:?}",
        reached.len()
    );
    assert_eq!(
        seen.setting(SETTINGS_MAX_CONCURRENT_STREAMS),
        Some(7),
        "{seen:?}"
    );
    let refused: Vec<(u32, u32)> = streams[7..]
        .iter()
        .map(|stream| (*stream, REFUSED_STREAM))
        .collect();
    assert_eq!(seen.resets, refused, "{seen:?}");
    assert_eq!(seen.count(HEADERS), 7, "{seen:?}");
    assert_eq!(seen.goaway, None, "{seen:?}");
    assert_eq!(reached.len(), 7);
    assert!(reached.iter().all(|r| r.body_complete && r.body == b"end"));
    drop(h2);
    assert_still_serving(&gw).await;
}
