//! Arming a running checkpoint before its freeze, so that the freeze stays
//! short whatever the size of the memory.
//!
//! Write-protecting memory rewrites every page table entry; for a large
//! process that is most of the time a forked checkpoint ([`crate::cow`])
//! keeps the tree stopped. So, before the freeze and while the tree runs,
//! each process gets its userfaultfd (a stop of a few milliseconds to make
//! it inside the process, as at the freeze), its private anonymous areas
//! are registered, and its memory is write-protected while it runs. Until
//! the freeze a write fault only un-protects its window (nothing is being
//! saved yet); an event is read and forgotten; a forked child's uffd is
//! closed (the child is armed at the freeze if at all). While frozen the
//! handler goes on (collecting the state writes into the tasks' memory:
//! our frames, the results of injected calls) but notes what it
//! un-protects. The pages scan tells which saved pages lost their
//! protection before or are new (`mm::MemCollector::written`); those and
//! the noted ones are protected again while frozen
//! ([`crate::cow::Session::setup`]), before the tree runs.
//!
//! Should cryopod die at any instant, its uffds close and the kernel drops
//! every registration and protection: the tree goes on untouched.

use crate::cow::{take_uffd, FEATURES};
use crate::injection::{self, GadgetCache};
use crate::{procfs, Result};
use cryopod_image::{CHUNK_PAGES, PAGE};
use cryopod_sys::io;
use cryopod_sys::uffd::{self, Msg, Uffd};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Below this much private anonymous memory in the tree, protecting it
/// while frozen costs less than a second stop.
pub const ARM_MIN_BYTES: u64 = 128 << 20;

/// Un-protected at once on a write fault before the freeze.
const WIN: u64 = CHUNK_PAGES * PAGE;

/// The armed uffds of a tree, served by a process of ours until the
/// session takes over.
pub struct Armed {
    uffds: Mutex<HashMap<i32, Arc<Uffd>>>,
    handler: Mutex<Option<Handler>>,
    /// The handler process, told to stop, to be reaped.
    ended: Mutex<Option<i32>>,
    /// How long the tree was stopped to make the uffds.
    pub stopped: Duration,
}

/// The process serving the armed uffds: a fork of ours, so that this one
/// stays single-threaded (a pod's checkpoint forks while the tree is
/// frozen) and the handler goes on while we write into the frozen tasks'
/// memory (frames, the results of injected calls) or a pod is frozen.
struct Handler {
    pid: i32,
    /// Ours to write: `F` (the tree is frozen), `S` (stop).
    ctl: OwnedFd,
    /// Theirs to write: `A` (frozen noted), then the ranges let go since,
    /// 24 bytes each (pid, start, end), until they exit.
    out: OwnedFd,
}

/// Memory resident in the tree of `root`, in bytes, as the `field` of
/// each process's status counts it (`RssAnon`, `VmRSS`).
pub(crate) fn tree_resident(root: i32, field: &str) -> u64 {
    let mut total = 0;
    let mut queue = vec![root];
    let mut seen = 0;
    while let Some(pid) = queue.pop() {
        seen += 1;
        if seen > 100_000 {
            break;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib: u64 =
            procfs::status_field(&status, field).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
        total += kib << 10;
        queue.extend(procfs::children(pid).unwrap_or_default());
    }
    total
}

/// Arm the tree of `root` (see the module comment); None when its memory
/// is too small for it to pay, or no process could be armed.
pub fn arm(root: i32) -> Result<Option<Armed>> {
    let anon = tree_resident(root, "RssAnon");
    if anon < ARM_MIN_BYTES {
        tracing::debug!(mib = anon >> 20, "not armed: little memory");
        return Ok(None);
    }
    let t = Instant::now();
    let mut fr = crate::freeze::freeze(root)?;
    let taken = take_uffds(&fr, |_| true);
    fr.thaw();
    let stopped = t.elapsed();
    let mut uffds = HashMap::new();
    for (pid, fd) in taken? {
        let u = Uffd::from_fd(fd);
        match u.api(FEATURES) {
            Ok(_) => {
                uffds.insert(pid, Arc::new(u));
            }
            Err(e) => tracing::info!(pid, "userfaultfd API refused ({e}): not armed"),
        }
    }
    if uffds.is_empty() {
        tracing::debug!("not armed: no process could have a userfaultfd");
        return Ok(None);
    }
    let served: Vec<(i32, Arc<Uffd>)> = uffds.iter().map(|(&p, u)| (p, u.clone())).collect();
    let handler = start_handler(&served)?;
    let armed =
        Armed { uffds: Mutex::new(uffds), handler: Mutex::new(Some(handler)), ended: Mutex::new(None), stopped };
    let t = Instant::now();
    let mut jobs = Vec::new();
    for (&pid, u) in armed.lock().iter() {
        // The areas may change as we go (the tree runs): an area that is
        // gone or split is skipped, and protected at the freeze if needed.
        let Ok(maps) = procfs::maps(pid) else { continue };
        for m in maps.iter().filter(|m| is_private_anon(m)) {
            if u.register_wp(m.start, m.end - m.start).is_ok() {
                jobs.push((u.clone(), m.start, m.end));
            }
        }
    }
    let bytes: u64 = jobs.iter().map(|(_, s, e)| e - s).sum();
    let jobs: Vec<(&Uffd, u64, u64)> = jobs.iter().map(|(u, s, e)| (&**u, *s, *e)).collect();
    crate::cow::protect_all(jobs, true)?;
    crate::fault::check("after-arm")?;
    tracing::debug!(
        stopped_ms = stopped.as_secs_f64() * 1e3,
        protect_ms = t.elapsed().as_secs_f64() * 1e3,
        mib = bytes >> 20,
        "armed before the freeze"
    );
    Ok(Some(armed))
}

fn is_private_anon(m: &procfs::MapEntry) -> bool {
    !m.shared()
        && (matches!(m.path.as_str(), "" | "[heap]" | "[stack]") || m.path.starts_with("[anon:"))
        && m.prot() & libc::PROT_WRITE as u32 != 0
}

/// Make a uffd in every process of the frozen tree that `want`s one and
/// can have one (as the freeze would: not under seccomp, not sharing its
/// address space with another process of the tree).
pub(crate) fn take_uffds(
    fr: &crate::freeze::Frozen,
    want: impl Fn(i32) -> bool,
) -> Result<Vec<(i32, std::os::fd::OwnedFd)>> {
    let mut gadgets = GadgetCache::default();
    let mut out = Vec::new();
    let pids: Vec<i32> = fr.procs.keys().copied().collect();
    let shared_vm = crate::checkpoint::sharing_vm(&pids);
    for &pid in pids.iter().filter(|&&p| want(p)) {
        let shares = shared_vm.contains(&pid);
        if shares || crate::checkpoint::has_seccomp(pid) {
            tracing::debug!(pid, shares, "not armed: shares its memory, or has a seccomp filter");
            continue;
        }
        let g = gadgets.find(pid)?;
        let vpid = crate::pidns::ns_pid(pid, pid)?;
        let areas = injection::areas_of(pid)?;
        let mut leader = injection::cover(pid, pid, vpid, &g, &areas)?;
        let mut got = None;
        let res = take_uffd(&mut leader.remote).map(|fd| got = fd);
        leader.release(&g, Vec::new(), res)?;
        if let Some(fd) = got {
            out.push((pid, fd));
        }
    }
    Ok(out)
}

impl Armed {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Arc<Uffd>>> {
        self.uffds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tree is frozen: from now on, what the handler un-protects is
    /// noted, to be protected again (see [`Armed::finish`]). Returns once
    /// the handler has taken note: whatever it let go before is seen by
    /// the pages scan that follows. The handler still serves: collecting
    /// the state writes into the tasks' memory, which must not wait.
    pub fn frozen(&self) {
        let g = self.handler.lock().unwrap_or_else(|p| p.into_inner());
        let Some(h) = g.as_ref() else { return };
        let mut ack = [0u8; 1];
        let ok = io::write_all(&h.ctl, b"F").is_ok() && io::read_exact(&h.out, &mut ack).is_ok() && ack[0] == b'A';
        if !ok {
            // Gone (killed?): nothing serves the uffds; closed, they let the
            // tree go, and the freeze protects its memory itself.
            tracing::warn!(pid = h.pid, "the write-fault handler is gone: memory protected while frozen");
            drop(g);
            self.finish();
        }
    }

    /// The uffd armed in process `pid`, if its address space is still the
    /// one armed (not after an exec).
    pub fn take(&self, pid: i32) -> Option<Arc<Uffd>> {
        let u = self.lock().remove(&pid)?;
        u.event_pending().is_ok().then_some(u)
    }

    /// Stop serving (the tree is frozen and collected) and close the uffds
    /// no process took (its processes must not meet a protected page with
    /// nobody serving it once they run). Returns what was un-protected
    /// since the freeze: (pid, start, end), to protect again.
    pub fn finish(&self) -> Vec<(i32, u64, u64)> {
        let h = self.handler.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut late = Vec::new();
        if let Some(h) = h {
            let _ = io::write_all(&h.ctl, b"S");
            let mut got = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::fs::File::from(h.out), &mut got);
            // Reaped once the tree runs (its exit takes a while).
            *self.ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(h.pid);
            for r in got.chunks_exact(24) {
                let word = |i: usize| u64::from_ne_bytes(r[i * 8..i * 8 + 8].try_into().unwrap_or_default());
                late.push((word(0) as i32, word(1), word(2)));
            }
        }
        self.lock().clear();
        late
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.finish();
        if let Some(pid) = self.ended.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = cryopod_sys::process::waitpid(pid, libc::__WALL);
        }
    }
}

/// Fork the handler process serving `uffds` (the caller is single-threaded:
/// the guardian was forked before us).
fn start_handler(uffds: &[(i32, Arc<Uffd>)]) -> Result<Handler> {
    let (ctl_r, ctl_w) = cryopod_sys::pipe::pipe()?;
    let (out_r, out_w) = cryopod_sys::pipe::pipe()?;
    let parent = rustix::process::getpid();
    match cryopod_sys::clone::fork_with_pid(0)? {
        cryopod_sys::clone::Forked::Child => {
            drop((ctl_w, out_r));
            // Never outlive the checkpoint: our uffds would keep the tree
            // protected with nobody to say it is over.
            let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
            if rustix::process::getppid() != Some(parent) {
                cryopod_sys::process::exit_now(0);
            }
            // Nothing else of ours stays open in here (the guardian must
            // see our end as soon as we are gone, for one).
            use std::os::fd::AsRawFd;
            let keep: Vec<_> = uffds
                .iter()
                .map(|(_, u)| u.as_fd().as_raw_fd())
                .chain([2, ctl_r.as_raw_fd(), out_w.as_raw_fd()])
                .map(cryopod_sys::TargetFd)
                .collect();
            cryopod_sys::fd::close_all_but(&keep);
            serve(uffds, &ctl_r, &out_w);
            // Every descriptor closed first: our caller sees the end of
            // `out` (and the uffds truly closed) without waiting for this
            // process's memory to be torn down.
            cryopod_sys::fd::close_all_but(&[]);
            cryopod_sys::process::exit_now(0)
        }
        cryopod_sys::clone::Forked::Parent(pid) => Ok(Handler { pid, ctl: ctl_w, out: out_r }),
    }
}

/// The handler process: serve the armed uffds until told to stop (or our
/// caller is gone), then serve what is left and report what was let go
/// since the freeze.
fn serve(uffds: &[(i32, Arc<Uffd>)], ctl: &OwnedFd, out: &OwnedFd) {
    let mut fds: Vec<_> = uffds.iter().map(|(_, u)| u.as_fd()).collect();
    fds.push(ctl.as_fd());
    let mut frozen = false;
    let mut late: Vec<(i32, u64, u64)> = Vec::new();
    loop {
        let ready = match uffd::poll_readable(&fds, 1000) {
            Ok(r) => r,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        if ready.iter().any(|&i| i < uffds.len()) {
            drain_all(uffds, frozen.then_some(&mut late));
        }
        if ready.contains(&uffds.len()) {
            let mut b = [0u8; 1];
            match io::read_some(ctl, &mut b) {
                Ok(1) if b[0] == b'F' => {
                    // Anything read before this is served first.
                    drain_all(uffds, None);
                    frozen = true;
                    let _ = io::write_all(out, b"A");
                }
                // `S`, or the caller is gone.
                _ => break,
            }
        }
    }
    drain_all(uffds, frozen.then_some(&mut late));
    let bytes: Vec<u8> = late.iter().flat_map(|&(pid, s, e)| [pid as u64, s, e]).flat_map(u64::to_ne_bytes).collect();
    let _ = io::write_all(out, &bytes);
}

/// Read and serve every message waiting, the armed way; what is let go is
/// noted in `late` if given.
fn drain_all(uffds: &[(i32, Arc<Uffd>)], mut late: Option<&mut Vec<(i32, u64, u64)>>) {
    for (pid, u) in uffds {
        let mut msgs = Vec::new();
        let _ = u.read_msgs(&mut msgs);
        // Events need nothing: a forked child's uffd closes with its
        // message, and the kernel drops what the child inherited.
        let mut i = 0;
        while i < msgs.len() {
            if let Msg::Fault { addr, .. } = msgs[i] {
                let (start, len) = unprotect(u, addr, &mut msgs);
                if let Some(l) = late.as_deref_mut() {
                    l.push((*pid, start, start + len));
                }
            }
            i += 1;
        }
    }
}

/// Let the write at `addr` go: its window un-protected (or, if the window
/// is no longer one registered area, its page), and its waiters woken;
/// returns the range. An event not yet read makes the kernel refuse for
/// now: messages are read meanwhile into `msgs` (served after this one).
fn unprotect(u: &Uffd, addr: u64, msgs: &mut Vec<Msg>) -> (u64, u64) {
    let page = addr & !(PAGE - 1);
    let win = addr & !(WIN - 1);
    for (start, len) in [(win, WIN), (page, PAGE)] {
        for _ in 0..100_000 {
            match u.write_protect(start, len, false) {
                Err(e) if e.errno.0 == libc::EAGAIN => {
                    if u.read_msgs(msgs).is_err() {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
                Ok(()) => return (start, len),
                Err(_) => break,
            }
        }
    }
    let _ = u.wake(page, PAGE);
    (page, PAGE)
}
