//! Lazy memory: a restore that lets its processes run before their private
//! anonymous memory is filled, and fills it behind them (a live
//! migration's destination: the pod runs again at once, not after a
//! gigabyte was copied).
//!
//! Each process's private anonymous areas are registered with a
//! userfaultfd (made inside the process, taken by us) for missing pages.
//! One thread of ours then serves, in this order: the messages of every
//! uffd (a page fault is filled at once, with its run of the image, or the
//! zero page where the image has none; a fork gives the child's uffd, which
//! inherits what the parent still misses; `munmap`, `mremap` and
//! `MADV_DONTNEED` move or drop what is still to fill, since the program
//! has changed those pages itself), then a few runs pushed ahead of any
//! fault. A process whose runs are all in closes its uffd: the kernel then
//! handles its faults as if we were never there.
//!
//! A page must never come back zero-filled by mistake, which is what the
//! kernel does once a uffd closes with pages missing. So should the thread
//! fail, or the owner give up on it before the end, the processes it still
//! fills are killed before their uffds close.

use crate::pages::FillJob;
use crate::{EngineError, Result};
use cryopod_image::store::PackReader;
use cryopod_image::{Chunk, PAGE};
use cryopod_sys::uffd::{self, Filled, Msg, Uffd};
use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The features asked of every uffd: every change of the address space is
/// told, so that what is still to fill follows it.
pub const FEATURES: u64 =
    uffd::FEATURE_EVENT_FORK | uffd::FEATURE_EVENT_REMAP | uffd::FEATURE_EVENT_REMOVE | uffd::FEATURE_EVENT_UNMAP;

/// Can this kernel do it (a userfaultfd with every event asked)? Tried on
/// a uffd of our own.
pub fn probe() -> Result<()> {
    let got = Uffd::own()?.api(FEATURES)?;
    match got & FEATURES == FEATURES {
        true => Ok(()),
        false => Err(EngineError::Other(format!("userfaultfd lacks events: features {got:#x}"))),
    }
}

/// Runs pushed between two looks at the uffds (a fault waits at most for
/// these: 4 runs of up to 64 KiB).
const PUSH_BATCH: usize = 4;

/// Where the pages come from: the image's chunk records and its packs.
pub struct Source {
    pub chunks: Vec<Chunk>,
    pub reader: Arc<PackReader>,
}

/// What the filling did.
#[derive(Debug, Clone, Default)]
pub struct LazyStats {
    /// Bytes filled ahead of any fault, and on a fault.
    pub pushed: u64,
    pub faulted: u64,
    /// Faults on pages the image has no data for (zero pages).
    pub zero_faults: u64,
    pub faults: u64,
    /// The longest time from reading a fault to filling it.
    pub worst_fault: Duration,
    /// Processes born by fork while their parent was being filled.
    pub forks: u64,
    /// From the start until the last page was in.
    pub elapsed: Duration,
}

/// One address space being filled.
struct Space {
    /// The host PID it was added with (forked children: none, they die
    /// with their pod).
    pid: Option<i32>,
    uffd: Uffd,
    /// What is still missing, by address (runs of one chunk each).
    jobs: BTreeMap<u64, FillJob>,
    /// Jobs a fault waits on, put back behind an event: filled first.
    urgent: Vec<u64>,
}

/// The page filler of one restore: processes are added as they are made
/// ([`LazyPages::add`]; its thread starts with the first, after the
/// restore has forked everything it forks); once the last one is
/// ([`LazyPages::sealed`]), [`LazyPages::finish`] waits for every page.
pub struct LazyPages {
    state: Mutex<Filler>,
    abandon: Arc<AtomicBool>,
}

enum Filler {
    NotStarted(Source),
    Running { tx: Option<Sender<Space>>, thread: std::thread::JoinHandle<Result<LazyStats>> },
    Done,
}

impl LazyPages {
    pub fn new(source: Source) -> LazyPages {
        LazyPages { state: Mutex::new(Filler::NotStarted(source)), abandon: Arc::new(AtomicBool::new(false)) }
    }

    /// Fill `jobs` (sorted by address, in areas registered with `uffd`)
    /// of host process `pid`.
    pub fn add(&self, pid: i32, uffd: Uffd, jobs: Vec<FillJob>) -> Result<()> {
        let jobs = jobs.into_iter().map(|j| (j.addr, j)).collect();
        let space = Space { pid: Some(pid), uffd, jobs, urgent: Vec::new() };
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *st = match std::mem::replace(&mut *st, Filler::Done) {
            Filler::NotStarted(source) => {
                let (tx, rx) = std::sync::mpsc::channel();
                let stop = self.abandon.clone();
                let thread = std::thread::Builder::new()
                    .name("lazy-pages".into())
                    .spawn(move || serve(source, rx, &stop))
                    .map_err(|e| EngineError::Other(format!("cannot start the page filler: {e}")))?;
                Filler::Running { tx: Some(tx), thread }
            }
            other => other,
        };
        match &*st {
            Filler::Running { tx: Some(tx), .. } => tx.send(space).ok(),
            _ => None,
        }
        .ok_or_else(|| EngineError::Other("the page filler has stopped".into()))
    }

    /// No more processes will be added.
    pub fn sealed(&mut self) {
        if let Filler::Running { tx, .. } = &mut *self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            *tx = None;
        }
    }

    /// Wait until every page is in (sealing first).
    pub fn finish(self) -> Result<LazyStats> {
        let st = std::mem::replace(&mut *self.state.lock().unwrap_or_else(|p| p.into_inner()), Filler::Done);
        match st {
            Filler::Running { tx, thread } => {
                drop(tx);
                thread.join().map_err(|_| EngineError::Other("the page filler panicked".into()))?
            }
            // No process had anything to fill.
            _ => Ok(LazyStats::default()),
        }
    }
}

impl Drop for LazyPages {
    /// Given up before the end: the processes still missing pages are
    /// killed (before their uffds close), never left to read zeros.
    fn drop(&mut self) {
        let st = std::mem::replace(&mut *self.state.lock().unwrap_or_else(|p| p.into_inner()), Filler::Done);
        if let Filler::Running { tx, thread } = st {
            self.abandon.store(true, Ordering::SeqCst);
            drop(tx);
            let _ = thread.join();
        }
    }
}

/// The filling thread.
fn serve(source: Source, rx: Receiver<Space>, abandon: &AtomicBool) -> Result<LazyStats> {
    let t0 = Instant::now();
    let mut spaces: Vec<Space> = Vec::new();
    let mut stats = LazyStats::default();
    let mut buf = vec![0u8; (cryopod_image::CHUNK_PAGES * PAGE) as usize];
    let mut sealed = false;
    let res = (|| -> Result<()> {
        loop {
            if abandon.load(Ordering::SeqCst) {
                return Err(EngineError::Other("the page filler was stopped before every page was in".into()));
            }
            loop {
                match rx.try_recv() {
                    Ok(s) => spaces.push(s),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        sealed = true;
                        break;
                    }
                }
            }
            spaces.retain(|s| !s.jobs.is_empty());
            if spaces.is_empty() {
                if sealed {
                    return Ok(());
                }
                // Nothing to do until a process is added.
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(s) => spaces.push(s),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => sealed = true,
                }
                continue;
            }
            let ready = {
                let fds: Vec<_> = spaces.iter().map(|s| s.uffd.as_fd()).collect();
                uffd::poll_readable(&fds, 0)?
            };
            let mut born = Vec::new();
            for i in ready {
                messages(&mut spaces[i], &source, &mut buf, &mut stats, &mut born)?;
            }
            stats.forks += born.len() as u64;
            spaces.extend(born);
            for s in spaces.iter_mut() {
                for _ in 0..PUSH_BATCH {
                    let next = match s.urgent.pop() {
                        Some(a) => s.jobs.remove(&a),
                        None => s.jobs.pop_first().map(|(_, j)| j),
                    };
                    let Some(job) = next else { break };
                    let (n, rest) = fill(s, job, &source, &mut buf)?;
                    stats.pushed += n;
                    // An event comes first: read it, then go on.
                    if let Some(r) = rest {
                        s.jobs.insert(r.addr, r);
                        break;
                    }
                }
            }
        }
    })();
    match res {
        Ok(()) => {
            stats.elapsed = t0.elapsed();
            tracing::debug!(?stats, "every lazy page is in");
            Ok(stats)
        }
        Err(e) => {
            // Killed while their uffds are still open: they never read a
            // page that should have held data.
            for s in spaces.iter().filter(|s| !s.jobs.is_empty()) {
                if let Some(pid) = s.pid {
                    let _ = cryopod_sys::process::kill(pid, libc::SIGKILL);
                }
            }
            tracing::error!("lazy pages: {e}; the processes still missing pages were killed");
            Err(e)
        }
    }
}

/// Handle the messages waiting on `s`'s uffd.
fn messages(
    s: &mut Space,
    source: &Source,
    buf: &mut [u8],
    stats: &mut LazyStats,
    born: &mut Vec<Space>,
) -> Result<()> {
    let mut msgs = Vec::new();
    match s.uffd.read_msgs(&mut msgs) {
        Ok(()) => {}
        // The address space is gone (the process ended).
        Err(e) if e.errno.0 == libc::ESRCH => {
            s.jobs.clear();
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    for m in msgs {
        match m {
            Msg::Fault { addr, .. } => {
                let t = Instant::now();
                let page = addr & !(PAGE - 1);
                stats.faults += 1;
                let job = s.jobs.range(..=page).next_back().map(|(_, j)| *j).filter(|j| page < end(j));
                match job {
                    Some(j) => {
                        s.jobs.remove(&j.addr);
                        let (n, rest) = fill(s, j, source, buf)?;
                        stats.faulted += n;
                        // An event first: the faulting task waits until
                        // the rest is in, which goes first after it.
                        if let Some(r) = rest {
                            s.jobs.insert(r.addr, r);
                            s.urgent.push(r.addr);
                        }
                    }
                    None => {
                        stats.zero_faults += 1;
                        let _ = s.uffd.zeropage(page, PAGE)?;
                    }
                }
                // (Filled by us before the fault was read: wake it.)
                let _ = s.uffd.wake(page, PAGE);
                stats.worst_fault = stats.worst_fault.max(t.elapsed());
            }
            Msg::Fork(fd) => {
                let child = Uffd::from_fd(fd);
                born.push(Space { pid: None, uffd: child, jobs: s.jobs.clone(), urgent: Vec::new() });
            }
            Msg::Remap { from, to, len } => {
                let moved = take_range(&mut s.jobs, from, from + len);
                for mut j in moved {
                    j.addr = j.addr - from + to;
                    s.jobs.insert(j.addr, j);
                }
            }
            // The program dropped or unmapped these pages: they read as
            // zeros now (or not at all), whatever the image held.
            Msg::Remove { start, end } | Msg::Unmap { start, end } => {
                take_range(&mut s.jobs, start, end);
            }
            Msg::Other(e) => return Err(EngineError::Other(format!("unexpected userfaultfd event {e:#x}"))),
        }
    }
    Ok(())
}

fn end(j: &FillJob) -> u64 {
    j.addr + u64::from(j.pages) * PAGE
}

/// Remove and return the jobs (cut to fit) within `[start, end)`.
fn take_range(jobs: &mut BTreeMap<u64, FillJob>, start: u64, stop: u64) -> Vec<FillJob> {
    split_at(jobs, start);
    split_at(jobs, stop);
    let keys: Vec<u64> = jobs.range(start..stop).map(|(&k, _)| k).collect();
    keys.into_iter().filter_map(|k| jobs.remove(&k)).collect()
}

/// Cut the job that straddles `at` (if any) in two there.
fn split_at(jobs: &mut BTreeMap<u64, FillJob>, at: u64) {
    let at = at & !(PAGE - 1);
    let Some(j) = jobs.range(..at).next_back().map(|(_, j)| *j).filter(|j| at < end(j)) else { return };
    let head = ((at - j.addr) / PAGE) as u32;
    jobs.insert(j.addr, FillJob { pages: head, ..j });
    jobs.insert(at, FillJob { addr: at, from: j.from + head, pages: j.pages - head, chunk: j.chunk });
}

/// Fill job `j` of `s`; the bytes filled, and what is left of the job when
/// an event must be read first.
fn fill(s: &Space, j: FillJob, source: &Source, buf: &mut [u8]) -> Result<(u64, Option<FillJob>)> {
    let c = source
        .chunks
        .get(j.chunk as usize)
        .ok_or_else(|| EngineError::Other(format!("a run names chunk {}, which the image has not", j.chunk)))?;
    source.reader.read_chunk(c, buf)?;
    let data = buf.get(j.range()).ok_or_else(|| EngineError::Other("a run beyond its chunk".into()))?;
    let mut off = 0usize;
    let mut filled = 0u64;
    while off < data.len() {
        match s.uffd.copy(j.addr + off as u64, &data[off..])? {
            Filled::All => {
                filled += (data.len() - off) as u64;
                break;
            }
            // A page there already (filled on a fault): the rest after it.
            Filled::UpToPresent(n) => {
                filled += n;
                off += n as usize + PAGE as usize;
            }
            Filled::Retry(0) => {
                let k = (off as u64 / PAGE) as u32;
                let rest = FillJob { addr: j.addr + off as u64, chunk: j.chunk, from: j.from + k, pages: j.pages - k };
                return Ok((filled, Some(rest)));
            }
            Filled::Retry(n) => {
                filled += n;
                off += n as usize;
            }
            Filled::Gone => break,
        }
    }
    Ok((filled, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(v: &[(u64, u32, u32)]) -> BTreeMap<u64, FillJob> {
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
}
