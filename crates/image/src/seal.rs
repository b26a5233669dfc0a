//! Image encryption (`--key FILE`): why an image may be kept where others
//! can read it. XChaCha20-Poly1305 (an AEAD) seals every page chunk, the
//! manifest, and a pod's files, so that an image — its directory, a shared
//! store, a stream — reveals nothing of the memory it holds, and any change
//! to it is refused before a restore makes a process. All the cryptography
//! of the image format is here; the other modules only call it.
//!
//! **Keys.** The key file holds 32 bytes (raw, or as 64 hexadecimal
//! characters and an optional newline); it is read once, so `--key
//! /dev/fd/N` hands it over through a descriptor. From it
//! `blake3::derive_key` makes independent subkeys, one per purpose (see the
//! `CTX_*` strings): chunk sealing, chunk nonces, chunk hashes, the sealing
//! of the manifest and files, a key identifier, and the pre-shared key with
//! which two hosts of the same key file authenticate each other (the
//! migrate crate). The key never goes to
//! the image, a log or a message; subkeys are wiped when dropped.
//!
//! **Chunks.** With a key a chunk's hash is the keyed BLAKE3 of its data,
//! so a hash does not let anyone confirm a guess at the contents, and the
//! chunks of different keys (or of none) never share a hash: images with
//! different keys may share one store, each finding only its own chunks.
//! What was stored before (the data raw, or its zstd frame: compression
//! comes first) is sealed with the hash, length and codec as associated
//! data. The nonce is derived, not drawn: from the keyed hash, length and
//! codec, and for a zstd frame from the frame's bytes too, because a frame
//! depends on the zstd level and version, not on the data alone, and one
//! nonce must never seal two different messages. The same chunk under the
//! same key so seals to the same bytes, and deduplication (in an image, a
//! store, a `--parent` chain) works as without a key. The nonce is stored
//! in front of the ciphertext (the reader cannot derive a frame's nonce
//! before it has the frame): stored bytes are nonce (24), ciphertext, tag
//! (16) — [`CHUNK_OVERHEAD`] more than the inner bytes, which the records
//! check ([`crate::Codec::stored_ok`]).
//!
//! **Manifest.** The fixed header stays readable (magic, version, the
//! "sealed" flag, length, checksum). The body is the key identifier, a
//! random nonce, an [`crate::manifest::Outline`] in the clear (the names
//! and sizes of the image's files and where its store chunks are: what
//! `ls -l` shows anyway, and what streams and a store's gc need without the
//! key), and the sealed bincode body; everything before the ciphertext is
//! associated data. The identifier tells a wrong key from damage.
//!
//! **Files** (a pod's tmpfs archive, SysV segments, its log copy) are
//! sealed in frames of [`FRAME`] bytes, each with its own nonce (a random
//! prefix and the frame's number) and, in its associated data, the file's
//! name and whether it is the last frame: a truncated, reordered, extended
//! or altered file is refused, and memory stays bounded by a frame.

use crate::{Chunk, Codec};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use std::io::{Read, Write};
use std::path::Path;
use zeroize::Zeroizing;

/// Bytes of an XChaCha20-Poly1305 nonce and tag.
pub const NONCE: usize = 24;
pub const TAG: usize = 16;
/// What sealing adds to a chunk's stored bytes: its nonce and tag.
pub const CHUNK_OVERHEAD: u32 = (NONCE + TAG) as u32;
/// Bytes of the key identifier in a sealed manifest.
pub const KEY_ID: usize = 16;
/// Plain bytes per frame of a sealed file.
pub const FRAME: usize = 64 << 10;
/// A sealed file starts with this and a random nonce prefix.
pub const FILE_MAGIC: [u8; 8] = *b"CRYOPODF";
const FILE_PREFIX: usize = 16;
/// Bytes before a sealed file's first frame.
pub const FILE_HEADER: usize = FILE_MAGIC.len() + FILE_PREFIX;

const CTX_CHUNK: &str = "cryopod image 2026-05 chunk sealing key (XChaCha20-Poly1305)";
const CTX_NONCE: &str = "cryopod image 2026-05 chunk nonce key (keyed BLAKE3)";
const CTX_HASH: &str = "cryopod image 2026-05 chunk hash key (keyed BLAKE3)";
const CTX_FILE: &str = "cryopod image 2026-05 manifest and file sealing key (XChaCha20-Poly1305)";
const CTX_ID: &str = "cryopod image 2026-05 key identifier";
const CTX_PEER: &str = "cryopod hosts 2026-12 peer authentication pre-shared key (Noise psk)";

/// Why something sealed could not be opened, or a key not read. Each is
/// one sentence; none names a byte of a key.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the image is encrypted: give its key with --key FILE")]
    NeedKey,
    #[error("the key does not open this image: it was encrypted with another key")]
    WrongKey,
    #[error("a key was given but the image is not encrypted (refused: it may have been replaced)")]
    NotSealed,
    /// What failed (the manifest, a page chunk, a file by name).
    #[error("{0} fails authentication: it was damaged or altered")]
    Unauthentic(String),
    #[error("cannot read key file {path}")]
    KeyRead { path: String, source: std::io::Error },
    /// `holds`: how many bytes it holds, in words.
    #[error("key file {path} must hold 32 raw bytes or 64 hexadecimal characters (it holds {holds})")]
    KeyFormat { path: String, holds: String },
    #[error("cannot seal {0}")]
    Seal(String),
}

type Result<T> = std::result::Result<T, SealError>;

/// The subkeys derived from a key file (see the module comment). Cheap to
/// share behind an `Arc`; wiped when dropped; its `Debug` shows only the
/// identifier.
pub struct ImageKey {
    chunk: XChaCha20Poly1305,
    file: XChaCha20Poly1305,
    nonce: Zeroizing<[u8; 32]>,
    hash: Zeroizing<[u8; 32]>,
    peer: Zeroizing<[u8; 32]>,
    id: [u8; KEY_ID],
}

impl std::fmt::Debug for ImageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageKey(id {})", crate::shared::hex(&self.id))
    }
}

fn cipher(context: &str, material: &[u8; 32]) -> XChaCha20Poly1305 {
    let k = Zeroizing::new(blake3::derive_key(context, material));
    XChaCha20Poly1305::new(&Key::from(*k))
}

impl ImageKey {
    /// The subkeys of the 32 key bytes `material`.
    pub fn from_bytes(material: &[u8; 32]) -> ImageKey {
        let id = blake3::derive_key(CTX_ID, material);
        let mut short = [0u8; KEY_ID];
        short.copy_from_slice(&id[..KEY_ID]);
        ImageKey {
            chunk: cipher(CTX_CHUNK, material),
            file: cipher(CTX_FILE, material),
            nonce: Zeroizing::new(blake3::derive_key(CTX_NONCE, material)),
            hash: Zeroizing::new(blake3::derive_key(CTX_HASH, material)),
            peer: Zeroizing::new(blake3::derive_key(CTX_PEER, material)),
            id: short,
        }
    }

    /// The key in a key file's contents: exactly 32 bytes, or 64
    /// hexadecimal characters with an optional trailing newline. `path`
    /// names the file in the refusal.
    pub fn parse(bytes: &[u8], path: &str) -> Result<ImageKey> {
        let refuse = || SealError::KeyFormat {
            path: path.to_string(),
            holds: match bytes.len() {
                n if n > 65 => "more than 65 bytes".to_string(),
                n => format!("{n} bytes"),
            },
        };
        let mut material = Zeroizing::new([0u8; 32]);
        if bytes.len() == 32 {
            material.copy_from_slice(bytes);
            return Ok(Self::from_bytes(&material));
        }
        let hex = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        if hex.len() != 64 {
            return Err(refuse());
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        for (o, pair) in material.iter_mut().zip(hex.chunks_exact(2)) {
            *o = match (nibble(pair[0]), nibble(pair[1])) {
                (Some(h), Some(l)) => h << 4 | l,
                _ => return Err(refuse()),
            };
        }
        Ok(Self::from_bytes(&material))
    }

    /// Read the key file at `path` once (so `/dev/fd/N`, a pipe, works).
    pub fn from_file(path: &Path) -> Result<ImageKey> {
        let shown = path.display().to_string();
        let read_err = |source| SealError::KeyRead { path: shown.clone(), source };
        let f = std::fs::File::open(path).map_err(read_err)?;
        // Room enough that reading never moves (and so copies) the bytes;
        // one more than the longest valid file tells a longer one apart.
        let mut buf = Zeroizing::new(Vec::with_capacity(256));
        f.take(66).read_to_end(&mut buf).map_err(read_err)?;
        Self::parse(&buf, &shown)
    }

    /// The pre-shared key two hosts holding this key file authenticate
    /// each other with (`cryopod serve` and `migrate`, see the migrate
    /// crate): a subkey of its own, never used to seal anything.
    pub fn peer_psk(&self) -> &[u8; 32] {
        &self.peer
    }

    /// The identifier a sealed manifest records (tells a wrong key from
    /// damage; reveals nothing of the key).
    pub fn id(&self) -> [u8; KEY_ID] {
        self.id
    }

    /// The keyed hash of chunk data: a chunk's name under this key.
    pub fn hash(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.hash, data).as_bytes()
    }

    /// The nonce of a chunk (see the module comment): from its hash,
    /// length and codec, and a zstd frame's own bytes.
    fn chunk_nonce(&self, hash: &[u8; 32], len: u32, codec: Codec, inner: &[u8]) -> XNonce {
        let mut h = blake3::Hasher::new_keyed(&self.nonce);
        h.update(&chunk_aad(hash, len, codec));
        if codec == Codec::SealedZstd {
            h.update(inner);
        }
        let mut n = [0u8; NONCE];
        h.finalize_xof().fill(&mut n);
        XNonce::from(n)
    }

    /// Append the sealed form of a chunk to `out`: `inner` is what would
    /// be stored without a key (its data raw, or a zstd frame of it),
    /// `codec` the sealed codec the record will carry, `hash` the keyed
    /// hash and `len` the length of its data.
    pub fn seal_chunk(&self, hash: &[u8; 32], len: u32, codec: Codec, inner: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if !codec.is_sealed() {
            return Err(SealError::Seal(format!("a chunk as {codec:?}")));
        }
        let nonce = self.chunk_nonce(hash, len, codec, inner);
        out.reserve(inner.len() + CHUNK_OVERHEAD as usize);
        out.extend_from_slice(&nonce);
        let at = out.len();
        out.extend_from_slice(inner);
        let tag = self
            .chunk
            .encrypt_inout_detached(&nonce, &chunk_aad(hash, len, codec), (&mut out[at..]).into())
            .map_err(|_| SealError::Seal("a chunk".into()))?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Open sealed chunk `c` from its `stored` bytes into `out`, which must
    /// be exactly `stored.len() - CHUNK_OVERHEAD` bytes (the inner bytes:
    /// the data, or the zstd frame).
    pub fn open_chunk(&self, c: &Chunk, stored: &[u8], out: &mut [u8]) -> Result<()> {
        let fail = || SealError::Unauthentic(format!("a page chunk ({} bytes at offset {})", c.len, c.offset));
        if !c.codec.is_sealed() || stored.len() != out.len() + CHUNK_OVERHEAD as usize {
            return Err(fail());
        }
        let (nonce, rest) = stored.split_at(NONCE);
        let (ct, tag) = rest.split_at(rest.len() - TAG);
        let nonce = XNonce::try_from(nonce).map_err(|_| fail())?;
        let tag = Tag::try_from(tag).map_err(|_| fail())?;
        let buf = chacha20poly1305::aead::inout::InOutBuf::new(ct, out).map_err(|_| fail())?;
        self.chunk.decrypt_inout_detached(&nonce, &chunk_aad(&c.hash, c.len, c.codec), buf, &tag).map_err(|_| fail())
    }

    /// Seal a manifest body: `aad` is everything the manifest file holds
    /// before the ciphertext (header, key identifier, outline). Returns the
    /// nonce to store and the ciphertext with its tag.
    pub(crate) fn seal_manifest(&self, aad: &[u8], body: &[u8]) -> Result<([u8; NONCE], Vec<u8>)> {
        let mut n = [0u8; NONCE];
        random(&mut n).map_err(|e| SealError::Seal(format!("the manifest: {e}")))?;
        let nonce = XNonce::from(n);
        let mut out = Vec::with_capacity(body.len() + TAG);
        out.extend_from_slice(body);
        let tag = self
            .file
            .encrypt_inout_detached(&nonce, &manifest_aad(aad, &n), out.as_mut_slice().into())
            .map_err(|_| SealError::Seal("the manifest".into()))?;
        out.extend_from_slice(&tag);
        Ok((n, out))
    }

    /// Open a sealed manifest body (see [`ImageKey::seal_manifest`]).
    pub(crate) fn open_manifest(&self, aad: &[u8], nonce: &[u8; NONCE], sealed: &[u8]) -> Result<Vec<u8>> {
        let fail = || SealError::Unauthentic("the manifest".into());
        let ct_len = sealed.len().checked_sub(TAG).ok_or_else(fail)?;
        let (ct, tag) = sealed.split_at(ct_len);
        let tag = Tag::try_from(tag).map_err(|_| fail())?;
        let mut out = vec![0u8; ct_len];
        let buf = chacha20poly1305::aead::inout::InOutBuf::new(ct, &mut out).map_err(|_| fail())?;
        self.file
            .decrypt_inout_detached(&XNonce::from(*nonce), &manifest_aad(aad, nonce), buf, &tag)
            .map_err(|_| fail())?;
        Ok(out)
    }

    /// Seal `data` whole as the file `name` of an image.
    pub fn seal_bytes(&self, name: &str, data: &[u8]) -> Result<Vec<u8>> {
        let frames = data.len() / FRAME + 1;
        let mut w = FileWriter::new(Some(self), name, Vec::with_capacity(FILE_HEADER + data.len() + frames * TAG))
            .map_err(|e| SealError::Seal(format!("{name}: {e}")))?;
        w.write_all(data).map_err(|e| SealError::Seal(format!("{name}: {e}")))?;
        w.finish().map_err(|e| SealError::Seal(format!("{name}: {e}")))
    }

    /// Open the sealed file `name` of `size` bytes read from `r`, writing
    /// its contents to `out` frame by frame (only authenticated frames are
    /// written; a failure leaves `out` incomplete, so it must be a scratch
    /// place: the caller uses the contents only on success). Returns the
    /// bytes written.
    pub fn open_file(&self, name: &str, r: &mut dyn Read, size: u64, out: &mut dyn Write) -> crate::Result<u64> {
        let fail = || crate::ImageError::from(SealError::Unauthentic(name.to_string()));
        let read = |r: &mut dyn Read, b: &mut [u8]| {
            r.read_exact(b).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => fail(),
                _ => crate::ImageError::io(name, e),
            })
        };
        let mut header = [0u8; FILE_HEADER];
        if size < (FILE_HEADER + TAG) as u64 {
            return Err(fail());
        }
        read(r, &mut header)?;
        if header[..FILE_MAGIC.len()] != FILE_MAGIC {
            return Err(fail());
        }
        let mut left = size - FILE_HEADER as u64;
        let mut buf = Zeroizing::new(vec![0u8; FRAME + TAG]);
        let mut index = 0u64;
        let mut written = 0u64;
        loop {
            // A frame is the last exactly when the file ends with it.
            let last = left <= (FRAME + TAG) as u64;
            let n = if last { usize::try_from(left).map_err(|_| fail())? } else { FRAME + TAG };
            if n < TAG {
                return Err(fail());
            }
            let frame = &mut buf[..n];
            read(r, frame)?;
            let (ct, tag) = frame.split_at_mut(n - TAG);
            let tag = Tag::try_from(&*tag).map_err(|_| fail())?;
            let nonce = file_nonce(&header, index);
            let aad = file_aad(name, &header, last);
            self.file.decrypt_inout_detached(&nonce, &aad, ct.into(), &tag).map_err(|_| fail())?;
            out.write_all(ct).map_err(|e| crate::ImageError::io(format!("opening {name}"), e))?;
            written += ct.len() as u64;
            left -= n as u64;
            index += 1;
            if last {
                return Ok(written);
            }
        }
    }

    /// [`ImageKey::open_file`] into memory, for files small enough to hold.
    pub fn open_bytes(&self, name: &str, sealed: &[u8]) -> crate::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(sealed.len());
        self.open_file(name, &mut &sealed[..], sealed.len() as u64, &mut out)?;
        Ok(out)
    }
}

/// Fill `buf` from the kernel's random source.
pub(crate) fn random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        got += rustix::rand::getrandom(&mut buf[got..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(())
}

/// What a chunk's seal binds: its hash, length and (sealed) codec.
fn chunk_aad(hash: &[u8; 32], len: u32, codec: Codec) -> [u8; 46] {
    let mut a = [0u8; 46];
    a[..9].copy_from_slice(b"cryopod-c");
    a[9..41].copy_from_slice(hash);
    a[41..45].copy_from_slice(&len.to_le_bytes());
    a[45] = match codec {
        Codec::SealedRaw => 1,
        Codec::SealedZstd => 2,
        _ => 0,
    };
    a
}

fn manifest_aad(aad: &[u8], nonce: &[u8; NONCE]) -> Vec<u8> {
    let mut a = Vec::with_capacity(9 + aad.len() + NONCE);
    a.extend_from_slice(b"cryopod-m");
    a.extend_from_slice(aad);
    a.extend_from_slice(nonce);
    a
}

fn file_nonce(header: &[u8; FILE_HEADER], index: u64) -> XNonce {
    let mut n = [0u8; NONCE];
    n[..FILE_PREFIX].copy_from_slice(&header[FILE_MAGIC.len()..]);
    n[FILE_PREFIX..].copy_from_slice(&index.to_be_bytes());
    XNonce::from(n)
}

fn file_aad(name: &str, header: &[u8; FILE_HEADER], last: bool) -> Vec<u8> {
    let mut a = Vec::with_capacity(9 + 8 + name.len() + FILE_HEADER + 1);
    a.extend_from_slice(b"cryopod-f");
    a.extend_from_slice(&(name.len() as u64).to_le_bytes());
    a.extend_from_slice(name.as_bytes());
    a.extend_from_slice(header);
    a.push(u8::from(last));
    a
}

/// Writes a file of an image: sealed in frames under a key, or as it is
/// without one. [`FileWriter::finish`] must be called (it writes the last
/// frame); dropped without it, the file is incomplete and will not open.
pub struct FileWriter<'k, W: Write> {
    key: Option<&'k ImageKey>,
    name: String,
    header: [u8; FILE_HEADER],
    inner: W,
    buf: Zeroizing<Vec<u8>>,
    index: u64,
}

impl<'k, W: Write> FileWriter<'k, W> {
    /// A writer of file `name` into `inner` (the header is written now).
    pub fn new(key: Option<&'k ImageKey>, name: &str, mut inner: W) -> std::io::Result<Self> {
        let mut header = [0u8; FILE_HEADER];
        header[..FILE_MAGIC.len()].copy_from_slice(&FILE_MAGIC);
        if key.is_some() {
            random(&mut header[FILE_MAGIC.len()..])?;
            inner.write_all(&header)?;
        }
        let cap = if key.is_some() { FRAME + TAG } else { 0 };
        Ok(FileWriter {
            key,
            name: name.to_string(),
            header,
            inner,
            buf: Zeroizing::new(Vec::with_capacity(cap)),
            index: 0,
        })
    }

    fn frame(&mut self, key: &ImageKey, last: bool) -> std::io::Result<()> {
        let nonce = file_nonce(&self.header, self.index);
        let aad = file_aad(&self.name, &self.header, last);
        let tag = key
            .file
            .encrypt_inout_detached(&nonce, &aad, self.buf.as_mut_slice().into())
            .map_err(|_| std::io::Error::other(format!("cannot seal {}", self.name)))?;
        self.inner.write_all(&self.buf)?;
        self.inner.write_all(&tag)?;
        self.buf.clear();
        self.index += 1;
        Ok(())
    }

    /// Write the last frame and flush; returns the inner writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        if let Some(key) = self.key {
            self.frame(key, true)?;
        }
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for FileWriter<'_, W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let Some(key) = self.key else { return self.inner.write(data) };
        if data.is_empty() {
            return Ok(0);
        }
        // A full frame goes out only once more data follows: the last
        // frame is then never empty unless the whole file is.
        if self.buf.len() == FRAME {
            self.frame(key, false)?;
        }
        let n = data.len().min(FRAME - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
