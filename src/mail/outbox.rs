//! The development outbox: each message becomes an `.eml` file in a folder,
//! and its text is logged so the demo shows verification links in its output.

use std::path::{Path, PathBuf};

use super::Message;

pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    pub fn new(dir: &Path) -> Outbox {
        Outbox {
            dir: dir.to_owned(),
        }
    }

    /// Writes the message; failures are logged, never shown to the visitor
    /// (the page must not reveal whether an address exists).
    pub async fn send(&self, message: Message) {
        let dir = self.dir.clone();
        let written =
            tokio::task::spawn_blocking(move || write(&dir, &message).map(|p| (p, message))).await;
        match written {
            Ok(Ok((path, message))) => tracing::info!(
                to = %message.to,
                subject = %message.subject,
                file = %path.display(),
                "mail written to the outbox:\n{}",
                message.body
            ),
            Ok(Err(e)) => tracing::error!(error = %e, "could not write mail to the outbox"),
            Err(e) => tracing::error!(error = %e, "mail task failed"),
        }
    }
}

fn write(dir: &Path, message: &Message) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let safe_to: String = message
        .to
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '@' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{stamp}-{safe_to}.eml"));
    let date = httpdate(std::time::SystemTime::now());
    let text = format!(
        "To: {}\r\nSubject: {}\r\nDate: {date}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n",
        message.to, message.subject, message.body
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

fn httpdate(time: std::time::SystemTime) -> String {
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("@{secs}")
}
