//! The token API on the public listener, for sites whose own backend handles
//! login. It has HubSpot's shape, so backend code written for HubSpot works by
//! changing the base URL:
//!
//! ```text
//! POST /_membergate/api/conversations/v3/visitor-identification/tokens/create
//!      Authorization: Bearer <API key with scope create>
//!      {"email": "...", "firstName": "...", "lastName": "..."}  ->  {"token": "..."}
//! POST /_membergate/api/visitor-identification/tokens/verify
//!      Authorization: Bearer <API key with scope verify>
//!      {"token": "..."}  ->  {"email", "firstName", "lastName", "aud", "iat", "exp"} or 401
//! ```
//!
//! Keys are configured as SHA-256 digests and compared in constant time; a
//! key never appears in a log. Failed authentications are limited per client
//! IP, calls per key; bodies are capped; every malformed input gets a 4xx
//! JSON error that says what is wrong.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::token::{Identity, Invalid};
use crate::config::ApiKey;
use crate::gateway::{Gateway, Runtime};
use crate::members::{clean_name, email, now};
use crate::proxy::body::GatewayBody;

/// The API's path prefix.
pub const PREFIX: &str = "/_membergate/api/";
const CREATE: &str = "/_membergate/api/conversations/v3/visitor-identification/tokens/create";
const VERIFY: &str = "/_membergate/api/visitor-identification/tokens/verify";
const MAX_BODY_BYTES: usize = 16 * 1024;
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed authentications allowed per client IP per minute.
const FAILURES_PER_IP: isize = 20;
/// The shortest API key accepted: a shorter one could be guessed.
const MIN_KEY_LENGTH: usize = 32;
/// Calls allowed per API key per minute.
const CALLS_PER_KEY: isize = 6000;

/// Whether a normalised path belongs to the token API.
pub fn is_api_path(path: &str) -> bool {
    // Compared as bytes: the decoded path may hold a multi-byte character
    // across the prefix's length, where slicing the `str` would panic.
    path.as_bytes()
        .get(..PREFIX.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(PREFIX.as_bytes()))
}

enum Scope {
    Create,
    Verify,
}

pub async fn handle(
    gateway: &Gateway,
    runtime: &Runtime,
    site: &str,
    client: IpAddr,
    path: &str,
    parts: http::request::Parts,
    body: Incoming,
) -> Response<GatewayBody> {
    let scope = match path {
        CREATE => Scope::Create,
        VERIFY => Scope::Verify,
        _ => return error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint"),
    };
    if parts.method != Method::POST {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "VALIDATION_ERROR",
            "use POST",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    // The key is checked first, so that a valid one is never held back by
    // other clients' failures at its address (a NAT, a serverless egress).
    // The failure budget then only cuts a guesser's noise: keys are at
    // least MIN_KEY_LENGTH characters, too many to guess.
    let rate = &gateway.identifier.api_rate;
    let settings = &runtime.config.identification;
    let Some(key) = authenticate(&settings.api_keys, &parts.headers) else {
        let counted_as = crate::limits::client_key(client);
        if rate.observe(&("api-fail", counted_as), 1) > FAILURES_PER_IP {
            return too_many();
        }
        let message = match crate::hygiene::headers::bearer_credential(&parts.headers) {
            Some(given) if given.len() < MIN_KEY_LENGTH => {
                "the API key is not valid: keys have at least 32 characters"
            }
            _ if parts.headers.contains_key(header::AUTHORIZATION) => "the API key is not valid",
            _ => "send Authorization: Bearer <API key>",
        };
        let mut response = error(StatusCode::UNAUTHORIZED, "INVALID_AUTHENTICATION", message);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"membergate\""),
        );
        return response;
    };
    let allowed = match scope {
        Scope::Create => key.create,
        Scope::Verify => key.verify,
    };
    if !allowed {
        return error(
            StatusCode::FORBIDDEN,
            "MISSING_SCOPES",
            "this API key does not have the scope for this endpoint",
        );
    }
    // A key bound to sites mints and checks only for them: the Host picks
    // the site, and a client chooses the Host.
    if !key.sites.is_empty() && !key.sites.iter().any(|s| s == site) {
        return error(
            StatusCode::FORBIDDEN,
            "MISSING_SCOPES",
            "this API key is not for this site",
        );
    }
    if rate.observe(&("api-key", key.name.as_str()), 1) > CALLS_PER_KEY {
        return too_many();
    }
    let bytes = match read_body(body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    let keys = gateway.identifier.keys(runtime.identity_keys.as_ref());
    match scope {
        Scope::Create => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Create {
                email: String,
                // `null` is a missing name, as an absent field is: backends
                // ported from HubSpot pass a database NULL through.
                #[serde(rename = "firstName", default)]
                first_name: Option<String>,
                #[serde(rename = "lastName", default)]
                last_name: Option<String>,
            }
            let request: Create = match serde_json::from_slice(&bytes) {
                Ok(request) => request,
                Err(e) => return invalid_json(&e),
            };
            let email = match email::canonical(&request.email) {
                Ok(email) => email,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "VALIDATION_ERROR",
                        &format!("email: {e}"),
                    );
                }
            };
            let (first_name, last_name) = match (
                clean_name(request.first_name.as_deref().unwrap_or_default()),
                clean_name(request.last_name.as_deref().unwrap_or_default()),
            ) {
                (Ok(f), Ok(l)) => (f, l),
                (Err(e), _) | (_, Err(e)) => {
                    return error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", e);
                }
            };
            let identity = Identity {
                email,
                first_name,
                last_name,
            };
            let lifetime = settings.token_lifetime.as_secs() as i64;
            let token = keys.mint(&identity, site, now(), lifetime);
            tracing::info!(api_key = %key.name, "identification token minted through the API");
            json_response(StatusCode::OK, &json!({ "token": token }))
        }
        Scope::Verify => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Verify {
                token: String,
            }
            let request: Verify = match serde_json::from_slice(&bytes) {
                Ok(request) => request,
                Err(e) => return invalid_json(&e),
            };
            match keys.verify(&request.token, Some(site), now()) {
                Ok(claims) => json_response(StatusCode::OK, &json!(claims)),
                Err(invalid) => {
                    let category = match invalid {
                        Invalid::Malformed => "VALIDATION_ERROR",
                        _ => "INVALID_TOKEN",
                    };
                    error(StatusCode::UNAUTHORIZED, category, &invalid.to_string())
                }
            }
        }
    }
}

/// The configured key whose digest matches the bearer token, compared in
/// constant time against every key.
fn authenticate<'k>(keys: &'k [ApiKey], headers: &http::HeaderMap) -> Option<&'k ApiKey> {
    let given = crate::hygiene::headers::bearer_credential(headers)
        .filter(|given| given.len() >= MIN_KEY_LENGTH)?;
    let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let mut found = None;
    for key in keys {
        if bool::from(key.sha256.ct_eq(&digest)) {
            found = Some(key);
        }
    }
    found
}

async fn read_body(body: Incoming) -> Result<Bytes, Response<GatewayBody>> {
    let collected =
        tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect())
            .await
            .map_err(|_| {
                error(
                    StatusCode::REQUEST_TIMEOUT,
                    "VALIDATION_ERROR",
                    "the request body was too slow",
                )
            })?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "VALIDATION_ERROR",
            &format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        )),
        Err(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "the request body could not be read",
        )),
    }
}

fn invalid_json(e: &serde_json::Error) -> Response<GatewayBody> {
    error(
        StatusCode::BAD_REQUEST,
        "VALIDATION_ERROR",
        &format!("the body is not the expected JSON: {e}"),
    )
}

fn too_many() -> Response<GatewayBody> {
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITS",
        "too many requests; try again in a minute",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    response
}

/// An error in HubSpot's shape: `{"status": "error", "message", "category"}`.
fn error(status: StatusCode, category: &str, message: &str) -> Response<GatewayBody> {
    json_response(
        status,
        &json!({ "status": "error", "message": message, "category": category }),
    )
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<GatewayBody> {
    crate::proxy::respond::own(status, "application/json", value.to_string())
}
