//! Outgoing mail: SMTP for production (lettre), or a development outbox that
//! writes each message as an `.eml` file and logs it (which is also how the
//! tests and the demo read verification and reset links).
//!
//! Sending never blocks or fails a visitor's request: a page must not reveal
//! whether an address exists, and a slow mail server must not slow the portal.

mod outbox;
mod smtp;

use std::sync::Arc;

use crate::config::{Mail, MailTransport};

pub use outbox::Outbox;

/// Overrides the password of `mail.smtp_url`, so the file holds no secret.
pub const SMTP_PASSWORD_ENV: &str = "MEMBERGATE_SMTP_PASSWORD";

/// One plain-text message to one address.
#[derive(Debug, Clone)]
pub struct Message {
    pub to: String,
    pub subject: String,
    pub body: String,
}

#[derive(Clone)]
pub enum Mailer {
    Outbox(Arc<Outbox>),
    Smtp(Arc<smtp::Smtp>),
}

impl Mailer {
    pub fn new(config: &Mail) -> Result<Mailer, String> {
        Ok(match &config.transport {
            MailTransport::Outbox(dir) => Mailer::Outbox(Arc::new(Outbox::new(dir))),
            MailTransport::Smtp { url } => {
                let password = std::env::var(SMTP_PASSWORD_ENV).ok();
                Mailer::Smtp(Arc::new(smtp::Smtp::new(
                    url,
                    password.as_deref(),
                    &config.from,
                )?))
            }
        })
    }

    /// Hands the message over. The outbox writes it before returning; SMTP
    /// delivery runs in the background with retries, and failures are logged.
    pub async fn send(&self, message: Message) {
        match self {
            Mailer::Outbox(outbox) => outbox.send(message).await,
            Mailer::Smtp(smtp) => {
                let smtp = smtp.clone();
                tokio::spawn(async move { smtp.deliver(message).await });
            }
        }
    }
}
