//! Proxying end to end: real gateway process, real origins, real TLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::origins::{DRIP_BYTES, closed_port};
use support::{EchoOrigin, Fault, FaultyOrigin, Gateway, Setup, make_certificate, status_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_get_over_https_with_forwarding_headers() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    let response = gw
        .client()
        .get(gw.https_url("/blog/post?x=1&y=%20"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = origin.only_request();
    assert_eq!(seen.target, "/blog/post?x=1&y=%20");
    assert_eq!(
        seen.header("host"),
        Some(format!("localhost:{}", gw.https.port()).as_str())
    );
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(format!("localhost:{}", gw.https.port()).as_str())
    );
    let forwarded = seen.header("forwarded").unwrap();
    assert!(
        forwarded.starts_with("for=127.0.0.1;proto=https;host="),
        "{forwarded}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_request_and_response_bodies() {
    let origin = EchoOrigin::start().await;
    let gw =
        Gateway::start(Setup::new().route_with("/", &origin.url(), "max_body_bytes = 10000000"))
            .await;
    // A chunked upload of unknown length arrives whole.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..64)
        .map(|i| Ok(vec![b'0' + (i % 10) as u8; 4096]))
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let response = gw
        .client()
        .post(gw.https_url("/upload"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["body_len"], 64 * 4096);
    assert_eq!(echo["method"], "POST");

    // The response arrives chunk by chunk, not after the origin finished.
    let response = gw
        .client()
        .get(gw.https_url("/stream/50"))
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(
        !first.is_empty() && first.len() < 50 * 1024,
        "first read had {} bytes",
        first.len()
    );
    let mut total = first.len();
    while let Some(chunk) = stream.next().await {
        total += chunk.unwrap().len();
    }
    assert_eq!(total, 50 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaks_http2_over_tls_by_alpn() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    let h2 = gw.client_builder().http2_prior_knowledge().build().unwrap();
    let response = h2.get(gw.https_url("/h2")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    // The origin is always spoken to in HTTP/1.1, with a Host made from :authority.
    let seen = origin.only_request();
    assert_eq!(
        seen.header("host"),
        Some(format!("localhost:{}", gw.https.port()).as_str())
    );
    let h1 = gw.client_builder().http1_only().build().unwrap();
    let response = h1.get(gw.https_url("/h1")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
}

/// A HEAD answer has no body, over HTTP/2 as over HTTP/1.1, whether the
/// origin or the gateway itself (its pages, its refusals) answers it: a
/// DATA frame after a HEAD's headers is a protocol error to clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_have_no_body_over_http2() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    let h2 = gw.client_builder().http2_prior_knowledge().build().unwrap();
    for (path, status) in [
        ("/page", 200),
        ("/_membergate/login", 200),
        ("/_membergate/nope", 404),
        ("/_membergate/logout", 405),
        ("/x%5c", 400),
    ] {
        let response = h2.head(gw.https_url(path)).send().await.unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), status, "{path}");
        let body = response.bytes().await;
        assert!(
            body.as_ref().is_ok_and(|b| b.is_empty()),
            "{path}: {body:?}"
        );
    }
}

/// `limits.max_headers` holds over HTTP/2 as over HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_header_fields_get_431_over_either_protocol() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(
        Setup::new()
            .route("/", &origin.url())
            .limits("max_headers = 8"),
    )
    .await;
    for client in [
        gw.client_builder().http1_only().build().unwrap(),
        gw.client_builder().http2_prior_knowledge().build().unwrap(),
    ] {
        let mut request = client.get(gw.https_url("/many"));
        for i in 0..12 {
            request = request.header(format!("x-field-{i}"), "v");
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 431, "{:?}", response.version());
        let few = client.get(gw.https_url("/few")).send().await.unwrap();
        assert_eq!(few.status(), 200, "{:?}", few.version());
        // Cookies count as the one Cookie field HTTP/1.1 browsers send, in
        // however many fields they come over HTTP/2 (browsers split them).
        let mut request = client.get(gw.https_url("/few"));
        let cookies: Vec<String> = (0..12).map(|i| format!("c{i}=v")).collect();
        if few.version() == reqwest::Version::HTTP_2 {
            for cookie in &cookies {
                request = request.header("cookie", cookie);
            }
        } else {
            request = request.header("cookie", cookies.join("; "));
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{:?}", response.version());
    }
    assert!(origin.requests().iter().all(|r| r.target == "/few"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chooses_certificates_by_sni() {
    let origin = EchoOrigin::start().await;
    let certs = tempfile::tempdir().unwrap();
    let (a_cert, a_key) = make_certificate(certs.path(), "a", &["a.example.test"]);
    let (w_cert, w_key) = make_certificate(certs.path(), "w", &["*.wild.test"]);
    let (d_cert, d_key) = make_certificate(certs.path(), "d", &["stray.test"]);
    let site = format!(
        "[[sites]]\nname = \"other\"\nhosts = [\"a.example.test\", \"*.wild.test\"]\n[[sites.routes]]\npath = \"/\"\nupstream = \"{}\"\n",
        origin.url()
    );
    let gw = Gateway::start(
        Setup::new()
            .route("/", &origin.url())
            .certificate(&a_cert, &a_key, &["a.example.test"])
            .certificate(&w_cert, &w_key, &["*.wild.test"])
            .certificate(&d_cert, &d_key, &["*"])
            .site(&site),
    )
    .await;
    // `"*"` makes a certificate the one for names no other lists, wherever
    // it is in the list (no site serves stray.test: 421 after the handshake).
    for (host, pem, status) in [
        ("a.example.test", &a_cert, 200),
        ("x.wild.test", &w_cert, 200),
        ("stray.test", &d_cert, 421),
    ] {
        let trust = reqwest::Certificate::from_pem(&std::fs::read(pem).unwrap()).unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only([trust])
            .resolve(host, gw.https)
            .no_proxy()
            .build()
            .unwrap();
        let url = format!("https://{host}:{}/", gw.https.port());
        let response = client
            .get(&url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{host}: {e:?}"));
        assert_eq!(response.status(), status, "{host}");
    }
    // The dev certificate answers for localhost.
    assert_eq!(
        gw.client()
            .get(gw.https_url("/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_directory_origin() {
    let site = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(site.path().join("blog")).unwrap();
    std::fs::write(site.path().join("index.html"), "<h1>home</h1>").unwrap();
    std::fs::write(site.path().join("blog/index.html"), "<h1>blog</h1>").unwrap();
    std::fs::write(site.path().join("data.txt"), "0123456789").unwrap();
    let gw =
        Gateway::start(Setup::new().route("/", &format!("dir:{}", site.path().display()))).await;
    let client = gw.client();
    let home = client.get(gw.https_url("/")).send().await.unwrap();
    assert_eq!(home.status(), 200);
    assert_eq!(home.text().await.unwrap(), "<h1>home</h1>");
    let blog = client.get(gw.https_url("/blog/")).send().await.unwrap();
    assert_eq!(blog.text().await.unwrap(), "<h1>blog</h1>");
    let range = client
        .get(gw.https_url("/data.txt"))
        .header("range", "bytes=2-4")
        .send()
        .await
        .unwrap();
    assert_eq!(range.status(), 206);
    assert_eq!(range.text().await.unwrap(), "234");
    let missing = client.get(gw.https_url("/nope.html")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let post = client
        .post(gw.https_url("/index.html"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    // Dot segments cannot climb out of the directory.
    let raw = gw
        .raw(
            b"GET /../../../../etc/passwd HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert_eq!(status_of(&raw), 404, "{raw}");
}

/// A directory origin answers `/kb/` with `/kb/index.html`: a rule written
/// for the file, by prefix or by glob, covers that address too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_index_is_covered_by_the_rules_for_its_file() {
    let site = tempfile::tempdir().unwrap();
    for dir in ["kb", "docs", "blog"] {
        std::fs::create_dir_all(site.path().join(dir)).unwrap();
        std::fs::write(site.path().join(dir).join("index.html"), "<h1>index</h1>").unwrap();
    }
    let gw = Gateway::start(
        Setup::new()
            .route("/", &format!("dir:{}", site.path().display()))
            .rule("/kb/index.html", "members", &[])
            .rule("/docs/*.html", "members", &[])
            .chat(
                "provider = \"builtin\"\nwidget_url = \"/w.js\"\n\
                 [[sites.chat.rules]]\npath = \"/blog/*.html\"\nshow = \"never\"",
            ),
    )
    .await;
    let client = gw.client();
    for (path, status) in [
        ("/kb/", 302),
        ("/kb/index.html", 302),
        ("/docs/", 302),
        ("/docs/index.html", 302),
        ("/blog/", 200),
    ] {
        let response = client.get(gw.https_url(path)).send().await.unwrap();
        assert_eq!(response.status(), status, "{path}");
    }
    // A member reads the protected file under either address, and either
    // way it is kept from shared caches.
    let (ok, out) = gw.cli(
        &["member", "add", "m@example.com"],
        "a long enough password\n",
    );
    assert!(ok, "{out}");
    let mut member = support::browser::Browser::new(&gw);
    assert_eq!(
        member
            .login("m@example.com", "a long enough password")
            .await
            .status,
        303
    );
    for path in ["/kb/", "/kb/index.html"] {
        let page = member.get(path).await;
        assert_eq!(page.status, 200, "{path}");
        assert_eq!(page.headers["cache-control"], "private, no-store", "{path}");
        assert_eq!(page.headers["x-robots-tag"], "noindex", "{path}");
    }
    // The chat rules too: no widget on the file, none on its directory.
    for path in ["/blog/index.html", "/blog/"] {
        let page = client.get(gw.https_url(path)).send().await.unwrap();
        assert_eq!(page.text().await.unwrap(), "<h1>index</h1>", "{path}");
    }
    // And `policy check` says what the gateway does.
    for (path, decision, why) in [
        ("/docs/", "login required", "rule: sites[main].rules[1]"),
        ("/blog/", "allow", "chat: off (sites[main].chat.rules[0]"),
    ] {
        let (ok, out) = gw.cli(&["policy", "check", "--url", &gw.https_url(path)], "");
        assert!(ok, "{out}");
        assert!(
            out.starts_with(decision) && out.contains(why),
            "{path}: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precompressed_copies_of_protected_files_are_not_served_by_name() {
    let site = tempfile::tempdir().unwrap();
    let page = "<h1>members' handbook</h1>";
    std::fs::write(site.path().join("handbook.html"), page).unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gzip, page.as_bytes()).unwrap();
    std::fs::write(site.path().join("handbook.html.gz"), gzip.finish().unwrap()).unwrap();
    std::fs::write(site.path().join("handbook.html.br"), b"brotli bytes").unwrap();
    std::fs::write(site.path().join("archive.tar.gz"), b"an archive").unwrap();
    let gw = Gateway::start(
        Setup::new()
            .route("/", &format!("dir:{}", site.path().display()))
            .rule("/handbook.html", "members", &[]),
    )
    .await;
    let client = gw.client();
    let get = |path: &str, coding: &'static str| {
        client
            .get(gw.https_url(path))
            .header("accept-encoding", coding)
            .send()
    };
    // The page is for members, whichever coding the visitor accepts.
    for coding in ["identity", "gzip", "br"] {
        let page = get("/handbook.html", coding).await.unwrap();
        assert_eq!(page.status(), 302, "{coding}");
    }
    // Its compressed copies, asked for by name, are not a way round the
    // rule: they are the page, under the page's rule...
    for path in ["/handbook.html.gz", "/HANDBOOK.HTML.BR"] {
        let copy = get(path, "identity").await.unwrap();
        assert_eq!(copy.status(), 302, "{path}");
    }
    // ...and, even for a member, not served by name beside the page.
    let mut member = support::browser::Browser::new(&gw);
    let (ok, out) = gw.cli(
        &["member", "add", "ada@example.com"],
        "correct horse battery\n",
    );
    assert!(ok, "{out}");
    assert_eq!(
        member
            .login("ada@example.com", "correct horse battery")
            .await
            .status,
        303
    );
    assert_eq!(member.get("/handbook.html").await.status, 200);
    for path in ["/handbook.html.gz", "/handbook.html.br"] {
        assert_eq!(member.get(path).await.status, 404, "{path}");
    }
    // A compressed file that is nobody's copy is an ordinary file.
    let archive = get("/archive.tar.gz", "identity").await.unwrap();
    assert_eq!(archive.status(), 200);
    assert_eq!(archive.bytes().await.unwrap(), "an archive");
}

/// A site deployed with compressed copies only (`gzip *.html` keeps no
/// original): `ServeDir` answers `/reports/q3.html` from `q3.html.gz`, so the
/// rule for `*.html` protects the page, and the copy asked for by its own
/// name must not be the way round it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_copy_without_its_original_is_not_served_by_name() {
    let site = tempfile::tempdir().unwrap();
    std::fs::create_dir(site.path().join("reports")).unwrap();
    let page = "<h1>members-only Q3 report</h1>";
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gzip, page.as_bytes()).unwrap();
    std::fs::write(
        site.path().join("reports/q3.html.gz"),
        gzip.finish().unwrap(),
    )
    .unwrap();
    let gw = Gateway::start(
        Setup::new()
            .route("/", &format!("dir:{}", site.path().display()))
            .rule("/reports/*.html", "members", &[]),
    )
    .await;
    let client = gw.client();
    let page = client
        .get(gw.https_url("/reports/q3.html"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 302, "the page itself is for members");
    let copy = client
        .get(gw.https_url("/reports/q3.html.gz"))
        .header("accept-encoding", "identity")
        .send()
        .await
        .unwrap();
    let status = copy.status();
    let body = copy.bytes().await.unwrap();
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut text);
    assert!(
        status != 200 && !text.contains("members-only"),
        "the members-only page came out by its .gz name: {status} {text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifies_https_origins_against_configured_roots() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(certs.path(), "origin", &["127.0.0.1", "localhost"]);
    let origin = EchoOrigin::start_tls(&cert, &key).await;
    let trusted = format!("ca_file = {:?}", cert.display().to_string());
    let gw = Gateway::start(
        Setup::new()
            .route_with("/trusted", &origin.url(), &trusted)
            .route("/untrusted", &origin.url()),
    )
    .await;
    let client = gw.client();
    let ok = client.get(gw.https_url("/trusted/x")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(origin.only_request().target, "/trusted/x");
    // A self-signed origin the gateway was not told to trust is a 502, not a silent success.
    let refused = client
        .get(gw.https_url("/untrusted/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 502);
    assert_eq!(origin.requests().len(), 1);
}

/// An origin's redirect to itself sends the client back through the
/// gateway, not to the origin's address (nginx's `proxy_redirect default`),
/// as a path: the browser keeps the scheme and host it used, also behind an
/// ingress that ended TLS for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_to_the_origin_come_back_through_the_gateway() {
    let origin = support::origins::RedirectOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    let client = gw.client();
    let location = |path: &'static str| {
        let request = client.get(gw.https_url(path)).send();
        async move {
            let response = request.await.unwrap();
            assert_eq!(response.status(), 302, "{path}");
            response.headers()["location"].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(location("/own").await, "/landed?from=own#top");
    assert_eq!(location("/by-host").await, "/landed");
    assert_eq!(location("/elsewhere").await, "https://example.com/landed");
    assert_eq!(location("/relative").await, "/landed");
    // `//example.com/landed` alone would send the browser to example.com.
    let gateway = format!("https://localhost:{}", gw.https.port());
    assert_eq!(
        location("/two-slashes").await,
        format!("{gateway}//example.com/landed")
    );
    // Over the plain listener too.
    let raw = gw
        .raw(b"GET /own HTTP/1.1\r\nHost: gw.test:8080\r\nConnection: close\r\n\r\n")
        .await;
    assert!(raw.contains("location: /landed?from=own#top\r\n"), "{raw}");
}

/// A sidecar behind an ingress that ends TLS (`http_mode = "serve"`, the
/// ingress trusted): the visitor is on HTTPS, and an origin's redirect to
/// itself keeps them there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_behind_a_tls_ingress_stay_on_https() {
    let origin = support::origins::RedirectOrigin::start().await;
    let gw = Gateway::start(
        Setup::new()
            .http_mode("serve")
            .server("trusted_proxies = [\"127.0.0.0/8\"]")
            .route("/", &origin.url()),
    )
    .await;
    let raw = gw
        .raw(
            b"GET /own HTTP/1.1\r\nHost: gw.test\r\nX-Forwarded-Proto: https\r\n\
              X-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert!(raw.starts_with("HTTP/1.1 302"), "{raw}");
    assert!(raw.contains("location: /landed?from=own#top\r\n"), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_host_when_asked() {
    let origin = EchoOrigin::start().await;
    let gw =
        Gateway::start(Setup::new().route_with("/", &origin.url(), "rewrite_host = true")).await;
    gw.client().get(gw.https_url("/")).send().await.unwrap();
    assert_eq!(
        origin.only_request().header("host"),
        Some(origin.addr.to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_then_longest_prefix() {
    let main = EchoOrigin::start().await;
    let docs = EchoOrigin::start().await;
    let other = EchoOrigin::start().await;
    let site = format!(
        "[[sites]]\nname = \"other\"\nhosts = [\"*.other.test\"]\n[[sites.routes]]\npath = \"/\"\nupstream = \"{}\"\n",
        other.url()
    );
    // Listed after the wildcard that also covers it: the exact name wins.
    let news = format!(
        "[[sites]]\nname = \"news\"\nhosts = [\"news.other.test\"]\n[[sites.routes]]\npath = \"/\"\nupstream = \"{}\"\n\
         [[sites.rules]]\npath = \"/\"\npolicy = \"members\"\n",
        other.url()
    );
    let gw = Gateway::start(
        Setup::new()
            .route("/", &main.url())
            .route("/docs", &docs.url())
            .site(&site)
            .site(&news),
    )
    .await;
    let get = |host: &'static str, path: &'static str| {
        let gw = &gw;
        async move {
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            status_of(&gw.raw(request.as_bytes()).await)
        }
    };
    assert_eq!(get("gw.test", "/docs/a").await, 200);
    assert_eq!(get("gw.test", "/DOCS/b").await, 200);
    assert_eq!(get("gw.test", "/docsx").await, 200);
    assert_eq!(get("a.other.test", "/docs/c").await, 200);
    assert_eq!(get("unknown.test", "/").await, 421);
    assert_eq!(
        docs.requests()
            .iter()
            .map(|r| r.target.as_str())
            .collect::<Vec<_>>(),
        ["/docs/a", "/DOCS/b"]
    );
    assert_eq!(main.only_request().target, "/docsx");
    assert_eq!(other.only_request().target, "/docs/c");

    // The exact name's site, and `policy check` picks the same one.
    assert_eq!(get("news.other.test", "/today").await, 302);
    assert_eq!(other.requests().len(), 1);
    let (ok, out) = gw.cli(
        &["policy", "check", "--url", "http://news.other.test/today"],
        "",
    );
    assert!(ok, "{out}");
    assert!(out.starts_with("login required\n"), "{out}");
    assert!(out.contains("rule: sites[news].rules[0]"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_redirects_to_https_in_redirect_mode() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().http_mode("redirect").route("/", &origin.url())).await;
    let raw = gw
        .raw(b"GET /kb/a?q=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status_of(&raw), 308);
    let location = format!(
        "location: https://localhost:{}/kb/a?q=1\r\n",
        gw.https.port()
    );
    assert!(raw.to_ascii_lowercase().contains(&location), "{raw}");
    // An unknown host gets no redirect anywhere.
    let raw = gw
        .raw(b"GET / HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(status_of(&raw), 421);
    assert!(origin.requests().is_empty());
}

/// A route's `idle_timeout` gives up on an origin that goes silent in the
/// middle of a body: the client sees the body fail instead of waiting on.
/// `response_timeout` is the origin's time to answer once it has the whole
/// request: a client that uploads slowly but steadily (each pause well
/// within `body_idle_timeout`) is not cut off with a 504 that blames the
/// origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_steady_upload_is_not_an_origin_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = EchoOrigin::start().await;
    let gw =
        Gateway::start(Setup::new().route_with("/", &origin.url(), "response_timeout = \"1s\""))
            .await;
    let mut stream = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let parts = 6;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        parts * 100
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Six parts 400 ms apart: 2.4 s in all, over the response timeout.
    for _ in 0..parts {
        tokio::time::sleep(Duration::from_millis(400)).await;
        stream.write_all(&[b'u'; 100]).await.unwrap();
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = origin.only_request();
    assert!(seen.body_complete);
    assert_eq!(seen.body, vec![b'u'; parts * 100]);
}

/// It times each wait, not the whole body: an origin that pauses often, each
/// pause well within the timeout, is waited for to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_silent_mid_body_is_given_up_on_and_a_slow_one_is_not() {
    let stall = FaultyOrigin::start(Fault::StallMidBody).await;
    let drip = FaultyOrigin::start(Fault::DripBody).await;
    // Well above each pause (a loaded machine may stretch them), below the
    // whole body's 2.4 s.
    let idle = "idle_timeout = \"2s\"";
    let gw = Gateway::start(
        Setup::new()
            .route_with("/stall", &stall.url(), idle)
            .route_with("/drip", &drip.url(), idle),
    )
    .await;
    let client = gw.client();
    let response = client.get(gw.https_url("/stall")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // The origin stays silent for a minute; the gateway gives up long before.
    let body = tokio::time::timeout(Duration::from_secs(30), response.bytes())
        .await
        .expect("the gateway waited on a silent origin");
    assert!(body.is_err(), "a body cut short was passed off as complete");
    // Eight pauses of 300 ms: longer than the timeout in all, each within it.
    let response = client.get(gw.https_url("/drip")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().len(), DRIP_BYTES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_get_our_own_pages() {
    let hang = FaultyOrigin::start(Fault::Hang).await;
    let malformed = FaultyOrigin::start(Fault::MalformedStatus).await;
    let huge = FaultyOrigin::start(Fault::HugeHeaders).await;
    let reset = FaultyOrigin::start(Fault::ResetMidBody).await;
    let closed = closed_port().await;
    let gw = Gateway::start(
        Setup::new()
            .route_with("/hang", &hang.url(), "response_timeout = \"1s\"")
            .route("/malformed", &malformed.url())
            .route("/huge", &huge.url())
            .route("/reset", &reset.url())
            .route("/closed", &format!("http://{closed}")),
    )
    .await;
    let client = gw.client();
    for (path, status) in [
        ("/hang", 504),
        ("/malformed", 502),
        ("/huge", 502),
        ("/closed", 502),
    ] {
        let response = client
            .get(gw.https_url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e:?}"));
        assert_eq!(response.status(), status, "{path}");
        let body = response.text().await.unwrap();
        assert!(body.contains(&status.to_string()), "{path}: {body}");
        for leak in [
            "127.0.0.1",
            &closed.port().to_string(),
            "hyper",
            "error trying",
        ] {
            assert!(!body.contains(leak), "{path} leaks {leak}: {body}");
        }
    }
    // A body cut short is not passed off as complete: the client sees an error.
    let response = client.get(gw.https_url("/reset")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err());
    // JSON clients get JSON errors.
    let response = client
        .get(gw.https_url("/closed"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"]["status"], 502);
}

/// Catalogue G8: bytes an origin sends after a response, at once or while
/// the pooled connection idles, never answer a later request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_bytes_from_an_origin_never_reach_another_request() {
    for fault in [Fault::ExtraBytes, Fault::IdleJunk] {
        let origin = FaultyOrigin::start(fault).await;
        let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
        let client = gw.client();
        for _ in 0..3 {
            let text = client
                .get(gw.https_url("/"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(text.starts_with("response-"), "{fault:?}: {text}");
            // Time for the idle junk to land on the pooled connection.
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        }
        assert_eq!(origin.requests(), 3, "{fault:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforces_the_body_limit_of_each_route() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(
        Setup::new()
            .route_with("/small", &origin.url(), "max_body_bytes = 1000")
            .route("/", &origin.url()),
    )
    .await;
    let client = gw.client();
    // Declared too large: refused before the origin hears of it.
    let response = client
        .post(gw.https_url("/small/x"))
        .body(vec![b'a'; 1001])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    // Streamed too large with no length: cut off, still 413.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..4).map(|_| Ok(vec![b'b'; 600])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let response = client
        .post(gw.https_url("/small/y"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert!(origin.requests().iter().all(|r| r.body.len() <= 1000));
    let response = client
        .post(gw.https_url("/small/z"))
        .body(vec![b'a'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strips_hop_by_hop_headers_from_responses() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    let response = gw
        .client_builder()
        .http1_only()
        .build()
        .unwrap()
        .get(gw.https_url("/hop"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-kept"], "yes");
    assert!(response.headers().get("x-origin-private").is_none());
    assert!(response.headers().get("keep-alive").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_websockets_only_after_the_origin_agrees() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"ping through the tunnel").await.unwrap();
    let mut echoed = [0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping through the tunnel");

    // An origin that does not switch leaves a plain HTTP exchange.
    let raw = gw
        .raw(b"GET /plain HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        .await;
    assert_eq!(status_of(&raw), 200);
    let seen = origin
        .requests()
        .into_iter()
        .find(|r| r.target == "/plain")
        .unwrap();
    assert_eq!(seen.header("upgrade"), Some("websocket"));

    // A 101 to another protocol than the client asked for: no tunnel, and
    // the client is told the origin failed (G7).
    let switched = open_websocket(&gw, "/ws-h2c").await.unwrap_err();
    assert!(switched.starts_with("HTTP/1.1 502"), "{switched}");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(&format!(
            "membergate_upstream_errors_total{{upstream=\"{}\"}} 1",
            origin.url()
        )),
        "the refused 101 was not counted: {metrics}"
    );
}

/// Opens a WebSocket through the gateway; the stream, once the 101 is read.
async fn open_websocket(gw: &Gateway, path: &str) -> Result<tokio::net::TcpStream, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let handshake = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(handshake.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return Err(format!("closed after {:?}", String::from_utf8_lossy(&head))),
        }
    }
    let head = String::from_utf8(head).unwrap();
    if head.starts_with("HTTP/1.1 101") {
        Ok(stream)
    } else {
        Err(head)
    }
}

/// A tunnel stays its client's connection: it counts towards
/// `max_connections_per_ip` while it lives (catalogue H3), and it ends when
/// nothing has gone either way for the route's `idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnels_count_against_the_ip_cap_and_end_when_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(
        Setup::new()
            .limits("max_connections_per_ip = 2")
            .route_with("/", &origin.url(), "idle_timeout = \"1s\""),
    )
    .await;
    let mut first = open_websocket(&gw, "/ws").await.unwrap();
    let mut second = open_websocket(&gw, "/ws").await.unwrap();
    // Two tunnels open from this address: a third connection is closed
    // unanswered, as the cap does at accept, not answered with an error page
    // (which any failure further on would give).
    let third = open_websocket(&gw, "/ws").await;
    assert_eq!(
        third.err().as_deref(),
        Some("closed after \"\""),
        "a third connection past the cap"
    );
    // The first one, used every half second, outlives the idle timeout.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        first.write_all(b"tick").await.unwrap();
        let mut echoed = [0u8; 4];
        first.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"tick");
    }
    // The second, silent all along, has been closed.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), second.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "{read:?}");
    // Its place is free again (the first still holds the other).
    let _again = open_websocket(&gw, "/ws").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_reports_health_readiness_and_metrics() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    assert_eq!(
        client
            .get(gw.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(gw.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    gw.client().get(gw.https_url("/a")).send().await.unwrap();
    gw.client()
        .get(gw.https_url("/status/404"))
        .send()
        .await
        .unwrap();
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("membergate_requests_total{route=\"main:/\",status=\"200\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("membergate_requests_total{route=\"main:/\",status=\"404\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("membergate_upstream_response_seconds_count"),
        "{metrics}"
    );
    assert!(
        metrics.contains("membergate_active_connections"),
        "{metrics}"
    );
    // The data plane does not serve admin paths.
    assert_eq!(
        gw.client()
            .get(gw.https_url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(origin.requests().last().unwrap().target, "/metrics");
}

/// `/readyz` probes each origin once, however many routes share it, and
/// calls that come together share one probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_probes_each_origin_once() {
    let origin = EchoOrigin::start().await;
    let mut setup = Setup::new();
    for prefix in ["/", "/a", "/b", "/c", "/d", "/e"] {
        setup = setup.route(prefix, &origin.url());
    }
    let gw = Gateway::start(setup).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let calls = (0..4).map(|_| client.get(gw.admin_url("/readyz")).send());
    for response in futures_util::future::join_all(calls).await {
        assert_eq!(response.unwrap().status(), 200);
    }
    // Six routes, four calls: one probe (24 without sharing either way).
    assert_eq!(origin.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_an_origin_is_down() {
    let closed = closed_port().await;
    let gw = Gateway::start(Setup::new().route("/", &format!("http://{closed}"))).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = client.get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        client
            .get(gw.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_one_access_log_line_per_request() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    gw.client()
        .get(gw.https_url("/big"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    gw.wait_for_log("\"path\":\"/big\"").await;
    let line = gw
        .log()
        .lines()
        .find(|l| l.contains("\"path\":\"/big\""))
        .unwrap()
        .to_owned();
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["target"], "membergate::access");
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["bytes"], 1 << 20);
    assert_eq!(entry["route"], "main:/");
    assert_eq!(entry["upstream"], origin.url());
    assert!(entry["duration_us"].as_u64().is_some());
}

/// A path (or method) the client makes long is cut short in the access log,
/// with its length: the log's buffer is bounded in lines, and lines of any
/// length would let clients grow it while the log's reader stalls. The
/// origin still gets the whole path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_cuts_long_paths_and_methods() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    let path = format!("/long/{}", "%22".repeat(2000));
    let method = reqwest::Method::from_bytes(&[b'X'; 100]).unwrap();
    let response = gw
        .client()
        .request(method, gw.https_url(&path))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(origin.only_request().target, path);
    gw.wait_for_log("\"path\":\"/long/").await;
    let line = gw
        .log()
        .lines()
        .find(|l| l.contains("\"path\":\"/long/"))
        .unwrap()
        .to_owned();
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    let logged = entry["path"].as_str().unwrap();
    assert!(
        logged.starts_with(&path[..1000])
            && logged.ends_with(&format!("...({} bytes)", path.len())),
        "logged whole, {} bytes",
        logged.len()
    );
    assert!(logged.len() < 1100, "{}", logged.len());
    assert_eq!(entry["method"], format!("{}...(100 bytes)", "X".repeat(32)));
}

/// A request whose client leaves before the answer is ready (the origin is
/// slow) is logged and counted as 499, as nginx does; it used to be logged
/// with status 0 and not counted at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_its_client_gave_up_on_is_logged_and_counted_as_499() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    let client = gw
        .client_builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gone = client.get(gw.https_url("/slow")).send().await;
    assert!(gone.is_err(), "the origin answered within 300 ms");
    gw.wait_for_log("\"path\":\"/slow\"").await;
    let line = gw
        .log()
        .lines()
        .find(|l| l.contains("\"path\":\"/slow\""))
        .unwrap()
        .to_owned();
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["status"], 499, "{line}");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("membergate_requests_total{route=\"main:/\",status=\"499\"} 1"),
        "{metrics}"
    );
}

/// Requests hyper's HTTP/1 parser refuses (it answers them itself) never
/// reach the pipeline: they are counted in `requests_unparsed` and logged
/// with the peer and the parser's reason, so malformed traffic shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_parser_refuses_are_counted_and_logged() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url()).http_mode("serve")).await;
    let bad_header = gw
        .raw(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
        .await;
    assert_eq!(status_of(&bad_header), 400, "{bad_header}");
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let too_large = gw.raw(huge.as_bytes()).await;
    assert_eq!(status_of(&too_large), 431, "{too_large}");
    assert!(origin.requests().is_empty());
    gw.wait_for_log("refused by the parser").await;
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("membergate_requests_unparsed_total 2"),
        "{metrics}"
    );
    let logged = gw
        .log()
        .lines()
        .filter(|l| l.contains("HTTP/1 request refused by the parser"))
        .count();
    assert!(logged >= 1, "{}", gw.log());
}

/// The access log names the visitor: behind a trusted proxy, the address
/// it forwarded (with the proxy as `via`); from anyone else, the peer, and a
/// forged `X-Forwarded-For` changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_records_the_forwarded_client_only_from_trusted_proxies() {
    let origin = EchoOrigin::start().await;
    let entry = |gw: &Gateway, path: &str| -> serde_json::Value {
        let line = gw
            .log()
            .lines()
            .find(|l| l.contains(&format!("\"path\":\"{path}\"")))
            .unwrap()
            .to_owned();
        serde_json::from_str(&line).unwrap()
    };
    let behind = Gateway::start(
        Setup::new()
            .route("/", &origin.url())
            .server("trusted_proxies = [\"127.0.0.0/8\"]"),
    )
    .await;
    let forwarded = [("x-forwarded-for", "198.51.100.7, 203.0.113.9")];
    for (path, headers) in [("/via-ingress", &forwarded[..]), ("/direct", &[][..])] {
        let mut request = behind.client().get(behind.https_url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        assert_eq!(request.send().await.unwrap().status(), 200);
        behind.wait_for_log(&format!("\"path\":\"{path}\"")).await;
    }
    let via_ingress = entry(&behind, "/via-ingress");
    assert_eq!(via_ingress["client"], "203.0.113.9");
    assert_eq!(via_ingress["via"], "127.0.0.1");
    let direct = entry(&behind, "/direct");
    assert_eq!(direct["client"], "127.0.0.1");
    assert!(direct.get("via").is_none(), "{direct}");

    let open = Gateway::start(Setup::new().route("/", &origin.url())).await;
    let forged = open
        .client()
        .get(open.https_url("/forged"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 200);
    open.wait_for_log("\"path\":\"/forged\"").await;
    let forged = entry(&open, "/forged");
    assert_eq!(forged["client"], "127.0.0.1");
    assert!(forged.get("via").is_none(), "{forged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_connections_are_reused_once_each_response_has_ended() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    let before = origin.connections();
    let client = gw.client();
    // Framed by Content-Length, by chunks, empty, and a HEAD: each gives its
    // connection back as its body ends.
    for round in 0..5 {
        for path in ["/echo", "/big", "/stream/3", "/status/204"] {
            let response = client.get(gw.https_url(path)).send().await.unwrap();
            assert!(response.status().is_success(), "{path}");
            response.bytes().await.unwrap();
        }
        let head = client.head(gw.https_url("/echo")).send().await.unwrap();
        assert_eq!(head.status(), 200, "round {round}");
    }
    assert_eq!(origin.requests().len(), 25);
    assert_eq!(
        origin.connections() - before,
        1,
        "one connection for 25 requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_connection_left_mid_body_is_not_reused() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    let before = origin.connections();
    let client = gw.client();
    // The client stops reading a 64 MiB body after its first chunk.
    let response = client.get(gw.https_url("/huge")).send().await.unwrap();
    let mut stream = response.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The next request gets a fresh connection and its own answer, not the
    // rest of the page.
    let response = client.get(gw.https_url("/echo")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["target"], "/echo", "{echo}");
    assert_eq!(origin.connections() - before, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_the_origin_closed_is_not_used() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Answers one request per connection, keep-alive in form, then closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let gw = Gateway::start(Setup::new().route("/", &format!("http://{addr}"))).await;
    let client = gw.client();
    for i in 0..3 {
        let response = client.get(gw.https_url("/once")).send().await.unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        assert_eq!(response.text().await.unwrap(), "ok");
        // Time for the gateway to see the origin's close.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 3);
}
