//! SMTP delivery with lettre: implicit TLS (`smtps://`), STARTTLS
//! (`smtp://...?tls=required`) or, for a relay on the same host, plain SMTP.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::Message;

/// Delivery attempts for temporary failures (4xx answers, lost connections,
/// a server that stops answering).
const ATTEMPTS: u32 = 3;
/// How long one attempt may take, greeting to last reply. lettre's own
/// timeout covers only the connect: a server that accepts and then says
/// nothing would hold the attempt, and its socket, for ever.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Deliveries in progress at once; more wait their turn.
const IN_FLIGHT: usize = 8;
/// Deliveries waiting for a turn; more are dropped (and logged), so a mail
/// server that is down cannot make the gateway's memory grow without end.
const MAX_WAITING: usize = 10_000;

pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    turns: tokio::sync::Semaphore,
    waiting: std::sync::atomic::AtomicUsize,
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
        Ok(Smtp {
            transport,
            from,
            turns: tokio::sync::Semaphore::new(IN_FLIGHT),
            waiting: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Delivers in a task of its own, when a turn is free.
    pub fn deliver_later(self: std::sync::Arc<Self>, message: Message) {
        use std::sync::atomic::Ordering;
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            tracing::error!(to = %message.to, "mail not delivered: too many mails waiting for the mail server");
            return;
        }
        tokio::spawn(async move {
            let turn = self.turns.acquire().await;
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            if turn.is_ok() {
                // Logged by `deliver`; nobody waits for the outcome.
                let _ = self.deliver(message).await;
            }
        });
    }

    /// Delivers, retrying temporary failures; logs the outcome, and returns
    /// why the mail was not delivered.
    pub async fn deliver(&self, message: Message) -> Result<(), String> {
        let to = message.to.clone();
        let email = match self.build(message) {
            Ok(email) => email,
            Err(e) => {
                tracing::error!(to = %to, error = %e, "could not build a mail");
                return Err(format!("could not build the mail: {e}"));
            }
        };
        for attempt in 1..=ATTEMPTS {
            let sent = tokio::time::timeout(ATTEMPT_TIMEOUT, self.transport.send(email.clone()));
            let failure = match sent.await {
                Ok(Ok(_)) => {
                    tracing::info!(to = %to, "mail sent");
                    return Ok(());
                }
                Ok(Err(e)) if e.is_permanent() => {
                    tracing::error!(to = %to, error = %e, attempt, "mail not delivered");
                    return Err(format!("the mail server refused it: {e}"));
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("the mail server gave no answer in {ATTEMPT_TIMEOUT:?}"),
            };
            if attempt == ATTEMPTS {
                tracing::error!(to = %to, error = %failure, attempt, "mail not delivered");
                return Err(format!("{failure} (after {ATTEMPTS} attempts)"));
            }
            tracing::warn!(to = %to, error = %failure, attempt, "mail delivery failed; retrying");
            tokio::time::sleep(Duration::from_secs(2u64.pow(attempt))).await;
        }
        Err("no delivery attempt was made".into())
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
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_server_that_never_answers_is_given_up_on() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("smtp://{}", listener.local_addr().unwrap());
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(stream); // accepted, and never a word
            }
        });
        let smtp = Smtp::new(&url, None, "club@example.com").unwrap();
        let message = Message {
            to: "ada@example.com".into(),
            subject: "s".into(),
            body: "b".into(),
        };
        // Paused time runs on while nothing else can: each attempt ends at
        // its timeout, and delivery gives up after the last.
        let gave_up = tokio::time::timeout(Duration::from_secs(3600), smtp.deliver(message));
        let outcome = gave_up.await.expect("still waiting after an hour");
        assert!(outcome.unwrap_err().contains("no answer"));
        let accepted = accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(accepted, ATTEMPTS as usize);
    }

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
