//! The page store of one image: append-only pack files holding page chunks,
//! each chunk named in the manifest by its BLAKE3 hash. Writers deduplicate
//! by hash; the reader checks pack sizes and every chunk hash.

use crate::{Chunk, ImageError, Manifest, Pack, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Name of the `n`th pack file.
pub fn pack_name(n: usize) -> String {
    format!("pages-{n}.pack")
}

/// One pack file being appended to.
pub struct PackWriter {
    file: File,
    path: PathBuf,
    pub index: u32,
    pub offset: u64,
}

impl PackWriter {
    pub fn create(dir: &Path, index: u32) -> Result<Self> {
        let path = dir.join(pack_name(index as usize));
        let file = File::create(&path).map_err(|e| ImageError::io(path.display(), e))?;
        Ok(PackWriter { file, path, index, offset: 0 })
    }

    /// Append several buffers in one go; returns the offset of the first.
    pub fn append(&mut self, bufs: &[&[u8]]) -> Result<u64> {
        let start = self.offset;
        let mut slices: Vec<std::io::IoSlice> = bufs.iter().map(|b| std::io::IoSlice::new(b)).collect();
        let mut rest: &mut [std::io::IoSlice] = &mut slices;
        while !rest.is_empty() {
            let n = self.file.write_vectored(rest).map_err(|e| ImageError::io(self.path.display(), e))?;
            if n == 0 {
                return Err(ImageError::io(self.path.display(), std::io::ErrorKind::WriteZero.into()));
            }
            self.offset += n as u64;
            std::io::IoSlice::advance_slices(&mut rest, n);
        }
        Ok(start)
    }

    pub fn finish(self) -> Result<Pack> {
        self.file.sync_data().map_err(|e| ImageError::io(self.path.display(), e))?;
        Ok(Pack { name: pack_name(self.index as usize), size: self.offset })
    }
}

/// Chunk ids by hash, and the chunks in id order.
type ChunkIndex = (HashMap<[u8; 32], u32>, Vec<Chunk>);

/// The set of chunks written so far, shared by writer threads: hash → id.
#[derive(Default)]
pub struct ChunkTable {
    inner: Mutex<ChunkIndex>,
}

impl ChunkTable {
    /// The id of the chunk with this hash: an existing one (false), or
    /// `chunk` itself, newly recorded (true), which the caller must then
    /// write where `chunk` says before the manifest is written.
    pub fn get_or_insert(&self, chunk: Chunk) -> (u32, bool) {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(&id) = g.0.get(&chunk.hash) {
            return (id, false);
        }
        let id = g.1.len() as u32;
        g.0.insert(chunk.hash, id);
        g.1.push(chunk);
        (id, true)
    }

    pub fn into_chunks(self) -> Vec<Chunk> {
        match self.inner.into_inner() {
            Ok(g) => g.1,
            Err(p) => p.into_inner().1,
        }
    }
}

/// Read access to the packs of an image.
pub struct PackReader {
    files: Vec<File>,
    names: Vec<String>,
}

impl PackReader {
    /// Open every pack the manifest names and check its size.
    pub fn open(dir: &Path, m: &Manifest) -> Result<Self> {
        let mut files = Vec::new();
        let mut names = Vec::new();
        for p in &m.packs {
            let path = dir.join(&p.name);
            let f = File::open(&path).map_err(|e| ImageError::io(path.display(), e))?;
            let len = f.metadata().map_err(|e| ImageError::io(path.display(), e))?.len();
            if len < p.size {
                return Err(ImageError::Truncated(format!("{} has {len} of {} bytes", p.name, p.size)));
            }
            files.push(f);
            names.push(p.name.clone());
        }
        Ok(PackReader { files, names })
    }

    /// The open file of pack `i` (validated manifests only name existing packs).
    pub fn file(&self, i: u32) -> Option<&File> {
        self.files.get(i as usize)
    }

    pub fn read_chunk(&self, c: &Chunk, out: &mut [u8]) -> Result<()> {
        let f = self.file(c.pack).ok_or_else(|| ImageError::Corrupt(format!("pack {} missing", c.pack)))?;
        let name = &self.names[c.pack as usize];
        let out =
            out.get_mut(..c.len as usize).ok_or_else(|| ImageError::Corrupt("chunk larger than the buffer".into()))?;
        f.read_exact_at(out, c.offset).map_err(|e| ImageError::io(name, e))
    }

    /// Check the hash of every chunk, using `threads` threads.
    pub fn verify_all(&self, m: &Manifest, threads: usize) -> Result<()> {
        let mut order: Vec<usize> = (0..m.chunks.len()).collect();
        order.sort_by_key(|&i| (m.chunks[i].pack, m.chunks[i].offset));
        // Threads pay off only for more than a few MiB.
        let total: u64 = m.chunks.iter().map(|c| u64::from(c.len)).sum();
        let threads = if total < 16 << 20 { 1 } else { threads.max(1) };
        if threads == 1 {
            return self.verify_part(m, &order);
        }
        let per = order.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let handles: Vec<_> = order.chunks(per).map(|part| s.spawn(move || self.verify_part(m, part))).collect();
            for h in handles {
                h.join().map_err(|_| ImageError::Corrupt("verifier thread failed".into()))??;
            }
            Ok(())
        })
    }

    fn verify_part(&self, m: &Manifest, ids: &[usize]) -> Result<()> {
        const BLOCK: u64 = 8 << 20;
        let total: u64 = ids.iter().map(|&i| u64::from(m.chunks[i].len)).sum();
        let mut buf = vec![0u8; total.min(BLOCK) as usize];
        let mut i = 0;
        while i < ids.len() {
            let first = &m.chunks[ids[i]];
            let mut j = i + 1;
            let mut end = first.offset + u64::from(first.len);
            while j < ids.len() {
                let c = &m.chunks[ids[j]];
                if c.pack != first.pack || c.offset != end || end + u64::from(c.len) - first.offset > BLOCK {
                    break;
                }
                end += u64::from(c.len);
                j += 1;
            }
            let f = self.file(first.pack).ok_or_else(|| ImageError::Corrupt("pack missing".into()))?;
            let span = &mut buf[..(end - first.offset) as usize];
            f.read_exact_at(span, first.offset).map_err(|e| ImageError::io(&self.names[first.pack as usize], e))?;
            for &id in &ids[i..j] {
                let c = &m.chunks[id];
                let o = (c.offset - first.offset) as usize;
                if blake3::hash(&span[o..o + c.len as usize]).as_bytes() != &c.hash {
                    return Err(ImageError::Corrupt(format!(
                        "page chunk {id} in {} at offset {} fails its checksum",
                        self.names[c.pack as usize], c.offset
                    )));
                }
            }
            i = j;
        }
        Ok(())
    }
}
