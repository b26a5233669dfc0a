//! The page store of one image: append-only pack files holding page chunks,
//! each chunk named in the manifest by its BLAKE3 hash (keyed, and the
//! chunk sealed, in an image with a key: see [`crate::seal`]). Writers deduplicate
//! by hash (the files themselves are created by the checkpoint's output
//! directory, never over an existing one); the reader works on the packs
//! [`crate::ImageDir::packs`] opened and checks every chunk hash, stopping
//! at the first damage (restore) or listing all of it (inspect, check).

use crate::{Chunk, Codec, ImageError, Manifest, Pack, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// Name of the `n`th pack file in an image directory.
pub fn pack_name(n: usize) -> String {
    format!("pages-{n}.pack")
}

/// One pack file being appended to.
pub struct PackWriter {
    file: File,
    /// For messages.
    path: String,
    /// Its name in its home directory, and that home.
    name: String,
    home: crate::PackHome,
    pub index: u32,
    pub offset: u64,
}

impl PackWriter {
    /// Append to `file`, newly created (empty) as pack `index` of the
    /// image, `name` in `home`; `path` names it in errors.
    pub fn new(file: File, path: String, (name, home): (String, crate::PackHome), index: u32) -> Self {
        PackWriter { file, path, name, home, index, offset: 0 }
    }

    /// Append several buffers in one go; returns the offset of the first.
    pub fn append(&mut self, bufs: &[&[u8]]) -> Result<u64> {
        let start = self.offset;
        let mut slices: Vec<std::io::IoSlice> = bufs.iter().map(|b| std::io::IoSlice::new(b)).collect();
        let mut rest: &mut [std::io::IoSlice] = &mut slices;
        while !rest.is_empty() {
            let n = self.file.write_vectored(rest).map_err(|e| ImageError::io(&self.path, e))?;
            if n == 0 {
                return Err(ImageError::io(&self.path, std::io::ErrorKind::WriteZero.into()));
            }
            self.offset += n as u64;
            std::io::IoSlice::advance_slices(&mut rest, n);
        }
        Ok(start)
    }

    pub fn finish(self) -> Result<Pack> {
        self.file.sync_data().map_err(|e| ImageError::io(&self.path, e))?;
        Ok(Pack { name: self.name, size: self.offset, home: self.home })
    }
}

/// A map keyed by chunk digests. Digests are already uniform, so a fast
/// hasher does (SipHash over 32 bytes, three times per page run named,
/// cost a tracked checkpoint tens of milliseconds); it is seeded per
/// process, since the digests of a base come from images.
pub type DigestMap<V> = HashMap<[u8; 32], V, foldhash::fast::RandomState>;

/// Chunk ids by hash, and the chunks in id order.
type ChunkIndex = (DigestMap<u32>, Vec<Chunk>);

/// Marks, in a [`ChunkTable`]'s records, a chunk that a base (parent image
/// or store) holds: its `pack` is then an index into the base's packs.
pub const FOREIGN: u32 = 1 << 31;

/// The set of chunks written so far, shared by writer threads: hash → id;
/// and the chunks a base already holds, which are referenced, never
/// written again.
#[derive(Default)]
pub struct ChunkTable {
    inner: Mutex<ChunkIndex>,
    known: std::sync::Arc<DigestMap<Chunk>>,
}

impl ChunkTable {
    /// A table that reuses `known` chunks (their `pack` indexes the base's
    /// packs, below [`FOREIGN`]).
    pub fn with_known(known: std::sync::Arc<DigestMap<Chunk>>) -> Self {
        ChunkTable { inner: Mutex::default(), known }
    }

    /// The id of the chunk with this hash: an existing or known one
    /// (false), or `chunk` itself, newly recorded (true), which the caller
    /// must then write where `chunk` says before the manifest is written.
    pub fn get_or_insert(&self, chunk: Chunk) -> (u32, bool) {
        let mut g = self.lock();
        if let Some(&id) = g.0.get(&chunk.hash) {
            return (id, false);
        }
        let id = g.1.len() as u32;
        g.0.insert(chunk.hash, id);
        match self.known.get(&chunk.hash) {
            Some(k) => {
                g.1.push(Chunk { pack: k.pack | FOREIGN, ..k.clone() });
                (id, false)
            }
            None => {
                g.1.push(chunk);
                (id, true)
            }
        }
    }

    /// The ids of `records`, distinct chunks a base holds (their `pack`
    /// indexes the base's packs): the table's own record of the same hash,
    /// or the record added now. No hash is looked up among the known
    /// chunks (the caller has their records), and the records added are
    /// not entered in the table's map (66k random inserts cost a 4 GiB
    /// tracked checkpoint ~10 ms): a chunk of the same hash recorded later
    /// would get a record of its own, costing only its manifest bytes, so
    /// this comes after the last chunk was written.
    pub fn reuse_records<'a>(&self, records: impl ExactSizeIterator<Item = &'a Chunk>) -> Vec<u32> {
        let mut g = self.lock();
        let (map, chunks) = &mut *g;
        chunks.reserve(records.len());
        records
            .map(|k| match map.get(&k.hash) {
                Some(&id) => id,
                None => {
                    chunks.push(Chunk { pack: k.pack | FOREIGN, ..k.clone() });
                    (chunks.len() - 1) as u32
                }
            })
            .collect()
    }

    /// Whether a chunk with this hash is recorded or known already.
    pub fn contains(&self, hash: &[u8; 32]) -> bool {
        self.known.contains_key(hash) || self.lock().0.contains_key(hash)
    }

    /// The table, even if a writer panicked holding it (the table itself
    /// is never left half-changed).
    fn lock(&self) -> std::sync::MutexGuard<'_, ChunkIndex> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chunks in id order; those of the base have [`FOREIGN`] set in
    /// their `pack`.
    pub fn into_chunks(self) -> Vec<Chunk> {
        match self.inner.into_inner() {
            Ok(g) => g.1,
            Err(p) => p.into_inner().1,
        }
    }
}

/// A chunk that does not hold what the manifest says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Index of the chunk in the manifest.
    pub chunk: usize,
    pub pack: String,
    pub offset: u64,
    /// What is wrong ("fails its checksum", "cannot be read: ...").
    pub problem: String,
}

impl Damage {
    pub fn into_error(self) -> ImageError {
        ImageError::Corrupt(format!(
            "page chunk {} in {} at offset {} {}",
            self.chunk, self.pack, self.offset, self.problem
        ))
    }
}

/// A chunk as checked: its pack (by its id in [`KnownChunks`]), offset,
/// stored size, codec and hash.
type ChunkKey = (u32, u64, u32, crate::Codec, [u8; 32]);

/// Chunks checked already (see [`PackReader::verify_unknown`]), each by
/// the path its pack was opened at, where it is and what it holds. Pack
/// paths are numbered once per image, so that a look-up costs no
/// allocation (tens of thousands per image: a live migration's last
/// image, looked up inside the pod's stop).
#[derive(Default)]
pub struct KnownChunks {
    packs: HashMap<String, u32>,
    chunks: std::collections::HashSet<ChunkKey, foldhash::fast::RandomState>,
}

impl KnownChunks {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Every chunk of `m`, read through `packs`, as checked.
    pub fn add_all(&mut self, packs: &PackReader, m: &Manifest) {
        let ids: Vec<u32> = packs
            .names
            .iter()
            .map(|n| {
                let next = self.packs.len() as u32;
                *self.packs.entry(n.clone()).or_insert(next)
            })
            .collect();
        self.chunks.reserve(m.chunks.len());
        for c in &m.chunks {
            if let Some(&id) = ids.get(c.pack as usize) {
                self.chunks.insert((id, c.offset, c.stored, c.codec, c.hash));
            }
        }
    }

    /// The ids of `packs`' packs (None: none of its chunks is known).
    fn ids(&self, packs: &PackReader) -> Vec<Option<u32>> {
        packs.names.iter().map(|n| self.packs.get(n).copied()).collect()
    }

    fn contains(&self, ids: &[Option<u32>], c: &Chunk) -> bool {
        match ids.get(c.pack as usize).copied().flatten() {
            Some(id) => self.chunks.contains(&(id, c.offset, c.stored, c.codec, c.hash)),
            None => false,
        }
    }
}

/// Read access to the packs of an image.
pub struct PackReader {
    files: Vec<File>,
    names: Vec<String>,
    /// The store some packs live in: its lock is held while they are read.
    _store: Option<crate::shared::Store>,
    /// The key of a sealed image.
    key: Option<std::sync::Arc<crate::ImageKey>>,
}

impl PackReader {
    /// Packs already opened (and size-checked) by [`crate::chain::open_packs`],
    /// in the manifest's order, with the store (if any) they were found in
    /// and the image's key (if it is sealed).
    pub(crate) fn new(
        packs: Vec<(String, File)>,
        store: Option<crate::shared::Store>,
        key: Option<std::sync::Arc<crate::ImageKey>>,
    ) -> Self {
        let (names, files) = packs.into_iter().unzip();
        PackReader { files, names, _store: store, key }
    }

    /// A chunk decoder for this image (one per worker).
    pub fn decoder(&self) -> Result<crate::codec::Decoder> {
        crate::codec::Decoder::with_key(self.key.clone())
    }

    /// The open file of pack `i` (validated manifests only name existing packs).
    pub fn file(&self, i: u32) -> Option<&File> {
        self.files.get(i as usize)
    }

    fn name(&self, i: u32) -> &str {
        self.names.get(i as usize).map(String::as_str).unwrap_or("?")
    }

    /// The data of chunk `c` into the start of `out`.
    pub fn read_chunk(&self, c: &Chunk, out: &mut [u8]) -> Result<()> {
        let f = self.file(c.pack).ok_or_else(|| ImageError::Corrupt(format!("pack {} missing", c.pack)))?;
        let out =
            out.get_mut(..c.len as usize).ok_or_else(|| ImageError::Corrupt("chunk larger than the buffer".into()))?;
        let read = |buf: &mut [u8]| f.read_exact_at(buf, c.offset).map_err(|e| ImageError::io(self.name(c.pack), e));
        match c.codec {
            Codec::Raw => read(out),
            _ => {
                let mut stored = vec![0u8; c.stored as usize];
                read(&mut stored)?;
                self.decoder()?.decode(c, &stored, out)
            }
        }
    }

    /// Check the hash of every chunk, using `threads` threads; the first
    /// damaged chunk is the error.
    pub fn verify_all(&self, m: &Manifest, threads: usize) -> Result<()> {
        self.verify_unknown(m, threads, &Default::default())
    }

    /// [`Self::verify_all`], but for the chunks `known` holds: checked
    /// already, as records of an earlier image of the same packs (a live
    /// migration's rounds, each checked as it arrived).
    pub fn verify_unknown(&self, m: &Manifest, threads: usize, known: &KnownChunks) -> Result<()> {
        let ids = known.ids(self);
        let order: Vec<usize> =
            (0..m.chunks.len()).filter(|&i| known.is_empty() || !known.contains(&ids, &m.chunks[i])).collect();
        match self.scan(m, order, threads, false).into_iter().next() {
            Some(d) => Err(d.into_error()),
            None => Ok(()),
        }
    }

    /// Every damaged chunk, in chunk order (inspect and check report them all).
    pub fn damage(&self, m: &Manifest, threads: usize) -> Vec<Damage> {
        let mut all = self.scan(m, (0..m.chunks.len()).collect(), threads, true);
        all.sort_by_key(|d| d.chunk);
        all
    }

    fn scan(&self, m: &Manifest, mut order: Vec<usize>, threads: usize, all: bool) -> Vec<Damage> {
        order.sort_by_key(|&i| (m.chunks[i].pack, m.chunks[i].offset));
        // Threads pay off only for more than a few MiB.
        let total: u64 = order.iter().map(|&i| u64::from(m.chunks[i].stored)).sum();
        let threads = if total < 16 << 20 { 1 } else { threads.max(1) };
        if threads == 1 {
            return self.scan_part(m, &order, all);
        }
        let per = order.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = order.chunks(per).map(|part| s.spawn(move || self.scan_part(m, part, all))).collect();
            let mut out = Vec::new();
            for h in handles {
                match h.join() {
                    Ok(d) => out.extend(d),
                    Err(_) => out.push(Damage {
                        chunk: 0,
                        pack: String::new(),
                        offset: 0,
                        problem: "could not be checked (verifier thread failed)".into(),
                    }),
                }
            }
            out
        })
    }

    /// Damaged chunks among `ids` (sorted by pack and offset); stops at the
    /// first unless `all`.
    fn scan_part(&self, m: &Manifest, ids: &[usize], all: bool) -> Vec<Damage> {
        const BLOCK: u64 = 8 << 20;
        let mut out = Vec::new();
        let total: u64 = ids.iter().map(|&i| u64::from(m.chunks[i].stored)).sum();
        let mut buf = vec![0u8; total.min(BLOCK) as usize];
        let mut plain = vec![0u8; (crate::CHUNK_PAGES * crate::PAGE) as usize];
        // One context for the part (a chunk's own would cost more than
        // decoding it); without one, each compressed chunk is a problem.
        let mut dec = self.decoder().map_err(|e| format!("could not be checked ({e})"));
        let mut i = 0;
        while i < ids.len() && (all || out.is_empty()) {
            let first = &m.chunks[ids[i]];
            let mut j = i + 1;
            let mut end = first.offset + u64::from(first.stored);
            while j < ids.len() {
                let c = &m.chunks[ids[j]];
                if c.pack != first.pack || c.offset != end || end + u64::from(c.stored) - first.offset > BLOCK {
                    break;
                }
                end += u64::from(c.stored);
                j += 1;
            }
            let span = &mut buf[..(end - first.offset) as usize];
            let read = match self.file(first.pack) {
                Some(f) => f.read_exact_at(span, first.offset).map_err(|e| format!("cannot be read: {e}")),
                None => Err("names a missing pack".to_string()),
            };
            for &id in &ids[i..j] {
                let c = &m.chunks[id];
                let o = (c.offset - first.offset) as usize;
                let stored = &span[o..o + c.stored as usize];
                // A sealed chunk: its tag authenticates the stored bytes
                // with its hash, length and codec, so only the key's holder
                // made them, and decoding is deterministic: the data fill
                // decodes is the data whose keyed hash the record carries.
                // Checking the tag is enough; decompressing and hashing it
                // here too would double a restore's work.
                if let (Some(k), true) = (&self.key, c.codec.is_sealed()) {
                    let inner = stored.len().saturating_sub(crate::seal::CHUNK_OVERHEAD as usize);
                    let cap = plain.len();
                    let scratch = &mut plain[..inner.min(cap)];
                    let opened = match inner <= crate::CHUNK_PAGES as usize * crate::PAGE as usize {
                        true => k.open_chunk(c, stored, scratch).map_err(|_| ()),
                        false => Err(()),
                    };
                    let problem = match (&read, opened) {
                        (Err(e), _) => e.clone(),
                        (Ok(()), Err(())) => "fails authentication: it was damaged or altered".to_string(),
                        (Ok(()), Ok(())) => continue,
                    };
                    out.push(Damage { chunk: id, pack: self.name(c.pack).to_string(), offset: c.offset, problem });
                    if !all {
                        break;
                    }
                    continue;
                }
                let data = match c.codec {
                    Codec::Raw => Ok(stored),
                    _ => {
                        let out = &mut plain[..c.len as usize];
                        match dec.as_mut() {
                            Ok(d) => d.decode(c, stored, out).map(|_| &*out).map_err(|e| match e {
                                ImageError::Seal(crate::SealError::Unauthentic(_)) => {
                                    "fails authentication: it was damaged or altered".to_string()
                                }
                                e => e.to_string(),
                            }),
                            Err(e) => Err(e.clone()),
                        }
                    }
                };
                // A sealed chunk's hash is keyed (decoding it needed the key).
                let hash = |d: &[u8]| match (&self.key, c.codec.is_sealed()) {
                    (Some(k), true) => k.hash(d),
                    _ => *blake3::hash(d).as_bytes(),
                };
                let problem = match (&read, data) {
                    (Err(e), _) => e.clone(),
                    (Ok(()), Err(e)) => e,
                    (Ok(()), Ok(d)) if hash(d) != c.hash => "fails its checksum".to_string(),
                    (Ok(()), Ok(_)) => continue,
                };
                out.push(Damage { chunk: id, pack: self.name(c.pack).to_string(), offset: c.offset, problem });
                if !all {
                    break;
                }
            }
            i = j;
        }
        out
    }
}
