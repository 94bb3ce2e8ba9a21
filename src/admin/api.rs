//! The admin JSON API on the admin listener, for the operations the CLI offers
//! (see `operations`). Every request carries `Authorization: Bearer <key>`;
//! the key comes from `MEMBERGATE_ADMIN_KEY` or `admin.api_key_file`, only its
//! SHA-256 is kept, and it is compared in constant time. Without a key the API
//! is off.
//!
//! ```text
//! GET    /api/v1/members                        list
//! POST   /api/v1/members                        {"email", "password" | "invite": true, ...}
//!                                               (again for an invited member: a new invitation, 200)
//! GET    /api/v1/members/{email}                one member
//! DELETE /api/v1/members/{email}                delete them and all that is theirs
//! POST   /api/v1/members/{email}/enable|disable|approve
//! PUT    /api/v1/members/{email}/password       {"password"}
//! PUT    /api/v1/members/{email}/email          {"email"}: the new address, no link
//!                                               (409 when another member has it)
//! PUT    /api/v1/members/{email}/groups/{group} join
//! DELETE /api/v1/members/{email}/groups/{group} leave
//! DELETE /api/v1/members/{email}/sessions       log out everywhere
//! GET    /api/v1/groups                         names and member counts
//! GET    /api/v1/policy/check?url=URL[&member=EMAIL]
//! ```
//!
//! Changes take effect on the member's next request: their cached sessions
//! are dropped at once in this process (other replicas follow the change log).
//!
//! An invitation is delivered before the answer (SMTP retries included). If
//! it was not, the answer is 502 with the reason in `error.message` and the
//! stored member in `member`: they are pending, and a second POST invites
//! them again. Setting the password of an invited member makes them active.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::operations::{AddMember, Added, Admin, MemberView, Refused, StatusChange};
use crate::config::Config;
use crate::gateway::Gateway;
use crate::hygiene::path;
use crate::members::{Deleted, Member};

/// The environment variable that holds the API key (overrides the file).
pub const KEY_ENV: &str = "MEMBERGATE_ADMIN_KEY";
/// The path prefix of the API on the admin listener.
pub const PREFIX: &str = "/api/v1/";
const MAX_BODY_BYTES: usize = 64 * 1024;
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
const MIN_KEY_LENGTH: usize = 32;

/// The SHA-256 of the configured API key, if there is one.
pub fn load_key(file: Option<&Path>) -> Result<Option<[u8; 32]>, String> {
    // Trimmed, wherever it comes from: a newline from `echo` or a file's
    // last line is no part of the key a client can send.
    let key = match std::env::var(KEY_ENV) {
        Ok(key) => key.trim().to_owned(),
        Err(_) => match file {
            Some(file) => std::fs::read_to_string(file)
                .map_err(|e| format!("admin.api_key_file: cannot read {}: {e}", file.display()))?
                .trim()
                .to_owned(),
            None => return Ok(None),
        },
    };
    if key.len() < MIN_KEY_LENGTH {
        return Err(format!(
            "the admin API key must be at least {MIN_KEY_LENGTH} characters"
        ));
    }
    Ok(Some(Sha256::digest(key.as_bytes()).into()))
}

pub async fn handle(gateway: &Gateway, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let runtime = gateway.runtime();
    let Some(key) = runtime.admin_api_key else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("the admin API is off: set {KEY_ENV} or admin.api_key_file"),
        );
    };
    if !authorised(request.headers(), &key) {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <admin API key>",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"membergate admin\""),
        );
        return response;
    }
    let membership = &gateway.membership;
    let admin = Admin {
        store: &membership.store,
        public_url: &runtime.config.members.public_url,
        site_name: runtime.config.public_site_name(),
        mailer: &membership.mailer,
    };
    let (parts, body) = request.into_parts();
    let result = route(&admin, &runtime.config, &parts, body).await;
    // Whatever changed a member ends their cached sessions now, not in a second.
    if let Ok(
        Answer::Changed(member)
        | Answer::Created(member)
        | Answer::Ended(member, _)
        | Answer::Deleted(member, _),
    ) = &result
    {
        membership.sessions.forget_member(member.id);
    }
    // A deleted member's identification tokens hold their name and address.
    if let Ok(Answer::Deleted(member, _)) = &result {
        gateway.identifier.forget_member(member.id);
    }
    match result {
        Ok(answer) => answer.into_response(),
        Err(Failure::Refused(Refused::Store(e))) => {
            tracing::error!(error = %e, "admin API: member store failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "the member store failed")
        }
        Err(Failure::Refused(refused)) => {
            let status = match refused {
                Refused::Invalid(_) => StatusCode::BAD_REQUEST,
                Refused::NotFound(_) => StatusCode::NOT_FOUND,
                Refused::Conflict(_) => StatusCode::CONFLICT,
                Refused::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
                Refused::NotDelivered { .. } => StatusCode::BAD_GATEWAY,
                Refused::Busy => StatusCode::SERVICE_UNAVAILABLE,
            };
            let mut body = error_body(status, &refused.to_string());
            // Stored all the same: the client sees what it has now.
            if let Refused::NotDelivered { member, .. } = &refused {
                body["member"] = json!(MemberView::from(member.as_ref()));
            }
            let mut response = json_response(status, &body);
            if matches!(refused, Refused::Busy) {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            response
        }
        Err(Failure::Http(status, message)) => error(status, &message),
    }
}

fn authorised(headers: &http::HeaderMap, key: &[u8; 32]) -> bool {
    let Some(given) = crate::hygiene::headers::bearer_credential(headers) else {
        return false;
    };
    let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    given.ct_eq(key).into()
}

enum Answer {
    Created(Member),
    Changed(Member),
    One(Member),
    Many(Vec<Member>),
    Groups(Vec<(String, i64)>),
    Ended(Member, u64),
    Deleted(Member, Deleted),
    Json(serde_json::Value),
}

impl Answer {
    fn into_response(self) -> Response<Full<Bytes>> {
        let (status, value) = match self {
            Answer::Created(m) => (StatusCode::CREATED, json!(MemberView::from(&m))),
            Answer::Changed(m) | Answer::One(m) => (StatusCode::OK, json!(MemberView::from(&m))),
            Answer::Many(members) => {
                let views: Vec<MemberView> = members.iter().map(MemberView::from).collect();
                (StatusCode::OK, json!({ "members": views }))
            }
            Answer::Groups(groups) => {
                let groups: Vec<_> = groups
                    .into_iter()
                    .map(|(name, members)| json!({ "name": name, "members": members }))
                    .collect();
                (StatusCode::OK, json!({ "groups": groups }))
            }
            Answer::Ended(m, ended) => (
                StatusCode::OK,
                json!({ "member": MemberView::from(&m), "sessions_ended": ended }),
            ),
            Answer::Deleted(m, deleted) => (
                StatusCode::OK,
                json!({
                    "deleted": MemberView::from(&m),
                    "sessions_ended": deleted.sessions,
                    "links_voided": deleted.links,
                }),
            ),
            Answer::Json(value) => (StatusCode::OK, value),
        };
        json_response(status, &value)
    }
}

enum Failure {
    Refused(Refused),
    Http(StatusCode, String),
}

impl From<Refused> for Failure {
    fn from(refused: Refused) -> Failure {
        Failure::Refused(refused)
    }
}

fn bad_request(message: impl Into<String>) -> Failure {
    Failure::Http(StatusCode::BAD_REQUEST, message.into())
}

async fn route(
    admin: &Admin<'_>,
    config: &Config,
    parts: &http::request::Parts,
    body: Incoming,
) -> Result<Answer, Failure> {
    let raw = parts.uri.path();
    let normal = path::normalise(raw).map_err(|e| bad_request(format!("bad path: {e}")))?;
    let rest = normal
        .decoded
        .strip_prefix(PREFIX)
        .ok_or_else(|| Failure::Http(StatusCode::NOT_FOUND, "no such endpoint".into()))?;
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let method = &parts.method;
    match (method, segments.as_slice()) {
        (&Method::GET, ["members"]) => Ok(Answer::Many(admin.list_members().await?)),
        (&Method::POST, ["members"]) => {
            let new: AddMember = json_body(body).await?;
            Ok(match admin.add_member(new).await? {
                Added::New(member) => Answer::Created(member),
                Added::InvitedAgain(member) => Answer::Changed(member),
            })
        }
        (&Method::GET, ["members", email]) => Ok(Answer::One(admin.member(email).await?)),
        (&Method::DELETE, ["members", email]) => {
            let (member, deleted) = admin.delete_member(email).await?;
            Ok(Answer::Deleted(member, deleted))
        }
        (&Method::POST, ["members", email, action]) => {
            let change = match *action {
                "enable" => StatusChange::Enable,
                "approve" => StatusChange::Approve,
                "disable" => StatusChange::Disable,
                _ => return Err(not_found()),
            };
            Ok(Answer::Changed(admin.change_status(email, change).await?))
        }
        (&Method::PUT, ["members", email, "password"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct NewPassword {
                password: String,
            }
            let body: NewPassword = json_body(body).await?;
            Ok(Answer::Changed(
                admin.set_password(email, &body.password).await?,
            ))
        }
        (&Method::PUT, ["members", email, "email"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct NewEmail {
                email: String,
            }
            let body: NewEmail = json_body(body).await?;
            Ok(Answer::Changed(admin.set_email(email, &body.email).await?))
        }
        (&Method::PUT, ["members", email, "groups", group]) => {
            Ok(Answer::Changed(admin.join_group(email, group).await?))
        }
        (&Method::DELETE, ["members", email, "groups", group]) => {
            Ok(Answer::Changed(admin.leave_group(email, group).await?))
        }
        (&Method::DELETE, ["members", email, "sessions"]) => {
            let (member, ended) = admin.revoke_sessions(email).await?;
            Ok(Answer::Ended(member, ended))
        }
        (&Method::GET, ["groups"]) => Ok(Answer::Groups(admin.list_groups().await?)),
        (&Method::GET, ["policy", "check"]) => {
            let query: HashMap<String, String> =
                serde_urlencoded::from_str(parts.uri.query().unwrap_or(""))
                    .map_err(|e| bad_request(format!("bad query: {e}")))?;
            let url = query
                .get("url")
                .ok_or_else(|| bad_request("the query needs url=<address to check>"))?;
            let report = admin
                .policy_check(config, url, query.get("member").map(String::as_str))
                .await?;
            Ok(Answer::Json(json!(report)))
        }
        (_, ["members"] | ["groups"] | ["policy", "check"] | ["members", _, ..]) => {
            Err(Failure::Http(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed here"),
            ))
        }
        _ => Err(not_found()),
    }
}

fn not_found() -> Failure {
    Failure::Http(StatusCode::NOT_FOUND, "no such endpoint".into())
}

/// Reads a JSON body of at most 64 KiB within 10 s.
async fn json_body<T: DeserializeOwned>(body: Incoming) -> Result<T, Failure> {
    let collected =
        tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect())
            .await
            .map_err(|_| {
                Failure::Http(StatusCode::REQUEST_TIMEOUT, "the body was too slow".into())
            })?
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    Failure::Http(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the body is larger than {MAX_BODY_BYTES} bytes"),
                    )
                } else {
                    bad_request("the body could not be read")
                }
            })?;
    serde_json::from_slice(&collected.to_bytes())
        .map_err(|e| bad_request(format!("the body is not the expected JSON: {e}")))
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &error_body(status, message))
}

fn error_body(status: StatusCode, message: &str) -> serde_json::Value {
    json!({ "error": { "status": status.as_u16(), "message": message } })
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
