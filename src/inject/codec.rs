//! Content codings around the rewriter: an origin's gzip, deflate, br or zstd
//! page is decoded chunk by chunk with a cap on the decoded size (a
//! decompression bomb stops at the cap instead of filling memory), and the
//! rewritten page is encoded again with the best coding the client accepts.
//!
//! The codecs are push-style writers over a `Vec<u8>`, so each chunk from the
//! origin yields whatever output is ready and nothing waits for the whole page.

use std::io::Write;

/// A content coding the gateway can decode (and, for gzip and br, encode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Deflate,
    Br,
    Zstd,
}

impl Coding {
    /// The coding of a `Content-Encoding` value; `None` for anything else,
    /// including stacked codings such as `gzip, br`.
    pub fn from_header(value: &str) -> Option<Coding> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => Some(Coding::Identity),
            "gzip" | "x-gzip" => Some(Coding::Gzip),
            "deflate" => Some(Coding::Deflate),
            "br" => Some(Coding::Br),
            "zstd" => Some(Coding::Zstd),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Br => "br",
            Coding::Zstd => "zstd",
        }
    }
}

/// The coding to send a rewritten page in: br, else gzip, when the client's
/// `Accept-Encoding` allows it (a `q=0` refuses), else identity.
pub fn preferred(accept_encoding: &[&str]) -> Coding {
    let mut br = false;
    let mut gzip = false;
    for item in accept_encoding.iter().flat_map(|v| v.split(',')) {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            p.trim()
                .strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        if refused {
            continue;
        }
        match name.as_str() {
            "br" => br = true,
            "gzip" | "x-gzip" => gzip = true,
            _ => {}
        }
    }
    if br {
        Coding::Br
    } else if gzip {
        Coding::Gzip
    } else {
        Coding::Identity
    }
}

#[derive(Debug)]
pub enum CodecError {
    /// The decoded page grew past the cap.
    TooLarge,
    /// The stream is not valid in its coding.
    Corrupt(std::io::Error),
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::TooLarge => f.write_str("the decoded page is larger than the rewrite cap"),
            CodecError::Corrupt(e) => write!(f, "the page's compressed stream is corrupt: {e}"),
        }
    }
}

impl std::error::Error for CodecError {}

/// Decodes an origin's compressed page.
pub enum Decoder {
    Identity,
    Gzip(GzipMembers),
    /// `deflate` before its first two bytes tell zlib from raw DEFLATE:
    /// the bytes so far.
    DeflateUnsure(Sink, Vec<u8>),
    Zlib(flate2::write::ZlibDecoder<Sink>),
    /// `deflate` without the zlib wrapper, as some servers send it and
    /// every browser reads it.
    RawDeflate(flate2::write::DeflateDecoder<Sink>),
    Br(Box<brotli::DecompressorWriter<Sink>>),
    Zstd(zstd::stream::write::Decoder<'static, Sink>),
}

/// Where a decoder writes what it decodes: it refuses any write past the
/// cap, so a bomb stops inside the decoder's own loop, within one of the
/// decoder's buffers of the cap, however much a single input chunk would
/// inflate to (a few kilobytes of zstd RLE blocks or brotli make gigabytes).
pub struct Sink {
    ready: Vec<u8>,
    /// Decoded bytes the cap still allows.
    room: usize,
    overflowed: bool,
}

impl Sink {
    fn new(room: usize) -> Sink {
        Sink {
            ready: Vec::new(),
            room,
            overflowed: false,
        }
    }
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if data.len() > self.room {
            self.overflowed = true;
            return Err(std::io::Error::other(CodecError::TooLarge));
        }
        self.room -= data.len();
        self.ready.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// gzip as browsers read it: members one after another (RFC 1952 allows a
/// file of several), and bytes after the last member ignored, as a stray
/// newline after a script's compressed output is.
pub struct GzipMembers {
    member: flate2::write::GzDecoder<Sink>,
    after: AfterMember,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AfterMember {
    /// Inside a member (or before the first).
    Inside,
    /// A member ended and one byte of a gzip magic number followed.
    HalfMagic,
    /// A member ended and what followed is not another: ignored.
    Trailing,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

impl GzipMembers {
    fn new(sink: Sink) -> GzipMembers {
        GzipMembers {
            member: flate2::write::GzDecoder::new(sink),
            after: AfterMember::Inside,
        }
    }

    /// Ends the member that was read to its end (its checksum checked) and
    /// starts the next on the same sink.
    fn next_member(&mut self) -> std::io::Result<()> {
        let done = std::mem::replace(
            &mut self.member,
            flate2::write::GzDecoder::new(Sink::new(0)),
        );
        self.member = flate2::write::GzDecoder::new(done.finish()?);
        self.after = AfterMember::Inside;
        Ok(())
    }

    fn sink(&mut self) -> &mut Sink {
        self.member.get_mut()
    }

    fn try_finish(&mut self) -> std::io::Result<()> {
        match self.after {
            AfterMember::Inside => self.member.try_finish(),
            // The member's end was checked when it came.
            AfterMember::HalfMagic | AfterMember::Trailing => Ok(()),
        }
    }
}

impl Write for GzipMembers {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match self.after {
            AfterMember::Trailing => return Ok(buf.len()),
            AfterMember::HalfMagic if buf[0] == GZIP_MAGIC[1] => {
                self.next_member()?;
                self.member.write_all(&GZIP_MAGIC[..1])?;
                return self.member.write(buf);
            }
            AfterMember::HalfMagic => {
                self.after = AfterMember::Trailing;
                return Ok(buf.len());
            }
            AfterMember::Inside => {}
        }
        let taken = self.member.write(buf)?;
        if taken > 0 {
            return Ok(taken);
        }
        // The member has ended: check it, then see what follows.
        self.member.try_finish()?;
        if buf.starts_with(&GZIP_MAGIC) {
            self.next_member()?;
            self.member.write(buf)
        } else if buf == &GZIP_MAGIC[..1] {
            self.after = AfterMember::HalfMagic;
            Ok(1)
        } else {
            self.after = AfterMember::Trailing;
            Ok(buf.len())
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.member.flush()
    }
}

/// Whether a `deflate` stream's first two bytes are a zlib header
/// (RFC 1950: method 8, a window of at most 32 KiB, a check multiple of 31).
fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
}

/// RFC 9659: a zstd content coding needs no window over 8 MiB, and a
/// decoder that allowed zstd's default 128 MiB would let every page ask for
/// that much memory.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// The decoded bytes allowed per page, and how many came out so far.
pub struct Capped {
    pub decoder: Decoder,
    limit: usize,
    produced: usize,
    /// Whether any byte came at all.
    fed: bool,
}

impl Capped {
    pub fn new(coding: Coding, limit: usize) -> Result<Capped, CodecError> {
        let sink = Sink::new(limit);
        let decoder = match coding {
            Coding::Identity => Decoder::Identity,
            Coding::Gzip => Decoder::Gzip(GzipMembers::new(sink)),
            Coding::Deflate => Decoder::DeflateUnsure(sink, Vec::with_capacity(2)),
            Coding::Br => Decoder::Br(Box::new(brotli::DecompressorWriter::new(sink, 8192))),
            Coding::Zstd => {
                let mut d = zstd::stream::write::Decoder::new(sink).map_err(CodecError::Corrupt)?;
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)
                    .map_err(CodecError::Corrupt)?;
                Decoder::Zstd(d)
            }
        };
        Ok(Capped {
            decoder,
            limit,
            produced: 0,
            fed: false,
        })
    }

    /// Feeds one chunk; returns the decoded bytes ready so far.
    pub fn decode(&mut self, chunk: &[u8]) -> Result<Vec<u8>, CodecError> {
        self.fed |= !chunk.is_empty();
        // flate2's and zstd's writers pass a write's output on only at the
        // next write or flush: without the flush, the decoded bytes of a
        // chunk would wait for the origin's next one (decision 0025).
        let write = match &mut self.decoder {
            Decoder::Identity => return self.count(chunk.to_vec()),
            Decoder::Gzip(d) => d.write_all(chunk).and_then(|()| d.flush()),
            Decoder::DeflateUnsure(_, start) => {
                start.extend_from_slice(chunk);
                self.choose_deflate()
            }
            Decoder::Zlib(d) => d.write_all(chunk).and_then(|()| d.flush()),
            Decoder::RawDeflate(d) => d.write_all(chunk).and_then(|()| d.flush()),
            Decoder::Br(d) => d.write_all(chunk),
            Decoder::Zstd(d) => d.write_all(chunk).and_then(|()| d.flush()),
        };
        self.checked(write)?;
        let ready = self.take();
        self.count(ready)
    }

    /// Once a `deflate` stream's first two bytes are in, the decoder for it,
    /// given those bytes and any after them.
    fn choose_deflate(&mut self) -> std::io::Result<()> {
        let Decoder::DeflateUnsure(_, start) = &self.decoder else {
            return Ok(());
        };
        let &[cmf, flg, ..] = start.as_slice() else {
            return Ok(());
        };
        let Decoder::DeflateUnsure(sink, start) =
            std::mem::replace(&mut self.decoder, Decoder::Identity)
        else {
            return Ok(());
        };
        if is_zlib_header(cmf, flg) {
            let mut d = flate2::write::ZlibDecoder::new(sink);
            let written = d.write_all(&start).and_then(|()| d.flush());
            self.decoder = Decoder::Zlib(d);
            written
        } else {
            let mut d = flate2::write::DeflateDecoder::new(sink);
            let written = d.write_all(&start).and_then(|()| d.flush());
            self.decoder = Decoder::RawDeflate(d);
            written
        }
    }

    /// Ends the stream: the last decoded bytes, or an error for a truncated one.
    pub fn finish(mut self) -> Result<Vec<u8>, CodecError> {
        if !self.fed {
            // An empty body says `Content-Encoding` and has nothing to decode.
            return Ok(Vec::new());
        }
        let done = match &mut self.decoder {
            Decoder::Identity => Ok(()),
            Decoder::Gzip(d) => d.try_finish(),
            // One byte of deflate: not even a header.
            Decoder::DeflateUnsure(..) => Err(std::io::Error::other("truncated deflate stream")),
            Decoder::Zlib(d) => d.try_finish(),
            Decoder::RawDeflate(d) => d.try_finish(),
            Decoder::Br(d) => d.flush().and_then(|()| {
                // A brotli stream that ended early has produced no end marker.
                if d.close().is_err() {
                    Err(std::io::Error::other("truncated brotli stream"))
                } else {
                    Ok(())
                }
            }),
            // Fails for a stream that does not end on a complete frame.
            Decoder::Zstd(d) => d.do_finish(),
        };
        self.checked(done)?;
        let rest = self.take();
        self.count(rest)
    }

    fn sink(&mut self) -> Option<&mut Sink> {
        match &mut self.decoder {
            Decoder::Identity => None,
            Decoder::Gzip(d) => Some(d.sink()),
            Decoder::DeflateUnsure(sink, _) => Some(sink),
            Decoder::Zlib(d) => Some(d.get_mut()),
            Decoder::RawDeflate(d) => Some(d.get_mut()),
            Decoder::Br(d) => Some(d.get_mut()),
            Decoder::Zstd(d) => Some(d.get_mut()),
        }
    }

    /// A decoder's error: the sink's refusal is the cap, anything else a
    /// corrupt stream.
    fn checked(&mut self, result: std::io::Result<()>) -> Result<(), CodecError> {
        match result {
            Ok(()) => Ok(()),
            Err(_) if self.sink().is_some_and(|s| s.overflowed) => Err(CodecError::TooLarge),
            Err(e) => Err(CodecError::Corrupt(e)),
        }
    }

    fn take(&mut self) -> Vec<u8> {
        self.sink()
            .map(|s| std::mem::take(&mut s.ready))
            .unwrap_or_default()
    }

    fn count(&mut self, bytes: Vec<u8>) -> Result<Vec<u8>, CodecError> {
        self.produced += bytes.len();
        if self.produced > self.limit {
            return Err(CodecError::TooLarge);
        }
        Ok(bytes)
    }
}

/// Encodes the rewritten page for the client.
pub enum Encoder {
    Identity,
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
}

impl Encoder {
    /// gzip level 5 and brotli quality 5: most of the size win for a small
    /// share of the CPU of the higher levels, on the request path.
    pub fn new(coding: Coding) -> Encoder {
        match coding {
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(5),
            )),
            Coding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                8192,
                5,
                20,
            ))),
            _ => Encoder::Identity,
        }
    }

    pub fn encode(&mut self, chunk: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Identity => Ok(chunk.to_vec()),
            Encoder::Gzip(e) => {
                e.write_all(chunk)?;
                Ok(std::mem::take(e.get_mut()))
            }
            Encoder::Br(e) => {
                e.write_all(chunk)?;
                Ok(std::mem::take(e.get_mut()))
            }
        }
    }

    /// Everything written so far, encoded now (a sync flush), for when the
    /// origin makes the page wait: the client gets what is here instead of
    /// waiting for the encoder's buffer to fill or the page to end.
    pub fn flush(&mut self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Identity => Ok(Vec::new()),
            Encoder::Gzip(e) => {
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
            Encoder::Br(e) => {
                e.flush()?;
                Ok(std::mem::take(e.get_mut()))
            }
        }
    }

    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Encoder::Identity => Ok(Vec::new()),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Br(mut e) => {
                e.flush()?;
                Ok(e.into_inner())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(coding: Coding, data: &[u8]) -> Vec<u8> {
        match coding {
            Coding::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Coding::Deflate => {
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Coding::Br => {
                let mut out = Vec::new();
                {
                    let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 20);
                    e.write_all(data).unwrap();
                }
                out
            }
            Coding::Zstd => zstd::encode_all(data, 3).unwrap(),
            Coding::Identity => data.to_vec(),
        }
    }

    fn decode_in_chunks(coding: Coding, data: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
        let mut d = Capped::new(coding, limit)?;
        let mut out = Vec::new();
        for chunk in data.chunks(1000) {
            out.extend(d.decode(chunk)?);
        }
        out.extend(d.finish()?);
        Ok(out)
    }

    #[test]
    fn every_coding_round_trips_in_chunks() {
        let page: Vec<u8> = (0..200_000u32)
            .map(|i| b"<p>tide</p>"[i as usize % 11])
            .collect();
        for coding in [
            Coding::Identity,
            Coding::Gzip,
            Coding::Deflate,
            Coding::Br,
            Coding::Zstd,
        ] {
            let decoded = decode_in_chunks(coding, &encoded(coding, &page), 1 << 20).unwrap();
            assert_eq!(decoded, page, "{coding:?}");
        }
        for coding in [Coding::Gzip, Coding::Br] {
            let mut e = Encoder::new(coding);
            let mut wire = Vec::new();
            for chunk in page.chunks(3000) {
                wire.extend(e.encode(chunk).unwrap());
            }
            wire.extend(e.finish().unwrap());
            assert!(wire.len() < page.len() / 10, "{coding:?}");
            assert_eq!(
                decode_in_chunks(coding, &wire, 1 << 20).unwrap(),
                page,
                "{coding:?}"
            );
        }
    }

    /// An origin that streams compressed pages flushes its encoder when it
    /// pauses: what it flushed decodes at once, not with its next chunk.
    #[test]
    fn a_flushed_start_of_page_decodes_without_waiting_for_more() {
        let head = b"<html><head><title>t</title></head><body>hello";
        let flushed = |coding: Coding| -> Vec<u8> {
            let mut out = Vec::new();
            let level = flate2::Compression::fast();
            match coding {
                Coding::Gzip => {
                    let mut e = flate2::write::GzEncoder::new(&mut out, level);
                    e.write_all(head).unwrap();
                    e.flush().unwrap();
                }
                Coding::Deflate => {
                    let mut e = flate2::write::ZlibEncoder::new(&mut out, level);
                    e.write_all(head).unwrap();
                    e.flush().unwrap();
                }
                Coding::Zstd => {
                    let mut e = zstd::stream::write::Encoder::new(&mut out, 3).unwrap();
                    e.write_all(head).unwrap();
                    e.flush().unwrap();
                }
                _ => unreachable!(),
            }
            out
        };
        for coding in [Coding::Gzip, Coding::Deflate, Coding::Zstd] {
            let mut d = Capped::new(coding, 1 << 20).unwrap();
            assert_eq!(d.decode(&flushed(coding)).unwrap(), head, "{coding:?}");
        }
        // Raw deflate (no zlib header), as some servers send `deflate`.
        let mut raw = Vec::new();
        let mut e = flate2::write::DeflateEncoder::new(&mut raw, flate2::Compression::fast());
        e.write_all(head).unwrap();
        e.flush().unwrap();
        drop(e);
        let mut d = Capped::new(Coding::Deflate, 1 << 20).unwrap();
        assert_eq!(d.decode(&raw).unwrap(), head);
    }

    #[test]
    fn bombs_stop_at_the_cap_and_corrupt_streams_are_refused() {
        let zeros = vec![0u8; 20 << 20];
        for coding in [Coding::Gzip, Coding::Deflate, Coding::Br, Coding::Zstd] {
            let bomb = encoded(coding, &zeros);
            assert!(bomb.len() < 200_000, "{coding:?} {}", bomb.len());
            assert!(
                matches!(
                    decode_in_chunks(coding, &bomb, 1 << 20),
                    Err(CodecError::TooLarge)
                ),
                "{coding:?}"
            );
        }
        let mut corrupt = encoded(Coding::Gzip, b"<html><head></head></html>");
        corrupt[12] ^= 0xff;
        assert!(decode_in_chunks(Coding::Gzip, &corrupt, 1 << 20).is_err());
        let page = encoded(Coding::Br, &vec![b'x'; 100_000]);
        assert!(decode_in_chunks(Coding::Br, &page[..page.len() / 2], 1 << 20).is_err());
        assert!(decode_in_chunks(Coding::Zstd, b"not zstd at all", 1 << 20).is_err());
        let page = encoded(Coding::Zstd, &vec![b'x'; 100_000]);
        assert!(matches!(
            decode_in_chunks(Coding::Zstd, &page[..page.len() - 3], 1 << 20),
            Err(CodecError::Corrupt(_))
        ));
    }

    #[test]
    fn gzip_and_deflate_are_read_as_browsers_read_them() {
        let page = b"<html><head></head><body>tide tables</body></html>";
        let mut members = encoded(Coding::Gzip, &page[..20]);
        members.extend(encoded(Coding::Gzip, &page[20..]));
        let mut trailing = encoded(Coding::Gzip, page);
        trailing.extend_from_slice(b"\n\0 garbage");
        // In one chunk, and with a chunk ending at every byte (a member's
        // end, a magic number, a trailer split anywhere).
        for (what, stream) in [("two members", &members), ("trailing bytes", &trailing)] {
            assert_eq!(
                decode_in_chunks(Coding::Gzip, stream, 1 << 20).unwrap(),
                page,
                "{what}"
            );
            for at in 0..stream.len() {
                let mut d = Capped::new(Coding::Gzip, 1 << 20).unwrap();
                let mut out = d.decode(&stream[..at]).unwrap();
                out.extend(d.decode(&stream[at..]).unwrap());
                out.extend(d.finish().unwrap());
                assert_eq!(out, page, "{what}, split at {at}");
            }
        }
        // A second member that is corrupt is still an error.
        let mut bad = encoded(Coding::Gzip, page);
        let mut second = encoded(Coding::Gzip, page);
        second[12] ^= 0xff;
        bad.extend(second);
        assert!(decode_in_chunks(Coding::Gzip, &bad, 1 << 20).is_err());

        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(page).unwrap();
        let raw = raw.finish().unwrap();
        let zlib = encoded(Coding::Deflate, page);
        for stream in [&raw, &zlib] {
            for at in 0..4 {
                let mut d = Capped::new(Coding::Deflate, 1 << 20).unwrap();
                let mut out = d.decode(&stream[..at]).unwrap();
                out.extend(d.decode(&stream[at..]).unwrap());
                out.extend(d.finish().unwrap());
                assert_eq!(out, page, "split at {at}");
            }
        }
        // No bytes at all: an empty page, whatever the coding says.
        for coding in [Coding::Gzip, Coding::Deflate, Coding::Br, Coding::Zstd] {
            let d = Capped::new(coding, 1 << 20).unwrap();
            assert_eq!(d.finish().unwrap(), b"", "{coding:?}");
        }
        let mut one_byte = Capped::new(Coding::Deflate, 1 << 20).unwrap();
        one_byte.decode(&zlib[..1]).unwrap();
        assert!(one_byte.finish().is_err());
    }

    #[test]
    fn a_flush_sends_what_the_encoder_holds() {
        for coding in [Coding::Gzip, Coding::Br] {
            let mut e = Encoder::new(coding);
            let mut wire = e.encode(b"<html><head></head><body>first").unwrap();
            wire.extend(e.flush().unwrap());
            let mut partial = Vec::new();
            match coding {
                Coding::Gzip => {
                    let mut d = flate2::write::GzDecoder::new(&mut partial);
                    d.write_all(&wire).unwrap();
                    d.flush().unwrap();
                }
                _ => {
                    let mut d = brotli::DecompressorWriter::new(&mut partial, 4096);
                    d.write_all(&wire).unwrap();
                    d.flush().unwrap();
                }
            }
            assert_eq!(partial, b"<html><head></head><body>first", "{coding:?}");
        }
    }

    /// A zstd frame (no checksum, no content size) with window log
    /// `window_log` and `blocks` RLE blocks of 128 KiB each: four bytes of
    /// input per 128 KiB of output.
    fn zstd_rle_frame(window_log: u8, blocks: usize) -> Vec<u8> {
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, (window_log - 10) << 3];
        for i in 0..blocks {
            let last = u32::from(i + 1 == blocks);
            let header = last | (1 << 1) | ((128 << 10) << 3);
            frame.extend_from_slice(&header.to_le_bytes()[..3]);
            frame.push(b'x');
        }
        frame
    }

    #[test]
    fn one_chunk_never_decodes_far_past_the_cap() {
        // 4 KiB of input that would decode to 128 MiB, in one chunk.
        let bomb = zstd_rle_frame(20, 1023);
        assert!(bomb.len() < 4200);
        let limit = 1 << 20;
        let mut d = Capped::new(Coding::Zstd, limit).unwrap();
        assert!(matches!(d.decode(&bomb), Err(CodecError::TooLarge)));
        let held = d.sink().map_or(0, |s| s.ready.capacity());
        assert!(held <= limit, "{held} bytes held for a {limit}-byte cap");
        // The frame itself is sound: under a larger cap it decodes.
        let small = zstd_rle_frame(20, 3);
        let out = decode_in_chunks(Coding::Zstd, &small, 1 << 20).unwrap();
        assert_eq!(out, vec![b'x'; 3 << 17]);
    }

    #[test]
    fn zstd_frames_that_want_a_window_over_8_mib_are_refused() {
        let ok = decode_in_chunks(Coding::Zstd, &zstd_rle_frame(23, 1), 1 << 20);
        assert_eq!(ok.unwrap().len(), 128 << 10);
        assert!(matches!(
            decode_in_chunks(Coding::Zstd, &zstd_rle_frame(27, 1), 1 << 20),
            Err(CodecError::Corrupt(_))
        ));
    }

    #[test]
    fn the_client_gets_br_then_gzip_then_identity() {
        assert_eq!(preferred(&["gzip, deflate, br"]), Coding::Br);
        assert_eq!(preferred(&["gzip;q=0.8", "br;q=0"]), Coding::Gzip);
        assert_eq!(preferred(&["deflate, zstd"]), Coding::Identity);
        assert_eq!(preferred(&[]), Coding::Identity);
        assert_eq!(Coding::from_header("GZIP"), Some(Coding::Gzip));
        assert_eq!(Coding::from_header("gzip, br"), None);
        assert_eq!(Coding::from_header("compress"), None);
    }
}
