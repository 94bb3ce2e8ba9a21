//! The development outbox: each message becomes an `.eml` file in a folder,
//! and its text is logged so the demo shows verification links in its output.

use std::path::{Path, PathBuf};

use super::Message;
use crate::files::IfExists;

pub struct Outbox {
    dir: PathBuf,
    /// The `From` header, as SMTP delivery would send it.
    from: String,
}

impl Outbox {
    /// `from`: the configured sender (`mail.from`, checked by the config).
    pub fn new(dir: &Path, from: &str) -> Result<Outbox, String> {
        let from: lettre::message::Mailbox = from
            .parse()
            .map_err(|e| format!("mail.from: {from:?} is not an address ({e})"))?;
        Ok(Outbox {
            dir: dir.to_owned(),
            from: from.to_string(),
        })
    }

    /// Writes the message. Failures are logged too: the portal does not
    /// show them (a page must not reveal whether an address exists).
    pub async fn deliver(&self, message: Message) -> Result<(), String> {
        let (dir, from) = (self.dir.clone(), self.from.clone());
        let written =
            tokio::task::spawn_blocking(move || write(&dir, &from, &message).map(|p| (p, message)))
                .await;
        match written {
            Ok(Ok((path, message))) => {
                tracing::info!(
                    to = %message.to,
                    subject = %message.subject,
                    file = %path.display(),
                    "mail written to the outbox:\n{}",
                    message.body
                );
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not write mail to the outbox");
                Err(format!(
                    "could not write it to the outbox {}: {e}",
                    self.dir.display()
                ))
            }
            Err(e) => {
                tracing::error!(error = %e, "mail task failed");
                Err(format!("the mail task failed: {e}"))
            }
        }
    }
}

fn write(dir: &Path, from: &str, message: &Message) -> std::io::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // At most 100 characters of the address: a file name has 255 bytes, and
    // an address may have 254 (the stamp keeps names apart).
    let safe_to: String = message
        .to
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '@' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{stamp}-{safe_to}.eml"));
    // HTTP's date format is RFC 5322's, with the zone written `GMT` (which
    // RFC 5322 reads as +0000).
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let text = format!(
        "From: {from}\r\nTo: {}\r\nSubject: {}\r\nDate: {date}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n",
        message.to, message.subject, message.body
    );
    // Mail holds sign-in links: the gateway's user's alone, like the folder.
    crate::files::write_whole(&path, text.as_bytes(), 0o600, IfExists::Replace)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_address_still_gets_its_file() {
        let dir = tempfile::tempdir().unwrap();
        // 254 characters, the most an address may have.
        let to = format!(
            "{}@{}.{}.{}.com",
            "a".repeat(64),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(57)
        );
        assert_eq!(to.len(), 254);
        let message = Message {
            to: to.clone(),
            subject: "Invitation".into(),
            body: "hello".into(),
        };
        let from = "Members <members@example.com>";
        let path = write(&dir.path().join("outbox"), from, &message).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&format!("From: {from}\r\nTo: {to}\r\n")));
        // A date mail clients read (RFC 5322), not a bare count of seconds.
        let date = text.lines().find_map(|l| l.strip_prefix("Date: ")).unwrap();
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        // Sign-in links are nobody else's to read.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("outbox")), 0o700);
    }
}
