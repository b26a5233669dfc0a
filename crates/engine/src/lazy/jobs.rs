//! What is still missing in one address space, by address: runs whose
//! data is in the image ([`FillJob`]) or at the source ([`Fetch`]). Both
//! follow the program's own changes to its address space: a range moved
//! by `mremap` moves with it, a range dropped or unmapped is no longer
//! missing.

use crate::pages::FillJob;
use cryopod_image::PAGE;
use std::collections::BTreeMap;

/// A run of pages whose data is at the source: where it is now (`addr`),
/// and where it was there (process as the image names it, address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    pub addr: u64,
    pub pages: u32,
    pub pid: i32,
    pub src: u64,
}

/// A run that can be cut and moved.
pub trait Missing: Copy {
    fn addr(&self) -> u64;
    fn pages(&self) -> u32;
    /// Its first `head` pages and the rest.
    fn cut(self, head: u32) -> (Self, Self);
    fn moved_to(self, addr: u64) -> Self;
    fn end(&self) -> u64 {
        self.addr() + u64::from(self.pages()) * PAGE
    }
}

impl Missing for FillJob {
    fn addr(&self) -> u64 {
        self.addr
    }
    fn pages(&self) -> u32 {
        self.pages
    }
    fn cut(self, head: u32) -> (Self, Self) {
        let rest = FillJob {
            addr: self.addr + u64::from(head) * PAGE,
            from: self.from + head,
            pages: self.pages - head,
            ..self
        };
        (FillJob { pages: head, ..self }, rest)
    }
    fn moved_to(self, addr: u64) -> Self {
        FillJob { addr, ..self }
    }
}

impl Missing for Fetch {
    fn addr(&self) -> u64 {
        self.addr
    }
    fn pages(&self) -> u32 {
        self.pages
    }
    fn cut(self, head: u32) -> (Self, Self) {
        let off = u64::from(head) * PAGE;
        let rest = Fetch { addr: self.addr + off, src: self.src + off, pages: self.pages - head, ..self };
        (Fetch { pages: head, ..self }, rest)
    }
    fn moved_to(self, addr: u64) -> Self {
        Fetch { addr, ..self }
    }
}

/// Runs by address.
pub type Runs<T> = BTreeMap<u64, T>;

/// The run holding page `page`, if any.
pub fn holding<T: Missing>(runs: &Runs<T>, page: u64) -> Option<T> {
    runs.range(..=page).next_back().map(|(_, j)| *j).filter(|j| page < j.end())
}

/// Remove and return the runs (cut to fit) within `[start, stop)`.
pub fn take_range<T: Missing>(runs: &mut Runs<T>, start: u64, stop: u64) -> Vec<T> {
    split_at(runs, start);
    split_at(runs, stop);
    let keys: Vec<u64> = runs.range(start..stop).map(|(&k, _)| k).collect();
    keys.into_iter().filter_map(|k| runs.remove(&k)).collect()
}

/// Move the runs within `[from, from + len)` to `to`.
pub fn remap<T: Missing>(runs: &mut Runs<T>, from: u64, to: u64, len: u64) -> Vec<T> {
    let moved: Vec<T> =
        take_range(runs, from, from + len).into_iter().map(|j| j.moved_to(j.addr() - from + to)).collect();
    for j in &moved {
        runs.insert(j.addr(), *j);
    }
    moved
}

/// Cut the run that straddles `at` (if any) in two there.
fn split_at<T: Missing>(runs: &mut Runs<T>, at: u64) {
    let at = at & !(PAGE - 1);
    let Some(j) = runs.range(..at).next_back().map(|(_, j)| *j).filter(|j| at < j.end()) else { return };
    let (head, rest) = j.cut(((at - j.addr()) / PAGE) as u32);
    runs.insert(head.addr(), head);
    runs.insert(rest.addr(), rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(v: &[(u64, u32, u32)]) -> Runs<FillJob> {
        v.iter().map(|&(addr, from, pages)| (addr, FillJob { addr, chunk: 7, from, pages })).collect()
    }

    #[test]
    fn a_range_taken_cuts_the_runs_it_straddles() {
        let p = PAGE;
        // Runs of 4 pages at 0 and at 8 pages.
        let mut j = jobs(&[(0, 0, 4), (8 * p, 4, 4)]);
        let taken = take_range(&mut j, 2 * p, 9 * p);
        let left: Vec<_> = j.values().map(|j| (j.addr / p, j.from, j.pages)).collect();
        assert_eq!(left, vec![(0, 0, 2), (9, 5, 3)]);
        let gone: Vec<_> = taken.iter().map(|j| (j.addr / p, j.from, j.pages)).collect();
        assert_eq!(gone, vec![(2, 2, 2), (8, 4, 1)]);
    }

    #[test]
    fn a_range_between_runs_takes_nothing() {
        let p = PAGE;
        let mut j = jobs(&[(0, 0, 4), (8 * p, 4, 4)]);
        assert!(take_range(&mut j, 4 * p, 8 * p).is_empty());
        assert_eq!(j.len(), 2);
    }

    #[test]
    fn a_fetch_moved_in_part_keeps_where_each_part_was_at_the_source() {
        let p = PAGE;
        let mut r: Runs<Fetch> = Runs::new();
        r.insert(10 * p, Fetch { addr: 10 * p, pages: 4, pid: 3, src: 10 * p });
        // Pages 12-13 move to 100.
        let moved = remap(&mut r, 12 * p, 100 * p, 2 * p);
        assert_eq!(moved, vec![Fetch { addr: 100 * p, pages: 2, pid: 3, src: 12 * p }]);
        let all: Vec<_> = r.values().map(|f| (f.addr / p, f.pages, f.src / p)).collect();
        assert_eq!(all, vec![(10, 2, 10), (100, 2, 12)]);
        assert_eq!(holding(&r, 101 * p).map(|f| f.src), Some(12 * p));
        assert_eq!(holding(&r, 102 * p), None);
    }
}
