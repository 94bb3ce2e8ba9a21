//! SMTP delivery with lettre: implicit TLS (`smtps://`), STARTTLS
//! (`smtp://...?tls=required`) or, for a relay on the same host, plain SMTP.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::Message;

/// Delivery attempts for temporary failures (4xx answers, lost connections).
const ATTEMPTS: u32 = 3;

pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Smtp {
    /// `url` as lettre understands it; `password`, when given, replaces the
    /// URL's own (so the secret can live in the environment).
    pub fn new(url: &str, password: Option<&str>, from: &str) -> Result<Smtp, String> {
        let url = match password {
            Some(password) => with_password(url, password)?,
            None => url.to_owned(),
        };
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)
            .map_err(|e| format!("mail.smtp_url: {e}"))?
            .timeout(Some(Duration::from_secs(30)))
            .build();
        let from = from
            .parse()
            .map_err(|e| format!("mail.from: {from:?} is not an address ({e})"))?;
        Ok(Smtp { transport, from })
    }

    pub async fn deliver(&self, message: Message) {
        let to = message.to.clone();
        let email = match self.build(message) {
            Ok(email) => email,
            Err(e) => {
                tracing::error!(to = %to, error = %e, "could not build a mail");
                return;
            }
        };
        for attempt in 1..=ATTEMPTS {
            match self.transport.send(email.clone()).await {
                Ok(_) => {
                    tracing::info!(to = %to, "mail sent");
                    return;
                }
                Err(e) if e.is_permanent() || attempt == ATTEMPTS => {
                    tracing::error!(to = %to, error = %e, attempt, "mail not delivered");
                    return;
                }
                Err(e) => {
                    tracing::warn!(to = %to, error = %e, attempt, "mail delivery failed; retrying");
                    tokio::time::sleep(Duration::from_secs(2u64.pow(attempt))).await;
                }
            }
        }
    }

    fn build(&self, message: Message) -> Result<lettre::Message, String> {
        let to: Mailbox = message.to.parse().map_err(|e| format!("{e}"))?;
        lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(message.subject)
            .header(ContentType::TEXT_PLAIN)
            .body(message.body)
            .map_err(|e| e.to_string())
    }
}

/// The URL with `password` (percent-encoded) as its password.
fn with_password(url: &str, password: &str) -> Result<String, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "mail.smtp_url: expected smtp://user@host:port".to_owned())?;
    let (user, host) = rest.split_once('@').ok_or_else(|| {
        "mail.smtp_url: MEMBERGATE_SMTP_PASSWORD is set, but the URL names no user (smtp://user@host)"
            .to_owned()
    })?;
    let user = user.split(':').next().unwrap_or(user);
    let mut encoded = String::with_capacity(password.len() * 3);
    for byte in password.bytes() {
        if byte.is_ascii_alphanumeric() {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    Ok(format!("{scheme}://{user}:{encoded}@{host}"))
}

#[cfg(test)]
mod tests {
    use super::with_password;

    #[test]
    fn the_password_replaces_the_urls_own() {
        assert_eq!(
            with_password("smtps://mailer@smtp.example.com:465", "p@ss w:rd").unwrap(),
            "smtps://mailer:p%40ss%20w%3Ard@smtp.example.com:465"
        );
        assert_eq!(
            with_password("smtp://u:old@h:25?tls=required", "new").unwrap(),
            "smtp://u:new@h:25?tls=required"
        );
        assert!(with_password("smtp://h:25", "x").is_err());
    }
}
