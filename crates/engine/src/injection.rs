//! Injection into the tasks of a checkpoint that survives our death. A task
//! we inject syscalls into runs with our registers for a while; if cryopod
//! is killed then, the kernel lets the task go on with them. So before the
//! first injected call each thread gets a signal frame of ours below its
//! red zone (its registers, mask and extended state: `cryopod_sys::
//! sigframe`), every injected call runs on that frame through a `syscall;
//! xor...; ret` sequence of the vDSO, and returns into an `rt_sigreturn`
//! sequence of the task's own C library: whatever instant we die at, the
//! task finishes the call it was given and returns to its own context, with
//! its own signal mask. No mapping, fd or signal of ours is added to the
//! task; the frame's bytes sit below the red zone, where a signal handler's
//! would, and are put back when we finish.
//!
//! A task whose code holds no `rt_sigreturn` sequence (no C library, no
//! signal handling) cannot be covered this way: it is injected into the same
//! way, and a checkpoint killed mid-way could harm it (logged).

use crate::procfs;
use crate::remote::Remote;
use crate::{EngineError, Result};
use cryopod_image::Vma;
use cryopod_sys::inject::Injector;
use cryopod_sys::sigframe::{self, Frame};
use cryopod_sys::{mem, ptrace, Pid};
use std::collections::HashMap;

/// Bytes of the scratch area (syscall outputs, a queued siginfo) in a frame.
pub const SCRATCH: u64 = 768;

/// Where injected calls go in one process.
#[derive(Debug, Clone, Copy)]
pub struct Gadgets {
    /// A `syscall` instruction; followed by `xor...; ret` when `covered`.
    pub syscall: u64,
    /// An `rt_sigreturn` sequence in the task's code, if any.
    pub sigreturn: Option<u64>,
    /// Calls return through the stack into `sigreturn`.
    pub covered: bool,
}

/// Sigreturn sequences found in files during one checkpoint: (device,
/// inode) → offset in the file. A library mapped by many processes is
/// searched once.
#[derive(Default)]
pub struct GadgetCache {
    files: HashMap<(String, u64), Option<u64>>,
}

impl GadgetCache {
    /// The gadgets of process `pid` (stopped).
    pub fn find(&mut self, pid: Pid) -> Result<Gadgets> {
        let maps = procfs::maps(pid)?;
        let vdso = maps.iter().find(|m| m.path == "[vdso]").map(|m| (m.start, m.end));
        let (start, code) = crate::mm::vdso_code(pid, vdso)?;
        let (syscall, covered_site) = match sigframe::find_syscall_ret(&code) {
            Some(off) => (start + off as u64, true),
            None => (crate::mm::syscall_in(start, &code)?, false),
        };
        let sigreturn = self.sigreturn(pid, &maps)?;
        // A shadow stack (CET) would refuse our `ret` and rt_sigreturn.
        let shstk = procfs::read(pid, "status")
            .map(|s| procfs::status_field(&s, "x86_Thread_features").is_some_and(|f| f.contains("shstk")))
            .unwrap_or(false);
        let covered = covered_site && sigreturn.is_some() && !shstk;
        if !covered {
            tracing::warn!(
                pid,
                shstk,
                "no rt_sigreturn sequence to return through: a checkpoint killed while it injects could harm it"
            );
        }
        Ok(Gadgets { syscall, sigreturn, covered })
    }

    /// An `rt_sigreturn` sequence in an executable file mapping of `pid`,
    /// C libraries first.
    fn sigreturn(&mut self, pid: Pid, maps: &[procfs::MapEntry]) -> Result<Option<u64>> {
        // Private, read-only code of a file: what no one rewrites meanwhile.
        let mut exec: Vec<&procfs::MapEntry> = maps.iter().filter(|m| m.perms == "r-xp" && m.inode != 0).collect();
        exec.sort_by_key(|m| !m.path.contains("libc"));
        for m in exec {
            let key = (m.dev.clone(), m.inode);
            let known = self.files.get(&key).copied();
            if let Some(Some(file_off)) = known {
                // Found before in this file: check it is in this mapping,
                // and still there.
                if file_off >= m.offset && file_off + 9 <= m.offset + (m.end - m.start) {
                    let at = m.start + file_off - m.offset;
                    let mut b = [0u8; 9];
                    if mem::read(pid, at, &mut b).is_ok() && sigframe::find_sigreturn(&b) == Some(0) {
                        return Ok(Some(at));
                    }
                }
                continue;
            }
            if known.is_some() {
                continue;
            }
            let found = search(pid, m.start, m.end);
            self.files.insert(key, found.map(|a| m.offset + (a - m.start)));
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }
}

/// The address of the first `rt_sigreturn` sequence in `[start, end)` of
/// `pid`, read piece by piece into one small buffer (a buffer the size of
/// a C library would cost more in first touches than the search itself).
fn search(pid: Pid, start: u64, end: u64) -> Option<u64> {
    const PIECE: u64 = 64 * 1024;
    // Pieces overlap by a sequence's length less one, so none is missed.
    const OVERLAP: u64 = 8;
    let mut buf = vec![0u8; (PIECE + OVERLAP) as usize];
    let mut at = start;
    while at < end {
        let len = (end - at).min(PIECE + OVERLAP) as usize;
        mem::read(pid, at, &mut buf[..len]).ok()?;
        if let Some(o) = sigframe::find_sigreturn(&buf[..len]) {
            return Some(at + o as u64);
        }
        at += PIECE;
    }
    None
}

/// A stopped thread with a frame of ours under its stack, ready for
/// injected calls; every signal but SIGKILL and SIGSTOP is blocked in it
/// meanwhile (the frame holds its own mask).
pub struct Covered {
    pub remote: Remote,
    mask: u64,
    /// What the frame overwrote, put back by [`Covered::uncover`].
    old: Vec<u8>,
    base: u64,
}

/// A memory area as the frame's room check needs it: (start, end, PROT_*).
pub type Area = (u64, u64, u32);

/// The areas of a collected process.
pub fn areas(vmas: &[Vma]) -> Vec<Area> {
    vmas.iter().map(|v| (v.start, v.end, v.prot)).collect()
}

/// The areas of a stopped process, from its maps.
pub fn areas_of(pid: Pid) -> Result<Vec<Area>> {
    Ok(procfs::maps(pid)?.iter().map(|m| (m.start, m.end, m.prot())).collect())
}

/// Cover thread `tid` of process `pid` (stopped), whose memory areas are
/// `areas`; `vpid` is the process as it numbers itself.
pub fn cover(pid: Pid, tid: Pid, vpid: Pid, g: &Gadgets, areas: &[Area]) -> Result<Covered> {
    abort_rseq(pid, tid)?;
    let mut inj = Injector::new(tid, g.syscall)?;
    let regs = *inj.saved_regs();
    let mask = ptrace::get_sigmask(tid)?;
    let xstate = without_unused_dynamic_state(ptrace::get_xstate(tid)?);
    let ctx = sigframe::resume_context(&regs);
    let frame = sigframe::build(&ctx, &xstate, mask, g.sigreturn.unwrap_or(0), SCRATCH)
        .map_err(|e| EngineError::Other(format!("thread {tid}: {e}")))?;
    check_room(tid, &frame, areas)?;
    let mut old = vec![0u8; frame.bytes.len()];
    mem::read(pid, frame.base, &mut old)?;
    if let Err(e) = mem::write(pid, frame.base, &frame.bytes) {
        let _ = mem::write(pid, frame.base, &old);
        return Err(e.into());
    }
    inj.on_frame(frame.sp);
    // From here on, the task returns to its own context by itself; then
    // (only then) its signals can be blocked while we work. Uncovered, they
    // stay as they are: one that arrives is dequeued by ptrace and queued
    // again by the caller.
    let blocked = match g.sigreturn.filter(|_| g.covered) {
        Some(sr) => inj.park_on_frame(sr).and_then(|_| ptrace::set_sigmask(tid, !0)),
        None => Ok(()),
    };
    if let Err(e) = blocked {
        let _ = ptrace::set_sigmask(tid, mask);
        let _ = ptrace::set_regs(tid, &regs);
        let _ = mem::write(pid, frame.base, &old);
        return Err(e.into());
    }
    let remote = Remote::new(inj, pid, vpid, frame.scratch, SCRATCH);
    Ok(Covered { remote, mask, old, base: frame.base })
}

/// Dynamically enabled state components (AMX tile config and data).
const DYNAMIC_STATE: u64 = (1 << 17) | (1 << 18);

/// ptrace gives the largest XSAVE area this CPU has, tiles included, but
/// the kernel takes a frame's area for a thread only up to that thread's
/// own size (without tiles unless it asked for them), and falls back to
/// the legacy x87/SSE area otherwise, which would lose the AVX registers:
/// when the tiles are not in use, the frame's area ends with the last
/// other component.
fn without_unused_dynamic_state(mut xstate: Vec<u8>) -> Vec<u8> {
    let bv = xstate.get(512..520).map(|b| u64::from_ne_bytes(b.try_into().unwrap_or_default())).unwrap_or(0);
    let xcr0 = cryopod_sys::cpu::xcr0();
    if xcr0 & DYNAMIC_STATE == 0 || bv & DYNAMIC_STATE != 0 {
        return xstate;
    }
    let end = cryopod_sys::cpu::xsave_components(xcr0 & !DYNAMIC_STATE)
        .iter()
        .map(|c| (c.offset + c.size) as usize)
        .max()
        .unwrap_or(576)
        .max(576);
    xstate.truncate(end);
    xstate
}

/// A thread stopped inside a restartable sequence (rseq critical section)
/// goes to its abort handler, as the kernel sends it when it preempts the
/// thread there: the registers we save (and give back) must not resume the
/// section after injected calls, which would let it commit on a CPU it did
/// not start on.
fn abort_rseq(pid: Pid, tid: Pid) -> Result<()> {
    let Some((area, _, _)) = ptrace::get_rseq(tid)? else { return Ok(()) };
    let mut cs_ptr = [0u8; 8];
    if mem::read(pid, area + 8, &mut cs_ptr).is_err() {
        return Ok(());
    }
    let cs_addr = u64::from_ne_bytes(cs_ptr);
    if cs_addr == 0 {
        return Ok(());
    }
    let mut cs = [0u8; 32];
    mem::read(pid, cs_addr, &mut cs)?;
    let word = |o: usize| u64::from_ne_bytes(cs[o..o + 8].try_into().unwrap_or_default());
    let (start, len, abort) = (word(8), word(16), word(24));
    let mut regs = ptrace::get_regs(tid)?;
    if regs.rip.wrapping_sub(start) < len {
        tracing::debug!(tid, from = regs.rip, to = abort, "thread stopped in an rseq critical section: aborted");
        regs.rip = abort;
        ptrace::set_regs(tid, &regs)?;
        mem::write(pid, area + 8, &0u64.to_ne_bytes())?;
    }
    Ok(())
}

/// The frame must lie in the writable area that holds the stack pointer
/// (a signal delivered there would need the same room).
fn check_room(tid: Pid, f: &Frame, areas: &[Area]) -> Result<()> {
    let end = f.base + f.bytes.len() as u64;
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
    if areas.iter().any(|&(start, stop, prot)| start <= f.base && end <= stop && prot & rw == rw) {
        return Ok(());
    }
    Err(EngineError::Other(format!(
        "thread {tid}: its stack has no room below {end:#x} for the {} bytes a signal frame needs",
        f.bytes.len()
    )))
}

impl Covered {
    /// The thread's own signal mask (it runs with every signal blocked
    /// while covered).
    pub fn mask(&self) -> u64 {
        self.mask
    }

    /// Give the thread its mask and registers back and park it in an
    /// interrupt stop (so the kernel's syscall-restart logic runs when it
    /// goes on), then put back the bytes the frame covered.
    pub fn uncover(self) -> Result<()> {
        let tid = self.remote.tid();
        let mask = ptrace::set_sigmask(tid, self.mask);
        let regs = self.remote.inj.restore_and_park();
        mem::write(self.remote.pid, self.base, &self.old)?;
        mask?;
        Ok(regs?)
    }

    /// Uncover a process's leader (`self`, of process `pid`) after the
    /// calls `res` ended with: signals that ptrace dequeued from any of its
    /// threads meanwhile (`deferred`: tid, siginfo; the leader's own are
    /// taken here) are queued again first, while the leader still blocks
    /// them (an uncovered leader blocks them for this), so they stay
    /// pending until the task goes on.
    pub fn release(mut self, g: &Gadgets, mut deferred: Vec<(i32, [u8; 128])>, res: Result<()>) -> Result<()> {
        let pid = self.remote.pid;
        deferred.extend(self.remote.inj.deferred.drain(..).map(|i| (pid, i)));
        if !deferred.is_empty() {
            tracing::info!(pid, signals = deferred.len(), "signals arrived during the checkpoint; queued again");
        }
        let mut requeue = Ok(());
        let own_mask = ptrace::get_sigmask(pid);
        let blocked = !g.covered && own_mask.is_ok() && ptrace::set_sigmask(pid, !0).is_ok();
        for (tid, info) in &deferred {
            // The task names its threads in its own PID namespace.
            let vtid = crate::pidns::ns_pid(pid, *tid).unwrap_or(*tid);
            requeue = requeue.and(crate::signals::queue(&mut self.remote, Some(vtid), info));
        }
        if let (true, Ok(m)) = (blocked, own_mask) {
            ptrace::set_sigmask(pid, m)?;
        }
        self.uncover()?;
        res?;
        requeue.map_err(|e| EngineError::Other(format!("pid {pid}: a signal that arrived during the checkpoint: {e}")))
    }
}

/// Make the next injected calls undo themselves should we die: a frame
/// chained before the cover's, written at the start of the scratch area,
/// that runs `nr(args)` on its way back into the cover's frame. Calls made
/// with `raw_via` at the returned stack pointer return through it; a task
/// we leave stopped after such a call runs the undo call before its own
/// code. Returns the stack pointer and the frame's length (the scratch
/// area's first bytes are taken), or None when the task is not covered by
/// a frame it could return through by itself.
pub fn undo_on_death(r: &mut Remote, nr: i64, args: &[u64]) -> Result<Option<(u64, u64)>> {
    let Some(sp) = r.inj.frame_sp() else { return Ok(None) };
    let mut head = vec![0u8; sigframe::FRAME_LEN as usize];
    mem::read(r.pid, sp, &mut head)?;
    // No rt_sigreturn in its return slot: the task would not find its way
    // back without us.
    if head[..8] == [0; 8] || r.data_len < sigframe::FRAME_LEN {
        return Ok(None);
    }
    let mut regs = *r.inj.saved_regs();
    regs.rip = r.inj.site;
    regs.rsp = sp;
    regs.rax = nr as u64;
    let slots: [&mut u64; 6] = [&mut regs.rdi, &mut regs.rsi, &mut regs.rdx, &mut regs.r10, &mut regs.r8, &mut regs.r9];
    for (slot, v) in slots.into_iter().zip(args.iter().copied().chain(std::iter::repeat(0))) {
        *slot = v;
    }
    let Some(chain) = sigframe::chained(&head, &regs) else { return Ok(None) };
    // In the scratch area, above the cover's frame (put back with it).
    mem::write(r.pid, r.data, &chain)?;
    Ok(Some((r.data, chain.len() as u64)))
}
