//! How a chunk of pages is stored: compressed with zstd when that makes it
//! smaller, raw otherwise, and either sealed under the image's key if it
//! has one ([`crate::seal`]; compression first). Decoding treats the
//! stored bytes as untrusted: the output is bounded by the chunk's
//! recorded length and must fill it exactly, and every length comes from
//! the record, never from the bytes.

use crate::seal::{ImageKey, SealError};
use crate::{Chunk, Codec, ImageError, Result};

/// Compression of new chunks: a zstd level, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd(i32),
}

impl Default for Compression {
    /// Level 1: the fastest of the regular levels, which compresses page
    /// data (text, heaps, zero-rich structures) at several hundred MB/s per
    /// core.
    fn default() -> Self {
        Compression::Zstd(1)
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "none" {
            return Ok(Compression::None);
        }
        match s.parse::<i32>() {
            Ok(l) if (1..=19).contains(&l) => Ok(Compression::Zstd(l)),
            _ => Err(format!("{s:?} is neither a zstd level (1-19) nor \"none\"")),
        }
    }
}

/// One writer's compressor, kept across chunks (a zstd context is costly to
/// make), which stops trying for a while on memory that does not compress.
pub struct Encoder {
    zstd: Option<zstd::bulk::Compressor<'static>>,
    out: Vec<u8>,
    /// Chunks left to store raw without trying.
    skip: u32,
}

/// After a chunk that did not compress, this many are stored raw before
/// the next try: incompressible memory then costs about a sixteenth of
/// its compression time.
const SKIP_AFTER_MISS: u32 = 15;

impl Encoder {
    pub fn new(c: Compression) -> Result<Encoder> {
        let zstd = match c {
            Compression::None => None,
            Compression::Zstd(level) => Some(
                zstd::bulk::Compressor::new(level)
                    .map_err(|e| ImageError::io(format!("starting zstd at level {level}"), e))?,
            ),
        };
        Ok(Encoder { zstd, out: Vec::new(), skip: 0 })
    }

    /// How to store `data`: `(Codec::Zstd, the frame)` when it came out
    /// smaller, else `(Codec::Raw, data)`.
    pub fn encode<'a>(&'a mut self, data: &'a [u8]) -> (Codec, &'a [u8]) {
        let Some(z) = self.zstd.as_mut() else { return (Codec::Raw, data) };
        // One page cannot save a page: not a try, nor a miss.
        if data.len() <= crate::PAGE as usize {
            return (Codec::Raw, data);
        }
        if self.skip > 0 {
            self.skip -= 1;
            return (Codec::Raw, data);
        }
        // Worth it only if at least a page is saved.
        let room = data.len().saturating_sub(crate::PAGE as usize);
        self.out.clear();
        self.out.reserve(room);
        match z.compress_to_buffer(data, &mut self.out) {
            Ok(n) if n > 0 && n <= room => (Codec::Zstd, &self.out[..n]),
            _ => {
                self.skip = SKIP_AFTER_MISS;
                (Codec::Raw, data)
            }
        }
    }
}

/// A decompression context kept across chunks (one per restore worker:
/// making one per chunk costs more than decoding a small chunk), with the
/// key that opens sealed chunks, if the image has one.
pub struct Decoder {
    /// Made at the first compressed chunk.
    zstd: Option<zstd::bulk::Decompressor<'static>>,
    key: Option<std::sync::Arc<ImageKey>>,
    /// A sealed zstd frame, opened.
    inner: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Result<Decoder> {
        Self::with_key(None)
    }

    /// A decoder that opens sealed chunks with `key`.
    pub fn with_key(key: Option<std::sync::Arc<ImageKey>>) -> Result<Decoder> {
        Ok(Decoder { zstd: None, key, inner: Vec::new() })
    }

    /// Turn the stored bytes of chunk `c` back into its data, in `out`
    /// (exactly `c.len` bytes long). A sealed chunk is authenticated
    /// first: its data comes only from bytes sealed under the key.
    pub fn decode(&mut self, c: &Chunk, stored: &[u8], out: &mut [u8]) -> Result<()> {
        if out.len() != c.len as usize || stored.len() != c.stored as usize || !c.codec.stored_ok(c.len, c.stored) {
            return Err(ImageError::Corrupt(format!(
                "chunk of {} bytes ({} stored) decoded from {} into {}",
                c.len,
                c.stored,
                stored.len(),
                out.len()
            )));
        }
        let inner = match c.codec {
            Codec::Raw => {
                out.copy_from_slice(stored);
                return Ok(());
            }
            Codec::Zstd => stored,
            Codec::SealedRaw | Codec::SealedZstd => {
                let key = self.key.as_ref().ok_or(SealError::NeedKey)?;
                if c.codec == Codec::SealedRaw {
                    return Ok(key.open_chunk(c, stored, out)?);
                }
                // (stored_ok: more than the overhead, less than the data.)
                self.inner.resize(stored.len() - crate::seal::CHUNK_OVERHEAD as usize, 0);
                key.open_chunk(c, stored, &mut self.inner)?;
                &self.inner
            }
        };
        let zstd = match &mut self.zstd {
            Some(z) => z,
            None => self.zstd.insert(zstd::bulk::Decompressor::new().map_err(|e| ImageError::io("starting zstd", e))?),
        };
        match zstd.decompress_to_buffer(inner, out) {
            Ok(n) if n == out.len() => Ok(()),
            Ok(n) => Err(ImageError::Corrupt(format!("a compressed chunk gives {n} bytes instead of {}", c.len))),
            Err(e) => Err(ImageError::Corrupt(format!("a compressed chunk does not decompress: {e}"))),
        }
    }
}

/// [`Decoder::decode`] with a context of its own, for a single chunk.
pub fn decode(c: &Chunk, stored: &[u8], out: &mut [u8]) -> Result<()> {
    Decoder::new()?.decode(c, stored, out)
}
