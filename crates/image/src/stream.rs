//! An image as one byte stream, for pipes and single files (`checkpoint
//! -o -`, `restore -`, `export`, `import`). The stream is untrusted input
//! like an image directory, and is read in one pass with bounded memory.
//!
//! Layout (integers little-endian):
//! - `CRYOPODS`, stream format version (u32);
//! - entries, the manifest first: kind 1 (u8), name length (u16), name,
//!   size (u64), the bytes, their BLAKE3 (32 bytes);
//! - the end: kind 0 (u8), the number of entries (u64), the BLAKE3 of
//!   their hashes in order (32 bytes).
//!
//! The manifest comes first so that a reader knows every other file's name
//! and size before it takes a byte of them: a file the manifest does not
//! name, a size that differs, a repeated or missing file, a hash that
//! differs, anything after the end, are all refused.
//!
//! A sealed image goes through as it is, without its key: names and sizes
//! come from the manifest's outline ([`crate::manifest::Outline`]), and
//! its contents are authenticated when it is opened with the key.

use crate::dir::ImageDir;
use crate::manifest::Outline;
use crate::{ImageError, Manifest, Result, MANIFEST_FILE};
use std::io::{Read, Write};

pub const STREAM_MAGIC: [u8; 8] = *b"CRYOPODS";
pub const STREAM_VERSION: u32 = 1;
/// The pod's log beside its image: optional, of any size up to this.
pub const POD_LOG: &str = "pod.log";
const POD_LOG_MAX: u64 = 1 << 30;
const COPY_BUF: usize = 1 << 20;

fn corrupt(what: impl std::fmt::Display) -> ImageError {
    ImageError::Corrupt(format!("image stream: {what}"))
}

/// The files an image has beside its manifest: (name, exact size, or None
/// for any size up to a bound; required). From the outline, so that a
/// sealed image goes through a stream without its key.
fn expected(o: &Outline) -> Vec<(String, Option<u64>, bool)> {
    o.files.iter().map(|f| (f.name.clone(), f.size, f.required)).collect()
}

/// What a stream may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carry {
    /// One whole image: every chunk in it (`export`, `-o -`).
    Whole,
    /// An image's own files; it may take chunks from its parent chain,
    /// which the reader holds already (a live migration's rounds, each a
    /// child of the one before: see `chain::Base::link_as_sibling`), and
    /// from the one store `store` names by its identity, if any: the
    /// reader's own (a migration to a host that described its store, see
    /// `chain::FarStore`). Never chunks of another store.
    OwnFiles { store: Option<[u8; 16]> },
}

fn carried(o: &Outline, what: &str, carry: Carry) -> Result<()> {
    match carry {
        Carry::Whole => whole(o, what),
        Carry::OwnFiles { store } => match &o.store {
            Some(s) if Some(s.store_id) != store => Err(ImageError::Unsafe(format!(
                "{what} keeps chunks in store {}, which is not the reader's: a stream carries an image's own files, \
                 those of its parents and the reader's own chunks only",
                s.path
            ))),
            _ => Ok(()),
        },
    }
}

fn whole(o: &Outline, what: &str) -> Result<()> {
    if o.borrows {
        return Err(ImageError::Unsafe(format!(
            "{what} keeps chunks in its parent images or a store: a stream carries one whole image (checkpoint it \
             without --parent and --store to stream it)"
        )));
    }
    Ok(())
}

/// Counts what goes through, for the summary.
struct Counting<'a, W: Write> {
    w: &'a mut W,
    n: u64,
}

impl<W: Write> Counting<'_, W> {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b).map_err(|e| ImageError::io("the image stream", e))?;
        self.n += b.len() as u64;
        Ok(())
    }
}

/// Write image `img` as a stream; returns the bytes written.
pub fn export<W: Write>(img: &ImageDir, w: &mut W) -> Result<u64> {
    export_as(img, w, Carry::Whole)
}

/// Write what `carry` allows of image `img` as a stream; returns the
/// bytes written.
pub fn export_as<W: Write>(img: &ImageDir, w: &mut W, carry: Carry) -> Result<u64> {
    let m = img.outline()?;
    carried(&m, &img.path().display().to_string(), carry)?;
    let mut out = Counting { w, n: 0 };
    out.put(&STREAM_MAGIC)?;
    out.put(&STREAM_VERSION.to_le_bytes())?;
    let mut hashes = blake3::Hasher::new();
    let mut count = 0u64;
    let mut buf = vec![0u8; COPY_BUF];
    let mut entry = |out: &mut Counting<W>, name: &str, size: u64, r: &mut dyn Read| -> Result<()> {
        let nlen = u16::try_from(name.len()).map_err(|_| corrupt(format!("file name {name:?} is too long")))?;
        out.put(&[1])?;
        out.put(&nlen.to_le_bytes())?;
        out.put(name.as_bytes())?;
        out.put(&size.to_le_bytes())?;
        let read = |b: &mut [u8]| r.read_exact(b).map_err(|e| ImageError::io(format!("{name} in the image"), e));
        let hash = copy_hashed(&mut buf, size, read, |b| out.put(b))?;
        out.put(hash.as_bytes())?;
        hashes.update(hash.as_bytes());
        count += 1;
        Ok(())
    };
    let bytes = img.manifest_bytes();
    entry(&mut out, MANIFEST_FILE, bytes.len() as u64, &mut &bytes[..])?;
    for (name, size, required) in expected(&m) {
        let f = match required {
            true => img.open_file(&name)?,
            false => match img.open_optional(&name)? {
                Some(f) => f,
                None => continue,
            },
        };
        // The size recorded (a pack is never read past it); a file shorter
        // than that would make a stream no import accepts.
        let size = size.unwrap_or(f.size());
        if f.size() < size {
            return Err(ImageError::Truncated(format!("{} has {} of its {size} bytes", f.path(), f.size())));
        }
        let mut r = std::io::Read::take(f.file(), size);
        entry(&mut out, &name, size, &mut r)?;
    }
    out.put(&[0])?;
    out.put(&count.to_le_bytes())?;
    out.put(hashes.finalize().as_bytes())?;
    out.w.flush().map_err(|e| ImageError::io("the image stream", e))?;
    Ok(out.n)
}

/// Move `size` bytes from `read` to `write` through `buf`, a bufferful at
/// a time; returns their BLAKE3.
fn copy_hashed(
    buf: &mut [u8],
    size: u64,
    mut read: impl FnMut(&mut [u8]) -> Result<()>,
    mut write: impl FnMut(&[u8]) -> Result<()>,
) -> Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        read(&mut buf[..n])?;
        h.update(&buf[..n]);
        write(&buf[..n])?;
        left -= n as u64;
    }
    Ok(h.finalize())
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ImageError::Truncated(format!("image stream ends inside {what}")),
        _ => ImageError::io("the image stream", e),
    })
}

fn u64_of<R: Read>(r: &mut R, what: &str) -> Result<u64> {
    let mut b = [0u8; 8];
    read_exact(r, &mut b, what)?;
    Ok(u64::from_le_bytes(b))
}

/// Where an imported file goes: written, then made durable before the
/// manifest that names it is committed.
pub trait Sink: Write {
    fn finish(&mut self) -> std::io::Result<()> {
        self.flush()
    }
}

impl Sink for std::fs::File {
    fn finish(&mut self) -> std::io::Result<()> {
        self.sync_all()
    }
}

impl Sink for std::io::Sink {}

/// What [`import`] took in: the manifest's bytes, which the caller commits
/// last, and the manifest itself unless it is sealed (checked then only
/// as far as its outline: its key opens it).
#[derive(Debug)]
pub struct Imported {
    pub manifest_bytes: Vec<u8>,
    pub manifest: Option<Manifest>,
}

/// Read a stream, writing each file through `create` (which must make a
/// new file of that plain name).
pub fn import<R: Read>(r: &mut R, create: &mut dyn FnMut(&str) -> Result<Box<dyn Sink>>) -> Result<Imported> {
    import_as(r, create, Carry::Whole)
}

/// [`import`] what `carry` allows.
pub fn import_as<R: Read>(
    r: &mut R,
    create: &mut dyn FnMut(&str) -> Result<Box<dyn Sink>>,
    carry: Carry,
) -> Result<Imported> {
    let mut head = [0u8; 12];
    read_exact(r, &mut head, "the header")?;
    if head[..8] != STREAM_MAGIC {
        return Err(ImageError::NotAnImage("not a cryopod image stream (bad magic)".into()));
    }
    let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if version != STREAM_VERSION {
        return Err(corrupt(format!(
            "stream format version {version} is not supported (this cryopod reads {STREAM_VERSION})"
        )));
    }
    let mut hashes = blake3::Hasher::new();
    let mut count = 0u64;
    let mut manifest: Option<(Vec<u8>, Option<Manifest>)> = None;
    let mut want: Vec<(String, Option<u64>, bool)> = Vec::new();
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let mut kind = [0u8; 1];
        read_exact(r, &mut kind, "an entry")?;
        if kind[0] == 0 {
            break;
        }
        if kind[0] != 1 {
            return Err(corrupt(format!("entry kind {} is unknown", kind[0])));
        }
        let mut nl = [0u8; 2];
        read_exact(r, &mut nl, "a name")?;
        let mut name = vec![0u8; usize::from(u16::from_le_bytes(nl))];
        read_exact(r, &mut name, "a name")?;
        let name = String::from_utf8(name).map_err(|_| corrupt("a file name is not UTF-8"))?;
        let size = u64_of(r, "a size")?;
        let got = match &manifest {
            None => {
                if name != MANIFEST_FILE {
                    return Err(corrupt(format!("the first file is {name:?}, not the manifest")));
                }
                if size > crate::manifest::MAX_BODY + 64 {
                    return Err(corrupt(format!("a manifest of {size} bytes is over the limit")));
                }
                // Grown as bytes arrive: a claimed size costs nothing.
                let mut bytes = Vec::new();
                let got = std::io::Read::take(&mut *r, size)
                    .read_to_end(&mut bytes)
                    .map_err(|e| ImageError::io("the image stream", e))?;
                if got as u64 != size {
                    return Err(ImageError::Truncated("image stream ends inside the manifest".into()));
                }
                let hash = blake3::hash(&bytes);
                let m = match crate::manifest::header(&bytes)?.sealed {
                    true => None,
                    false => Some(crate::decode_manifest(&bytes)?),
                };
                let outline = match &m {
                    Some(m) => Outline::of(m),
                    None => crate::manifest::outline(&bytes)?,
                };
                carried(&outline, "the image", carry)?;
                want = expected(&outline);
                manifest = Some((bytes, m));
                hash
            }
            Some(_) => {
                let Some(i) = want.iter().position(|w| w.0 == name) else {
                    return Err(corrupt(format!("{name:?} is not a file of this image, or comes twice")));
                };
                let (_, exact, _) = want.remove(i);
                match exact {
                    Some(s) if s != size => {
                        return Err(corrupt(format!("{name} has {size} bytes, the manifest says {s}")));
                    }
                    None if size > POD_LOG_MAX => return Err(corrupt(format!("{name} of {size} bytes is too large"))),
                    _ => {}
                }
                let mut f = create(&name)?;
                let read = |b: &mut [u8]| read_exact(r, b, &name);
                let hash = copy_hashed(&mut buf, size, read, |b| f.write_all(b).map_err(|e| ImageError::io(&name, e)))?;
                f.finish().map_err(|e| ImageError::io(&name, e))?;
                hash
            }
        };
        let mut hash = [0u8; 32];
        read_exact(r, &mut hash, "a file's hash")?;
        if got.as_bytes() != &hash {
            return Err(corrupt(format!("{name} fails its checksum")));
        }
        hashes.update(&hash);
        count += 1;
    }
    let n = u64_of(r, "the end")?;
    let mut all = [0u8; 32];
    read_exact(r, &mut all, "the end")?;
    if n != count || hashes.finalize().as_bytes() != &all {
        return Err(corrupt("its end does not match its entries (files missing or reordered)"));
    }
    if let Some((name, _, _)) = want.iter().find(|w| w.2) {
        return Err(corrupt(format!("{name} is missing")));
    }
    let mut extra = [0u8; 1];
    match r.read(&mut extra) {
        Ok(0) => {}
        Ok(_) => return Err(corrupt("bytes follow its end")),
        Err(e) => return Err(ImageError::io("the image stream", e)),
    }
    let (manifest_bytes, manifest) = manifest.ok_or_else(|| corrupt("it holds no manifest"))?;
    Ok(Imported { manifest_bytes, manifest })
}
