//! Writing page contents: pieces of memory (at most one 64 KiB-aligned
//! window each) are read in large batches straight into worker buffers with
//! process_vm_readv; each piece is split at its zero pages (recorded, never
//! stored), and each non-zero segment is hashed with BLAKE3 (keyed, with a
//! key), deduplicated by hash across the whole checkpoint, compressed where
//! it pays, sealed under the key if there is one (see
//! `cryopod_image::seal`), and appended to one pack per worker. Reading
//! pages back into a restored task is here too ([`fill`]).

use crate::outdir::OutDir;
use crate::{EngineError, Progress, Result};
use cryopod_image::chain::Base;
use cryopod_image::codec::Encoder;
use cryopod_image::shared::{hex, PackIndex};
use cryopod_image::store::{ChunkTable, PackWriter, FOREIGN};
use cryopod_image::{Chunk, Codec, Compression, ImageKey, Pack, PackHome, CHUNK_PAGES, PAGE};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Where a piece's bytes come from.
#[derive(Clone)]
pub enum Src {
    /// Memory of a frozen process.
    Mem { pid: i32, addr: u64 },
    /// A file (a shared memory object opened through map_files).
    File { file: Arc<File>, off: u64 },
}

#[derive(Clone)]
pub struct Piece {
    pub src: Src,
    pub pages: u32,
}

/// Part of a piece: (first page in the piece, pages, chunk or None for zero).
pub type Segment = (u32, u32, Option<u32>);

pub struct PagesOut {
    /// Per piece: its segments.
    pub chunk_of: Vec<Vec<Segment>>,
    pub packs: Vec<Pack>,
    pub chunks: Vec<Chunk>,
    pub stats: ChunkStats,
    /// Runs taken from a parent.
    pub reused: Vec<TakenRun>,
}

/// A run taken from a parent: where, pages, and (chunk, first page) or
/// None for zeros.
pub type TakenRun = (crate::mm::Dest, u32, Option<(u32, u32)>);

/// What was stored and what was found in the base (parent chain, store).
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkStats {
    pub new_chunks: u64,
    /// Page data of the new chunks.
    pub new_bytes: u64,
    /// What they take in packs.
    pub stored_bytes: u64,
    pub reused_chunks: u64,
    pub reused_bytes: u64,
    /// A tracked checkpoint: (bytes read, bytes taken from the parent).
    pub tracked: Option<(u64, u64)>,
}

const BATCH_BYTES: u64 = 4 << 20;
/// The smallest batch made to spread a little data over the threads.
const MIN_BATCH: u64 = 256 << 10;
static ZERO: [u8; (CHUNK_PAGES * PAGE) as usize] = [0; (CHUNK_PAGES * PAGE) as usize];

/// Split `[start, end)` into pieces that never cross a 64 KiB boundary.
pub fn split_aligned(start: u64, end: u64, mut f: impl FnMut(u64, u32)) {
    let win = CHUNK_PAGES * PAGE;
    let mut a = start;
    while a < end {
        let next = ((a / win) + 1) * win;
        let e = next.min(end);
        f(a, ((e - a) / PAGE) as u32);
        a = e;
    }
}

/// How the bytes of a batch of pieces are read.
pub trait BatchReader: Sync {
    /// Read pieces `sel` (indexes into `pieces`) back to back into `buf`;
    /// returns the bytes read.
    fn read(&self, pieces: &[Piece], sel: &[usize], buf: &mut [u8]) -> Result<usize>;
}

/// Reading a frozen tree: nothing can change under us.
pub struct FrozenReader;

impl BatchReader for FrozenReader {
    fn read(&self, pieces: &[Piece], sel: &[usize], buf: &mut [u8]) -> Result<usize> {
        let batch: Vec<Piece> = sel.iter().map(|&i| pieces[i].clone()).collect();
        read_batch(&batch, buf)
    }
}

/// Reads the pages of a tree that runs (a pre-copy round, see
/// `CheckpointOptions::precopy`): an area unmapped or a process gone
/// meanwhile reads as zeros, as it is written again or gone by the next
/// round (which reads what is then there).
pub struct RunningReader;

impl BatchReader for RunningReader {
    fn read(&self, pieces: &[Piece], sel: &[usize], buf: &mut [u8]) -> Result<usize> {
        let batch: Vec<Piece> = sel.iter().map(|&i| pieces[i].clone()).collect();
        let want: usize = batch.iter().map(|p| p.pages as usize * PAGE as usize).sum();
        if let Ok(n) = read_batch(&batch, buf) {
            return Ok(n);
        }
        // One piece at a time, so that one gone area spoils no other.
        let mut off = 0;
        for p in &batch {
            let l = p.pages as usize * PAGE as usize;
            if read_batch(std::slice::from_ref(p), &mut buf[off..off + l]).is_err() {
                buf[off..off + l].fill(0);
            }
            off += l;
        }
        Ok(want)
    }
}

/// One writer's pack, buffers and compressor, kept across runs.
struct Worker {
    pack: PackWriter,
    buf: Vec<u8>,
    /// Compressed (or sealed) chunks of the batch being stored.
    packed: Vec<u8>,
    enc: Encoder,
    out: Vec<(usize, Vec<Segment>)>,
}

/// Page writing in one or more runs over parts of the pieces (a running
/// checkpoint reads some while the tree is frozen, the rest after), into
/// the same packs, deduplicated across runs.
pub struct Dumper<'a> {
    dir: &'a OutDir,
    /// Chunks already held by a parent chain or a store, and where new
    /// packs go (a store's, else the image's directory).
    base: Option<&'a Base>,
    threads: usize,
    compression: Compression,
    /// Seals new chunks (and keys their hashes).
    key: Option<&'a ImageKey>,
    workers: Vec<Worker>,
    table: ChunkTable,
    /// Store packs made (removed again unless `finish` ran).
    in_store: Vec<String>,
}

impl Drop for Dumper<'_> {
    fn drop(&mut self) {
        if let Some((store, _)) = self.base.and_then(|b| b.store.as_ref()) {
            for name in &self.in_store {
                if let Err(e) = store.remove_pack(name) {
                    tracing::warn!("cannot remove the unfinished store pack: {e}");
                }
            }
        }
    }
}

impl<'a> Dumper<'a> {
    pub fn new(
        dir: &'a OutDir,
        threads: usize,
        (compression, key): (Compression, Option<&'a ImageKey>),
        base: Option<&'a Base>,
    ) -> Dumper<'a> {
        let table = base.map(|b| ChunkTable::with_known(b.known.clone())).unwrap_or_default();
        Dumper {
            dir,
            base,
            threads: threads.clamp(1, 16),
            compression,
            key,
            workers: Vec::new(),
            table,
            in_store: Vec::new(),
        }
    }

    /// The ids of chunks the base holds, given their records (see
    /// [`ChunkTable::reuse_records`]).
    pub fn reuse_records<'c>(&self, records: impl ExactSizeIterator<Item = &'c Chunk>) -> Vec<u32> {
        self.table.reuse_records(records)
    }

    /// A new pack for worker `w`: in the store, named after the image,
    /// or in the image's directory.
    fn new_pack(&mut self, w: usize) -> Result<PackWriter> {
        Ok(match self.base.and_then(|b| b.store.as_ref()) {
            Some((store, link)) => {
                // Never a name a failed attempt may have left.
                let nonce = cryopod_image::shared::random_id()?;
                let name = format!("{}-{}.pack", hex(&link.image_id), hex(&nonce[..4]));
                let (file, path) = store.create_pack(&name)?;
                self.in_store.push(name.clone());
                PackWriter::new(file, path, (name, PackHome::Store), w as u32)
            }
            None => {
                let name = cryopod_image::store::pack_name(w);
                let file = self.dir.create(&name)?;
                let path = self.dir.path().join(&name).display().to_string();
                PackWriter::new(file, path, (name, PackHome::Own), w as u32)
            }
        })
    }

    /// Read, hash, dedupe and store pieces `sel` (ascending indexes into
    /// `pieces`) through `reader`.
    pub fn run(&mut self, pieces: &[Piece], sel: &[usize], reader: &dyn BatchReader, progress: Progress) -> Result<()> {
        // Batches: consecutive pieces up to BATCH_BYTES, or less, so that
        // a few MiB still go on every thread (a frozen pod waits on them).
        let total: u64 = sel.iter().map(|&i| u64::from(pieces[i].pages) * PAGE).sum();
        let limit = total.div_ceil(self.threads as u64).clamp(MIN_BATCH, BATCH_BYTES);
        let mut batches: Vec<(usize, usize)> = Vec::new();
        let mut start = 0;
        let mut bytes = 0u64;
        for (k, &i) in sel.iter().enumerate() {
            let b = u64::from(pieces[i].pages) * PAGE;
            if bytes + b > limit && k > start {
                batches.push((start, k));
                start = k;
                bytes = 0;
            }
            bytes += b;
        }
        if start < sel.len() {
            batches.push((start, sel.len()));
        }
        if batches.is_empty() {
            return Ok(());
        }
        let n = self.threads.min(batches.len());
        while self.workers.len() < n {
            let pack = self.new_pack(self.workers.len())?;
            let enc = Encoder::new(self.compression)?;
            let buf = vec![0u8; BATCH_BYTES as usize];
            self.workers.push(Worker { pack, buf, packed: Vec::new(), enc, out: Vec::new() });
        }
        let done = AtomicU64::new(0);
        let next = AtomicUsize::new(0);
        let (table, key) = (&self.table, self.key);
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let hs: Vec<_> = self
                .workers
                .iter_mut()
                .take(n)
                .map(|wk| {
                    let (next, done, batches) = (&next, &done, &batches);
                    s.spawn(move || -> Result<()> {
                        loop {
                            let b = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&(lo, hi)) = batches.get(b) else {
                                return Ok(());
                            };
                            let got = reader.read(pieces, &sel[lo..hi], &mut wk.buf)?;
                            let Worker { pack, buf, packed, enc, out } = &mut *wk;
                            let w = (pack, enc, packed);
                            store_batch(pieces, &sel[lo..hi], &buf[..got], w, (table, key), out)?;
                            let d = done.fetch_add(got as u64, Ordering::Relaxed) + got as u64;
                            progress("memory", d, total);
                        }
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(EngineError::Other("page writer thread panicked".into()))))
                .collect()
        });
        results.into_iter().collect()
    }

    /// Close the packs; `n` is the number of pieces. Chunks of the base
    /// name its packs, added after the new ones; new store packs get their
    /// index.
    pub fn finish(mut self, n: usize) -> Result<PagesOut> {
        let mut chunk_of = vec![Vec::new(); n];
        let mut packs = Vec::new();
        // A worker that found nothing new leaves an empty pack: not named
        // in the manifest (a store's gc would take it for dead).
        let mut renumber = Vec::new();
        for w in std::mem::take(&mut self.workers) {
            let p = w.pack.finish()?;
            renumber.push(packs.len() as u32);
            match p.size {
                0 => {
                    if p.home == PackHome::Store {
                        self.in_store.retain(|n| n != &p.name);
                        self.base.and_then(|b| b.store.as_ref()).map(|(s, _)| s.remove_pack(&p.name)).transpose()?;
                    }
                }
                _ => packs.push(p),
            }
            for (i, c) in w.out {
                chunk_of[i] = c;
            }
        }
        let own = packs.len();
        let mut chunks = std::mem::take(&mut self.table).into_chunks();
        let mut stats = ChunkStats::default();
        let mut used: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        for c in &mut chunks {
            if c.pack & FOREIGN == 0 {
                c.pack = renumber.get(c.pack as usize).copied().unwrap_or(c.pack);
                stats.new_chunks += 1;
                stats.new_bytes += u64::from(c.len);
                stats.stored_bytes += u64::from(c.stored);
                continue;
            }
            stats.reused_chunks += 1;
            stats.reused_bytes += u64::from(c.len);
            let b = c.pack & !FOREIGN;
            c.pack = match used.get(&b) {
                Some(&i) => i,
                None => {
                    let p = self.base.and_then(|base| base.packs.get(b as usize)).ok_or_else(|| {
                        EngineError::Other(format!("a known chunk names pack {b}, which its base lacks"))
                    })?;
                    packs.push(p.clone());
                    used.insert(b, (packs.len() - 1) as u32);
                    (packs.len() - 1) as u32
                }
            };
        }
        if let Some((store, _)) = self.base.and_then(|b| b.store.as_ref()) {
            for (w, p) in packs.iter().enumerate().take(own) {
                let entries = chunks
                    .iter()
                    .filter(|c| c.pack as usize == w)
                    .map(|c| cryopod_image::shared::IndexEntry {
                        hash: c.hash,
                        offset: c.offset,
                        len: c.len,
                        codec: c.codec,
                        stored: c.stored,
                    })
                    .collect();
                store.write_index(&PackIndex { pack: p.name.clone(), size: p.size, entries })?;
            }
        }
        self.in_store.clear();
        Ok(PagesOut { chunk_of, packs, chunks, stats, reused: Vec::new() })
    }
}

/// Where a new chunk's stored bytes are: in the batch read (raw) or among
/// the compressed ones.
enum Stored {
    Raw(usize, usize),
    Packed(usize, usize),
}

/// Split the pieces `sel`, read back to back in `buf`, at their zero
/// pages; store each non-zero segment once, compressed where it pays, and
/// sealed under `key` if there is one.
fn store_batch(
    pieces: &[Piece],
    sel: &[usize],
    buf: &[u8],
    (pack, enc, packed): (&mut PackWriter, &mut Encoder, &mut Vec<u8>),
    (table, key): (&ChunkTable, Option<&ImageKey>),
    out: &mut Vec<(usize, Vec<Segment>)>,
) -> Result<()> {
    packed.clear();
    // Split every piece at its zero pages; store each non-zero segment once.
    let page = PAGE as usize;
    let mut o = 0usize;
    let mut writes: Vec<Stored> = Vec::new();
    let mut pending = 0u64;
    for &i in sel {
        let p = &pieces[i];
        let l = p.pages as usize * page;
        let data = &buf[o..o + l];
        let mut segs = Vec::new();
        if data == &ZERO[..l] {
            segs.push((0, p.pages, None));
        } else {
            let mut pg = 0usize;
            while pg < p.pages as usize {
                let zero = data[pg * page..(pg + 1) * page] == ZERO[..page];
                let mut end = pg + 1;
                while end < p.pages as usize && (data[end * page..(end + 1) * page] == ZERO[..page]) == zero {
                    end += 1;
                }
                let chunk = if zero {
                    None
                } else {
                    let bytes = &data[pg * page..end * page];
                    let hash = match key {
                        Some(k) => k.hash(bytes),
                        None => *blake3::hash(bytes).as_bytes(),
                    };
                    // Compressed before knowing whether the chunk is new:
                    // the table's lock is held only to look it up. (Sealed
                    // only once known to be new.)
                    let (codec, inner) = match table.contains(&hash) {
                        true => (Codec::Raw, bytes),
                        false => enc.encode(bytes),
                    };
                    let codec = if key.is_some() { codec.sealed() } else { codec };
                    let slen = codec.stored_len(inner.len() as u32);
                    let len = bytes.len() as u32;
                    let c = Chunk { hash, pack: pack.index, offset: pack.offset + pending, len, codec, stored: slen };
                    let (id, new) = table.get_or_insert(c);
                    if new {
                        let at = packed.len();
                        writes.push(match (codec, key) {
                            (Codec::Raw, _) => Stored::Raw(o + pg * page, inner.len()),
                            (Codec::Zstd, _) => {
                                packed.extend_from_slice(inner);
                                Stored::Packed(at, inner.len())
                            }
                            (_, Some(k)) => {
                                k.seal_chunk(&hash, len, codec, inner, packed)
                                    .map_err(cryopod_image::ImageError::from)?;
                                Stored::Packed(at, packed.len() - at)
                            }
                            (_, None) => return Err(EngineError::Other("a sealed chunk without a key".into())),
                        });
                        pending += u64::from(slen);
                    }
                    Some(id)
                };
                segs.push((pg as u32, (end - pg) as u32, chunk));
                pg = end;
            }
        }
        out.push((i, segs));
        o += l;
    }
    let slices: Vec<&[u8]> = writes
        .iter()
        .map(|w| match *w {
            Stored::Raw(a, l) => &buf[a..a + l],
            Stored::Packed(a, l) => &packed[a..a + l],
        })
        .collect();
    pack.append(&slices)?;
    Ok(())
}

/// Read the bytes of `pieces` into `buf`, back to back. Consecutive memory
/// pieces of one process go in one process_vm_readv.
pub fn read_batch(pieces: &[Piece], buf: &mut [u8]) -> Result<usize> {
    let mut off = 0usize;
    let mut i = 0;
    while i < pieces.len() {
        match &pieces[i].src {
            Src::Mem { pid, .. } => {
                let pid = *pid;
                let mut ranges = Vec::new();
                let mut j = i;
                while j < pieces.len() {
                    match &pieces[j].src {
                        Src::Mem { pid: p, addr } if *p == pid => {
                            ranges.push((*addr, pieces[j].pages as usize * PAGE as usize))
                        }
                        _ => break,
                    }
                    j += 1;
                }
                let want: usize = ranges.iter().map(|r| r.1).sum();
                let got = cryopod_sys::mem::read_ranges(pid, &ranges, &mut buf[off..off + want])?;
                if got < want {
                    // Some area refused process_vm_readv (e.g. PROT_NONE):
                    // read those ranges through /proc/pid/mem.
                    let mut o = off;
                    for &(a, l) in &ranges {
                        if o + l > off + got {
                            cryopod_sys::mem::read(pid, a, &mut buf[o..o + l])?;
                        }
                        o += l;
                    }
                }
                off += want;
                i = j;
            }
            Src::File { file, off: foff } => {
                let l = pieces[i].pages as usize * PAGE as usize;
                // The object's last page may extend past its end: zeros.
                let dst = &mut buf[off..off + l];
                let mut got = 0;
                while got < l {
                    match file.read_at(&mut dst[got..], *foff + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(EngineError::Other(format!("reading memory object: {e}"))),
                    }
                }
                dst[got..].fill(0);
                off += l;
                i += 1;
            }
        }
    }
    Ok(off)
}

/// Pages of one run to copy into a task: `pages` pages of chunk `chunk`
/// from its page `from`, at `addr`.
#[derive(Debug, Clone, Copy)]
pub struct FillJob {
    pub addr: u64,
    pub chunk: u32,
    pub from: u32,
    pub pages: u32,
}

impl FillJob {
    /// The job of a run whose addresses are relative to `base`; None for zeros.
    pub fn of(run: &cryopod_image::Run, base: u64) -> Option<FillJob> {
        let (chunk, from) = run.data()?;
        Some(FillJob { addr: base + run.addr, chunk, from, pages: run.pages })
    }

    /// Its bytes within the chunk's data.
    pub fn range(&self) -> std::ops::Range<usize> {
        let p = PAGE as usize;
        self.from as usize * p..(self.from + self.pages) as usize * p
    }
}

/// Copy stored pages into a stopped task: `jobs`, sorted by address. Workers read runs of chunks that are contiguous in a
/// pack with one pread, then write them into the task with one
/// process_vm_writev; several workers fault the task's pages in parallel.
pub fn fill(
    pid: i32,
    jobs: &[FillJob],
    m: &cryopod_image::Manifest,
    reader: &cryopod_image::store::PackReader,
    threads: usize,
) -> Result<()> {
    // Group into batches: consecutive jobs contiguous in one pack, <= 4 MiB.
    let mut batches: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < jobs.len() {
        let first = &m.chunks[jobs[i].chunk as usize];
        let mut end = first.offset + u64::from(first.stored);
        let mut plain = u64::from(first.len);
        let mut j = i + 1;
        while j < jobs.len() {
            let c = &m.chunks[jobs[j].chunk as usize];
            // Bounded both stored and decoded: a well-compressed batch
            // must not make a worker's buffer grow a hundredfold.
            let too_big =
                end - first.offset + u64::from(c.stored) > BATCH_BYTES || plain + u64::from(c.len) > BATCH_BYTES;
            if c.pack != first.pack || c.offset != end || too_big {
                break;
            }
            end += u64::from(c.stored);
            plain += u64::from(c.len);
            j += 1;
        }
        batches.push((i, j));
        i = j;
    }
    let largest = |size: fn(&Chunk) -> u32| {
        batches
            .iter()
            .map(|&(lo, hi)| jobs[lo..hi].iter().map(|j| size(&m.chunks[j.chunk as usize]) as usize).sum::<usize>())
            .max()
            .unwrap_or(0)
    };
    let (largest_stored, largest_plain) = (largest(|c| c.stored), largest(|c| c.len));
    let compressed = m.chunks.iter().any(|c| c.codec != Codec::Raw);
    let next = AtomicUsize::new(0);
    let worker = |pinned: bool| -> Result<()> {
        if !pinned {
            // Filling is parallel work: run on every CPU even if the
            // restorer's main thread is pinned.
            let _ = cryopod_sys::sched::set_affinity(0, &[u64::MAX; 16]);
        }
        // Sized to the largest batch: zeroing and faulting in a 4 MiB buffer
        // would cost more than filling a small process.
        let mut buf = vec![0u8; largest_stored];
        let mut plain = vec![0u8; if compressed { largest_plain } else { 0 }];
        let mut dec = reader.decoder()?;
        loop {
            let b = next.fetch_add(1, Ordering::Relaxed);
            let Some(&(lo, hi)) = batches.get(b) else { return Ok(()) };
            let first = &m.chunks[jobs[lo].chunk as usize];
            let f = reader.file(first.pack).ok_or_else(|| EngineError::Other("pack missing".into()))?;
            let stored: usize = jobs[lo..hi].iter().map(|j| m.chunks[j.chunk as usize].stored as usize).sum();
            f.read_exact_at(&mut buf[..stored], first.offset)
                .map_err(|e| EngineError::Other(format!("reading page data: {e}")))?;
            let raw = jobs[lo..hi].iter().all(|j| m.chunks[j.chunk as usize].codec == Codec::Raw);
            let mut iov = Vec::with_capacity(hi - lo);
            let (mut off, mut at) = (0usize, 0usize);
            for j in &jobs[lo..hi] {
                let ch = &m.chunks[j.chunk as usize];
                let (l, s) = (ch.len as usize, ch.stored as usize);
                if !raw {
                    dec.decode(ch, &buf[at..at + s], &mut plain[off..off + l])?;
                }
                let r = j.range();
                iov.push((j.addr, off + r.start, r.len()));
                off += l;
                at += s;
            }
            let data = if raw { &buf[..off] } else { &plain[..off] };
            cryopod_sys::mem::write_ranges(pid, &iov, data)?;
        }
    };
    // Threads pay off only for more than a few batches.
    let workers = threads.clamp(1, 16).min(batches.len().max(1));
    if workers == 1 || batches.len() < 4 {
        return worker(true);
    }
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..workers).map(|_| s.spawn(|| worker(false))).collect();
        for h in hs {
            h.join().map_err(|_| EngineError::Other("page filler thread panicked".into()))??;
        }
        Ok(())
    })
}
