//! Administration end to end: the admin JSON API on the admin listener,
//! membership metrics, SMTP delivery to a real SMTP server, teaser pages, glob
//! rules and per-rule caching. The real gateway, a real SQLite file, real cookies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::browser::Browser;
use support::smtp::SmtpSink;
use support::{EchoOrigin, Gateway, Setup};

const PASSWORD: &str = "correct horse battery";
const KEY: &str = "test-admin-key-0123456789-abcdefghijklmnop";

async fn start(extra: impl FnOnce(Setup) -> Setup) -> (Gateway, EchoOrigin) {
    let origin = EchoOrigin::start().await;
    let setup = Setup::new()
        .route("/", &origin.url())
        .rule("/members", "members", &[])
        .rule("/vip", "groups", &["vip"])
        .admin("api_key_file = \"admin.key\"")
        .file("admin.key", &format!("{KEY}\n"));
    (Gateway::start(extra(setup)).await, origin)
}

struct Api<'a> {
    gw: &'a Gateway,
    client: reqwest::Client,
    key: &'a str,
}

impl<'a> Api<'a> {
    fn new(gw: &'a Gateway) -> Api<'a> {
        Api {
            gw,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            key: KEY,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .client
            .request(method, self.gw.admin_url(path))
            .bearer_auth(self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text:?}"));
        (status, value)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_manages_members_and_changes_apply_on_the_next_request() {
    let (gw, origin) = start(|s| s).await;
    let api = Api::new(&gw);

    let (status, grace) = api
        .call(
            "POST",
            "/api/v1/members",
            Some(json!({"email": " Grace@Example.COM", "password": PASSWORD, "first_name": "Grace", "last_name": "Hopper"})),
        )
        .await;
    assert_eq!(status, 201, "{grace}");
    assert_eq!(grace["email"], "grace@example.com");
    assert_eq!(grace["status"], "active");
    assert_eq!(grace["has_password"], true);
    assert!(grace.get("password_hash").is_none());
    // The same address in another spelling is the same member.
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/members",
            Some(json!({"email": "GRACE@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, 409, "{body}");

    let mut b = Browser::new(&gw);
    assert_eq!(b.login("grace@example.com", PASSWORD).await.status, 303);
    assert_eq!(b.get("/vip/").await.status, 403);

    // Joining a group applies to the very next request (the cached session is dropped).
    let (status, body) = api
        .call("PUT", "/api/v1/members/grace@example.com/groups/vip", None)
        .await;
    assert_eq!((status, &body["groups"]), (200, &json!(["vip"])), "{body}");
    let page = b.get("/vip/").await;
    assert_eq!(page.status, 200);
    let seen = origin.requests().pop().unwrap();
    assert_eq!(seen.header("x-member-groups"), Some("vip"));

    let (status, report) = api
        .call(
            "GET",
            &format!(
                "/api/v1/policy/check?url={}&member=grace%40example.com",
                urlencode(&gw.https_url("/VIP/x/../index.html"))
            ),
            None,
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["decision"], "allow");
    assert_eq!(report["path"], "/VIP/index.html");
    assert!(
        report["rule"].as_str().unwrap().contains("rules[1]"),
        "{report}"
    );

    // Leaving a group ends the member's sessions.
    let (status, _) = api
        .call(
            "DELETE",
            "/api/v1/members/grace%40example.com/groups/vip",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(b.get("/members/").await.status, 302);
    let (status, body) = api
        .call(
            "DELETE",
            "/api/v1/members/grace@example.com/groups/vip",
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");

    // Disabled: the session ends and logging in fails; enabled again: it works.
    assert_eq!(b.login("grace@example.com", PASSWORD).await.status, 303);
    let (status, body) = api
        .call("POST", "/api/v1/members/grace@example.com/disable", None)
        .await;
    assert_eq!((status, &body["status"]), (200, &json!("disabled")));
    assert_eq!(b.get("/members/").await.status, 302);
    assert_eq!(b.login("grace@example.com", PASSWORD).await.status, 401);
    // Approval is for members waiting for it: it does not undo a disable.
    let (status, body) = api
        .call("POST", "/api/v1/members/grace@example.com/approve", None)
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is disabled: enable them instead"),
        "{body}"
    );
    assert_eq!(b.login("grace@example.com", PASSWORD).await.status, 401);
    let (status, _) = api
        .call("POST", "/api/v1/members/grace@example.com/enable", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(b.login("grace@example.com", PASSWORD).await.status, 303);
    // A disable remembers what it found: an invited member who has not set
    // a password yet is pending again after an enable, not active.
    let invited = json!({"email": "ivy@example.com", "invite": true});
    assert_eq!(
        api.call("POST", "/api/v1/members", Some(invited)).await.0,
        201
    );
    for (action, status) in [("disable", "disabled"), ("enable", "pending")] {
        let path = format!("/api/v1/members/ivy@example.com/{action}");
        let (code, body) = api.call("POST", &path, None).await;
        assert_eq!((code, &body["status"]), (200, &json!(status)), "{action}");
    }
    // Enabling or approving an active member changes nothing.
    for action in ["enable", "approve"] {
        let (status, body) = api
            .call(
                "POST",
                &format!("/api/v1/members/grace@example.com/{action}"),
                None,
            )
            .await;
        assert_eq!(
            (status, &body["status"]),
            (200, &json!("active")),
            "{action}"
        );
    }

    // Log out everywhere.
    let mut other = Browser::new(&gw);
    assert_eq!(other.login("grace@example.com", PASSWORD).await.status, 303);
    let (status, body) = api
        .call("DELETE", "/api/v1/members/grace@example.com/sessions", None)
        .await;
    assert_eq!(
        (status, &body["sessions_ended"]),
        (200, &json!(2)),
        "{body}"
    );
    assert_eq!(b.get("/members/").await.status, 302);
    assert_eq!(other.get("/members/").await.status, 302);

    // A new password: the old one stops working.
    let (status, _) = api
        .call(
            "PUT",
            "/api/v1/members/grace@example.com/password",
            Some(json!({"password": "a brand new passphrase"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(b.login("grace@example.com", PASSWORD).await.status, 401);
    assert_eq!(
        b.login("grace@example.com", "a brand new passphrase")
            .await
            .status,
        303
    );

    // Invited members get a link to choose a password.
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/members",
            Some(json!({"email": "linus@example.com", "invite": true, "groups": ["vip"]})),
        )
        .await;
    assert_eq!(
        (status, &body["status"]),
        (201, &json!("pending")),
        "{body}"
    );
    let link = Gateway::link_in(&gw.mail_to("linus@example.com").await);
    assert!(link.starts_with("/_membergate/reset?token="), "{link}");

    let (status, list) = api.call("GET", "/api/v1/members", None).await;
    assert_eq!(status, 200);
    let emails: Vec<&str> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails.len(), 3, "{list}");
    assert!(emails.contains(&"grace@example.com") && emails.contains(&"linus@example.com"));
    let (status, groups) = api.call("GET", "/api/v1/groups", None).await;
    assert_eq!(
        (status, groups),
        (200, json!({"groups": [{"name": "vip", "members": 1}]}))
    );
}

/// `DELETE /api/v1/members/{email}` deletes the member with their groups,
/// sessions and links, answering what went; their session is dead on its
/// very next request (this process forgets it at once), with the chat
/// reset. Only with the key; an unknown member is 404, and the address is
/// free for a new member with a new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_deletes_a_member_with_everything_of_theirs() {
    let (gw, _origin) = start(|s| s).await;
    let api = Api::new(&gw);
    let new = json!({"email": "edith@example.com", "password": PASSWORD, "groups": ["vip"]});
    let (status, edith) = api.call("POST", "/api/v1/members", Some(new.clone())).await;
    assert_eq!(status, 201, "{edith}");
    let mut b = Browser::new(&gw);
    assert_eq!(b.login("edith@example.com", PASSWORD).await.status, 303);
    assert_eq!(b.get("/vip/").await.status, 200);

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = gw.admin_url("/api/v1/members/edith@example.com");
    for key in [None, Some("wrong-key")] {
        let mut request = client.delete(&url);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        assert_eq!(request.send().await.unwrap().status(), 401, "{key:?}");
    }
    assert_eq!(b.get("/vip/").await.status, 200);

    let (status, body) = api
        .call("DELETE", "/api/v1/members/Edith%40Example.com", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deleted"]["email"], "edith@example.com");
    assert_eq!(body["deleted"]["id"], edith["id"]);
    assert_eq!(body["deleted"]["groups"], json!(["vip"]));
    assert_eq!(
        (&body["sessions_ended"], &body["links_voided"]),
        (&json!(1), &json!(0))
    );
    assert!(body["deleted"].get("password_hash").is_none());

    let dead = b.get("/vip/").await;
    assert_eq!(dead.status, 302);
    let cookies = dead.set_cookies();
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("__Host-membergate=;") && c.contains("Max-Age=0")),
        "{cookies:?}"
    );
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("__Host-membergate-chat-reset=2")),
        "{cookies:?}"
    );
    assert_eq!(b.login("edith@example.com", PASSWORD).await.status, 401);

    for path in [
        "/api/v1/members/edith@example.com",
        "/api/v1/members/nobody@example.com",
    ] {
        for method in ["GET", "DELETE"] {
            let (status, body) = api.call(method, path, None).await;
            assert_eq!(status, 404, "{method} {path}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("no member"),
                "{body}"
            );
        }
    }
    let (_, groups) = api.call("GET", "/api/v1/groups", None).await;
    assert_eq!(groups, json!({"groups": []}));

    let (status, again) = api.call("POST", "/api/v1/members", Some(new)).await;
    assert_eq!(status, 201, "{again}");
    assert!(again["id"].as_i64().unwrap() > edith["id"].as_i64().unwrap());
    assert_eq!(b.login("edith@example.com", PASSWORD).await.status, 303);
}

/// An administrator vouches for a new address: no link, the change is made
/// at once, the member's sessions end, and they log in with the new one.
/// Another member's address is a conflict, in the API (409) and the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_and_the_cli_set_a_members_email_without_a_link() {
    let (gw, origin) = start(|s| s).await;
    let api = Api::new(&gw);
    for email in ["kim@example.com", "lee@example.com"] {
        let new = json!({"email": email, "password": PASSWORD});
        let (status, body) = api.call("POST", "/api/v1/members", Some(new)).await;
        assert_eq!(status, 201, "{body}");
    }
    let mut b = Browser::new(&gw);
    assert_eq!(b.login("kim@example.com", PASSWORD).await.status, 303);
    assert_eq!(b.get("/members/").await.status, 200);
    let set_email = |member: &'static str, body: Value| {
        let api = &api;
        async move {
            api.call(
                "PUT",
                &format!("/api/v1/members/{member}/email"),
                Some(body),
            )
            .await
        }
    };

    let (status, body) = set_email("kim@example.com", json!({"email": "LEE@example.com"})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"]["message"],
        "lee@example.com belongs to another member"
    );
    assert_eq!(
        b.get("/members/").await.status,
        200,
        "a refused change ends nothing"
    );
    let (status, body) = set_email("nobody@example.com", json!({"email": "n@example.com"})).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = set_email("kim@example.com", json!({"email": "kim@localhost"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = set_email("kim@example.com", json!({"address": "k@example.com"})).await;
    assert_eq!(status, 400, "{body}");

    let (status, kim) = set_email("kim@example.com", json!({"email": " Kim@New.Example "})).await;
    assert_eq!(
        (status, &kim["email"]),
        (200, &json!("kim@new.example")),
        "{kim}"
    );
    assert_eq!(b.get("/members/").await.status, 302, "the session ended");
    let (status, _) = api
        .call("GET", "/api/v1/members/kim@example.com", None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(b.login("kim@example.com", PASSWORD).await.status, 401);
    assert_eq!(b.login("kim@new.example", PASSWORD).await.status, 303);
    assert_eq!(b.get("/members/").await.status, 200);
    let seen = origin.requests().pop().unwrap();
    assert_eq!(seen.header("x-member-email"), Some("kim@new.example"));
    assert_eq!(
        gw.mail_count("kim@new.example"),
        0,
        "no link: the administrator vouches"
    );

    // The CLI, in another process: the same rules, and the gateway follows
    // its change log.
    let (ok, out) = gw.cli(
        &["member", "set-email", "kim@new.example", "lee@example.com"],
        "",
    );
    assert!(!ok);
    assert!(
        out.contains("lee@example.com belongs to another member"),
        "{out}"
    );
    let (ok, out) = gw.cli(
        &["member", "set-email", "KIM@new.example", "Kim@CLI.example"],
        "",
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("kim@new.example is now kim@cli.example; their sessions have ended"),
        "{out}"
    );
    let mut ended = false;
    for _ in 0..60 {
        if b.get("/members/").await.status == 302 {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ended, "the session outlived the CLI's change");
    assert_eq!(b.login("kim@cli.example", PASSWORD).await.status, 303);
    assert_eq!(b.get("/members/").await.status, 200);
    let seen = origin.requests().pop().unwrap();
    assert_eq!(seen.header("x-member-email"), Some("kim@cli.example"));
    let (ok, out) = gw.cli(
        &["member", "set-email", "kim@cli.example", "KIM@cli.example"],
        "",
    );
    assert!(ok && out.contains("nothing changed"), "{out}");
    assert_eq!(b.get("/members/").await.status, 200);
}

/// The session cookie a response sets, if any: `Some("")` when it clears it.
fn session_set_by(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("__Host-membergate="))
        .map(|rest| rest.split(';').next().unwrap_or("").to_owned())
}

/// A form on a page made before a group grant is still the member's: the
/// log-out that renews the session on its way is accepted, and ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_out_that_renews_the_session_still_logs_out() {
    let (gw, _origin) = start(|s| s).await;
    let api = Api::new(&gw);
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/members",
            Some(json!({"email": "ida@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut b = Browser::new(&gw);
    assert_eq!(b.login("ida@example.com", PASSWORD).await.status, 303);
    let csrf = b.get("/_membergate/account").await.csrf();
    let path = "/api/v1/members/ida@example.com/groups/vip";
    assert_eq!(api.call("PUT", path, None).await.0, 200);
    let out = b.post("/_membergate/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303, "{}", out.body);
    assert_eq!(b.get("/vip/").await.status, 302);
    // The same when another request (an image, another tab) renewed the
    // session before the form was sent.
    assert_eq!(b.login("ida@example.com", PASSWORD).await.status, 303);
    let csrf = b.get("/_membergate/account").await.csrf();
    let path = "/api/v1/members/ida@example.com/groups/crew";
    assert_eq!(api.call("PUT", path, None).await.0, 200);
    let before = b.session_cookie();
    assert_eq!(b.get("/").await.status, 200);
    assert_ne!(b.session_cookie(), before, "the session was not renewed");
    // Only the old session's own tokens are taken: one made for another
    // browser, or none that matches, is still refused after a renewal.
    let stranger = Browser::new(&gw).get("/_membergate/login").await.csrf();
    for wrong in [stranger.as_str(), "AAAAAAAAAAAAAAAAAAAAAA"] {
        let refused = b.post("/_membergate/logout", &[("csrf", wrong)]).await;
        assert_eq!(refused.status, 403, "{wrong}: {}", refused.body);
    }
    assert_eq!(
        b.get("/vip/").await.status,
        200,
        "the refused forms logged out"
    );
    let out = b.post("/_membergate/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303, "{}", out.body);
    assert_eq!(b.get("/vip/").await.status, 302);
}

/// Attack catalogue D1 at a privilege change: a group grant moves the
/// member's session to a new id at its next request, and the old id is dead.
/// Requests racing with the old id: one renews it, the others are anonymous
/// and leave the browser's cookie alone (it may hold the new id by then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_a_group_grant_moves_the_session_to_a_new_id() {
    let (gw, origin) = start(|s| s).await;
    let api = Api::new(&gw);
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/members",
            Some(json!({"email": "hal@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut b = Browser::new(&gw);
    assert_eq!(b.login("hal@example.com", PASSWORD).await.status, 303);
    let first = b.session_cookie().unwrap();
    assert_eq!(b.get("/vip/").await.status, 403);
    let grant = |group: &'static str| {
        let api = &api;
        async move {
            let path = format!("/api/v1/members/hal@example.com/groups/{group}");
            let (status, body) = api.call("PUT", &path, None).await;
            assert_eq!(status, 200, "{body}");
        }
    };
    grant("vip").await;

    let client = gw.client();
    let with = |cookie: &str, path: &str| {
        client
            .get(gw.https_url(path))
            .header("cookie", format!("__Host-membergate={cookie}"))
            .send()
    };
    let racing: Vec<_> = (0..8).map(|_| with(&first, "/vip/")).collect();
    let answers = futures_util::future::join_all(racing).await;
    let mut renewed = Vec::new();
    for answer in answers {
        let answer = answer.unwrap();
        match (answer.status().as_u16(), session_set_by(&answer)) {
            (200, Some(id)) if !id.is_empty() && id != first => {
                assert_eq!(answer.headers()["cache-control"], "private, no-store");
                renewed.push(id);
            }
            (302, None) => {}
            other => panic!("a racing request got {other:?}"),
        }
    }
    assert_eq!(renewed.len(), 1, "exactly one request renews the session");
    let second = renewed.pop().unwrap();

    // The old id is anonymous now, and its answers still clear nothing, nor
    // reset the chat: the browser may hold the live new id by now.
    let replay = with(&first, "/members/").await.unwrap();
    assert_eq!(
        (replay.status().as_u16(), session_set_by(&replay)),
        (302, None)
    );
    assert!(replay.headers().get("set-cookie").is_none());
    // The new id has the group, and is not renewed again.
    let page = with(&second, "/vip/").await.unwrap();
    assert_eq!((page.status().as_u16(), session_set_by(&page)), (200, None));
    let seen = origin.requests().pop().unwrap();
    assert_eq!(seen.header("x-member-groups"), Some("vip"));
    assert_eq!(seen.header("x-member-email"), Some("hal@example.com"));

    // Renewed on a public page too, which is then kept out of shared caches;
    // joining a group the member is already in is no privilege gained.
    grant("staff").await;
    grant("staff").await;
    let public = with(&second, "/").await.unwrap();
    assert_eq!(public.status(), 200);
    assert_eq!(public.headers()["cache-control"], "private, no-store");
    let third = session_set_by(&public).unwrap();
    assert!(!third.is_empty() && third != second, "{third:?}");
    let page = with(&third, "/vip/").await.unwrap();
    assert_eq!((page.status().as_u16(), session_set_by(&page)), (200, None));
    assert_eq!(with(&second, "/vip/").await.unwrap().status(), 302);

    // The portal renews as well, and its pages log the member in under the new id.
    grant("editors").await;
    let account = with(&third, "/_membergate/account").await.unwrap();
    assert_eq!(account.status(), 200);
    let fourth = session_set_by(&account).unwrap();
    assert!(!fourth.is_empty() && fourth != third, "{fourth:?}");
    assert!(account.text().await.unwrap().contains("hal@example.com"));
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("membergate_sessions_renewed_total 3\n"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_the_key_and_refuses_bad_input_clearly() {
    let (gw, _origin) = start(|s| s).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    // No key, a wrong key, a key in the wrong scheme or with anything around
    // it: 401 with a challenge.
    for auth in [
        None,
        Some("Bearer wrong-key"),
        Some(&*format!("Basic {KEY}")),
        Some(&*format!("Bearer  {KEY}")),
        Some(&*format!("Bearer {KEY} x")),
    ] {
        let mut request = client.get(gw.admin_url("/api/v1/members"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{auth:?}");
        assert!(response.headers().contains_key("www-authenticate"));
    }

    // The scheme in any case (RFC 9110).
    let lower = client
        .get(gw.admin_url("/api/v1/members"))
        .header("authorization", format!("bearer {KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 200);

    let api = Api::new(&gw);
    let member = |body: &str| {
        let request = client
            .post(gw.admin_url("/api/v1/members"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body.to_owned());
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (
                status,
                body["error"]["message"].as_str().unwrap().to_owned(),
            )
        }
    };
    let cases: [(&str, u16, &str); 8] = [
        ("{\"email\": ", 400, "not the expected JSON"),
        (
            "{\"email\": \"a@example.com\", \"pasword\": \"x\"}",
            400,
            "unknown field",
        ),
        (
            "{\"email\": \"a@example.com\"}",
            400,
            "either a password or invite",
        ),
        (
            "{\"email\": \"a@example.com\", \"password\": \"correct horse battery\", \"invite\": true}",
            400,
            "either a password or invite",
        ),
        (
            "{\"email\": \"not-an-address\", \"password\": \"correct horse battery\"}",
            400,
            "not-an-address",
        ),
        (
            "{\"email\": \"a@example.com\", \"password\": \"short\"}",
            400,
            "at least 10",
        ),
        (
            "{\"email\": \"a@example.com\", \"password\": \"correct horse\\nbattery\"}",
            400,
            "line breaks",
        ),
        (
            "{\"email\": \"a@example.com\", \"password\": \"correct horse battery\", \"groups\": [\"no spaces\"]}",
            400,
            "not a group name",
        ),
    ];
    for (body, status, message) in cases {
        let (got, text) = member(body).await;
        assert_eq!(got, status, "{body}: {text}");
        assert!(text.contains(message), "{body}: {text}");
    }
    let (status, text) = member(&format!("{{\"email\": \"{}\"}}", "x".repeat(70_000))).await;
    assert_eq!(status, 413, "{text}");
    // Nothing of the above created a member.
    let (_, list) = api.call("GET", "/api/v1/members", None).await;
    assert_eq!(list["members"], json!([]));

    assert_eq!(api.call("GET", "/api/v1/nothing", None).await.0, 404);
    assert_eq!(api.call("DELETE", "/api/v1/members", None).await.0, 405);
    assert_eq!(
        api.call("GET", "/api/v1/members/nobody@example.com", None)
            .await
            .0,
        404
    );
    assert_eq!(
        api.call("POST", "/api/v1/members/nobody@example.com/promote", None)
            .await
            .0,
        404
    );
    assert_eq!(api.call("GET", "/api/v1/policy/check", None).await.0, 400);
    assert_eq!(api.call("GET", "/api/v1/members/a%2fb", None).await.0, 400);

    // The key never appears in the log.
    assert!(!gw.log().contains(KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_the_admin_api_is_off_and_short_keys_are_refused() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(Setup::new().route("/", &origin.url())).await;
    let response = reqwest::Client::new()
        .get(gw.admin_url("/api/v1/members"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("MEMBERGATE_ADMIN_KEY")
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.key"), "too-short").unwrap();
    let config = dir.path().join("membergate.toml");
    let setup = Setup::new()
        .route("/", &origin.url())
        .admin("api_key_file = \"admin.key\"");
    std::fs::write(&config, setup.render(dir.path())).unwrap();
    let out = std::process::Command::new(support::binary())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("at least 32 characters"), "{stderr}");
}

/// A key from the environment is read as a key file is: a trailing newline
/// (`KEY=$(cat file)` keeps none, `echo` into an env file does) is no part of
/// it, and does not count towards its length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_key_from_the_environment_is_trimmed() {
    let origin = EchoOrigin::start().await;
    let gw = Gateway::start(
        Setup::new()
            .route("/", &origin.url())
            .env("MEMBERGATE_ADMIN_KEY", &format!("{KEY}\n")),
    )
    .await;
    assert_eq!(
        Api::new(&gw).call("GET", "/api/v1/members", None).await.0,
        200
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("membergate.toml");
    std::fs::write(
        &config,
        Setup::new().route("/", &origin.url()).render(dir.path()),
    )
    .unwrap();
    let out = std::process::Command::new(support::binary())
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .env("MEMBERGATE_ADMIN_KEY", format!("{}\n", &KEY[..31]))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("at least 32 characters"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_logins_registrations_and_session_cache_use() {
    let (gw, _origin) = start(|s| s.members("require_verification = false")).await;
    let mut b = Browser::new(&gw);
    assert_eq!(
        b.register("ada@example.com", PASSWORD, "Ada", "L")
            .await
            .status,
        200
    );
    assert_eq!(
        b.login("ada@example.com", "wrong password!").await.status,
        401
    );
    assert_eq!(b.login("ada@example.com", PASSWORD).await.status, 303);
    for _ in 0..3 {
        assert_eq!(b.get("/members/").await.status, 200);
    }
    let text = gw.metrics().await;
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(value("membergate_logins_total{result=\"ok\"}"), 1.0);
    assert_eq!(value("membergate_logins_total{result=\"failed\"}"), 1.0);
    assert_eq!(
        value("membergate_registrations_total{result=\"created\"}"),
        1.0
    );
    // The session was cached at login: every members page was a hit.
    assert!(value("membergate_session_cache_hits_total") >= 3.0);
    assert_eq!(value("membergate_session_cache_entries"), 1.0);

    let ready = reqwest::get(gw.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_goes_out_over_smtp_and_temporary_refusals_are_retried() {
    // The SMTP server refuses the first recipient with a temporary error.
    let sink = SmtpSink::start_refusing(1).await;
    let (gw, _origin) = start(|s| {
        s.members("require_verification = true\npublic_url = \"https://members.example.com\"")
            .mail(&format!(
                "from = \"Lighthouse Club <club@example.com>\"\nsmtp_url = \"{}\"",
                sink.url()
            ))
    })
    .await;
    let mut b = Browser::new(&gw);
    let page = b.register("zoe@example.com", PASSWORD, "Zoë", "Q").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let message = sink
        .message_to("zoe@example.com", Duration::from_secs(20))
        .await;
    assert!(message.from.contains("club@example.com"), "{message:?}");
    assert!(
        message
            .data
            .contains("From: \"Lighthouse Club\" <club@example.com>")
            || message
                .data
                .contains("From: Lighthouse Club <club@example.com>"),
        "{}",
        message.data
    );
    // Links start with the configured public URL, never the request's Host.
    let unfolded = message.data.replace("=\n", "");
    assert!(
        unfolded.contains("https://members.example.com/_membergate/verify?token="),
        "{}",
        message.data
    );
    assert!(!gw.dir.path().join("data/outbox").exists());
    gw.wait_for_log("retrying").await;
}

/// The admin CLI beside a gateway that is writing: its writes wait their
/// turn (the store's busy timeout), whatever they read first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_waits_for_the_gateways_writes() {
    use sqlx::Connection;
    let (gw, _origin) = start(|s| s).await;
    let (ok, out) = gw.cli(
        &["member", "add", "bob@example.com"],
        "a long enough password\n",
    );
    assert!(ok, "{out}");
    let path = gw.dir.path().join("data/membergate.db");
    let (locked, lock_taken) = tokio::sync::oneshot::channel();
    let holder = tokio::spawn(async move {
        let mut db = support::store_connection(&path).await;
        let mut held = db.begin_with("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query("UPDATE members SET last_login_at = 1")
            .execute(&mut *held)
            .await
            .unwrap();
        locked.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        held.commit().await.unwrap();
    });
    lock_taken.await.unwrap();
    let (ok, out) =
        tokio::task::block_in_place(|| gw.cli(&["group", "add", "bob@example.com", "vip"], ""));
    assert!(ok, "{out}");
    holder.await.unwrap();
}

/// The admin CLI's mail goes out before the command ends (its process, and
/// any delivery still in the background, end right after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_from_the_cli_is_delivered_over_smtp() {
    let sink = SmtpSink::start().await;
    let (gw, _origin) = start(|s| {
        s.mail(&format!(
            "from = \"club@example.com\"\nsmtp_url = \"{}\"",
            sink.url()
        ))
    })
    .await;
    let (ok, out) = gw.cli(
        &[
            "member",
            "add",
            "mia@example.com",
            "--invite",
            "--first-name",
            "Mia",
        ],
        "",
    );
    assert!(ok, "{out}");
    let message = sink
        .message_to("mia@example.com", Duration::from_secs(20))
        .await;
    assert!(message.data.contains("/_membergate/"), "{}", message.data);
}

/// Through the API as through the CLI: setting an invited member's password
/// makes them active; a second invitation of a member who has not accepted
/// one sends a new link (200, names and groups given apply), and anyone
/// else is a conflict; a member who has not confirmed their address gets
/// no password from an administrator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_sets_invited_members_passwords_and_invites_again() {
    let (gw, _origin) = start(|s| s).await;
    let api = Api::new(&gw);
    let invite = |extra: Value| {
        let mut body = json!({"email": "ivy@example.com", "invite": true});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        api.call("POST", "/api/v1/members", Some(body))
    };
    let (status, body) = invite(json!({})).await;
    assert_eq!(
        (status, &body["status"]),
        (201, &json!("pending")),
        "{body}"
    );
    gw.mail_to("ivy@example.com").await;
    let (status, body) = invite(json!({"first_name": "Ivy", "groups": ["vip"]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["status"], &body["first_name"], &body["groups"]),
        (&json!("pending"), &json!("Ivy"), &json!(["vip"]))
    );
    let second = Gateway::link_in(&gw.next_mail_to("ivy@example.com", 1).await);
    assert!(second.starts_with("/_membergate/reset?token="), "{second}");

    let (status, body) = api
        .call(
            "PUT",
            "/api/v1/members/ivy@example.com/password",
            Some(json!({"password": PASSWORD})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["status"], &body["has_password"]),
        (&json!("active"), &json!(true))
    );
    let mut b = Browser::new(&gw);
    assert_eq!(b.login("ivy@example.com", PASSWORD).await.status, 303);
    assert_eq!(b.get("/vip/").await.status, 200);
    // Active now: not invited again.
    let (status, body) = invite(json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("active"),
        "{body}"
    );

    // Registered, not confirmed (verification is on by default).
    let mut pat = Browser::new(&gw);
    pat.register("pat@example.com", PASSWORD, "", "").await;
    // Stored after the answer: the mail says it is.
    gw.mail_to("pat@example.com").await;
    let (status, body) = api
        .call(
            "PUT",
            "/api/v1/members/pat@example.com/password",
            Some(json!({"password": "another long password"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has not confirmed their email address"),
        "{body}"
    );
    // Nor is it invited: a registration is not an invitation (it has a
    // password, and is swept a week on if never confirmed).
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/members",
            Some(json!({"email": "pat@example.com", "invite": true, "groups": ["vip"]})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pending"),
        "{body}"
    );
}

/// An invitation the mail server did not take is reported, with what to do:
/// the CLI exits non-zero and says how to invite again or set a password;
/// the API answers 502 with the reason and the stored, pending member.
/// Before, the CLI printed "invited" with nothing on stderr (its mail
/// errors went to a log it does not have) and the API answered 201. Invited
/// again once the mail server works, the member gets their link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undelivered_invitation_is_reported_with_what_to_do() {
    let rejecting = SmtpSink::start_rejecting().await;
    let (gw, _origin) = start(|s| {
        s.mail(&format!(
            "from = \"club@example.com\"\nsmtp_url = \"{}\"",
            rejecting.url()
        ))
    })
    .await;
    let (ok, out) = tokio::task::block_in_place(|| {
        gw.cli(&["member", "add", "mia@example.com", "--invite"], "")
    });
    assert!(!ok, "{out}");
    for needed in [
        "the invitation to mia@example.com was not delivered",
        "550",
        "membergate member add mia@example.com --invite",
        "membergate member set-password mia@example.com",
    ] {
        assert!(out.contains(needed), "{needed:?} missing from {out}");
    }
    let (_, shown) =
        tokio::task::block_in_place(|| gw.cli(&["member", "show", "mia@example.com"], ""));
    assert!(shown.contains("\tpending\t"), "{shown}");

    let api = Api::new(&gw);
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/members",
            Some(json!({"email": "nia@example.com", "invite": true, "groups": ["vip"]})),
        )
        .await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not delivered"),
        "{body}"
    );
    let member = &body["member"];
    assert_eq!(
        (&member["email"], &member["status"], &member["groups"]),
        (
            &json!("nia@example.com"),
            &json!("pending"),
            &json!(["vip"])
        )
    );

    // A mail server that cannot be reached: retried, then reported.
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    let edited = |url: &str| {
        let path = gw.dir.path().join("edited.toml");
        std::fs::write(&path, text.replace(&rejecting.url(), url)).unwrap();
        path
    };
    let cli = |config: &std::path::Path| {
        let args = ["member", "add", "mia@example.com", "--invite"];
        tokio::task::block_in_place(|| support::run_cli(config, gw.dir.path(), &args, "", &[]))
    };
    let out = cli(&edited("smtp://127.0.0.1:1"));
    assert!(!out.ok, "{}", out.stdout);
    assert!(out.stderr.contains("not delivered"), "{}", out.stderr);

    let working = SmtpSink::start().await;
    let out = cli(&edited(&working.url()));
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("invited mia@example.com again"),
        "{}",
        out.stdout
    );
    let message = working
        .message_to("mia@example.com", Duration::from_secs(20))
        .await;
    assert!(
        message.data.contains("/_membergate/reset"),
        "{}",
        message.data
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teaser_rules_show_anonymous_visitors_a_teaser_and_members_the_page() {
    let teaser = "<h1>Premium</h1><p>{{ path }} is for members.</p>\
                  <a href=\"{{ login_url }}\">Log in</a> <a href=\"{{ register_url }}\">Join</a>";
    let (gw, origin) = start(|s| {
        s.rule_with(
            "/kb/premium-*.html",
            "members",
            "teaser = \"teasers/premium.html\"",
        )
        .file("teasers/premium.html", teaser)
    })
    .await;
    let mut b = Browser::new(&gw);
    let mut page = b.get("/kb/premium-tides.html?ref=<x>").await;
    assert_eq!(page.status, 200);
    // minijinja escapes `/` in HTML.
    page.body = page.body.replace("&#x2f;", "/");
    assert!(page.body.contains("<h1>Premium</h1>"), "{}", page.body);
    assert!(
        page.body.contains(
            "href=\"/_membergate/login?return_to=%2Fkb%2Fpremium-tides.html%3Fref%3D%253Cx%253E\""
        ),
        "{}",
        page.body
    );
    assert!(page.body.contains("/_membergate/register?return_to="));
    assert_eq!(page.headers["cache-control"], "no-store");
    assert!(!page.body.contains("<x>"));
    assert!(origin.requests().is_empty());
    // API clients still get 401.
    let json = b
        .get_with("/kb/premium-tides.html", &[("accept", "application/json")])
        .await;
    assert_eq!(json.status, 401);
    // `policy check` says a visitor gets the teaser meanwhile.
    let url = gw.https_url("/kb/premium-tides.html");
    let (ok, out) = gw.cli(&["policy", "check", "--url", &url], "");
    assert!(ok, "{out}");
    assert!(
        out.contains("teaser page is shown meanwhile (200)"),
        "{out}"
    );
    // The same page with a trailing slash, in any case, is covered too.
    for spelling in ["/kb/premium-tides.html/", "/KB/Premium-Tides.HTML/"] {
        assert_eq!(b.get(spelling).await.status, 200, "{spelling}");
        assert!(
            origin.requests().is_empty(),
            "{spelling} reached the origin"
        );
    }
    // A glob `*` stays within its segment: this path is public.
    assert_eq!(b.get("/kb/premium-x/y.html").await.status, 200);
    assert_eq!(origin.requests().len(), 1);

    let mut m = Browser::new(&gw);
    let api = Api::new(&gw);
    api.call(
        "POST",
        "/api/v1/members",
        Some(json!({"email": "ann@example.com", "password": PASSWORD})),
    )
    .await;
    assert_eq!(m.login("ann@example.com", PASSWORD).await.status, 303);
    let page = m.get("/KB/Premium-Tides.html").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        origin.requests().pop().unwrap().header("x-member-email"),
        Some("ann@example.com")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_can_keep_the_origins_caching_headers() {
    let (gw, _origin) = start(|s| s.rule_with("/docs", "members", "private = false")).await;
    Api::new(&gw)
        .call(
            "POST",
            "/api/v1/members",
            Some(json!({"email": "ann@example.com", "password": PASSWORD})),
        )
        .await;
    let mut b = Browser::new(&gw);
    assert_eq!(b.login("ann@example.com", PASSWORD).await.status, 303);
    let kept = b.get("/docs/cacheable").await;
    assert_eq!(kept.status, 200);
    assert_eq!(kept.headers["cache-control"], "public, max-age=60");
    assert!(!kept.headers.contains_key("x-robots-tag"));
    // The response was still chosen by the session cookie.
    assert_eq!(vary(&kept), ["Cookie"]);
    let private = b.get("/members/cacheable").await;
    assert_eq!(private.headers["cache-control"], "private, no-store");
    assert_eq!(private.headers["x-robots-tag"], "noindex");
    assert_eq!(vary(&private), ["Cookie"]);
    let kept = b.get("/docs/shared-cacheable").await;
    assert_eq!(kept.headers["cdn-cache-control"], "max-age=600");
}

fn vary(page: &support::browser::Page) -> Vec<&str> {
    page.headers
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

/// A CDN obeys `CDN-Cache-Control` and `Surrogate-Control` before
/// `Cache-Control`: a page that names the member must not carry them, or the
/// CDN hands one member's page to the next visitor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_pages_stay_out_of_shared_caches() {
    let (gw, origin) = start(|s| s).await;
    Api::new(&gw)
        .call(
            "POST",
            "/api/v1/members",
            Some(json!({"email": "ann@example.com", "password": PASSWORD})),
        )
        .await;
    let targeted = [
        "cdn-cache-control",
        "cloudflare-cdn-cache-control",
        "surrogate-control",
        "edge-control",
    ];
    // Anonymous: the public page passes as the origin sent it.
    let mut b = Browser::new(&gw);
    let anonymous = b.get("/blog/shared-cacheable").await;
    assert_eq!(
        anonymous.headers["cache-control"],
        "public, max-age=60, s-maxage=600"
    );
    for name in targeted {
        assert!(anonymous.headers.contains_key(name), "{name} dropped");
    }
    assert!(vary(&anonymous).is_empty());

    assert_eq!(b.login("ann@example.com", PASSWORD).await.status, 303);
    // A public page the origin made knowing who asked: the browser may keep
    // it, no shared cache may.
    let public = b.get("/blog/shared-cacheable").await;
    assert_eq!(
        origin.requests().pop().unwrap().header("x-member-email"),
        Some("ann@example.com")
    );
    assert_eq!(public.headers["cache-control"], "private, max-age=60");
    assert_eq!(vary(&public), ["Cookie"]);
    // A members-only page: no copy anywhere.
    let members = b.get("/members/shared-cacheable").await;
    assert_eq!(members.headers["cache-control"], "private, no-store");
    assert_eq!(vary(&members), ["Cookie"]);
    for page in [&public, &members] {
        for name in targeted {
            assert!(!page.headers.contains_key(name), "{name} kept");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_explains_bad_rules_and_mail_settings() {
    let setup = Setup::new()
        .route("/", "http://127.0.0.1:9")
        .rule_with("/kb/[premium", "members", "")
        .rule_with("/kb/*/x", "members", "teaser = \"missing.html\"")
        .rule_with("/open", "public", "teaser = \"missing.html\"")
        .rule_with("/a/../*.html", "members", "")
        .mail("smtp_url = \"http://mail.example.com\"\noutbox_dir = \"x\"\nfrom = \"nobody\"");
    let (code, text) = support::check_config(&setup);
    assert_eq!(code, Some(2), "{text}");
    for expected in [
        "sites[0].rules[0].path: not a valid glob",
        "sites[0].rules[1].teaser: cannot read missing.html",
        "sites[0].rules[2].teaser: a teaser replaces the login redirect",
        "sites[0].rules[3].path: expected a path like",
        "mail: set either smtp_url or outbox_dir, not both",
        "mail.from: expected an address",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("v", text)]).unwrap()[2..].to_owned()
}
