//! cryopod-image: the on-disk format of a checkpoint, with no dependency on
//! the kernel-facing crates so that it can be inspected and fuzzed alone.
//!
//! An image is a directory holding page packs (`pages-N.pack`, written
//! first) and a `manifest` (written last, atomically), opened safely by
//! [`dir::ImageDir`] (one directory descriptor, no links, no FIFOs, the
//! owner known before a byte is parsed). The manifest starts
//! with a fixed header — magic, format version, body length, BLAKE3 of the
//! body — followed by the body: the records of [`records`], bincode-encoded
//! under a size limit. Page contents live in packs as content-addressed
//! chunks, compressed where that pays ([`codec`]); [`Manifest::validate`] checks every index and bound, and
//! [`store::PackReader::verify_all`] checks every chunk hash, before a restore
//! touches the system. With a key ([`seal`]) chunks, manifest and a pod's
//! files are sealed (XChaCha20-Poly1305), and opened only with that key.
#![forbid(unsafe_code)]

pub mod chain;
pub mod codec;
pub mod cpu;
pub mod dir;
pub mod kernel_objects;
pub mod manifest;
pub mod pod;
pub mod records;
pub mod seal;
pub mod shared;
pub mod sockets;
pub mod store;
pub mod stream;

pub use codec::Compression;
pub use cpu::{CpuFeatures, CpuImage, XComponent};
pub use dir::{ImageDir, ImageFile, ImageOwner, INCOMPLETE_MARKER};
pub use kernel_objects::*;
pub use manifest::{
    decode_manifest, decode_manifest_keyed, encode_manifest, encode_manifest_keyed, seal, MANIFEST_FILE,
};
pub use pod::PodImage;
pub use records::*;
pub use seal::{ImageKey, SealError};
pub use sockets::*;

/// Anything wrong with an image, with the object or file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The io error is the source (not repeated in the message, so that a
    /// printed chain names the errno once).
    #[error("{path}")]
    Io { path: String, source: std::io::Error },
    #[error("image directory {0} is missing")]
    Missing(String),
    /// A file or directory that must not be trusted (a FIFO, a link, a
    /// file others may write, a file of another user).
    #[error("{0}")]
    Unsafe(String),
    #[error("not a cryopod image: {0}")]
    NotAnImage(String),
    #[error("image format version {found} is not supported (this cryopod reads version {supported})")]
    Version { found: u32, supported: u32 },
    #[error("image is truncated: {0}")]
    Truncated(String),
    #[error("image is corrupted: {0}")]
    Corrupt(String),
    /// Sealed and not opened: no key, another key, changed bytes.
    #[error(transparent)]
    Seal(#[from] seal::SealError),
}

impl ImageError {
    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        ImageError::Io { path: path.to_string(), source }
    }
}

pub type Result<T> = std::result::Result<T, ImageError>;
