//! Running a syscall inside another task: the task is stopped under ptrace,
//! its registers are pointed at a `syscall` instruction with the arguments
//! loaded, and it runs exactly that one syscall. Two kinds of site:
//! - a bare `syscall` (e.g. in the vDSO of a task being checkpointed): the
//!   task runs between a syscall-entry and a syscall-exit stop;
//! - a gadget `syscall; int3` (in the restorer's text, or the scratch page of
//!   a task being restored): one PTRACE_CONT and one SIGTRAP stop, half the
//!   round trips.
//!
//! `orig_rax = -1` keeps the kernel's restart logic away from the injected
//! call (see KERNEL-NOTES.md).

use crate::ptrace::{self, Regs, Stop};
use crate::{Errno, Pid, SysError, SysResult};

/// Injects syscalls into one stopped, seized thread.
pub struct Injector {
    pub tid: Pid,
    /// Address of a `syscall` instruction mapped executable in the task.
    pub site: u64,
    /// The site is followed by `int3` (gadget mode).
    pub gadget: bool,
    /// Register values used for everything but the syscall registers.
    base: Regs,
    /// Stack pointer for injected calls when the task has a frame of ours
    /// to return to by itself (see [`crate::sigframe`]).
    frame_sp: Option<u64>,
    /// Signals that arrived while injecting (dequeued by the kernel; the
    /// caller re-queues them), as raw siginfo.
    pub deferred: Vec<[u8; 128]>,
    /// Threads created by an injected clone that reported while we waited.
    pub new_threads: Vec<Pid>,
}

impl Injector {
    /// Start injecting into `tid`, remembering its current registers.
    pub fn new(tid: Pid, site: u64) -> SysResult<Self> {
        let base = ptrace::get_regs(tid)?;
        Ok(Injector { tid, site, gadget: false, base, frame_sp: None, deferred: Vec::new(), new_threads: Vec::new() })
    }

    /// Like [`Injector::new`], for a site that is a `syscall; int3` gadget.
    pub fn with_gadget(tid: Pid, site: u64) -> SysResult<Self> {
        let mut i = Self::new(tid, site)?;
        i.gadget = true;
        Ok(i)
    }

    /// The registers the task had when injection started.
    pub fn saved_regs(&self) -> &Regs {
        &self.base
    }

    /// Run every injected call with the stack pointer at `sp`, the return
    /// slot of a frame written by [`crate::sigframe::build`]: with `site` a
    /// `syscall; ret` sequence, a task we stop tracing at any point goes on
    /// into that frame's `rt_sigreturn` and back to its own context.
    pub fn on_frame(&mut self, sp: u64) {
        self.frame_sp = Some(sp);
    }

    /// Point the task straight at the `rt_sigreturn` sequence `sigreturn`
    /// of its frame (see [`Injector::on_frame`]): resumed without us, it
    /// returns to its own context at once. Done before anything else of
    /// the task is changed (its signal mask, say).
    pub fn park_on_frame(&self, sigreturn: u64) -> SysResult<()> {
        let sp =
            self.frame_sp.ok_or_else(|| SysError::new("park on frame (no frame)", self.tid, Errno(libc::EINVAL)))?;
        let mut r = self.base;
        r.rip = sigreturn;
        r.rsp = sp + 8;
        r.orig_rax = u64::MAX;
        ptrace::set_regs(self.tid, &r)
    }

    /// The stack pointer injected calls run with (see [`Injector::on_frame`]).
    pub fn frame_sp(&self) -> Option<u64> {
        self.frame_sp
    }

    /// Like [`Injector::raw`], with the stack pointer at `sp` for this call
    /// only (the return slot of a frame chained before ours: see
    /// [`crate::sigframe::chained`]).
    pub fn raw_via(&mut self, sp: u64, nr: i64, args: &[u64]) -> SysResult<i64> {
        let ours = self.frame_sp.replace(sp);
        let r = self.raw(nr, args);
        self.frame_sp = ours;
        r
    }

    /// Run `nr(args...)` in the task; returns the raw result (negative errno
    /// on failure).
    pub fn raw(&mut self, nr: i64, args: &[u64]) -> SysResult<i64> {
        let mut r = self.base;
        r.rip = self.site;
        if let Some(sp) = self.frame_sp {
            r.rsp = sp;
        }
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        let slots: [&mut u64; 6] = [&mut r.rdi, &mut r.rsi, &mut r.rdx, &mut r.r10, &mut r.r8, &mut r.r9];
        for (slot, v) in slots.into_iter().zip(args.iter().copied().chain(std::iter::repeat(0))) {
            *slot = v;
        }
        ptrace::set_regs(self.tid, &r)?;
        if self.gadget {
            ptrace::cont(self.tid, 0)?;
        } else {
            // Entry stop first; wait_done then waits for the exit stop.
            ptrace::cont_syscall(self.tid)?;
            self.wait_done(nr)?;
            ptrace::cont_syscall(self.tid)?;
        }
        self.wait_done(nr)?;
        let out = ptrace::get_regs(self.tid)?;
        Ok(out.rax as i64)
    }

    /// Wait until the injected syscall is done: the SIGTRAP of the gadget's
    /// `int3`, or the syscall-exit stop (the entry stop is the first call).
    /// Clones are noted, other signals deferred, fatal ones are errors.
    fn wait_done(&mut self, nr: i64) -> SysResult<()> {
        let resume = |tid: Pid, gadget: bool| if gadget { ptrace::cont(tid, 0) } else { ptrace::cont_syscall(tid) };
        loop {
            match ptrace::wait(self.tid)? {
                Stop::Signal(libc::SIGTRAP) if self.gadget => return Ok(()),
                Stop::Syscall if !self.gadget => return Ok(()),
                Stop::Syscall => resume(self.tid, self.gadget)?,
                Stop::Event(_, ev) => {
                    if ev == libc::PTRACE_EVENT_CLONE {
                        self.note_clone();
                    }
                    resume(self.tid, self.gadget)?;
                }
                Stop::Signal(sig @ (libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP)) => {
                    return Err(SysError::new(
                        format!("injected syscall {nr} (task got fatal signal {sig})"),
                        self.tid,
                        Errno(libc::EFAULT),
                    ));
                }
                Stop::Signal(_) => {
                    self.defer_signal();
                    resume(self.tid, self.gadget)?;
                }
                Stop::Exited(c) | Stop::Killed(c) => {
                    return Err(SysError::new(
                        format!("injected syscall {nr} (task ended with {c})"),
                        self.tid,
                        Errno(libc::ESRCH),
                    ))
                }
            }
        }
    }

    fn note_clone(&mut self) {
        let mut child: libc::c_ulong = 0;
        // SAFETY: GETEVENTMSG writes one unsigned long.
        unsafe { libc::ptrace(libc::PTRACE_GETEVENTMSG, self.tid, 0, &mut child as *mut libc::c_ulong) };
        self.new_threads.push(child as Pid);
    }

    fn defer_signal(&mut self) {
        let mut info = [0u8; 128];
        // SAFETY: GETSIGINFO writes a 128-byte siginfo.
        unsafe { libc::ptrace(libc::PTRACE_GETSIGINFO, self.tid, 0, info.as_mut_ptr()) };
        self.deferred.push(info);
    }

    /// Run a syscall that must succeed; a negative result becomes an error
    /// naming `what`.
    pub fn call(&mut self, what: &str, nr: i64, args: &[u64]) -> SysResult<u64> {
        let r = self.raw(nr, args)?;
        if (-4095..0).contains(&r) {
            return Err(SysError::new(format!("{what} in task"), self.tid, Errno(-r as i32)));
        }
        Ok(r as u64)
    }

    /// Put back the registers the task had when injection started, and move
    /// it into an interrupt stop so that, when it is resumed, the kernel's
    /// own syscall-restart logic runs on those registers.
    pub fn restore_and_park(&self) -> SysResult<()> {
        ptrace::set_regs(self.tid, &self.base)?;
        ptrace::interrupt(self.tid)?;
        ptrace::cont(self.tid, 0)?;
        loop {
            match ptrace::wait(self.tid)? {
                Stop::Event(_, _) => return Ok(()),
                Stop::Syscall => ptrace::cont(self.tid, 0)?,
                Stop::Signal(sig) => ptrace::cont(self.tid, sig)?,
                Stop::Exited(_) | Stop::Killed(_) => {
                    return Err(SysError::new("park after injection", self.tid, Errno(libc::ESRCH)))
                }
            }
        }
    }
}

/// Find the offset of a `syscall` instruction (0f 05) in a code blob.
pub fn find_syscall_insn(code: &[u8]) -> Option<usize> {
    code.windows(2).position(|w| w == [0x0f, 0x05])
}

std::arch::global_asm!(
    ".globl cryopod_syscall_gadget",
    ".type cryopod_syscall_gadget,@function",
    "cryopod_syscall_gadget:",
    "syscall",
    "int3",
);

extern "C" {
    fn cryopod_syscall_gadget();
}

/// Address of a `syscall; int3` gadget in our own text. A forked stub has
/// it at the same address, so the restorer can inject into a stub before the
/// stub's memory is replaced.
pub fn own_syscall_site() -> u64 {
    cryopod_syscall_gadget as *const () as usize as u64
}
