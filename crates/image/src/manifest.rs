//! The manifest file: fixed header (magic, version, flags, length,
//! checksum) and a bounded bincode body, sealed under the image's key when
//! it has one (the layout is in [`crate::seal`]'s module comment).
//! Checkpoints write it last (temporary file, fsync, rename), so a
//! directory either has a complete manifest or none; it is read through
//! [`crate::dir::ImageDir`].

use crate::seal::{ImageKey, SealError, KEY_ID, NONCE, TAG};
use crate::{ImageError, Manifest, PackHome, Result, StoreLink};
use bincode::Options;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use zeroize::Zeroizing;

pub const MANIFEST_FILE: &str = "manifest";
pub const MAGIC: [u8; 8] = *b"CRYOPOD\0";
/// 6: packs have a home (own, parent chain, store); parent and store links.
/// 7: scheduling policy, I/O priority and memory policy of threads;
/// oom_score_adj, loginuid and membarrier registrations of processes.
/// 10: mlockall(MCL_FUTURE) of processes; a TCP socket's pending error;
/// memory areas' own policies; ping sockets; a pod's network settings.
pub const FORMAT_VERSION: u32 = 10;
/// Largest manifest body accepted (bounds every allocation while decoding).
pub const MAX_BODY: u64 = 256 << 20;
pub(crate) const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 32;

fn codec() -> impl Options {
    bincode::DefaultOptions::new().with_fixint_encoding().with_little_endian().with_limit(MAX_BODY)
}

/// Header flag: the body is sealed (see [`crate::seal`]).
pub const FLAG_SEALED: u32 = 1;

/// What the image's files are, readable without its key: a sealed
/// manifest carries it in the clear (authenticated with the rest), a plain
/// one is its own outline. Streams use it to know which files to take,
/// a store's gc to know which of its chunks the image uses.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Outline {
    /// Files beside the manifest.
    pub files: Vec<OutlineFile>,
    /// Some packs live elsewhere (in parent images or a store).
    pub borrows: bool,
    /// The store the image keeps chunks in.
    pub store: Option<StoreLink>,
    /// Per store pack, the offsets of the image's chunks in it.
    pub store_chunks: Vec<(String, Vec<u64>)>,
}

/// A file an image has beside its manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutlineFile {
    pub name: String,
    /// Its exact size, or `None` for any size up to a bound (a pod's log).
    pub size: Option<u64>,
    pub required: bool,
}

impl Outline {
    /// The outline of manifest `m`.
    pub fn of(m: &Manifest) -> Outline {
        let file = |name: &str, size, required| OutlineFile { name: name.to_string(), size, required };
        let mut files: Vec<OutlineFile> =
            m.packs.iter().filter(|p| p.home == PackHome::Own).map(|p| file(&p.name, Some(p.size), true)).collect();
        if let Some(pod) = &m.pod {
            if let Some((name, size, _)) = &pod.tmpfs_archive {
                files.push(file(name, Some(*size), true));
            }
            for seg in &pod.ipc.shm {
                files.push(file(&seg.data.0, Some(seg.data.1), true));
            }
            files.push(file(crate::stream::POD_LOG, None, false));
        }
        let mut in_store: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for c in &m.chunks {
            if let Some(p) = m.packs.get(c.pack as usize).filter(|p| p.home == PackHome::Store) {
                in_store.entry(&p.name).or_default().push(c.offset);
            }
        }
        Outline {
            files,
            borrows: m.packs.iter().any(|p| p.home != PackHome::Own),
            store: m.store.clone(),
            store_chunks: in_store.into_iter().map(|(n, o)| (n.to_string(), o)).collect(),
        }
    }

    /// Names plain, paths absolute (it is read without the key, so
    /// unauthenticated until the manifest is opened).
    fn validate(&self) -> Result<()> {
        let plain = |n: &str| !n.is_empty() && !n.contains('/') && !n.starts_with('.') && !n.contains('\0');
        let names = self.files.iter().map(|f| f.name.as_str()).chain(self.store_chunks.iter().map(|s| s.0.as_str()));
        if let Some(n) = names.into_iter().find(|n| !plain(n)) {
            return Err(ImageError::Corrupt(format!("the manifest's outline names {n:?}, not a plain file name")));
        }
        if self.store.as_ref().is_some_and(|s| !s.path.starts_with('/') || s.path.contains('\0')) {
            return Err(ImageError::Corrupt("the manifest's outline names a store path that is not absolute".into()));
        }
        Ok(())
    }
}

/// Serialize a manifest with its header.
pub fn encode_manifest(m: &Manifest) -> Result<Vec<u8>> {
    let body = codec().serialize(m).map_err(|e| ImageError::Corrupt(format!("cannot encode manifest: {e}")))?;
    Ok(seal(&body))
}

/// Serialize a manifest, sealed under `key` if there is one.
pub fn encode_manifest_keyed(m: &Manifest, key: Option<&ImageKey>) -> Result<Vec<u8>> {
    let Some(key) = key else { return encode_manifest(m) };
    if m.chunks.iter().any(|c| !c.codec.is_sealed()) {
        return Err(ImageError::Corrupt("cannot seal a manifest naming plain chunks".into()));
    }
    let body =
        Zeroizing::new(codec().serialize(m).map_err(|e| ImageError::Corrupt(format!("cannot encode manifest: {e}")))?);
    let outline = codec()
        .serialize(&Outline::of(m))
        .map_err(|e| ImageError::Corrupt(format!("cannot encode the manifest's outline: {e}")))?;
    let outline_len =
        u32::try_from(outline.len()).map_err(|_| ImageError::Corrupt("the manifest's outline is too large".into()))?;
    // The clear part: key identifier, nonce, outline (length first).
    let mut clear = Vec::with_capacity(KEY_ID + NONCE + 4 + outline.len());
    clear.extend_from_slice(&key.id());
    clear.extend_from_slice(&[0; NONCE]);
    clear.extend_from_slice(&outline_len.to_le_bytes());
    clear.extend_from_slice(&outline);
    let (nonce, sealed) = key.seal_manifest(&sealed_aad(&prefix(FLAG_SEALED), &clear), &body)?;
    clear[KEY_ID..KEY_ID + NONCE].copy_from_slice(&nonce);
    clear.extend_from_slice(&sealed);
    Ok(frame(&clear, FLAG_SEALED))
}

/// Put the header (magic, version, length, checksum) in front of a body.
/// Public so that tests and fuzz targets can reach the body decoder with
/// arbitrary bodies.
pub fn seal(body: &[u8]) -> Vec<u8> {
    frame(body, 0)
}

/// Magic, version and flags: the start of the header, which a sealed
/// body's seal binds.
fn prefix(flags: u32) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&MAGIC);
    p[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    p[12..16].copy_from_slice(&flags.to_le_bytes());
    p
}

fn frame(body: &[u8], flags: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&prefix(flags));
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out.extend_from_slice(body);
    out
}

/// What a sealed body's seal binds besides itself: the header's start and
/// the clear part without the nonce (the seal adds the nonce).
fn sealed_aad(prefix: &[u8], clear: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(prefix.len() + clear.len());
    a.extend_from_slice(prefix);
    a.extend_from_slice(&clear[..KEY_ID]);
    a.extend_from_slice(&clear[KEY_ID + NONCE..]);
    a
}

/// The facts of a manifest's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub sealed: bool,
}

/// Check the header and checksum; returns the header's facts and the body.
fn open_header(bytes: &[u8]) -> Result<(Header, &[u8])> {
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
    let flags = u32::from_le_bytes(bytes[12..16].try_into().unwrap_or_default());
    if flags & !FLAG_SEALED != 0 {
        return Err(ImageError::Corrupt(format!("the manifest header has unknown flags {flags:#x}")));
    }
    let sealed = flags & FLAG_SEALED != 0;
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
        return Err(match sealed {
            // Damage, or a change: which, only the key could tell.
            true => SealError::Unauthentic("the manifest".into()).into(),
            false => ImageError::Corrupt("manifest checksum mismatch".into()),
        });
    }
    Ok((Header { version, sealed }, body))
}

/// The header's facts (magic, version, flags, checksum checked).
pub fn header(bytes: &[u8]) -> Result<Header> {
    open_header(bytes).map(|(h, _)| h)
}

/// A sealed body cut in its parts: key identifier, nonce, outline, the
/// sealed manifest; and where the sealed part starts.
struct SealedBody<'a> {
    key_id: &'a [u8],
    nonce: [u8; NONCE],
    outline: &'a [u8],
    sealed: &'a [u8],
    clear_len: usize,
}

fn split_sealed(body: &[u8]) -> Result<SealedBody<'_>> {
    let bad = || ImageError::Corrupt("the sealed manifest body is malformed".into());
    let fixed = KEY_ID + NONCE + 4;
    let head = body.get(..fixed).ok_or_else(bad)?;
    let outline_len = u32::from_le_bytes(head[fixed - 4..].try_into().map_err(|_| bad())?);
    let outline_len = usize::try_from(outline_len).map_err(|_| bad())?;
    let clear_len = fixed.checked_add(outline_len).ok_or_else(bad)?;
    let outline = body.get(fixed..clear_len).ok_or_else(bad)?;
    let sealed = body.get(clear_len..).filter(|s| s.len() >= TAG).ok_or_else(bad)?;
    let nonce = head[KEY_ID..KEY_ID + NONCE].try_into().map_err(|_| bad())?;
    Ok(SealedBody { key_id: &head[..KEY_ID], nonce, outline, sealed, clear_len })
}

fn decode_outline(bytes: &[u8]) -> Result<Outline> {
    let o: Outline =
        codec().deserialize(bytes).map_err(|e| ImageError::Corrupt(format!("the manifest's outline: {e}")))?;
    o.validate()?;
    Ok(o)
}

/// Parse and check a manifest (header, checksum, then structure). A
/// sealed manifest needs its key: see [`decode_manifest_keyed`].
pub fn decode_manifest(bytes: &[u8]) -> Result<Manifest> {
    decode_manifest_keyed(bytes, None)
}

/// Parse and check a manifest, opening it with `key`. A sealed manifest
/// without a key, with another key, or changed in any byte is refused,
/// each with its own sentence ([`SealError`]); so is a plain one given a
/// key (whoever could replace the image could make it plain).
pub fn decode_manifest_keyed(bytes: &[u8], key: Option<&ImageKey>) -> Result<Manifest> {
    let (h, body) = open_header(bytes)?;
    if !h.sealed {
        if let Some(key) = key {
            // This key's sealed manifest with its flag cleared is damage,
            // not a plain image.
            if split_sealed(body).is_ok_and(|s| s.key_id == key.id()) {
                return Err(SealError::Unauthentic("the manifest".into()).into());
            }
            return Err(SealError::NotSealed.into());
        }
        let m: Manifest = codec().deserialize(body).map_err(|e| ImageError::Corrupt(format!("manifest body: {e}")))?;
        m.validate()?;
        if m.chunks.iter().any(|c| c.codec.is_sealed()) {
            return Err(ImageError::Corrupt("a plain manifest names sealed chunks".into()));
        }
        return Ok(m);
    }
    let key = key.ok_or(SealError::NeedKey)?;
    let s = split_sealed(body)?;
    if s.key_id != key.id() {
        return Err(SealError::WrongKey.into());
    }
    let aad = sealed_aad(&bytes[..16], &body[..s.clear_len]);
    let plain = Zeroizing::new(key.open_manifest(&aad, &s.nonce, s.sealed)?);
    let m: Manifest = codec().deserialize(&plain).map_err(|e| ImageError::Corrupt(format!("manifest body: {e}")))?;
    m.validate()?;
    if m.chunks.iter().any(|c| !c.codec.is_sealed()) {
        return Err(ImageError::Corrupt("a sealed manifest names plain chunks".into()));
    }
    if decode_outline(s.outline)? != Outline::of(&m) {
        return Err(ImageError::Corrupt("the manifest's outline does not match the manifest".into()));
    }
    Ok(m)
}

/// The outline of a manifest, without its key: a plain manifest is
/// decoded whole; a sealed one's clear part is read (checked by the
/// header's checksum only: authenticated when the manifest is opened).
pub fn outline(bytes: &[u8]) -> Result<Outline> {
    let (h, body) = open_header(bytes)?;
    match h.sealed {
        false => decode_manifest(bytes).map(|m| Outline::of(&m)),
        true => decode_outline(split_sealed(body)?.outline),
    }
}
