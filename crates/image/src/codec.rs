//! How a chunk of pages is stored: compressed with zstd when that makes it
//! smaller, raw otherwise. Decoding treats the stored bytes as untrusted:
//! the output is bounded by the chunk's recorded length and must fill it
//! exactly.

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
/// making one per chunk costs more than decoding a small chunk).
pub struct Decoder {
    zstd: zstd::bulk::Decompressor<'static>,
}

impl Decoder {
    pub fn new() -> Result<Decoder> {
        let zstd = zstd::bulk::Decompressor::new().map_err(|e| ImageError::io("starting zstd", e))?;
        Ok(Decoder { zstd })
    }

    /// Turn the stored bytes of chunk `c` back into its data, in `out`
    /// (exactly `c.len` bytes long).
    pub fn decode(&mut self, c: &Chunk, stored: &[u8], out: &mut [u8]) -> Result<()> {
        if out.len() != c.len as usize || stored.len() != c.stored as usize {
            return Err(ImageError::Corrupt(format!(
                "chunk of {} bytes ({} stored) decoded from {} into {}",
                c.len,
                c.stored,
                stored.len(),
                out.len()
            )));
        }
        match c.codec {
            Codec::Raw => {
                out.copy_from_slice(stored);
                Ok(())
            }
            Codec::Zstd => match self.zstd.decompress_to_buffer(stored, out) {
                Ok(n) if n == out.len() => Ok(()),
                Ok(n) => Err(ImageError::Corrupt(format!("a compressed chunk gives {n} bytes instead of {}", c.len))),
                Err(e) => Err(ImageError::Corrupt(format!("a compressed chunk does not decompress: {e}"))),
            },
        }
    }
}

/// [`Decoder::decode`] with a context of its own, for a single chunk.
pub fn decode(c: &Chunk, stored: &[u8], out: &mut [u8]) -> Result<()> {
    Decoder::new()?.decode(c, stored, out)
}
