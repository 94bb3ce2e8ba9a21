//! Catalogue J1, J2 and B6: every near miss of an API key, and duplicate
//! credentials, get the same 401 as no key at all; keys bound to a site stay
//! there; signed tokens with the wrong lifetime or audience are refused.

use sha2::{Digest, Sha256};

use crate::support::{EchoOrigin, Gateway, Setup};

const KEY: &str = "mgk_live_0123456789abcdef0123456789abcdef";
const CREATE: &str = "/_membergate/api/conversations/v3/visitor-identification/tokens/create";
const BODY: &str = r#"{"email": "ada@example.com", "firstName": "Ada", "lastName": "Lovelace"}"#;

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn start() -> Gateway {
    start_with("", Setup::new()).await
}

/// The gateway with the `backend` key (scope create, plus `key_extra`).
async fn start_with(key_extra: &str, setup: Setup) -> Gateway {
    let digest = sha256_hex(KEY);
    let origin = EchoOrigin::start().await;
    Gateway::start(
        setup
            .route("/", &origin.url())
            .chat("provider = \"builtin\"\nwidget_url = \"https://chat.example.com/widget.js\"")
            .identification(&format!(
                "[[identification.keys]]\nid = \"k1\"\nsecret_file = \"k1.key\"\n\
                 [[identification.api_keys]]\nname = \"backend\"\nkey_sha256 = \"{digest}\"\nscopes = [\"create\"]\n{key_extra}"
            ))
            .file("k1.key", "k1-secret-0123456789-0123456789-0123456789"),
    )
    .await
}

/// POSTs a mint request with exactly these `Authorization` values (over
/// HTTP/1.1, so duplicates stay separate header lines) and returns the status.
async fn mint(gw: &Gateway, path: &str, authorizations: &[&str]) -> u16 {
    mint_over(gw, gw.client_builder().http1_only(), path, authorizations).await
}

/// A mint request with `key` as its bearer.
fn create_request(client: &reqwest::Client, url: &str, key: &str) -> reqwest::RequestBuilder {
    client
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(BODY)
}

async fn mint_over(
    gw: &Gateway,
    client: reqwest::ClientBuilder,
    path: &str,
    authorizations: &[&str],
) -> u16 {
    let client = client.build().unwrap();
    let mut request = client
        .post(gw.https_url(path))
        .header("content-type", "application/json")
        .body(BODY);
    for value in authorizations {
        request = request.header("authorization", *value);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn j1_b6_near_misses_and_duplicate_keys_get_a_uniform_401() {
    let gw = start().await;
    let right = format!("Bearer {KEY}");
    assert_eq!(
        mint(&gw, CREATE, &[&right]).await,
        200,
        "the real key works"
    );
    let prefix = format!("Bearer {}", &KEY[..KEY.len() - 1]);
    let upper = format!("Bearer {}", KEY.to_uppercase());
    let padded = format!("Bearer  {KEY}");
    let basic = format!("Basic {KEY}");
    let bare = KEY.to_owned();
    for value in [
        "", "Bearer", "Bearer ", &prefix, &upper, &padded, &basic, &bare,
    ] {
        assert_eq!(mint(&gw, CREATE, &[value]).await, 401, "{value:?}");
    }
    // HTTP/1.1 drops whitespace around a field value (RFC 9110 §5.5), so a
    // trailing space only survives over HTTP/2, where it must not pass.
    for value in [format!("Bearer {KEY} "), format!("Bearer {KEY}\t")] {
        let h2 = gw.client_builder().http2_prior_knowledge();
        assert_eq!(
            mint_over(&gw, h2, CREATE, &[&value]).await,
            401,
            "{value:?}"
        );
    }
    // Two credentials, whichever comes first: refused, not a guess.
    assert_eq!(mint(&gw, CREATE, &[&right, "Bearer nope"]).await, 401);
    assert_eq!(mint(&gw, CREATE, &["Bearer nope", &right]).await, 401);
    assert_eq!(mint(&gw, CREATE, &[&right, &right]).await, 401);
    // A key in the query string is not a credential.
    let in_query = format!("{CREATE}?api_key={KEY}");
    assert_eq!(mint(&gw, &in_query, &[]).await, 401);
    assert!(!gw.log().contains(KEY), "the key was logged");
}

/// H4 with a key that is right: the body cap, not the key check, ends an
/// endless body, long before much of it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h4_an_endless_body_with_a_valid_key_is_cut_off_at_the_cap() {
    let gw = start().await;
    let head = format!(
        "POST {CREATE} HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let (answer, sent) = crate::exhaustion::endless_body(gw.http, head).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    // What sits in socket buffers counts as sent; the cap itself is 16 KiB.
    assert!(sent < 16 << 20, "{sent} bytes were sent before the answer");
}

/// A client picks the Host, and so the site a token is minted for: a key
/// bound to one site cannot mint for another by naming its host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_bound_to_a_site_mints_for_that_site_only() {
    let other = EchoOrigin::start().await;
    let site = format!(
        "[[sites]]\nname = \"shop\"\nhosts = [\"shop.test\"]\n\
         [[sites.routes]]\npath = \"/\"\nupstream = {:?}\n",
        other.url()
    );
    let gw = start_with("sites = [\"main\"]", Setup::new().site(&site)).await;
    let mint_at = |host: &'static str| {
        let request = format!(
            "POST {CREATE} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
            BODY.len()
        );
        let gw = &gw;
        async move { gw.raw(request.as_bytes()).await }
    };
    let main = mint_at("gw.test").await;
    assert!(main.starts_with("HTTP/1.1 200 "), "{main}");
    assert!(main.contains("\"token\""), "{main}");
    let shop = mint_at("shop.test").await;
    assert!(shop.starts_with("HTTP/1.1 403 "), "{shop}");
    assert!(shop.contains("not for this site"), "{shop}");
    assert!(!shop.contains("\"token\""), "{shop}");
    assert!(other.requests().is_empty());

    // A key naming a site that does not exist is a configuration error.
    let typo = Setup::new()
        .route("/", &other.url())
        .identification(&format!(
            "[[identification.api_keys]]\nname = \"backend\"\nkey_sha256 = \"{}\"\n\
             scopes = [\"create\"]\nsites = [\"mian\"]",
            sha256_hex(KEY)
        ));
    let (code, problems) = crate::support::check_config(&typo);
    assert_eq!(code, Some(2), "{problems}");
    assert!(
        problems.contains("identification.api_keys[0].sites[0]: no site is named \"mian\""),
        "{problems}"
    );
}

const VERIFY: &str = "/_membergate/api/visitor-identification/tokens/verify";
const VERIFY_KEY: &str = "mgk_live_verify_0123456789abcdef0123456789";
const K1_SECRET: &str = "k1-secret-0123456789-0123456789-0123456789";

/// A token signed with k1 (as the gateway would) over exactly `claims`.
fn signed(claims: &serde_json::Value) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::{Hmac, Mac};
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    let signed = format!("mgv1.k1.{payload}");
    let mut mac = Hmac::<Sha256>::new_from_slice(K1_SECRET.as_bytes()).unwrap();
    mac.update(signed.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signed}.{signature}")
}

/// J2 through the verify API: a correctly signed token is still refused
/// when it expired a second ago, was issued in the future, or was minted for
/// another site; the 401 says why and names nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn j2_signed_but_expired_early_or_foreign_tokens_are_refused() {
    let verify_key = format!(
        "[[identification.api_keys]]\nname = \"chat\"\nkey_sha256 = \"{}\"\nscopes = [\"verify\"]",
        sha256_hex(VERIFY_KEY)
    );
    let other = EchoOrigin::start().await;
    let site = format!(
        "[[sites]]\nname = \"shop\"\nhosts = [\"shop.test\"]\n\
         [[sites.routes]]\npath = \"/\"\nupstream = {:?}\n",
        other.url()
    );
    let gw = start_with(&verify_key, Setup::new().site(&site)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = |aud: &str, iat: i64, exp: i64| {
        serde_json::json!({
            "email": "ada@example.com", "firstName": "Ada", "lastName": "Lovelace",
            "aud": aud, "iat": iat, "exp": exp,
        })
    };
    let check = |token: String| {
        let gw = &gw;
        async move {
            let body = serde_json::json!({ "token": token }).to_string();
            let response = gw
                .client()
                .post(gw.https_url(VERIFY))
                .header("authorization", format!("Bearer {VERIFY_KEY}"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap())
        }
    };
    // The same signing code, honest claims: accepted, so the refusals below
    // are about the claims and not the signature.
    let (status, body) = check(signed(&claims("main", now - 10, now + 3600))).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ada@example.com"), "{body}");
    for (what, token, reason) in [
        (
            "expired a second ago",
            signed(&claims("main", now - 3600, now - 1)),
            "expired",
        ),
        (
            "issued ten minutes from now",
            signed(&claims("main", now + 600, now + 4200)),
            "not valid yet",
        ),
        (
            "minted for another site",
            signed(&claims("shop", now - 10, now + 3600)),
            "another site",
        ),
    ] {
        let (status, body) = check(token).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(body.contains("INVALID_TOKEN"), "{what}: {body}");
        assert!(body.contains(reason), "{what}: {body}");
        assert!(!body.contains("ada@example.com"), "{what}: {body}");
    }
    // Forgeries of Ada's good token: her claims edited to Bob's with her
    // signature kept, a JWT with `alg: none`, and her token under another
    // version label. None verifies, none names anyone.
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let good = signed(&claims("main", now - 10, now + 3600));
    let (signed_part, signature) = good.rsplit_once('.').unwrap();
    let mut bob = claims("main", now - 10, now + 3600);
    bob["email"] = "bob@example.com".into();
    let bob_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&bob).unwrap());
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let forgeries = [
        (
            "claims edited",
            format!("mgv1.k1.{bob_payload}.{signature}"),
        ),
        ("alg none", format!("{none_header}.{bob_payload}.")),
        (
            "alg none with a signature",
            format!("{none_header}.{bob_payload}.{signature}"),
        ),
        ("another version", good.replacen("mgv1.", "mgv0.", 1)),
        (
            "no key id",
            format!("mgv1..{}", &signed_part["mgv1.k1.".len()..]),
        ),
    ];
    for (what, token) in forgeries {
        let (status, body) = check(token).await;
        // 401 either way; the category tells a bad signature from a shape
        // that is not ours.
        assert_eq!(status, 401, "{what}: {body}");
        assert!(
            body.contains("INVALID_TOKEN") || body.contains("the token is malformed"),
            "{what}: {body}"
        );
        assert!(
            !body.contains("ada@example.com") && !body.contains("bob@example.com"),
            "{what}: {body}"
        );
    }
}

/// Scopes are separate: a key with scope create only is refused at verify
/// with 403 MISSING_SCOPES, even for a good token it minted itself (which a
/// key allowed to verify gets answered 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_only_key_cannot_verify() {
    let gw = start().await;
    let client = gw.client();
    let minted = create_request(&client, &gw.https_url(CREATE), KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(minted.status(), 200);
    let token = minted.json::<serde_json::Value>().await.unwrap()["token"].clone();
    assert!(token.is_string(), "{token}");
    let answer = client
        .post(gw.https_url(VERIFY))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(serde_json::json!({ "token": token }).to_string())
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let body = answer.text().await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("MISSING_SCOPES"), "{body}");
    assert!(!body.contains("ada@example.com"), "{body}");
}

/// Calls are limited per API key, 6,000 a minute: a leaked or runaway key
/// cannot mint without bound. The call past the limit is a 429, while
/// another key from the same address still gets through, so it is the key's
/// count and not the address's that ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_per_key_limit_get_429() {
    const OTHER: &str = "mgk_live_other_0123456789abcdef0123456789";
    const CALLS_PER_KEY: usize = 6000;
    const WORKERS: usize = 16;
    let other = format!(
        "[[identification.api_keys]]\nname = \"other\"\nkey_sha256 = \"{}\"\nscopes = [\"create\"]",
        sha256_hex(OTHER)
    );
    let gw = start_with(&other, Setup::new()).await;
    // One HTTP/2 connection, 16 streams at a time: quick enough to stay
    // within the limit's minute.
    let client = gw.client_builder().http2_prior_knowledge().build().unwrap();
    let url = gw.https_url(CREATE);
    let started = std::time::Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in (worker..CALLS_PER_KEY).step_by(WORKERS) {
                    let response = create_request(&client, &url, KEY).send().await.unwrap();
                    statuses.push(response.status().as_u16());
                }
                statuses
            })
        })
        .collect();
    let mut within = 0;
    for worker in workers {
        let statuses = worker.await.unwrap();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        within += statuses.len();
    }
    assert_eq!(within, CALLS_PER_KEY);
    let elapsed = started.elapsed();
    assert!(
        elapsed.as_secs() < 50,
        "{elapsed:?}: the minute may have turned"
    );
    let call = |key: &'static str| {
        let request = create_request(&client, &url, key);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let retry = response.headers().get("retry-after").cloned();
            (status, retry, response.text().await.unwrap())
        }
    };
    let (status, retry, body) = call(KEY).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("RATE_LIMITS"), "{body}");
    assert_eq!(retry.unwrap(), "60");
    let (status, _, body) = call(OTHER).await;
    assert_eq!(status, 200, "another key from the same address: {body}");
    assert!(body.contains("\"token\""), "{body}");
}

/// The failure budget is for guessers, not for the holder of a valid key:
/// another client at the backend's address (a shared egress: serverless
/// platforms, a NAT, a cloud /64) sends 20 wrong keys, and the backend's
/// own valid key still mints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_key_is_not_held_by_other_clients_failures_at_its_address() {
    let gw = start().await;
    let client = gw.client_builder().http1_only().build().unwrap();
    let url = gw.https_url(CREATE);
    for i in 0..20 {
        let status = create_request(&client, &url, &format!("mgk_wrong_{i}"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, 401);
    }
    // The guesser is held from here on ...
    let status = create_request(&client, &url, "mgk_wrong_again")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 429);
    // ... the backend with its valid key is not.
    let response = create_request(&client, &url, KEY).send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "the valid key from the shared address: {body}");
}

/// A key shorter than 32 characters never authenticates, even with its
/// digest configured: the gateway sees only digests and cannot refuse it at
/// start, and such a key could be guessed. The answer says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_key_too_short_to_be_one_never_authenticates() {
    const SHORT: &str = "mgk_short_0123456789";
    let extra = format!(
        "[[identification.api_keys]]\nname = \"short\"\nkey_sha256 = \"{}\"\nscopes = [\"create\"]\n",
        sha256_hex(SHORT)
    );
    let gw = start_with(&extra, Setup::new()).await;
    let client = gw.client_builder().http1_only().build().unwrap();
    let url = gw.https_url(CREATE);
    let response = create_request(&client, &url, SHORT).send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(
        status,
        401,
        "a {}-character key authenticated: {body}",
        SHORT.len()
    );
    assert!(body.contains("keys have at least 32 characters"), "{body}");
    let status = create_request(&client, &url, KEY)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 200);
}
