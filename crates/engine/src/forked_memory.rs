//! Copy-on-write sharing of private memory between the processes of a
//! tree, as fork left it. A forked child shares its parent's private
//! pages until one of them writes a page; restoring each process's memory
//! on its own would give every child a copy of all of it (a server and
//! its workers would need their memory once per worker).
//!
//! Before the stubs are forked, the restorer maps one *template* for each
//! private anonymous area that two or more processes of the image have at
//! the same addresses, filled with the pages of the first of them in tree
//! order (the oldest: the one the others were forked from), at an address
//! no process of the image uses. Every stub inherits the templates, copy-
//! on-write, and the restorer lets go of its own. Building a process, an
//! area with a template is moved (mremap) to its place instead of being
//! made anew, and only the pages that differ from the template's are
//! written, or dropped where the process has none. The image tells which
//! without reading them: a page's data is named by its chunk and its page
//! in it, and identical pages share a chunk. Pages the processes did not
//! change stay shared by all of them, as they were.
//!
//! Not for a lazy restore (its pages arrive after the processes run).

use crate::pages::FillJob;
use crate::{EngineError, Result};
use cryopod_image::store::PackReader;
use cryopod_image::{Manifest, Process, Run, Vma, VmaKind, PAGE};
use cryopod_sys::mem::FixedArea;
use std::collections::HashMap;

/// One area's template: where the area is in the image, where its template
/// is meanwhile, and the pages it holds (runs in address order).
pub struct Template {
    pub start: u64,
    pub end: u64,
    pub at: u64,
    runs: Vec<Run>,
}

/// The templates of one restore.
#[derive(Default)]
pub struct Templates {
    by_range: HashMap<(u64, u64), Template>,
    /// The restorer's own mappings, until the stubs are forked.
    own: Vec<FixedArea>,
}

/// What one page of an area holds in the image.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Page {
    Absent,
    Zero,
    Data { chunk: u32, page: u32 },
}

/// Can this area have a template? Private anonymous, not growing down
/// (mremap cannot give an area MAP_GROWSDOWN), with data to share: an
/// area without (a PROT_NONE reservation, often huge) would only be
/// charged to the restorer's memory commitment for nothing.
fn candidate(v: &Vma) -> bool {
    v.kind == VmaKind::Anon
        && !v.shared
        && v.madv & cryopod_image::vma_flags::GROWSDOWN == 0
        && v.runs.iter().any(|r| r.chunk.is_some())
}

fn sorted(runs: &[Run]) -> Vec<Run> {
    let mut v = runs.to_vec();
    v.sort_unstable_by_key(|r| r.addr);
    v
}

impl Templates {
    /// Map and fill the templates of image `m` in this process. Call it
    /// just before forking the stubs, and [`Templates::release_own`] just
    /// after.
    pub fn prepare(m: &Manifest, reader: &PackReader, threads: usize) -> Result<Templates> {
        let live: Vec<&Process> =
            crate::tree::tree_order(m).into_iter().filter(|p| p.zombie_status.is_none()).collect();
        let mut count: HashMap<(u64, u64), usize> = HashMap::new();
        for v in live.iter().flat_map(|p| &p.vmas).filter(|v| candidate(v)) {
            *count.entry((v.start, v.end)).or_default() += 1;
        }
        let mut t = Templates::default();
        if !count.values().any(|&n| n > 1) {
            return Ok(t);
        }
        // Holes that no area of the image and nothing of ours is in.
        let me = std::process::id() as i32;
        let mut used: Vec<(u64, u64)> =
            m.processes.iter().flat_map(|p| p.vmas.iter().map(|v| (v.start, v.end))).collect();
        used.extend(crate::procfs::maps(me)?.iter().map(|a| (a.start, a.end)));
        let mut jobs = Vec::new();
        for p in &live {
            for v in p.vmas.iter().filter(|v| candidate(v)) {
                let key = (v.start, v.end);
                if count.get(&key).is_none_or(|&n| n < 2) || t.by_range.contains_key(&key) {
                    continue;
                }
                let len = v.end - v.start;
                let area = map_in_hole(&mut used, len)?;
                let at = area.addr();
                t.own.push(area);
                jobs.extend(
                    v.runs
                        .iter()
                        .filter_map(|r| FillJob::of(r, 0))
                        .map(|j| FillJob { addr: at + (j.addr - v.start), ..j }),
                );
                t.by_range.insert(key, Template { start: v.start, end: v.end, at, runs: sorted(&v.runs) });
            }
        }
        jobs.sort_unstable_by_key(|j| j.addr);
        crate::pages::fill(me, &jobs, m, reader, threads)
            .map_err(EngineError::during("the memory that forked processes share"))?;
        tracing::debug!(templates = t.by_range.len(), runs = jobs.len(), "templates of shared memory filled");
        Ok(t)
    }

    /// Unmap this process's templates (the stubs keep theirs).
    pub fn release_own(&mut self) {
        self.own.clear();
    }

    /// The template of area `v`, if it has one.
    pub fn of(&self, v: &Vma) -> Option<&Template> {
        self.by_range.get(&(v.start, v.end)).filter(|_| candidate(v))
    }

    /// Where the templates that process `p` takes are in its stub.
    pub fn taken_by(&self, p: &Process) -> Vec<(u64, u64)> {
        p.vmas.iter().filter_map(|v| self.of(v)).map(|t| (t.at, t.at + (t.end - t.start))).collect()
    }
}

/// Map `len` bytes at the lowest hole of `used`, and count it used.
fn map_in_hole(used: &mut Vec<(u64, u64)>, len: u64) -> Result<FixedArea> {
    // Another thread of ours may map something there meanwhile: a few
    // tries, each past what is mapped now.
    for _ in 0..4 {
        let at = crate::mm::find_hole(used, len)
            .ok_or_else(|| EngineError::Other("no room for the memory that forked processes share".into()))?;
        used.push((at, at + len));
        match FixedArea::map(at, len as usize) {
            Ok(a) => return Ok(a),
            Err(e) if e.errno.0 == libc::EEXIST => {
                let me = std::process::id() as i32;
                used.extend(crate::procfs::maps(me)?.iter().map(|a| (a.start, a.end)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(EngineError::Other("no room for the memory that forked processes share: the holes keep filling".into()))
}

/// Walks runs in address order, answering what each page holds.
struct Cursor<'a> {
    runs: &'a [Run],
    i: usize,
}

impl Cursor<'_> {
    /// The page at `addr` (called with addresses that never go back).
    fn at(&mut self, addr: u64) -> Page {
        while self.runs.get(self.i).is_some_and(|r| r.addr + u64::from(r.pages) * PAGE <= addr) {
            self.i += 1;
        }
        match self.runs.get(self.i) {
            Some(r) if r.addr <= addr => match r.chunk {
                None => Page::Zero,
                Some(chunk) => Page::Data { chunk, page: r.from + ((addr - r.addr) / PAGE) as u32 },
            },
            _ => Page::Absent,
        }
    }
}

impl Template {
    /// What an area whose pages are `own` needs once the template is in
    /// its place: pages to write (their runs) and ranges to drop (start,
    /// length: the template has data there, the area none).
    pub fn differences(&self, own: &[Run]) -> (Vec<FillJob>, Vec<(u64, u64)>) {
        let own = sorted(own);
        // Every place where what either holds may change.
        let mut cuts: Vec<u64> = vec![self.start, self.end];
        for r in own.iter().chain(&self.runs) {
            cuts.push(r.addr.clamp(self.start, self.end));
            cuts.push((r.addr + u64::from(r.pages) * PAGE).clamp(self.start, self.end));
        }
        cuts.sort_unstable();
        cuts.dedup();
        let (mut mine, mut theirs) = (Cursor { runs: &own, i: 0 }, Cursor { runs: &self.runs, i: 0 });
        let (mut writes, mut drops): (Vec<FillJob>, Vec<(u64, u64)>) = (Vec::new(), Vec::new());
        for w in cuts.windows(2) {
            let (a, b) = (w[0], w[1]);
            let pages = ((b - a) / PAGE) as u32;
            match (mine.at(a), theirs.at(a)) {
                (o, t) if o == t => {}
                (Page::Data { chunk, page }, _) => writes.push(FillJob { addr: a, chunk, from: page, pages }),
                (_, Page::Data { .. }) => match drops.last_mut() {
                    Some((s, l)) if *s + *l == a => *l += b - a,
                    _ => drops.push((a, b - a)),
                },
                // Absent or zero on both sides: both read zeros.
                _ => {}
            }
        }
        (writes, drops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(addr: u64, pages: u32, chunk: Option<u32>, from: u32) -> Run {
        Run { addr, pages, chunk, from }
    }

    #[test]
    fn only_what_differs_is_written_or_dropped() {
        let p = PAGE;
        let t = Template {
            start: 0x10000,
            end: 0x10000 + 16 * p,
            at: 0x900000,
            // Pages 0-7 chunk 1, 8-9 zero, 10-13 chunk 2.
            runs: vec![
                run(0x10000, 8, Some(1), 0),
                run(0x10000 + 8 * p, 2, None, 0),
                run(0x10000 + 10 * p, 4, Some(2), 0),
            ],
        };
        // The same: nothing to do.
        assert_eq!(t.differences(&t.runs.clone()).0.len(), 0);
        assert_eq!(t.differences(&t.runs.clone()).1, vec![]);
        // Pages 0-3 as the template, 4-7 of chunk 3, 8-9 absent, 10-11
        // as the template's (chunk 2 from page 0), 12-13 gone.
        let own = vec![
            run(0x10000, 4, Some(1), 0),
            run(0x10000 + 4 * p, 4, Some(3), 0),
            run(0x10000 + 10 * p, 2, Some(2), 0),
        ];
        let (w, d) = t.differences(&own);
        let w: Vec<(u64, u32, u32, u32)> = w.iter().map(|j| (j.addr, j.chunk, j.from, j.pages)).collect();
        assert_eq!(w, vec![(0x10000 + 4 * p, 3, 0, 4)]);
        assert_eq!(d, vec![(0x10000 + 12 * p, 2 * p)]);
        // The same chunk at another page of it is not the same page.
        let shifted = vec![run(0x10000, 8, Some(1), 1)];
        let (w, d) = t.differences(&shifted);
        assert_eq!(w.iter().map(|j| (j.addr, j.from, j.pages)).collect::<Vec<_>>(), vec![(0x10000, 1, 8)]);
        assert_eq!(d, vec![(0x10000 + 10 * p, 4 * p)]);
    }
}
