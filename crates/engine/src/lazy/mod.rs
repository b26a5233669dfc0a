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

mod jobs;
pub mod remote;

pub use remote::{Arrival, Bell, LeftRun, Remote, RemoteEnd, Want};

use crate::pages::FillJob;
use crate::{EngineError, Result};
use cryopod_image::store::PackReader;
use cryopod_image::{Chunk, PAGE};
use cryopod_sys::uffd::{self, Filled, Msg, Uffd};
use jobs::{Fetch, Missing, Runs};
use std::collections::{BTreeMap, HashSet};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
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

/// The longest run fetched from the source, in pages (longer runs in a
/// list of left pages are refused).
pub const MAX_FETCH_PAGES: u32 = 64;

/// Where the pages come from: the image's chunk records and its packs;
/// and, for those the image left out, the source (a lazy migration).
pub struct Source {
    pub chunks: Vec<Chunk>,
    pub reader: Arc<PackReader>,
    pub remote: Option<Remote>,
}

/// What the filling did.
#[derive(Debug, Clone, Default)]
pub struct LazyStats {
    /// Bytes filled ahead of any fault, and on a fault.
    pub pushed: u64,
    pub faulted: u64,
    /// Bytes filled as they came from the source.
    pub fetched: u64,
    /// Faults on pages the image has no data for (zero pages).
    pub zero_faults: u64,
    pub faults: u64,
    /// Faults that waited for pages from the source.
    pub fetch_faults: u64,
    /// The longest time from reading a fault to filling it (pages filled
    /// from the image or zero; not those fetched).
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
    /// The process as the image names it (whose pages to fetch).
    image_pid: i32,
    uffd: Uffd,
    /// What is still missing, by address: from the image ...
    jobs: Runs<FillJob>,
    /// Jobs a fault waits on, put back behind an event: filled first.
    urgent: Vec<u64>,
    /// ... and from the source.
    fetch: Runs<Fetch>,
    /// Fetches moved by mremap: (process, where at the source) -> where
    /// now (what arrives is found there too).
    moved: BTreeMap<(i32, u64), u64>,
}

impl Space {
    fn done(&self) -> bool {
        self.jobs.is_empty() && self.fetch.is_empty()
    }
}

/// The page filler of one restore: processes are added as they are made
/// ([`LazyPages::add`]; its thread starts with the first, after the
/// restore has forked everything it forks); once the last one is
/// ([`LazyPages::sealed`]), [`LazyPages::finish`] waits for every page.
pub struct LazyPages {
    state: Mutex<Filler>,
    abandon: Arc<AtomicBool>,
    /// Rung with each process added (the filler may be waiting on the
    /// others' uffds).
    added: Arc<Bell>,
    /// Processes with pages at the source.
    fetching: HashSet<i32>,
}

enum Filler {
    NotStarted(Source),
    Running { tx: Option<std::sync::mpsc::Sender<Space>>, thread: std::thread::JoinHandle<Result<LazyStats>> },
    Done,
}

impl LazyPages {
    pub fn new(source: Source) -> Result<LazyPages> {
        let fetching = source.remote.as_ref().map(|r| r.left.keys().copied().collect()).unwrap_or_default();
        let added = Bell::new().map_err(|e| EngineError::Other(format!("cannot make the page filler's bell: {e}")))?;
        Ok(LazyPages {
            state: Mutex::new(Filler::NotStarted(source)),
            abandon: Arc::new(AtomicBool::new(false)),
            added: Arc::new(added),
            fetching,
        })
    }

    /// Does process `image_pid` (as the image names it) have pages at the
    /// source? (It cannot then be filled before it runs.)
    pub fn fetches(&self, image_pid: i32) -> bool {
        self.fetching.contains(&image_pid)
    }

    /// Fill `jobs` (sorted by address, in areas registered with `uffd`)
    /// of host process `pid`, `image_pid` in the image, and what it has
    /// at the source.
    pub fn add(&self, pid: i32, image_pid: i32, uffd: Uffd, jobs: Vec<FillJob>) -> Result<()> {
        let jobs = jobs.into_iter().map(|j| (j.addr, j)).collect();
        let space = Space {
            pid: Some(pid),
            image_pid,
            uffd,
            jobs,
            urgent: Vec::new(),
            fetch: Runs::new(),
            moved: BTreeMap::new(),
        };
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *st = match std::mem::replace(&mut *st, Filler::Done) {
            Filler::NotStarted(source) => {
                let (tx, rx) = std::sync::mpsc::channel();
                let stop = self.abandon.clone();
                let added = self.added.clone();
                let thread = std::thread::Builder::new()
                    .name("lazy-pages".into())
                    .spawn(move || serve(source, (rx, &added), &stop))
                    .map_err(|e| EngineError::Other(format!("cannot start the page filler: {e}")))?;
                Filler::Running { tx: Some(tx), thread }
            }
            other => other,
        };
        let sent = match &*st {
            Filler::Running { tx: Some(tx), .. } => tx.send(space).ok(),
            _ => None,
        };
        self.added.ring();
        sent.ok_or_else(|| EngineError::Other("the page filler has stopped".into()))
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

/// The image's part of the source.
struct Local {
    chunks: Vec<Chunk>,
    reader: Arc<PackReader>,
    buf: Vec<u8>,
}

/// Pages from the source that could not all go in yet (an event came
/// first): tried again after it.
type Deferred = Vec<(i32, u64, Vec<u8>)>;

/// The filling thread.
fn serve(source: Source, (rx, added_bell): (Receiver<Space>, &Bell), abandon: &AtomicBool) -> Result<LazyStats> {
    let t0 = Instant::now();
    let mut spaces: Vec<Space> = Vec::new();
    let mut stats = LazyStats::default();
    let Source { chunks, reader, mut remote } = source;
    let mut local = Local { chunks, reader, buf: vec![0u8; (cryopod_image::CHUNK_PAGES * PAGE) as usize] };
    let mut asked = HashSet::new();
    let mut deferred: Deferred = Vec::new();
    let mut sealed = false;
    let res = (|| -> Result<()> {
        loop {
            if abandon.load(Ordering::SeqCst) {
                return Err(EngineError::Other("the page filler was stopped before every page was in".into()));
            }
            let mut added = Vec::new();
            added_bell.quiet();
            loop {
                match rx.try_recv() {
                    Ok(s) => added.push(s),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        sealed = true;
                        break;
                    }
                }
            }
            if added.is_empty() && spaces.iter().all(Space::done) {
                spaces.clear();
                if sealed {
                    return Ok(());
                }
                // Nothing to do until a process is added.
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(s) => added.push(s),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => sealed = true,
                }
            }
            for mut s in added {
                if let Some(left) = remote.as_mut().and_then(|r| r.left.remove(&s.image_pid)) {
                    s.fetch = left
                        .into_iter()
                        .map(|(addr, pages)| (addr, Fetch { addr, pages, pid: s.image_pid, src: addr }))
                        .collect();
                }
                spaces.push(s);
            }
            spaces.retain(|s| !s.done());
            if spaces.is_empty() {
                continue;
            }
            // Wait only when nothing can be pushed.
            let busy = !deferred.is_empty() || spaces.iter().any(|s| !s.jobs.is_empty());
            let ready = {
                let mut fds: Vec<_> = spaces.iter().map(|s| s.uffd.as_fd()).collect();
                fds.push(added_bell.fd());
                if let Some(r) = &remote {
                    fds.push(r.bell.fd());
                }
                uffd::poll_readable(&fds, if busy { 0 } else { 50 })?
            };
            let mut born = Vec::new();
            let n = spaces.len();
            for i in ready.into_iter().filter(|&i| i < n) {
                let cx = Cx { local: &mut local, remote: remote.as_ref(), asked: &mut asked };
                messages(&mut spaces[i], cx, &mut stats, &mut born)?;
            }
            stats.forks += born.len() as u64;
            spaces.extend(born);
            if let Some(r) = &remote {
                arrivals(r, &mut spaces, &mut deferred, &mut stats)?;
            }
            for s in spaces.iter_mut() {
                for _ in 0..PUSH_BATCH {
                    let next = match s.urgent.pop() {
                        Some(a) => s.jobs.remove(&a),
                        None => s.jobs.pop_first().map(|(_, j)| j),
                    };
                    let Some(job) = next else { break };
                    let (n, rest) = fill(s, job, &mut local)?;
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
            for s in spaces.iter().filter(|s| !s.done()) {
                if let Some(pid) = s.pid {
                    let _ = cryopod_sys::process::kill(pid, libc::SIGKILL);
                }
            }
            tracing::error!("lazy pages: {e}; the processes still missing pages were killed");
            Err(e)
        }
    }
}

/// What the messages of a uffd may need.
struct Cx<'a> {
    local: &'a mut Local,
    remote: Option<&'a Remote>,
    /// Fetches asked for already (process, address at the source).
    asked: &'a mut HashSet<(i32, u64)>,
}

/// Handle the messages waiting on `s`'s uffd.
fn messages(s: &mut Space, cx: Cx, stats: &mut LazyStats, born: &mut Vec<Space>) -> Result<()> {
    let mut msgs = Vec::new();
    match s.uffd.read_msgs(&mut msgs) {
        Ok(()) => {}
        // The address space is gone (the process ended).
        Err(e) if e.errno.0 == libc::ESRCH => {
            s.jobs.clear();
            s.fetch.clear();
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
                if let Some(j) = jobs::holding(&s.jobs, page) {
                    s.jobs.remove(&j.addr);
                    let (n, rest) = fill(s, j, cx.local)?;
                    stats.faulted += n;
                    // An event first: the faulting task waits until
                    // the rest is in, which goes first after it.
                    if let Some(r) = rest {
                        s.jobs.insert(r.addr, r);
                        s.urgent.push(r.addr);
                    }
                } else if let Some(f) = jobs::holding(&s.fetch, page) {
                    // The task waits until its pages arrive (filling
                    // them wakes it).
                    stats.fetch_faults += 1;
                    if let Some(r) = cx.remote.filter(|_| cx.asked.insert((f.pid, f.src))) {
                        r.ask
                            .send(Want { pid: f.pid, addr: f.src, pages: f.pages })
                            .map_err(|_| EngineError::Other("the pages at the source can no longer be asked".into()))?;
                        r.asked.ring();
                    }
                    continue;
                } else {
                    stats.zero_faults += 1;
                    let _ = s.uffd.zeropage(page, PAGE)?;
                }
                // (Filled by us before the fault was read: wake it.)
                let _ = s.uffd.wake(page, PAGE);
                stats.worst_fault = stats.worst_fault.max(t.elapsed());
            }
            Msg::Fork(fd) => {
                let child = Uffd::from_fd(fd);
                born.push(Space {
                    pid: None,
                    image_pid: s.image_pid,
                    uffd: child,
                    jobs: s.jobs.clone(),
                    urgent: Vec::new(),
                    fetch: s.fetch.clone(),
                    moved: s.moved.clone(),
                });
            }
            Msg::Remap { from, to, len } => {
                jobs::remap(&mut s.jobs, from, to, len);
                for f in jobs::remap(&mut s.fetch, from, to, len) {
                    s.moved.insert((f.pid, f.src), f.addr);
                }
                // (A task waiting there faults again where it is now.)
                let _ = s.uffd.wake(from, len);
            }
            // The program dropped or unmapped these pages: they read as
            // zeros now (or not at all), whatever the image held.
            Msg::Remove { start, end } | Msg::Unmap { start, end } => {
                jobs::take_range(&mut s.jobs, start, end);
                jobs::take_range(&mut s.fetch, start, end);
                // (A task waiting for a fetch there faults again.)
                let _ = s.uffd.wake(start, end - start);
            }
            Msg::Other(e) => return Err(EngineError::Other(format!("unexpected userfaultfd event {e:#x}"))),
        }
    }
    Ok(())
}

/// Fill what came from the source (and what waited for an event).
fn arrivals(r: &Remote, spaces: &mut [Space], deferred: &mut Deferred, stats: &mut LazyStats) -> Result<()> {
    r.bell.quiet();
    let mut todo = std::mem::take(deferred);
    let mut ended = false;
    loop {
        match r.arrivals.try_recv() {
            Ok(Arrival::Pages { pid, addr, data }) => todo.push((pid, addr, data)),
            Ok(Arrival::Lost(why)) => {
                return Err(EngineError::Other(format!("the pages left at the source can no longer come: {why}")))
            }
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Disconnected) => {
                ended = true;
                break;
            }
        }
    }
    for (pid, addr, data) in todo {
        if !arrive(spaces, (pid, addr, &data), stats)? {
            deferred.push((pid, addr, data));
        }
    }
    if ended && spaces.iter().any(|s| !s.fetch.is_empty()) {
        return Err(EngineError::Other("the pages left at the source can no longer come: their carrier ended".into()));
    }
    Ok(())
}

/// Fill the pages of process `pid` that were at `addr` at the source
/// wherever they are missing now; false if some must wait for an event.
fn arrive(spaces: &mut [Space], (pid, addr, data): (i32, u64, &[u8]), stats: &mut LazyStats) -> Result<bool> {
    if data.is_empty() || !(data.len() as u64).is_multiple_of(PAGE) || !addr.is_multiple_of(PAGE) {
        return Err(EngineError::Other(format!("pages from the source at {addr:#x} of {} bytes", data.len())));
    }
    let len = data.len() as u64;
    let stop = addr.checked_add(len).ok_or_else(|| EngineError::Other(format!("pages at {addr:#x} wrap")))?;
    let mut all = true;
    for s in spaces.iter_mut() {
        // Where they are now: where they were, or where mremap moved them.
        let window = u64::from(MAX_FETCH_PAGES) * PAGE;
        let mut shifts = vec![0u64];
        shifts.extend(
            s.moved.range((pid, addr.saturating_sub(window))..(pid, stop)).map(|(k, &to)| to.wrapping_sub(k.1)),
        );
        shifts.sort_unstable();
        shifts.dedup();
        for shift in shifts {
            let (lo, hi) = (addr.wrapping_add(shift), stop.wrapping_add(shift));
            if hi < lo {
                continue;
            }
            for f in jobs::take_range(&mut s.fetch, lo, hi) {
                if f.pid != pid || f.src.wrapping_add(shift) != f.addr {
                    s.fetch.insert(f.addr, f);
                    continue;
                }
                let off = (f.src - addr) as usize;
                let bytes = &data[off..off + f.pages as usize * PAGE as usize];
                let (n, done) = copy_in(&s.uffd, f.addr, bytes)?;
                stats.fetched += n;
                if let Some(k) = done {
                    let rest = f.cut(k).1;
                    s.fetch.insert(rest.addr, rest);
                    all = false;
                }
            }
        }
    }
    Ok(all)
}

/// Fill job `j` of `s` from the image; the bytes filled, and what is left
/// of the job when an event must be read first.
fn fill(s: &Space, j: FillJob, local: &mut Local) -> Result<(u64, Option<FillJob>)> {
    let c = local
        .chunks
        .get(j.chunk as usize)
        .ok_or_else(|| EngineError::Other(format!("a run names chunk {}, which the image has not", j.chunk)))?;
    local.reader.read_chunk(c, &mut local.buf)?;
    let data = local.buf.get(j.range()).ok_or_else(|| EngineError::Other("a run beyond its chunk".into()))?;
    let (filled, done) = copy_in(&s.uffd, j.addr, data)?;
    Ok((filled, done.map(|k| j.cut(k).1)))
}

/// Copy `data` in at `addr` (pages there already are left as they are);
/// the bytes filled, and, when an event must be read first, how many
/// pages are done.
fn copy_in(u: &Uffd, addr: u64, data: &[u8]) -> Result<(u64, Option<u32>)> {
    let mut off = 0usize;
    let mut filled = 0u64;
    while off < data.len() {
        match u.copy(addr + off as u64, &data[off..])? {
            Filled::All => {
                filled += (data.len() - off) as u64;
                break;
            }
            // A page there already (filled on a fault): the rest after it.
            Filled::UpToPresent(n) => {
                filled += n;
                off += n as usize + PAGE as usize;
            }
            Filled::Retry(0) => return Ok((filled, Some((off as u64 / PAGE) as u32))),
            Filled::Retry(n) => {
                filled += n;
                off += n as usize;
            }
            Filled::Gone => break,
        }
    }
    Ok((filled, None))
}
