//! A raw HTTP/2 client over TLS: it writes exactly the frames a test asks for,
//! in any order a real client never would, while a reader task records what
//! the gateway sends back (and answers its PINGs, as every client must). A
//! flood cannot deadlock on a full socket because reading never waits on
//! writing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::support::Gateway;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;

pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

/// One frame as written on the wire: the 9-byte header, then the payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `prefix`-bit prefix (RFC 7541 §5.1).
fn hpack_integer(out: &mut Vec<u8>, first_byte: u8, prefix: u32, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first_byte | value as u8);
        return;
    }
    out.push(first_byte | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

fn hpack_string(out: &mut Vec<u8>, text: &str) {
    hpack_integer(out, 0, 7, text.len());
    out.extend_from_slice(text.as_bytes());
}

/// A header field with a new name, not indexed (RFC 7541 §6.2.2).
pub fn hpack_field(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00];
    hpack_string(&mut out, name);
    hpack_string(&mut out, value);
    out
}

/// The header block of a request for `https://localhost{path}`: static-table
/// `:method` and `:scheme`, literal `:path` and `:authority`.
pub fn request_block(method: &str, path: &str) -> Vec<u8> {
    let mut out = vec![if method == "POST" { 0x83 } else { 0x82 }, 0x87];
    // Literal without indexing, name from the static table: 4 is :path, 1 is :authority.
    hpack_integer(&mut out, 0x00, 4, 4);
    hpack_string(&mut out, path);
    hpack_integer(&mut out, 0x00, 4, 1);
    hpack_string(&mut out, "localhost");
    out
}

/// A TLS connection to the gateway's HTTPS listener for `localhost`, with
/// `h2` agreed by ALPN.
pub async fn tls_h2(gw: &Gateway) -> TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(gw.tls_client_config(b"h2")));
    let tcp = TcpStream::connect(gw.https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls
}

/// What the gateway sent on one connection, as the reader task saw it.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub frames_by_kind: [usize; 10],
    /// The error code of the first GOAWAY, if one came.
    pub goaway: Option<u32>,
    /// The connection ended (EOF or an error) before the reader was stopped.
    pub closed: bool,
    /// The parameters of the gateway's SETTINGS frames, in order.
    pub settings: Vec<(u16, u32)>,
    /// Each RST_STREAM as (stream, error code), in order.
    pub resets: Vec<(u32, u32)>,
}

impl Seen {
    pub fn count(&self, kind: u8) -> usize {
        self.frames_by_kind
            .get(usize::from(kind))
            .copied()
            .unwrap_or(0)
    }

    /// The latest value the gateway's SETTINGS gave `id`, if any did.
    pub fn setting(&self, id: u16) -> Option<u32> {
        self.settings
            .iter()
            .rfind(|(setting, _)| *setting == id)
            .map(|(_, value)| *value)
    }
}

type Writer = Arc<tokio::sync::Mutex<WriteHalf<TlsStream<TcpStream>>>>;

pub struct H2 {
    writer: Writer,
    seen: Arc<Mutex<Seen>>,
    reader: tokio::task::JoinHandle<()>,
}

impl H2 {
    /// Connects to the gateway's HTTPS listener with ALPN `h2` and sends the
    /// preface and a SETTINGS frame with `settings`.
    pub async fn connect(gw: &Gateway, settings: &[(u16, u32)]) -> H2 {
        H2::connect_reading(gw, settings, true).await
    }

    /// Like `connect`, but nothing is ever read from the gateway (nor its
    /// PINGs answered): its writes back up on the socket.
    pub async fn connect_without_reading(gw: &Gateway) -> H2 {
        H2::connect_reading(gw, &[], false).await
    }

    async fn connect_reading(gw: &Gateway, settings: &[(u16, u32)], read: bool) -> H2 {
        let (reader, writer) = tokio::io::split(tls_h2(gw).await);
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let reader = if read {
            tokio::spawn(read_frames(reader, writer.clone(), seen.clone()))
        } else {
            // Held open, unread, for longer than any test runs.
            tokio::spawn(async move {
                let _unread = reader;
                tokio::time::sleep(Duration::from_secs(60)).await;
            })
        };
        let mut h2 = H2 {
            writer,
            seen,
            reader,
        };
        let mut payload = Vec::new();
        for (id, value) in settings {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        start.extend(frame(SETTINGS, 0, 0, &payload));
        // The server's SETTINGS need an ACK; sending it up front is allowed.
        start.extend(frame(SETTINGS, ACK, 0, &[]));
        assert!(h2.send(&start).await, "the gateway refused the preface");
        h2
    }

    /// Writes bytes; false once the gateway has closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        let mut writer = self.writer.lock().await;
        writer.write_all(bytes).await.is_ok() && writer.flush().await.is_ok()
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until the gateway closes the connection or `limit` passes, then
    /// returns what it sent.
    pub async fn finish(self, limit: Duration) -> Seen {
        let H2 {
            writer,
            seen,
            reader,
        } = self;
        let _ = tokio::time::timeout(limit, reader).await;
        drop(writer);
        seen.lock().unwrap().clone()
    }
}

async fn read_frames<R: AsyncRead + Unpin>(mut reader: R, writer: Writer, seen: Arc<Mutex<Seen>>) {
    let mut head = [0u8; 9];
    loop {
        if reader.read_exact(&mut head).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if reader.read_exact(&mut payload).await.is_err() {
            break;
        }
        {
            let mut seen = seen.lock().unwrap();
            if let Some(count) = seen.frames_by_kind.get_mut(usize::from(head[3])) {
                *count += 1;
            }
            if head[3] == GOAWAY && seen.goaway.is_none() && payload.len() >= 8 {
                seen.goaway = Some(u32::from_be_bytes([
                    payload[4], payload[5], payload[6], payload[7],
                ]));
            }
            if head[3] == SETTINGS && head[4] & ACK == 0 {
                for parameter in payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([parameter[0], parameter[1]]);
                    let value = u32::from_be_bytes([
                        parameter[2],
                        parameter[3],
                        parameter[4],
                        parameter[5],
                    ]);
                    seen.settings.push((id, value));
                }
            }
            if head[3] == RST_STREAM && payload.len() == 4 {
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                seen.resets.push((stream, code));
            }
        }
        if head[3] == PING && head[4] & ACK == 0 {
            let mut writer = writer.lock().await;
            let _ = writer.write_all(&frame(PING, ACK, 0, &payload)).await;
            let _ = writer.flush().await;
        }
    }
    seen.lock().unwrap().closed = true;
}
