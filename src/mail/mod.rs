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
pub struct Mailer {
    transport: Transport,
}

#[derive(Clone)]
enum Transport {
    Outbox(Arc<Outbox>),
    Smtp(Arc<smtp::Smtp>),
}

impl Mailer {
    pub fn new(config: &Mail) -> Result<Mailer, String> {
        let transport = match &config.transport {
            MailTransport::Outbox(dir) => {
                Transport::Outbox(Arc::new(Outbox::new(dir, &config.from)?))
            }
            MailTransport::Smtp { url } => {
                let password = std::env::var(SMTP_PASSWORD_ENV).ok();
                Transport::Smtp(Arc::new(smtp::Smtp::new(
                    url,
                    password.as_deref(),
                    &config.from,
                )?))
            }
        };
        Ok(Mailer { transport })
    }

    /// Hands the message over, for the portal. The outbox writes it before
    /// returning; SMTP delivery runs in the background with retries.
    /// Failures are logged, never shown: a page must not reveal whether an
    /// address exists.
    pub async fn send(&self, message: Message) {
        match &self.transport {
            Transport::Outbox(outbox) => {
                let _ = outbox.deliver(message).await;
            }
            Transport::Smtp(smtp) => smtp.clone().deliver_later(message),
        }
    }

    /// Delivers before returning (SMTP with its retries), and says why not
    /// if it could not: for an administrator waiting on the answer, and for
    /// a process that ends right after (the admin CLI), where a background
    /// delivery would be cancelled.
    pub async fn deliver(&self, message: Message) -> Result<(), String> {
        match &self.transport {
            Transport::Outbox(outbox) => outbox.deliver(message).await,
            Transport::Smtp(smtp) => smtp.deliver(message).await,
        }
    }
}
