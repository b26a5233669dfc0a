//! cryopod-image: the on-disk format of a checkpoint, with no dependency on
//! the kernel-facing crates so that it can be inspected and fuzzed alone.
//!
//! An image is a directory holding page packs (`pages-N.pack`, written
//! first) and a `manifest` (written last, atomically). The manifest starts
//! with a fixed header — magic, format version, body length, BLAKE3 of the
//! body — followed by the body: the records of [`records`], bincode-encoded
//! under a size limit. Page contents live in packs as content-addressed
//! chunks; [`Manifest::validate`] checks every index and bound, and
//! [`store::PackReader::verify_all`] checks every chunk hash, before a restore
//! touches the system.
#![forbid(unsafe_code)]

pub mod cpu;
pub mod manifest;
pub mod pod;
pub mod records;
pub mod store;

pub use cpu::{CpuFeatures, CpuImage, XComponent};
pub use manifest::{decode_manifest, encode_manifest, read_manifest, seal, write_manifest, MANIFEST_FILE};
pub use pod::PodImage;
pub use records::*;

/// Anything wrong with an image, with the object or file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("not a cryopod image: {0}")]
    NotAnImage(String),
    #[error("image format version {found} is not supported (this cryopod reads version {supported})")]
    Version { found: u32, supported: u32 },
    #[error("image is truncated: {0}")]
    Truncated(String),
    #[error("image is corrupted: {0}")]
    Corrupt(String),
}

impl ImageError {
    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        ImageError::Io { path: path.to_string(), source }
    }
}

pub type Result<T> = std::result::Result<T, ImageError>;
