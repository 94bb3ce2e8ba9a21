//! Request hygiene through raw sockets: the exact bytes of the attack catalogue
//! (sections A, B, G, H), asserting both what the client got and what each
//! origin received. Routes: `/members` and `/public` go to their own origins,
//! everything else to a third, so a mis-routed request is visible.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::{EchoOrigin, Gateway, Setup, ThreeOrigins, status_of};

/// The three-origin site with this suite's limits: a short header timeout
/// and a small target limit.
async fn world() -> ThreeOrigins {
    world_with(Setup::new()).await
}

async fn world_with(setup: Setup) -> ThreeOrigins {
    ThreeOrigins::start(setup.limits("header_timeout = \"1s\"\nmax_uri_bytes = 4096")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1_a3_dot_and_empty_segments_are_resolved_before_routing() {
    let w = world().await;
    for target in [
        "/public/../members/x",
        "//members/x",
        "/./members/x",
        "/public/./../members/x",
        "/public/..//members/x",
    ] {
        assert_eq!(w.get(target).await, 200, "{target}");
    }
    // Each reached the members origin with exactly the path that was routed on.
    let targets: Vec<String> = w.members.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, vec!["/members/x"; 5]);
    assert!(w.public.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1_a2_encoded_separators_and_dots_are_refused() {
    let w = world().await;
    let attacks = [
        "/public/%2e%2e/members/x",
        "/public/%2e%2e%2fmembers/x",
        "/public/%2E%2E/members/x",
        "/members%2Fx",
        "/public%2F..%2Fmembers",
        "/members%5Cx",
        "/members%00.css",
        "/members%3B.css",
        "/public%23/../members",
        "/public%3F/../members",
        "/api%2e/admin",
        "/members\\x",
        "/members%",
        "/members%g0",
    ];
    for target in attacks {
        assert_eq!(w.get(target).await, 400, "{target}");
    }
    assert_eq!(w.total_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a4_case_trailing_characters_and_parameters() {
    let w = world().await;
    assert_eq!(w.get("/MEMBERS/x").await, 200);
    assert_eq!(w.get("/Members").await, 200);
    assert_eq!(
        w.members.requests().len(),
        2,
        "case variants must reach the members route"
    );
    assert_eq!(w.get("/members;a=1/x").await, 400);
    assert_eq!(w.get("/members/x;.css").await, 400);
    // Not the members route: a different segment, sent on as exactly that.
    assert_eq!(w.get("/members./x").await, 200);
    assert_eq!(w.get("/members%20/x").await, 200);
    let rest: Vec<String> = w.rest.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(rest, ["/members./x", "/members%20/x"]);
    assert_eq!(w.members.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a5_invalid_utf8_is_refused_and_unicode_is_not_folded() {
    let w = world().await;
    assert_eq!(w.get("/%C0%AE%C0%AE/members/x").await, 400);
    assert_eq!(w.get("/members/%FF").await, 400);
    // C1 controls (NEL here), escaped or raw, are refused like ASCII ones.
    assert_eq!(w.get("/kb/%C2%85x").await, 400);
    assert_eq!(w.get("/kb//\u{85}x").await, 400);
    assert_eq!(w.get("/members%EF%BC%8Fx").await, 200);
    assert_eq!(w.get("/%E2%80%AEmembers").await, 200);
    assert!(
        w.members.requests().is_empty(),
        "fullwidth slash or RTL mark reached /members"
    );
    // A character of several bytes across the token API prefix's length
    // (17 bytes) is an ordinary address, not a reason to drop the connection.
    assert_eq!(w.get("/docs/guide/stra%C3%9Fe").await, 200);
    assert_eq!(w.get("/_membergate/api%C3%A9").await, 404);
    let rest: Vec<String> = w.rest.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        rest,
        [
            "/members%EF%BC%8Fx",
            "/%E2%80%AEmembers",
            "/docs/guide/stra%C3%9Fe"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a6_the_query_and_fragment_never_take_part_in_routing() {
    let w = world().await;
    assert_eq!(w.get("/members/x?y=.css").await, 200);
    assert_eq!(w.get("/members/x?/public/").await, 200);
    assert_eq!(
        w.members
            .requests()
            .into_iter()
            .map(|r| r.target)
            .collect::<Vec<_>>(),
        ["/members/x?y=.css", "/members/x?/public/"]
    );
    // hyper's URI parser drops a raw `#fragment` before the gateway sees the
    // target, so the decision and the origin both see exactly `/public/`.
    assert_eq!(w.get("/public/#/../members/x").await, 200);
    assert_eq!(w.public.only_request().target, "/public/");
    assert_eq!(w.members.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a7_absolute_form_and_host_games() {
    let w = world().await;
    let send = |raw: &'static str| {
        let gw = &w.gw;
        async move { status_of(&gw.raw(raw.as_bytes()).await) }
    };
    // The absolute-form authority wins and must be a configured site.
    assert_eq!(
        send("GET http://other/members/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
            .await,
        400
    );
    assert_eq!(
        send("GET http://gw.test/members/x HTTP/1.1\r\nHost: evil\r\nConnection: close\r\n\r\n")
            .await,
        200
    );
    assert_eq!(w.members.only_request().header("host"), Some("gw.test"));
    assert_eq!(
        send("GET HtTpS://gw.test/public/y HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
            .await,
        200
    );
    // One trailing dot and upper case are normalised; the origin sees the normal form.
    assert_eq!(
        send("GET /public/z HTTP/1.1\r\nHost: GW.TEST.\r\nConnection: close\r\n\r\n").await,
        200
    );
    let hosts: Vec<String> = w
        .public
        .requests()
        .iter()
        .map(|r| r.header("host").unwrap().to_owned())
        .collect();
    assert_eq!(hosts, ["gw.test", "gw.test"]);
    for bad in [
        "GET / HTTP/1.1\r\nHost: gw@evil\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: gw.test\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: gw.test\r\nHost: evil\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: gw.test:abc\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: gw.test..\r\nConnection: close\r\n\r\n",
    ] {
        assert_eq!(send(bad).await, 400, "{bad:?}");
    }
    assert_eq!(
        send("GET / HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n").await,
        421
    );
    assert!(w.rest.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a8_malformed_targets_and_methods_are_never_proxied() {
    let w = world().await;
    let cases: [(&[u8], &[u16]); 6] = [
        (b"GET /members/ x HTTP/1.1\r\nHost: gw.test\r\n\r\n", &[400]),
        (
            b"GET /members/\x00x HTTP/1.1\r\nHost: gw.test\r\n\r\n",
            &[400],
        ),
        (
            b"GET /members/\x7fx HTTP/1.1\r\nHost: gw.test\r\n\r\n",
            &[400],
        ),
        (b"OPTIONS * HTTP/1.1\r\nHost: gw.test\r\n\r\n", &[400]),
        (
            b"CONNECT gw.test:443 HTTP/1.1\r\nHost: gw.test:443\r\n\r\n",
            &[400, 405],
        ),
        (b"TRACE / HTTP/1.1\r\nHost: gw.test\r\n\r\n", &[405]),
    ];
    for (raw, allowed) in cases {
        let got = status_of(&w.gw.raw(raw).await);
        assert!(
            allowed.contains(&got),
            "{:?} -> {got}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(w.total_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a9_b4_side_channel_and_forwarding_headers_are_not_believed() {
    let w = world().await;
    let raw = b"GET /public/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\
        User-Agent: kube-probe/1.0\r\nX-Original-URI: /members/\r\nX-Original-URL: /members/\r\n\
        X-Forwarded-Uri: /members/\r\nX-Rewrite-URL: /members/\r\nX-Forwarded-Proto: https\r\n\
        X-Forwarded-Host: evil\r\nX-Forwarded-Prefix: //evil.com\r\nX-Real-IP: 10.0.0.1\r\n\
        X-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\n\
        X-Forwarded-Scheme: https\r\nX-Forwarded-Ssl: on\r\nFront-End-Https: on\r\n\
        X-Url-Scheme: https\r\nX-Forwarded-Server: evil\r\nX-Client-IP: 10.0.0.1\r\n\
        Client-IP: 10.0.0.1\r\nTrue-Client-IP: 10.0.0.1\r\nCF-Connecting-IP: 10.0.0.1\r\n\
        X-Cluster-Client-IP: 10.0.0.1\r\nTrue_Client_IP: 10.0.0.1\r\n\r\n";
    assert_eq!(status_of(&w.gw.raw(raw).await), 200);
    let seen = w.public.only_request();
    for gone in [
        "x-forwarded-scheme",
        "x-forwarded-ssl",
        "front-end-https",
        "x-url-scheme",
        "x-forwarded-server",
        "x-client-ip",
        "client-ip",
        "true-client-ip",
        "true_client_ip",
        "cf-connecting-ip",
        "x-cluster-client-ip",
        "x-original-uri",
        "x-original-url",
        "x-forwarded-uri",
        "x-rewrite-url",
        "x-forwarded-prefix",
    ] {
        assert_eq!(seen.header(gone), None, "{gone} reached the origin");
    }
    assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
    assert_eq!(seen.all("x-forwarded-host"), ["gw.test"]);
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.all("x-real-ip"), ["127.0.0.1"]);
    assert_eq!(
        seen.all("forwarded"),
        ["for=127.0.0.1;proto=http;host=\"gw.test\""]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b4_trusted_proxies_extend_the_chain() {
    let w = world_with(Setup::new().server("trusted_proxies = [\"127.0.0.0/8\"]")).await;
    let raw = b"GET /public/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\
        X-Forwarded-For: 198.51.100.4\r\nX-Forwarded-Proto: https\r\nX_Forwarded_For: 10.9.9.9\r\n\r\n";
    assert_eq!(status_of(&w.gw.raw(raw).await), 200);
    let seen = w.public.only_request();
    assert_eq!(seen.all("x-forwarded-for"), ["198.51.100.4, 127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["https"]);
    assert!(seen.header("x_forwarded_for").is_none());

    // A proxy that adds a line of its own after the client's: the client it
    // saw stays last before the proxy, not dropped behind a forged first line.
    let raw = b"GET /public/y HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\
        X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\
        X-Forwarded-For: 198.51.100.7\r\nForwarded: for=198.51.100.7\r\n\r\n";
    assert_eq!(status_of(&w.gw.raw(raw).await), 200);
    let seen = w.public.requests().pop().unwrap();
    assert_eq!(
        seen.all("x-forwarded-for"),
        ["6.6.6.6, 198.51.100.7, 127.0.0.1"]
    );
    assert_eq!(
        seen.all("forwarded"),
        ["for=6.6.6.6, for=198.51.100.7, for=127.0.0.1;proto=http;host=\"gw.test\""]
    );
}

/// On a dual-stack listener (`[::]`) an IPv4 client arrives as
/// `::ffff:a.b.c.d`. It is the same client for `trusted_proxies` and for
/// the per-IP connection cap as on an IPv4 listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b4_h3_ipv4_clients_of_a_dual_stack_listener_are_ipv4_clients() {
    let mut setup = Setup::new()
        .server("trusted_proxies = [\"127.0.0.0/8\"]")
        .limits("max_connections_per_ip = 2");
    setup.listen_host = "[::]";
    let w = world_with(setup).await;
    let over_ipv4 = std::net::SocketAddr::from(([127, 0, 0, 1], w.gw.http.port()));
    let raw = b"GET /public/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\
        X-Forwarded-For: 198.51.100.4\r\n\r\n";
    assert_eq!(status_of(&support::raw_exchange(over_ipv4, raw).await), 200);
    let seen = w.public.only_request();
    assert_eq!(seen.all("x-forwarded-for"), ["198.51.100.4, 127.0.0.1"]);
    // The trusted proxy is not held to the per-IP cap.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(over_ipv4).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(status_of(&support::raw_exchange(over_ipv4, raw).await), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b1_b2_b3_reserved_identity_headers_never_reach_the_origin() {
    let w = world().await;
    let raw = b"POST /public/x HTTP/1.1\r\nHost: gw.test\r\n\
        Connection: keep-alive, X-Member-Email, x-member-groups, X-Forwarded-For\r\n\
        X-Member-Email: admin@x\r\nx-member-email: alice@x\r\nX_Member_Email: u@x\r\nX.Member.Email: d@x\r\n\
        X-MEMBER-GROUPS: admin\r\nX-Member-Id: 1\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhello\r\n0\r\nX-Member-Email: trailer@x\r\n\r\n";
    let answer = w.gw.raw(raw).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = w.public.only_request();
    assert_eq!(
        seen.under_prefix("x-member-"),
        Vec::<(String, String)>::new()
    );
    assert_eq!(seen.body, b"hello");
    // Connection could not strip what the gateway sets.
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.header("connection"), None);
    // A space before the colon is a malformed header, not an alias.
    let raw = b"GET /public/y HTTP/1.1\r\nHost: gw.test\r\nX-Member-Email : v\r\nConnection: close\r\n\r\n";
    assert_eq!(status_of(&w.gw.raw(raw).await), 400);
    assert_eq!(w.public.requests().len(), 1);
}

/// B1-B3 with a prefix of the operator's choosing (`Remote-User-`, as
/// authelia and others name them): its names in any spelling are removed
/// from client requests, also when the prefix starts with a letter no
/// forwarding header starts with (the strip looks at first letters first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b1_b2_b3_a_custom_identity_prefix_is_reserved_too() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(
        Setup::new()
            .route("/", &origin.url())
            .server("identity_header_prefix = \"Remote-User-\""),
    )
    .await;
    let raw = b"GET /x HTTP/1.1\r\nHost: gw.test\r\n\
        Remote-User-Email: admin@x\r\nremote_user_groups: admin\r\nREMOTE.USER.ID: 1\r\n\
        X-Member-Email: kept@x\r\nConnection: close\r\n\r\n";
    let answer = gw.raw(raw).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = origin.only_request();
    for name in ["remote-user-email", "remote_user_groups", "remote.user.id"] {
        assert_eq!(seen.header(name), None, "{name} reached the origin");
    }
    // Not reserved under this prefix: an ordinary header now.
    assert_eq!(seen.header("x-member-email"), Some("kept@x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_g3_conflicting_or_odd_framing_is_refused() {
    let w = world().await;
    let smuggle = "POST /public/ HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n\
        0\r\n\r\nGET /members/x HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let answer = w.gw.raw(smuggle.as_bytes()).await;
    assert!(
        w.members.requests().is_empty(),
        "smuggled request reached the origin: {answer}"
    );
    let cases: [&str; 8] = [
        "POST /public/ HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "POST /public/ HTTP/1.1\r\nHost: gw.test\r\nContent-Length: +5\r\n\r\nhello",
        "POST /public/ HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 0x5\r\n\r\nhello",
        "POST /public/ HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 99999999999999999999\r\n\r\nhello",
        "POST /public/ HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST /public/ HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST /public/ HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST /public/ HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
    ];
    for raw in cases {
        let answer = w.gw.raw(raw.as_bytes()).await;
        let status = status_of(&answer);
        assert!(status == 400 || status == 501, "{raw:?} -> {answer}");
    }
    assert!(w.public.requests().iter().all(|r| r.method != "GET"));
    assert!(w.members.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_obs_fold_and_bad_header_bytes_are_refused() {
    let w = world().await;
    let cases: [&[u8]; 4] = [
        b"GET /public/ HTTP/1.1\r\nHost: gw.test\r\nX-A: a\r\n b\r\n\r\n",
        b"GET /public/ HTTP/1.1\r\nHost : gw.test\r\n\r\n",
        b"GET /public/ HTTP/1.1\r\nHost: gw.test\r\nX-A: a\x00b\r\n\r\n",
        b"GET /public/ HTTP/1.1\r\nHost: gw.test\r\nX-A: a\rb\r\n\r\n",
    ];
    for raw in cases {
        assert_eq!(
            status_of(&w.gw.raw(raw).await),
            400,
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(w.total_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g6_a_refused_request_with_a_body_closes_the_connection() {
    let w = world().await;
    // Refused locally (421: unknown host) with a body that is itself a request.
    let inner = "GET /members/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let raw = format!(
        "POST /public/x HTTP/1.1\r\nHost: unknown.example\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    );
    let answer = w.gw.raw(raw.as_bytes()).await;
    assert_eq!(status_of(&answer), 421);
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(w.members.requests().is_empty());

    // The catalogue's case: an anonymous POST to a members-only page, on a
    // keep-alive connection, refused after routing (the login redirect).
    let w = world_with(Setup::new().rule("/members", "members", &[])).await;
    let inner = "GET /public/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let raw = format!(
        "POST /members/x HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    );
    let answer = w.gw.raw(raw.as_bytes()).await;
    assert_eq!(status_of(&answer), 302, "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert_eq!(w.total_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g7_h2c_upgrades_are_refused() {
    let w = world().await;
    let raw = b"GET /public/ HTTP/1.1\r\nHost: gw.test\r\nUpgrade: h2c\r\n\
        HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\r\n";
    let answer = w.gw.raw(raw).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = w.public.only_request();
    assert_eq!(seen.header("upgrade"), None);
    assert_eq!(seen.header("http2-settings"), None);
    // Prior-knowledge h2c on the plain listener is not spoken either.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let answer = w.gw.raw(preface).await;
    assert!(answer.is_empty() || status_of(&answer) >= 400, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_oversized_heads_and_targets_are_refused() {
    let w = world().await;
    let mut many = String::from("GET /public/ HTTP/1.1\r\nHost: gw.test\r\n");
    for i in 0..10_000 {
        many.push_str(&format!("X-{i}: a\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(status_of(&w.gw.raw(many.as_bytes()).await), 431);
    let long_line = format!(
        "GET /public/ HTTP/1.1\r\nHost: gw.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    assert_eq!(status_of(&w.gw.raw(long_line.as_bytes()).await), 431);
    let long_target = format!("/public/{}", "a".repeat(5000));
    assert_eq!(w.get(&long_target).await, 414);
    let huge_target = format!("/public/{}", "a".repeat(1 << 20));
    let status = w.get(&huge_target).await;
    assert!(status == 414 || status == 431, "{status}");
    assert_eq!(w.total_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_slow_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world().await;
    let mut stream = tokio::net::TcpStream::connect(w.gw.http).await.unwrap();
    stream
        .write_all(b"GET /public/ HTTP/1.1\r\nHost: gw")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut buf),
    )
    .await;
    assert!(
        read.is_ok(),
        "the gateway kept a slow client's connection open"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    assert_eq!(w.total_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h4_declared_huge_bodies_are_refused_early() {
    let w = world().await;
    let raw = b"POST /public/upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 10737418240\r\n\r\npartial";
    let answer = w.gw.raw(raw).await;
    assert_eq!(status_of(&answer), 413, "{answer}");
    assert!(w.public.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i5_head_and_bodiless_statuses_carry_no_body() {
    let w = world().await;
    let answer =
        w.gw.raw(b"HEAD /public/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
            .await;
    assert_eq!(status_of(&answer), 200);
    assert!(answer.ends_with("\r\n\r\n"), "HEAD got a body: {answer:?}");
    for code in [204, 304] {
        let raw =
            format!("GET /status/{code} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
        let answer = w.gw.raw(raw.as_bytes()).await;
        assert_eq!(status_of(&answer), code);
        assert!(
            answer.ends_with("\r\n\r\n"),
            "{code} got a body: {answer:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_idle_keep_alive_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world().await;
    let mut stream = tokio::net::TcpStream::connect(w.gw.http).await.unwrap();
    stream
        .write_all(b"GET /public/ HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then silence: the connection must not be held open forever.
    let rest = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut buf),
    )
    .await;
    assert!(rest.is_ok(), "an idle keep-alive connection stayed open");
}
