//! Incremental checkpoints with tracking (`--parent PREV --track`): a page
//! of a tracked tree that was not written since PREV's freeze holds what
//! PREV saved at the same address, so only the written pages are read;
//! the others become runs naming PREV's chunks (or part of one: a chunk
//! covers up to 16 pages, of which only one may have been written).
//!
//! A page is taken from the parent only when all of this holds; otherwise
//! it is read as in any checkpoint:
//! - its process was tracked over the whole interval (not `whole`) and the
//!   parent has a process of the same PID (a pod's: of the same PID in the
//!   pod);
//! - its area is private anonymous memory, tracked throughout (no part of
//!   the piece is `untracked`), and the page not among the `written`;
//! - the parent saved that address in a private anonymous area not marked
//!   MADV_DONTDUMP (an excluded area's zeros are not its contents), as a
//!   chunk this checkpoint's base knows, or as zeros;
//! - with `--exclude-dontdump`, the area is not marked now either (its
//!   pages are then left out, not taken from the parent).

use crate::mm::{Dest, MemCollector};
use crate::pages::{Piece, Src};
use crate::track::{ProcDirty, Round};
use cryopod_image::{vma_flags, Chunk, Manifest, Process, VmaKind, PAGE};
use std::collections::HashMap;

/// A parent's data for a page or run: its chunk's hash and the page in
/// it, or None for zeros.
pub type ParentData = Option<([u8; 32], u32)>;

/// Pages taken from the parent: where, how many, and what.
pub struct Reused {
    pub dest: Dest,
    pub pages: u32,
    pub data: ParentData,
}

/// A piece split: what to read, and what the parent holds.
type Split = (Vec<(Piece, Dest)>, Vec<Reused>);

/// What [`select`] decided.
#[derive(Default)]
pub struct Selection {
    pub reused: Vec<Reused>,
    /// Bytes taken from the parent, and left to read.
    pub reused_bytes: u64,
    pub read_bytes: u64,
}

/// A parent's saved page run: (start, end, data), absolute addresses.
type ParentRun = (u64, u64, ParentData);

/// The runs of a parent process that may be taken, sorted: those whose
/// chunk the base knows, and zeros.
fn parent_runs(p: &Process, m: &Manifest, known: &HashMap<[u8; 32], Chunk>) -> Vec<ParentRun> {
    let mut out = Vec::new();
    for v in p.vmas.iter().filter(|v| v.kind == VmaKind::Anon && !v.shared && v.madv & vma_flags::DONTDUMP == 0) {
        for r in &v.runs {
            let data = match r.chunk {
                Some(c) => match m.chunks.get(c as usize) {
                    Some(ch) if known.contains_key(&ch.hash) => Some((ch.hash, r.from)),
                    _ => continue,
                },
                None => None,
            };
            out.push((r.addr, r.addr + u64::from(r.pages) * PAGE, data));
        }
    }
    out.sort_unstable_by_key(|r| r.0);
    out
}

/// What page `a` can be taken as: Some(data) from the parent, None: read.
fn from_parent(runs: &[ParentRun], a: u64) -> Option<ParentData> {
    let i = runs.partition_point(|r| r.0 <= a).checked_sub(1)?;
    let (s, e, data) = runs[i];
    if a >= e {
        return None;
    }
    Some(data.map(|(hash, from)| (hash, from + ((a - s) / PAGE) as u32)))
}

fn overlaps(ranges: &[(u64, u64)], s: u64, e: u64) -> bool {
    let i = ranges.partition_point(|r| r.1 <= s);
    ranges.get(i).is_some_and(|r| r.0 < e)
}

/// Split the pieces of `mem` into what must be read (kept in `mem`) and
/// what the parent `parent` holds (returned). `procs` are this
/// checkpoint's process records (host PIDs); `parent_pid` maps a host PID
/// to the parent image's.
pub fn select(
    mem: &mut MemCollector,
    procs: &[Process],
    round: &Round,
    (parent, known): (&Manifest, &HashMap<[u8; 32], Chunk>),
    parent_pid: impl Fn(i32) -> Option<i32>,
) -> Selection {
    let t0 = std::time::Instant::now();
    let by_pid: HashMap<i32, &Process> = parent.processes.iter().map(|p| (p.pid, p)).collect();
    // Per process tracked throughout and in the parent: what it wrote, and
    // the parent's runs.
    let mut prepared: HashMap<i32, (&ProcDirty, Vec<ParentRun>)> = HashMap::new();
    for (pid, d) in round.procs.iter().filter(|(_, d)| !d.whole) {
        if let Some(pp) = parent_pid(*pid).and_then(|p| by_pid.get(&p)) {
            prepared.insert(*pid, (d, parent_runs(pp, parent, known)));
        }
    }
    let mut sel = Selection::default();
    let pieces = std::mem::take(&mut mem.pieces);
    let dests = std::mem::take(&mut mem.dests);
    mem.pieces.reserve(pieces.len() / 4);
    mem.dests.reserve(pieces.len() / 4);
    for (piece, dest) in pieces.into_iter().zip(dests) {
        let bytes = u64::from(piece.pages) * PAGE;
        let taken = match (&piece.src, &dest) {
            (Src::Mem { pid, addr }, Dest::Vma { proc, vma, .. }) => {
                let v = procs.get(*proc).and_then(|p| p.vmas.get(*vma));
                match (v, prepared.get(pid)) {
                    // An area left out on request (its flags are known
                    // then) is never filled from the parent.
                    (Some(v), Some((d, runs)))
                        if v.kind == VmaKind::Anon && !v.shared && v.madv & vma_flags::DONTDUMP == 0 =>
                    {
                        split(*pid, *addr, piece.pages, (*proc, *vma), d, runs)
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        match taken {
            Some((read, reused)) => {
                for (p, d) in read {
                    sel.read_bytes += u64::from(p.pages) * PAGE;
                    mem.pieces.push(p);
                    mem.dests.push(d);
                }
                sel.reused_bytes += reused.iter().map(|r| u64::from(r.pages) * PAGE).sum::<u64>();
                sel.reused.extend(reused);
            }
            None => {
                sel.read_bytes += bytes;
                mem.pieces.push(piece);
                mem.dests.push(dest);
            }
        }
    }
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "pages split between reading and the parent");
    sel
}

/// The piece of `pages` at `addr` of process `pid`, area `(proc, vma)`,
/// as pieces to read and runs from the parent; None if nothing of it can
/// be taken from the parent.
fn split(
    pid: i32,
    addr: u64,
    pages: u32,
    (proc, vma): (usize, usize),
    d: &ProcDirty,
    runs: &[ParentRun],
) -> Option<Split> {
    let end = addr + u64::from(pages) * PAGE;
    if overlaps(&d.untracked, addr, end) {
        return None;
    }
    // Most pieces: nothing written, and one parent run holds all of it.
    if !overlaps(&d.written, addr, end) {
        let i = runs.partition_point(|r| r.0 <= addr).checked_sub(1);
        if let Some(&(s, e, data)) = i.map(|i| &runs[i]) {
            if end <= e {
                let data = data.map(|(h, f)| (h, f + ((addr - s) / PAGE) as u32));
                return Some((Vec::new(), vec![Reused { dest: Dest::Vma { proc, vma, addr }, pages, data }]));
            }
        }
    }
    // Per page: Some(data) taken from the parent, None read.
    let plan: Vec<Option<ParentData>> = (0..u64::from(pages))
        .map(|i| {
            let a = addr + i * PAGE;
            match overlaps(&d.written, a, a + PAGE) {
                true => None,
                false => from_parent(runs, a),
            }
        })
        .collect();
    if plan.iter().all(Option::is_none) {
        return None;
    }
    let (mut read, mut reused) = (Vec::new(), Vec::<Reused>::new());
    let mut i = 0usize;
    while i < plan.len() {
        let a = addr + i as u64 * PAGE;
        let mut j = i + 1;
        match plan[i] {
            None => {
                while j < plan.len() && plan[j].is_none() {
                    j += 1;
                }
                let n = (j - i) as u32;
                read.push((Piece { src: Src::Mem { pid, addr: a }, pages: n }, Dest::Vma { proc, vma, addr: a }));
            }
            Some(data) => {
                // Contiguous pages of one chunk (or zeros) make one run.
                let next = |k: usize| data.map(|(h, f)| (h, f + (k - i) as u32));
                while j < plan.len() && plan[j] == Some(next(j)) {
                    j += 1;
                }
                reused.push(Reused { dest: Dest::Vma { proc, vma, addr: a }, pages: (j - i) as u32, data });
            }
        }
        i = j;
    }
    Some((read, reused))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_split_into_reads_and_parent_runs() {
        let h = [7u8; 32];
        let known: HashMap<[u8; 32], Chunk> =
            [(h, Chunk { hash: h, pack: 0, offset: 0, len: 65536, codec: cryopod_image::Codec::Raw, stored: 65536 })]
                .into();
        // The parent saved 16 pages at 0x10000 as one chunk.
        let runs = vec![(0x10000, 0x20000, Some((h, 0)))];
        assert!(known.contains_key(&h));
        let d = ProcDirty { whole: false, written: vec![(0x13000, 0x14000)], untracked: vec![] };
        let (read, reused) = split(5, 0x10000, 16, (0, 1), &d, &runs).unwrap();
        assert_eq!(read.len(), 1);
        assert!(matches!(read[0].0.src, Src::Mem { pid: 5, addr: 0x13000 }) && read[0].0.pages == 1);
        assert_eq!(reused.len(), 2);
        assert_eq!((reused[0].pages, reused[0].data), (3, Some((h, 0))));
        assert_eq!((reused[1].pages, reused[1].data), (12, Some((h, 4))));
        // Untracked: all read; no parent run: read.
        let u = ProcDirty { untracked: vec![(0x1f000, 0x30000)], ..Default::default() };
        assert!(split(5, 0x10000, 16, (0, 1), &u, &runs).is_none());
        assert!(split(5, 0x30000, 16, (0, 1), &ProcDirty::default(), &runs).is_none());
        // Nothing written: one run from the parent.
        let (read, reused) = split(5, 0x14000, 4, (0, 1), &ProcDirty::default(), &runs).unwrap();
        assert!(read.is_empty() && reused.len() == 1 && reused[0].data == Some((h, 4)));
    }
}
