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
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Deflate(flate2::write::ZlibDecoder<Vec<u8>>),
    Br(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

/// The decoded bytes allowed per page, and how many came out so far.
pub struct Capped {
    pub decoder: Decoder,
    limit: usize,
    produced: usize,
}

impl Capped {
    pub fn new(coding: Coding, limit: usize) -> Result<Capped, CodecError> {
        let decoder = match coding {
            Coding::Identity => Decoder::Identity,
            Coding::Gzip => Decoder::Gzip(flate2::write::GzDecoder::new(Vec::new())),
            Coding::Deflate => Decoder::Deflate(flate2::write::ZlibDecoder::new(Vec::new())),
            Coding::Br => Decoder::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 8192))),
            Coding::Zstd => Decoder::Zstd(
                zstd::stream::write::Decoder::new(Vec::new()).map_err(CodecError::Corrupt)?,
            ),
        };
        Ok(Capped {
            decoder,
            limit,
            produced: 0,
        })
    }

    /// Feeds one chunk; returns the decoded bytes ready so far. Large chunks
    /// are fed in slices so that a bomb is caught before it inflates much
    /// past the cap.
    pub fn decode(&mut self, chunk: &[u8]) -> Result<Vec<u8>, CodecError> {
        if let Decoder::Identity = self.decoder {
            return self.count(chunk.to_vec());
        }
        let mut out = Vec::new();
        for piece in chunk.chunks(4096) {
            let write = match &mut self.decoder {
                Decoder::Identity => Ok(()),
                Decoder::Gzip(d) => d.write_all(piece),
                Decoder::Deflate(d) => d.write_all(piece),
                Decoder::Br(d) => d.write_all(piece),
                Decoder::Zstd(d) => d.write_all(piece),
            };
            write.map_err(CodecError::Corrupt)?;
            let ready = self.take();
            out.extend_from_slice(&self.count(ready)?);
        }
        Ok(out)
    }

    /// Ends the stream: the last decoded bytes, or an error for a truncated one.
    pub fn finish(mut self) -> Result<Vec<u8>, CodecError> {
        let done = match &mut self.decoder {
            Decoder::Identity => Ok(()),
            Decoder::Gzip(d) => d.try_finish(),
            Decoder::Deflate(d) => d.try_finish(),
            Decoder::Br(d) => d.flush().and_then(|()| {
                // A brotli stream that ended early has produced no end marker.
                if d.close().is_err() {
                    Err(std::io::Error::other("truncated brotli stream"))
                } else {
                    Ok(())
                }
            }),
            Decoder::Zstd(d) => d.flush(),
        };
        done.map_err(CodecError::Corrupt)?;
        let rest = self.take();
        self.count(rest)
    }

    fn take(&mut self) -> Vec<u8> {
        match &mut self.decoder {
            Decoder::Identity => Vec::new(),
            Decoder::Gzip(d) => std::mem::take(d.get_mut()),
            Decoder::Deflate(d) => std::mem::take(d.get_mut()),
            Decoder::Br(d) => std::mem::take(d.get_mut()),
            Decoder::Zstd(d) => std::mem::take(d.get_mut()),
        }
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
