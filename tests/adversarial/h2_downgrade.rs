//! Catalogue G over HTTP/2, going further: smuggling through the downgrade
//! to HTTP/1.1 ("HTTP/2: the sequel is always worse", Kettle 2021). An
//! HTTP/2 request is framed by its DATA frames, the origin's HTTP/1.1 copy by
//! `Content-Length` or chunks; a gateway that copies a lying length, a
//! `Transfer-Encoding`, or a CR LF inside a header or the path into the
//! HTTP/1.1 request lets the client write a second request of its own on
//! the pooled origin connection. Each case hides `GET /smuggled` that way;
//! it must never reach the origin, now or on the next request that reuses
//! the connection.

use std::time::Duration;

use super::h2_wire::*;
use crate::support::{EchoOrigin, Gateway, Setup};

const HIDDEN: &str = "GET /smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n";

/// A POST's header block with `path` as given (bytes and all) and `fields`.
fn post_block(path: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = request_block("POST", path);
    for (name, value) in fields {
        block.extend(hpack_field(name, value));
    }
    block
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_http2_requests_cannot_smuggle_one_into_the_origin_connection() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    let chunked_body = format!("0\r\n\r\n{HIDDEN}");
    let crlf_value = format!("a\r\nContent-Length: 0\r\n\r\n{HIDDEN}");
    let crlf_path = format!("/downgrade HTTP/1.1\r\nHost: gw.test\r\n\r\n{HIDDEN}");
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "a content-length shorter than the DATA",
            post_block("/downgrade", &[("content-length", "0")]),
            HIDDEN,
        ),
        (
            "a transfer-encoding header",
            post_block("/downgrade", &[("transfer-encoding", "chunked")]),
            &chunked_body,
        ),
        (
            "CR LF in a header value",
            post_block("/downgrade", &[("x-note", &crlf_value)]),
            "",
        ),
        ("CR LF in the path", post_block(&crlf_path, &[]), ""),
        (
            "an upper-case header name",
            post_block("/downgrade", &[("Content-Length", "0")]),
            HIDDEN,
        ),
    ];
    for (name, block, body) in cases {
        let mut h2 = H2::connect(&gw, &[]).await;
        let mut bytes = frame(HEADERS, END_HEADERS, 1, &block);
        bytes.extend(frame(DATA, END_STREAM, 1, body.as_bytes()));
        h2.send(&bytes).await;
        let seen = h2.finish(Duration::from_millis(500)).await;
        // Refused as malformed (RFC 9113 8.1.1, 8.2.1, 8.2.2): the stream
        // or the whole connection is reset.
        assert!(
            seen.count(RST_STREAM) > 0 || seen.goaway.is_some(),
            "{name}: not refused: {seen:?}"
        );
        // Requests that reuse the pooled origin connection, over both protocols.
        for client in [
            gw.client(),
            gw.client_builder().http2_prior_knowledge().build().unwrap(),
        ] {
            let after = client.get(gw.https_url("/after")).send().await.unwrap();
            assert_eq!(after.status(), 200, "{name}");
        }
        let recorded = origin.requests();
        assert!(
            recorded.iter().all(|r| !r.target.contains("smuggled")),
            "{name}: smuggled through; the origin saw {:?}",
            recorded.iter().map(|r| &r.target).collect::<Vec<_>>()
        );
        for r in recorded
            .iter()
            .filter(|r| r.target.starts_with("/downgrade"))
        {
            assert!(
                r.body.is_empty(),
                "{name}: the body reached the origin: {r:?}"
            );
            assert!(
                r.headers
                    .iter()
                    .all(|(k, v)| !k.eq_ignore_ascii_case("transfer-encoding")
                        && !v.contains('\r')
                        && !v.contains('\n')),
                "{name}: {r:?}"
            );
        }
        println!(
            "{name}: gateway sent {seen:?}; the origin saw {} requests",
            recorded.len()
        );
    }
}
