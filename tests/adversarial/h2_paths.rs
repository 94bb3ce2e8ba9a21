//! Catalogue A over HTTP/2: the hygiene suite's path tricks sent as an
//! HTTP/2 `:path`, which reaches the gateway through another parser (h2's,
//! not httparse). The decision must be the same on either protocol, and the
//! origin must receive exactly the path that was decided on.

use bytes::Bytes;

use super::h2_wire::{END_HEADERS, END_STREAM, H2, HEADERS, frame, request_block, tls_h2};
use crate::support::{Setup, ThreeOrigins};

/// `/members` is members-only; `/public` and everything else are open.
async fn world() -> ThreeOrigins {
    ThreeOrigins::start(Setup::new().rule("/members", "members", &[])).await
}

/// Sends `GET {target}` for each target as one HTTP/2 stream each, on one
/// connection, with `:path` exactly as given; returns the statuses.
async fn statuses(w: &ThreeOrigins, targets: &[&str]) -> Vec<u16> {
    let (client, connection) = h2::client::handshake(tls_h2(&w.gw).await).await.unwrap();
    tokio::spawn(connection);
    let mut statuses = Vec::new();
    for target in targets {
        let request = http::Request::get(format!("https://localhost{target}"))
            .body(())
            .unwrap();
        assert_eq!(request.uri().path(), target.split('?').next().unwrap());
        let mut client = client.clone().ready().await.unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        let (head, mut body) = response.into_parts();
        while let Some(chunk) = body.data().await {
            let chunk: Bytes = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        statuses.push(head.status.as_u16());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1_a5_path_tricks_over_http2_get_the_http1_decisions() {
    let w = world().await;
    let cases: [(&str, u16); 18] = [
        // A1, A3: resolved before the check, so the rule applies.
        ("/public/../members/x", 302),
        ("//members/x", 302),
        ("/./members/x", 302),
        ("/public/./../members/x", 302),
        // A2: encoded separators and dots.
        ("/public/%2e%2e/members/x", 400),
        ("/public/%2e%2e%2fmembers/x", 400),
        ("/members%2Fx", 400),
        ("/members%5Cx", 400),
        ("/members%00.css", 400),
        ("/public%23/../members", 400),
        // A4: case and parameters.
        ("/MEMBERS/x", 302),
        ("/members;a=1/x", 400),
        // A5: invalid UTF-8, C1 controls; fullwidth `/` is not folded.
        ("/%C0%AE%C0%AE/members/x", 400),
        ("/kb/%C2%85x", 400),
        ("/members%EF%BC%8Fx", 200),
        // A6: the query takes no part.
        ("/members/x?y=.css", 302),
        ("/members/x?/public/", 302),
        ("/public/x", 200),
    ];
    let targets: Vec<&str> = cases.iter().map(|(t, _)| *t).collect();
    let expected: Vec<u16> = cases.iter().map(|(_, s)| *s).collect();
    assert_eq!(statuses(&w, &targets).await, expected);
    // The same answers as over HTTP/1.1.
    for (target, status) in cases {
        assert_eq!(w.get(target).await, status, "HTTP/1.1 {target}");
    }
    assert!(w.members.requests().is_empty(), "{:?}", w.seen());
    let rest: Vec<String> = w.rest.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(rest, ["/members%EF%BC%8Fx"; 2]);
    let public: Vec<String> = w.public.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(public, ["/public/x"; 2]);
}

/// Bytes no URI parser on the client side would write: a raw `\`, a raw
/// `#`, a raw C1 control, sent in hand-made HEADERS frames. None of them may
/// reach the members origin, and a fragment never reaches any origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_http2_paths_with_bytes_clients_escape_never_reach_members() {
    let w = world().await;
    let mut h2 = H2::connect(&w.gw, &[]).await;
    let paths = [
        "/members\\x",
        "/public/#/../members/x",
        "/kb//\u{85}x",
        "/members/x#",
    ];
    for (i, path) in paths.iter().enumerate() {
        let stream = 1 + 2 * i as u32;
        let block = request_block("GET", path);
        assert!(
            h2.send(&frame(HEADERS, END_HEADERS | END_STREAM, stream, &block))
                .await
        );
    }
    let seen = h2.finish(std::time::Duration::from_secs(2)).await;
    assert!(seen.count(HEADERS) >= 1, "{seen:?}");
    assert!(w.members.requests().is_empty(), "{:?}", w.seen());
    w.nobody_saw("#");
    w.nobody_saw("\\");
    w.nobody_saw("\u{85}");
}

/// B2 over HTTP/2: identity fields sent as request trailers (after the
/// DATA) beside a forged header in every spelling h2 lets through; the
/// origin gets the body, no forged identity, and no trailers at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_identity_fields_as_http2_trailers_never_reach_the_origin() {
    let w = world().await;
    let (client, connection) = h2::client::handshake(tls_h2(&w.gw).await).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("https://localhost/public/upload")
        .header("x_member_email", "admin@example.com")
        .header("x.member.groups", "admin")
        .header("trailer", "x-member-email, x-member-groups, x-checksum")
        .body(())
        .unwrap();
    let mut client = client.ready().await.unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    body.send_data(Bytes::from_static(b"hello"), false).unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-member-email", "admin@example.com".parse().unwrap());
    trailers.insert("x-member-groups", "admin".parse().unwrap());
    trailers.insert("x-checksum", "1".parse().unwrap());
    body.send_trailers(trailers).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    let seen = w.public.only_request();
    assert_eq!(seen.body, b"hello");
    assert!(seen.body_complete);
    assert!(seen.trailers.is_empty(), "{seen:?}");
    let forged: Vec<_> = seen
        .headers
        .iter()
        .filter(|(name, _)| name.replace(['_', '.'], "-").starts_with("x-member-"))
        .collect();
    assert!(forged.is_empty(), "{forged:?}");
}
