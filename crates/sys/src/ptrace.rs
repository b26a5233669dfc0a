//! ptrace wrappers: seize and interrupt tasks without sending them signals,
//! read and write their registers, extended state, signal masks, pending
//! signals and rseq registration, and decode wait statuses into stop kinds.

use crate::{Errno, Pid, SysError, SysResult};

pub use libc::user_regs_struct as Regs;

/// Options we always set on seize.
pub const OPTS_DUMP: i32 = libc::PTRACE_O_TRACESYSGOOD;
/// While we trace a task, its seccomp filters (or strict mode) do not
/// apply: what we inject is ours, not the program's (needs CAP_SYS_ADMIN).
pub const OPT_SUSPEND_SECCOMP: i32 = 1 << 21;
/// On restore we also follow clones, so threads we create start traced,
/// and every stub dies with us until the tree is handed over (a restore cut
/// short leaves nothing).
pub const OPTS_RESTORE: i32 = libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_TRACECLONE | libc::PTRACE_O_EXITKILL;

const PTRACE_GET_RSEQ_CONFIGURATION: u32 = 0x420f;
const NT_X86_XSTATE: usize = 0x202;
/// Largest xstate area we read (AMX tiles included), the images' bound.
pub const XSTATE_MAX: usize = cryopod_image::cpu::XSAVE_MAX as usize;

/// What a traced task reported to waitpid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Stopped at syscall entry or exit (PTRACE_O_TRACESYSGOOD).
    Syscall,
    /// A ptrace event stop (`PTRACE_EVENT_*`), e.g. 128 for INTERRUPT/group stop.
    Event(i32, i32),
    /// A signal about to be delivered.
    Signal(i32),
    /// The task is gone.
    Exited(i32),
    Killed(i32),
}

fn ptrace_raw(req: u32, tid: Pid, addr: usize, data: usize) -> Result<i64, Errno> {
    // SAFETY: every caller passes addr/data that are valid for the request
    // (null, an integer, or a pointer to a live buffer of the right size).
    let r = unsafe { libc::ptrace(req as _, tid, addr as *mut libc::c_void, data as *mut libc::c_void) };
    if r < 0 {
        let e = Errno::last();
        if e.0 != 0 {
            return Err(e);
        }
    }
    Ok(r)
}

fn pt(req: u32, name: &str, tid: Pid, addr: usize, data: usize) -> SysResult<i64> {
    ptrace_raw(req, tid, addr, data).map_err(|e| SysError::new(format!("ptrace({name})"), tid, e))
}

/// Attach to a task without stopping it.
pub fn seize(tid: Pid, opts: i32) -> SysResult<()> {
    pt(libc::PTRACE_SEIZE, "SEIZE", tid, 0, opts as usize).map(|_| ())
}

/// Ask a seized task to stop (it reports `Stop::Event(_, PTRACE_EVENT_STOP)`).
pub fn interrupt(tid: Pid) -> SysResult<()> {
    pt(libc::PTRACE_INTERRUPT, "INTERRUPT", tid, 0, 0).map(|_| ())
}

pub fn cont(tid: Pid, sig: i32) -> SysResult<()> {
    pt(libc::PTRACE_CONT, "CONT", tid, 0, sig as usize).map(|_| ())
}

pub fn cont_syscall(tid: Pid) -> SysResult<()> {
    pt(libc::PTRACE_SYSCALL, "SYSCALL", tid, 0, 0).map(|_| ())
}

pub fn detach(tid: Pid, sig: i32) -> SysResult<()> {
    pt(libc::PTRACE_DETACH, "DETACH", tid, 0, sig as usize).map(|_| ())
}

/// Wait for a state change of one traced task.
pub fn wait(tid: Pid) -> SysResult<Stop> {
    let (_, status) = crate::process::waitpid(tid, 0)?;
    Ok(decode_status(status))
}

/// Turn a raw wait status into a [`Stop`].
pub fn decode_status(status: i32) -> Stop {
    if libc::WIFEXITED(status) {
        return Stop::Exited(libc::WEXITSTATUS(status));
    }
    if libc::WIFSIGNALED(status) {
        return Stop::Killed(libc::WTERMSIG(status));
    }
    let sig = libc::WSTOPSIG(status);
    let event = status >> 16;
    if sig == (libc::SIGTRAP | 0x80) {
        Stop::Syscall
    } else if event != 0 {
        Stop::Event(sig, event)
    } else {
        Stop::Signal(sig)
    }
}

pub fn get_regs(tid: Pid) -> SysResult<Regs> {
    // SAFETY: Regs is plain old data; zeroed is a valid value.
    let mut regs: Regs = unsafe { std::mem::zeroed() };
    pt(libc::PTRACE_GETREGS, "GETREGS", tid, 0, &mut regs as *mut Regs as usize)?;
    Ok(regs)
}

pub fn set_regs(tid: Pid, regs: &Regs) -> SysResult<()> {
    pt(libc::PTRACE_SETREGS, "SETREGS", tid, 0, regs as *const Regs as usize).map(|_| ())
}

/// The full XSAVE area (x87, SSE, AVX, AVX-512, ...), as the kernel lays it out.
pub fn get_xstate(tid: Pid) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; XSTATE_MAX];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    pt(libc::PTRACE_GETREGSET, "GETREGSET(XSTATE)", tid, NT_X86_XSTATE, &mut iov as *mut _ as usize)?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

pub fn set_xstate(tid: Pid, xstate: &[u8]) -> SysResult<()> {
    let mut copy = xstate.to_vec();
    let mut iov = libc::iovec { iov_base: copy.as_mut_ptr().cast(), iov_len: copy.len() };
    pt(libc::PTRACE_SETREGSET, "SETREGSET(XSTATE)", tid, NT_X86_XSTATE, &mut iov as *mut _ as usize).map(|_| ())
}

/// Blocked signal mask of one thread (bit n-1 = signal n).
pub fn get_sigmask(tid: Pid) -> SysResult<u64> {
    let mut mask = 0u64;
    pt(libc::PTRACE_GETSIGMASK, "GETSIGMASK", tid, 8, &mut mask as *mut u64 as usize)?;
    Ok(mask)
}

pub fn set_sigmask(tid: Pid, mask: u64) -> SysResult<()> {
    pt(libc::PTRACE_SETSIGMASK, "SETSIGMASK", tid, 8, &mask as *const u64 as usize).map(|_| ())
}

/// Pending signals, as raw 128-byte siginfo records, without dequeuing them.
/// `shared` selects the process-wide queue instead of the thread's own.
pub fn peek_siginfo(tid: Pid, shared: bool) -> SysResult<Vec<[u8; 128]>> {
    #[repr(C)]
    struct PeekArgs {
        off: u64,
        flags: u32,
        nr: i32,
    }
    let mut out = Vec::new();
    let mut buf = vec![[0u8; 128]; 32];
    loop {
        let args = PeekArgs { off: out.len() as u64, flags: shared as u32, nr: buf.len() as i32 };
        let n = pt(
            libc::PTRACE_PEEKSIGINFO,
            "PEEKSIGINFO",
            tid,
            &args as *const PeekArgs as usize,
            buf.as_mut_ptr() as usize,
        )?;
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
        if out.len() > 1 << 20 {
            break;
        }
    }
    Ok(out)
}

/// rseq registration of a thread: (address, length, signature), if any.
pub fn get_rseq(tid: Pid) -> SysResult<Option<(u64, u32, u32)>> {
    #[repr(C)]
    #[derive(Default)]
    struct RseqConf {
        ptr: u64,
        size: u32,
        sig: u32,
        flags: u32,
        pad: u32,
    }
    let mut conf = RseqConf::default();
    pt(
        PTRACE_GET_RSEQ_CONFIGURATION,
        "GET_RSEQ_CONFIGURATION",
        tid,
        std::mem::size_of::<RseqConf>(),
        &mut conf as *mut RseqConf as usize,
    )?;
    if conf.ptr == 0 {
        return Ok(None);
    }
    Ok(Some((conf.ptr, conf.size, conf.sig)))
}

/// Robust futex list head of a thread: (head address, length).
pub fn get_robust_list(tid: Pid) -> SysResult<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: u64 = 0;
    // SAFETY: both out pointers are valid for a u64 write.
    let r = unsafe { libc::syscall(libc::SYS_get_robust_list, tid, &mut head as *mut u64, &mut len as *mut u64) };
    if r < 0 {
        return Err(SysError::last("get_robust_list", tid));
    }
    Ok((head, len))
}

const PTRACE_SECCOMP_GET_FILTER: u32 = 0x420c;
const PTRACE_GET_SECCOMP_METADATA: u32 = 0x420d;
/// Most BPF instructions in one filter (BPF_MAXINSNS).
pub const SECCOMP_MAX_INSNS: usize = 4096;

/// The seccomp filters of a thread, oldest first, each as (flags, BPF
/// program bytes: 8 bytes per instruction).
pub fn get_seccomp_filters(tid: Pid) -> SysResult<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    for index in 0usize.. {
        let n = match ptrace_raw(PTRACE_SECCOMP_GET_FILTER, tid, index, 0) {
            Ok(n) => n as usize,
            Err(e) if e.0 == libc::ENOENT => break,
            // Not in filter mode: no filters.
            Err(e) if e.0 == libc::EINVAL && index == 0 => break,
            Err(e) => return Err(SysError::new("ptrace(SECCOMP_GET_FILTER)", tid, e)),
        };
        if n > SECCOMP_MAX_INSNS {
            return Err(SysError::new("ptrace(SECCOMP_GET_FILTER): filter too long", tid, Errno(libc::E2BIG)));
        }
        let mut prog = vec![0u8; n * 8];
        pt(PTRACE_SECCOMP_GET_FILTER, "SECCOMP_GET_FILTER", tid, index, prog.as_mut_ptr() as usize)?;
        let mut meta = [index as u64, 0u64];
        pt(PTRACE_GET_SECCOMP_METADATA, "GET_SECCOMP_METADATA", tid, 16, meta.as_mut_ptr() as usize)?;
        out.push((meta[1], prog));
        if index > 4096 {
            break;
        }
    }
    out.reverse();
    Ok(out)
}
