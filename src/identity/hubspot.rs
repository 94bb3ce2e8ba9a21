//! HubSpot's Visitor Identification API: one POST per token, server side.
//!
//! `POST {api_base}/conversations/v3/visitor-identification/tokens/create`
//! with a private-app bearer token and `{"email","firstName","lastName"}`;
//! the answer is `{"token": "..."}`, valid for 12 hours.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::token::Identity;
use crate::routing::upstream;

/// HubSpot tokens live 12 hours.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);
const PATH: &str = "/conversations/v3/visitor-identification/tokens/create";
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why HubSpot gave no token.
#[derive(Debug)]
pub enum MintError {
    /// HubSpot answered and refused this visitor (a 4xx other than 401, 403,
    /// 408 and 429, or an answer without a token): asking again at once for
    /// the same visitor will not help.
    Refused(String),
    /// HubSpot could not be reached, did not answer in time, failed, limited
    /// us or refused our access token: it is down for every visitor.
    Unavailable {
        reason: String,
        retry_after: Option<Duration>,
    },
}

impl MintError {
    pub fn unavailable(reason: String) -> MintError {
        MintError::Unavailable {
            reason,
            retry_after: None,
        }
    }
}

impl std::fmt::Display for MintError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MintError::Refused(reason) | MintError::Unavailable { reason, .. } => {
                f.write_str(reason)
            }
        }
    }
}

pub struct HubSpotClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HubSpotClient {
    pub fn new() -> Result<HubSpotClient, String> {
        let roots = upstream::trust_roots(None)?;
        let connector = upstream::connector(roots, Duration::from_secs(5));
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(HubSpotClient { client })
    }

    /// Mints a token for `identity`. Errors are short and carry no secret.
    pub async fn mint(
        &self,
        api_base: &http::Uri,
        access_token: &str,
        identity: &Identity,
    ) -> Result<String, MintError> {
        let body = serde_json::json!({
            "email": identity.email,
            "firstName": identity.first_name,
            "lastName": identity.last_name,
        });
        let uri = format!(
            "{}://{}{PATH}",
            api_base.scheme_str().unwrap_or("https"),
            api_base.authority().map_or("", |a| a.as_str())
        );
        let authorization =
            HeaderValue::from_str(&format!("Bearer {access_token}")).map_err(|_| {
                MintError::unavailable(
                    "the HubSpot access token is not a valid header value".into(),
                )
            })?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::AUTHORIZATION, authorization)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| MintError::unavailable(e.to_string()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| MintError::unavailable(format!("HubSpot request failed: {e}")))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, std::time::SystemTime::now()));
        let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| MintError::unavailable(format!("HubSpot answer unreadable: {e}")))?
            .to_bytes();
        if status != StatusCode::OK {
            let reason = format!("HubSpot answered {status}");
            // These say nothing about the visitor: our token, or HubSpot's state.
            let about_us = matches!(
                status,
                StatusCode::UNAUTHORIZED
                    | StatusCode::FORBIDDEN
                    | StatusCode::REQUEST_TIMEOUT
                    | StatusCode::TOO_MANY_REQUESTS
            );
            return Err(if status.is_client_error() && !about_us {
                MintError::Refused(reason)
            } else {
                MintError::Unavailable {
                    reason,
                    retry_after,
                }
            });
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            token: String,
        }
        let answer: Answer = serde_json::from_slice(&bytes)
            .map_err(|_| MintError::Refused("HubSpot's answer has no token".into()))?;
        if answer.token.is_empty() || answer.token.len() > 4096 {
            return Err(MintError::Refused(
                "HubSpot's token is empty or too long".into(),
            ));
        }
        Ok(answer.token)
    }
}

/// A `Retry-After` value: seconds, or an HTTP date (RFC 9110, 10.2.3), as
/// the time from `now` (none once it has passed).
fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    date.duration_since(now).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = httpdate::parse_http_date("Sat, 05 Dec 2026 22:00:00 GMT").unwrap();
        let table = [
            ("120", Some(120)),
            (" 7 ", Some(7)),
            ("Sat, 05 Dec 2026 22:00:30 GMT", Some(30)),
            ("Sat, 05 Dec 2026 21:59:00 GMT", None),
            ("soon", None),
            ("-5", None),
        ];
        for (value, seconds) in table {
            assert_eq!(
                retry_after(value, now),
                seconds.map(Duration::from_secs),
                "{value}"
            );
        }
    }
}
