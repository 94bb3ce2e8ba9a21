//! A small SMTP server that keeps every message it accepts, so tests can check
//! what the gateway's SMTP transport delivered. It can refuse the first few
//! recipients with a temporary error to exercise retries, or every one for
//! good.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

pub struct SmtpSink {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl SmtpSink {
    /// Accepts everything.
    pub async fn start() -> SmtpSink {
        SmtpSink::start_refusing(0).await
    }

    /// Answers `451` to the first `refusals` RCPT commands, then accepts.
    pub async fn start_refusing(refusals: usize) -> SmtpSink {
        SmtpSink::start_answering(refusals, "451 try again later").await
    }

    /// Answers every RCPT command with a permanent `550`.
    pub async fn start_rejecting() -> SmtpSink {
        SmtpSink::start_answering(usize::MAX, "550 5.1.1 no such mailbox here").await
    }

    /// Answers `refusal` to the first `refusals` RCPT commands, then accepts.
    async fn start_answering(refusals: usize, refusal: &'static str) -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let refusals = Arc::new(AtomicUsize::new(refusals));
        let store = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                let refusals = refusals.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    if !reply(&mut write, "220 sink.test ESMTP").await {
                        return;
                    }
                    let mut current = Received {
                        from: String::new(),
                        to: Vec::new(),
                        data: String::new(),
                    };
                    while let Ok(Some(line)) = lines.next_line().await {
                        let upper = line.to_ascii_uppercase();
                        let answer = if upper.starts_with("EHLO") {
                            "250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8"
                        } else if upper.starts_with("HELO") || upper.starts_with("RSET") {
                            "250 ok"
                        } else if upper.starts_with("MAIL FROM:") {
                            current.from = line[10..].trim().to_owned();
                            "250 ok"
                        } else if upper.starts_with("RCPT TO:") {
                            let left = refusals.load(Ordering::SeqCst);
                            if left > 0 {
                                refusals.store(left - 1, Ordering::SeqCst);
                                refusal
                            } else {
                                current.to.push(line[8..].trim().to_owned());
                                "250 ok"
                            }
                        } else if upper == "DATA" {
                            if !reply(&mut write, "354 go ahead").await {
                                return;
                            }
                            let mut data = String::new();
                            while let Ok(Some(line)) = lines.next_line().await {
                                if line == "." {
                                    break;
                                }
                                data.push_str(&line);
                                data.push('\n');
                            }
                            current.data = data;
                            store.lock().unwrap().push(current.clone());
                            current.to.clear();
                            "250 queued"
                        } else if upper == "QUIT" {
                            let _ = reply(&mut write, "221 bye").await;
                            return;
                        } else {
                            "502 not implemented"
                        };
                        if !reply(&mut write, answer).await {
                            return;
                        }
                    }
                });
            }
        });
        SmtpSink { addr, received }
    }

    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Waits up to `limit` for a message to `to`.
    pub async fn message_to(&self, to: &str, limit: Duration) -> Received {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let found = self
                .received
                .lock()
                .unwrap()
                .iter()
                .find(|m| m.to.iter().any(|t| t.contains(to)))
                .cloned();
            if let Some(message) = found {
                return message;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no mail to {to} reached the SMTP server"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn reply(write: &mut tokio::net::tcp::OwnedWriteHalf, text: &str) -> bool {
    write
        .write_all(format!("{text}\r\n").as_bytes())
        .await
        .is_ok()
}
