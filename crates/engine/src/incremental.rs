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

/// A parent's data for a page or run: the index of its chunk in the
/// parent's manifest and the page in it, or None for zeros.
pub type ParentData = Option<(u32, u32)>;

/// Pages taken from the parent: where, how many, and what.
pub struct Reused {
    pub dest: Dest,
    pub pages: u32,
    pub data: ParentData,
}

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
/// chunk the base knows (`known`, by chunk index), and zeros.
fn parent_runs(p: &Process, known: &[Option<Chunk>]) -> Vec<ParentRun> {
    let mut out = Vec::new();
    for v in p.vmas.iter().filter(|v| v.kind == VmaKind::Anon && !v.shared && v.madv & vma_flags::DONTDUMP == 0) {
        for r in &v.runs {
            let data = match r.chunk {
                Some(c) if known.get(c as usize).is_some_and(Option::is_some) => Some((c, r.from)),
                Some(_) => continue,
                None => None,
            };
            out.push((r.addr, r.addr + u64::from(r.pages) * PAGE, data));
        }
    }
    out.sort_unstable_by_key(|r| r.0);
    out
}

/// A position in sorted, disjoint ranges that mostly moves forward (the
/// pieces of a process come in address order): finding the first range
/// that ends after an address costs a step or two, not a search.
struct Cursor<'a, T> {
    items: &'a [T],
    end: fn(&T) -> u64,
    i: usize,
}

impl<'a, T> Cursor<'a, T> {
    fn new(items: &'a [T], end: fn(&T) -> u64) -> Self {
        Cursor { items, end, i: 0 }
    }

    /// The first item ending after `a`, if any.
    fn after(&mut self, a: u64) -> Option<&'a T> {
        let end = self.end;
        let behind = self.i > 0 && self.items.get(self.i - 1).is_some_and(|r| end(r) > a);
        let mut steps = 0;
        while !behind && self.items.get(self.i).is_some_and(|r| end(r) <= a) {
            self.i += 1;
            steps += 1;
            if steps == 8 {
                break;
            }
        }
        if behind || self.items.get(self.i).is_some_and(|r| end(r) <= a) {
            self.i = self.items.partition_point(|r| end(r) <= a);
        }
        self.items.get(self.i)
    }
}

/// One tracked process: what it wrote, and its parent's runs, with
/// cursors in both.
struct Tracked<'a> {
    written: Cursor<'a, (u64, u64)>,
    untracked: Cursor<'a, (u64, u64)>,
    runs: Cursor<'a, ParentRun>,
}

/// Split the pieces of `mem` into what must be read (kept in `mem`) and
/// what the parent holds (returned). `procs` are this checkpoint's
/// process records (host PIDs); `parent` the parent's manifest and, per
/// chunk of it, whether the base knows it; `parent_pid` maps a host PID
/// to the parent image's.
pub fn select(
    mem: &mut MemCollector,
    procs: &[Process],
    round: &Round,
    (parent, known): (&Manifest, &[Option<Chunk>]),
    parent_pid: impl Fn(i32) -> Option<i32>,
) -> Selection {
    let t0 = std::time::Instant::now();
    let by_pid: HashMap<i32, &Process> = parent.processes.iter().map(|p| (p.pid, p)).collect();
    // Per process tracked throughout and in the parent: its parent's runs.
    let mut runs: HashMap<i32, (&ProcDirty, Vec<ParentRun>)> = HashMap::new();
    for (pid, d) in round.procs.iter().filter(|(_, d)| !d.whole) {
        if let Some(pp) = parent_pid(*pid).and_then(|p| by_pid.get(&p)) {
            runs.insert(*pid, (d, parent_runs(pp, known)));
        }
    }
    let mut tracked: HashMap<i32, Tracked> = runs
        .iter()
        .map(|(pid, (d, r))| {
            let t = Tracked {
                written: Cursor::new(&d.written, |r| r.1),
                untracked: Cursor::new(&d.untracked, |r| r.1),
                runs: Cursor::new(r, |r| r.1),
            };
            (*pid, t)
        })
        .collect();
    let mut sel = Selection::default();
    let pieces = std::mem::take(&mut mem.pieces);
    let dests = std::mem::take(&mut mem.dests);
    mem.pieces.reserve(pieces.len() / 4);
    mem.dests.reserve(pieces.len() / 4);
    let (mut read, mut reused) = (Vec::new(), Vec::new());
    for (piece, dest) in pieces.into_iter().zip(dests) {
        let bytes = u64::from(piece.pages) * PAGE;
        let split_up = match (&piece.src, &dest) {
            (Src::Mem { pid, addr }, Dest::Vma { proc, vma, .. }) => {
                let v = procs.get(*proc).and_then(|p| p.vmas.get(*vma));
                match (v, tracked.get_mut(pid)) {
                    // An area left out on request (its flags are known
                    // then) is never filled from the parent.
                    (Some(v), Some(t)) if v.kind == VmaKind::Anon && !v.shared && v.madv & vma_flags::DONTDUMP == 0 => {
                        read.clear();
                        reused.clear();
                        split(t, (*addr, piece.pages), (*proc, *vma), (&mut read, &mut reused))
                    }
                    _ => false,
                }
            }
            _ => false,
        };
        match (split_up, &piece.src) {
            (true, Src::Mem { pid, .. }) => {
                for &(a, n) in &read {
                    sel.read_bytes += u64::from(n) * PAGE;
                    mem.pieces.push(Piece { src: Src::Mem { pid: *pid, addr: a }, pages: n });
                    if let Dest::Vma { proc, vma, .. } = dest {
                        mem.dests.push(Dest::Vma { proc, vma, addr: a });
                    }
                }
                sel.reused_bytes += reused.iter().map(|r: &Reused| u64::from(r.pages) * PAGE).sum::<u64>();
                sel.reused.append(&mut reused);
            }
            _ => {
                sel.read_bytes += bytes;
                mem.pieces.push(piece);
                mem.dests.push(dest);
            }
        }
    }
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "pages split between reading and the parent");
    sel
}

/// The piece of `pages` at `addr` of area `(proc, vma)` as ranges to read
/// (address, pages) and runs from the parent, into `out`; false (and
/// `out` meaningless) if nothing of it can be taken from the parent.
fn split(
    t: &mut Tracked,
    (addr, pages): (u64, u32),
    (proc, vma): (usize, usize),
    (read, reused): (&mut Vec<(u64, u32)>, &mut Vec<Reused>),
) -> bool {
    let end = addr + u64::from(pages) * PAGE;
    if t.untracked.after(addr).is_some_and(|r| r.0 < end) {
        return false;
    }
    let n = |a: u64, b: u64| ((b - a) / PAGE) as u32;
    let mut push_read = |a: u64, b: u64| match read.last_mut() {
        Some((s, k)) if *s + u64::from(*k) * PAGE == a => *k += n(a, b),
        _ => read.push((a, n(a, b))),
    };
    let mut pos = addr;
    while pos < end {
        // Written from here: read up to the written range's end.
        let w = t.written.after(pos).copied();
        if let Some((_, we)) = w.filter(|w| w.0 <= pos) {
            let to = we.min(end);
            push_read(pos, to);
            pos = to;
            continue;
        }
        // Clean up to the next written range: the parent's, where it has it.
        let clean_end = w.map_or(end, |w| w.0.min(end));
        match t.runs.after(pos).copied() {
            Some((rs, re, data)) if rs <= pos => {
                let to = re.min(clean_end);
                let data = data.map(|(c, f)| (c, f + n(rs, pos)));
                reused.push(Reused { dest: Dest::Vma { proc, vma, addr: pos }, pages: n(pos, to), data });
                pos = to;
            }
            Some((rs, _, _)) => {
                let to = rs.min(clean_end);
                push_read(pos, to);
                pos = to;
            }
            None => {
                push_read(pos, clean_end);
                pos = clean_end;
            }
        }
    }
    !reused.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ranges read (address, pages) and runs taken from the parent.
    type Cut = (Vec<(u64, u32)>, Vec<Reused>);

    /// Split a piece of `pages` at `addr` against `d` and `runs`.
    fn cut(d: &ProcDirty, runs: &[ParentRun], addr: u64, pages: u32) -> Option<Cut> {
        let mut t = Tracked {
            written: Cursor::new(&d.written, |r| r.1),
            untracked: Cursor::new(&d.untracked, |r| r.1),
            runs: Cursor::new(runs, |r| r.1),
        };
        let (mut read, mut reused) = (Vec::new(), Vec::new());
        split(&mut t, (addr, pages), (0, 1), (&mut read, &mut reused)).then_some((read, reused))
    }

    #[test]
    fn pages_split_into_reads_and_parent_runs() {
        // The parent saved 16 pages at 0x10000 as its chunk 3.
        let runs = vec![(0x10000, 0x20000, Some((3, 0)))];
        let d = ProcDirty { whole: false, written: vec![(0x13000, 0x14000)], untracked: vec![] };
        let (read, reused) = cut(&d, &runs, 0x10000, 16).unwrap();
        assert_eq!(read, vec![(0x13000, 1)]);
        assert_eq!(reused.len(), 2);
        assert_eq!((reused[0].pages, reused[0].data), (3, Some((3, 0))));
        assert_eq!((reused[1].pages, reused[1].data), (12, Some((3, 4))));
        // Untracked: all read; no parent run: read.
        let u = ProcDirty { untracked: vec![(0x1f000, 0x30000)], ..Default::default() };
        assert!(cut(&u, &runs, 0x10000, 16).is_none());
        assert!(cut(&ProcDirty::default(), &runs, 0x30000, 16).is_none());
        // Nothing written: one run from the parent.
        let (read, reused) = cut(&ProcDirty::default(), &runs, 0x14000, 4).unwrap();
        assert!(read.is_empty() && reused.len() == 1 && reused[0].data == Some((3, 4)));
    }

    #[test]
    fn gaps_zeros_and_written_ranges_across_runs() {
        // Parent: chunk 1 at 0..4 pages, a hole at 4..6, zeros at 6..8,
        // chunk 2 at 8..16.
        let p = PAGE;
        let runs = vec![(0, 4 * p, Some((1, 0))), (6 * p, 8 * p, None), (8 * p, 16 * p, Some((2, 0)))];
        // Written: pages 3..5 (across the first run's end and the hole) and 9.
        let d = ProcDirty { written: vec![(3 * p, 5 * p), (9 * p, 10 * p)], ..Default::default() };
        let (read, reused) = cut(&d, &runs, 0, 16).unwrap();
        // Read: 3..6 (written, then the hole: merged), 9.
        assert_eq!(read, vec![(3 * p, 3), (9 * p, 1)]);
        let got: Vec<(u64, u32, ParentData)> = reused
            .iter()
            .map(|r| match r.dest {
                Dest::Vma { addr, .. } => (addr / p, r.pages, r.data),
                Dest::Object { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(got, vec![(0, 3, Some((1, 0))), (6, 2, None), (8, 1, Some((2, 0))), (10, 6, Some((2, 2)))]);
        // The cursors also serve a piece behind the last one.
        let mut t = Tracked {
            written: Cursor::new(&d.written, |r| r.1),
            untracked: Cursor::new(&d.untracked, |r| r.1),
            runs: Cursor::new(&runs, |r| r.1),
        };
        let (mut read, mut reused) = (Vec::new(), Vec::new());
        assert!(split(&mut t, (8 * p, 8), (0, 1), (&mut read, &mut reused)));
        read.clear();
        reused.clear();
        assert!(split(&mut t, (0, 4), (0, 1), (&mut read, &mut reused)));
        assert_eq!(read, vec![(3 * p, 1)]);
        assert_eq!((reused.len(), reused[0].pages, reused[0].data), (1, 3, Some((1, 0))));
    }
}
