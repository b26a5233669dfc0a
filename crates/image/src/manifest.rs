//! The manifest file: fixed header (magic, version, length, checksum) and a
//! bounded bincode body. Checkpoints write it last (temporary file, fsync,
//! rename), so a directory either has a complete manifest or none; it is
//! read through [`crate::dir::ImageDir`].

use crate::{ImageError, Manifest, Result};
use bincode::Options;

pub const MANIFEST_FILE: &str = "manifest";
pub const MAGIC: [u8; 8] = *b"CRYOPOD\0";
/// 6: packs have a home (own, parent chain, store); parent and store links.
pub const FORMAT_VERSION: u32 = 6;
/// Largest manifest body accepted (bounds every allocation while decoding).
pub const MAX_BODY: u64 = 256 << 20;
pub(crate) const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 32;

fn codec() -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding().with_little_endian().with_limit(MAX_BODY)
}

/// Serialize a manifest with its header.
pub fn encode_manifest(m: &Manifest) -> Result<Vec<u8>> {
    let body = codec().serialize(m).map_err(|e| ImageError::Corrupt(format!("cannot encode manifest: {e}")))?;
    Ok(seal(&body))
}

/// Put the header (magic, version, length, checksum) in front of a body.
/// Public so that tests and fuzz targets can reach the body decoder with
/// arbitrary bodies.
pub fn seal(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out.extend_from_slice(body);
    out
}

/// Parse and check a manifest (header, checksum, then structure).
pub fn decode_manifest(bytes: &[u8]) -> Result<Manifest> {
    if bytes.len() < HEADER_LEN {
        if bytes.len() >= 8 && bytes[..8] != MAGIC {
            return Err(ImageError::NotAnImage("bad magic".into()));
        }
        return Err(ImageError::Truncated(format!("manifest has {} bytes, header needs {HEADER_LEN}", bytes.len())));
    }
    if bytes[..8] != MAGIC {
        return Err(ImageError::NotAnImage("bad magic".into()));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
    if version != FORMAT_VERSION {
        return Err(ImageError::Version { found: version, supported: FORMAT_VERSION });
    }
    let len = u64::from_le_bytes(bytes[16..24].try_into().unwrap_or_default());
    if len > MAX_BODY {
        return Err(ImageError::Corrupt(format!("manifest body of {len} bytes exceeds the {MAX_BODY}-byte limit")));
    }
    let body = &bytes[HEADER_LEN..];
    if (body.len() as u64) < len {
        return Err(ImageError::Truncated(format!("manifest body has {} of {len} bytes", body.len())));
    }
    if body.len() as u64 > len {
        return Err(ImageError::Corrupt("trailing bytes after the manifest body".into()));
    }
    if blake3::hash(body).as_bytes() != &bytes[24..56] {
        return Err(ImageError::Corrupt("manifest checksum mismatch".into()));
    }
    let m: Manifest = codec().deserialize(body).map_err(|e| ImageError::Corrupt(format!("manifest body: {e}")))?;
    m.validate()?;
    Ok(m)
}
