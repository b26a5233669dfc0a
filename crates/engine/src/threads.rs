//! Threads: registers (general, FS/GS base, full xstate), signal masks,
//! TLS-related kernel state (clear_child_tid, robust futex list, rseq),
//! sigaltstack, names and pending signals. Restore creates every thread
//! with its TID (clone3 + set_tid) and sets its registers last, rewinding
//! interrupted syscalls so that they restart.

use crate::remote::{nr, words, Remote};
use crate::Result;
use cryopod_image::{SchedParams, Thread, ThreadAttrs};
use cryopod_sys::ptrace::{self, Regs, Stop};
use cryopod_sys::Pid;

const PR_GET_TID_ADDRESS: u64 = 40;
const PR_SET_PDEATHSIG: u64 = 1;
const PR_GET_PDEATHSIG: u64 = 2;
const PR_SET_TIMERSLACK: u64 = 29;
const PR_GET_TIMERSLACK: u64 = 30;
const PRIO_PROCESS: u64 = 0;

pub fn regs_to_vec(r: &Regs) -> Vec<u64> {
    vec![
        r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx, r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx, r.rdx, r.rsi, r.rdi,
        r.orig_rax, r.rip, r.cs, r.eflags, r.rsp, r.ss, r.fs_base, r.gs_base, r.ds, r.es, r.fs, r.gs,
    ]
}

pub fn vec_to_regs(v: &[u64], base: &Regs) -> Regs {
    let mut r = *base;
    let g = |i: usize| v.get(i).copied().unwrap_or(0);
    r.r15 = g(0);
    r.r14 = g(1);
    r.r13 = g(2);
    r.r12 = g(3);
    r.rbp = g(4);
    r.rbx = g(5);
    r.r11 = g(6);
    r.r10 = g(7);
    r.r9 = g(8);
    r.r8 = g(9);
    r.rax = g(10);
    r.rcx = g(11);
    r.rdx = g(12);
    r.rsi = g(13);
    r.rdi = g(14);
    r.orig_rax = g(15);
    r.rip = g(16);
    r.cs = g(17);
    r.eflags = g(18);
    r.rsp = g(19);
    r.ss = g(20);
    r.fs_base = g(21);
    r.gs_base = g(22);
    r.ds = g(23);
    r.es = g(24);
    r.fs = g(25);
    r.gs = g(26);
    r
}

/// Collect one thread; `r` injects into that thread (its registers before
/// injection are the ones saved).
/// `sigmask` is the thread's own mask (it may be running with another
/// while we inject, see `injection`).
pub fn collect(r: &mut Remote, sigmask: u64) -> Result<Thread> {
    let tid = r.tid();
    let regs = regs_to_vec(r.inj.saved_regs());
    let xstate = ptrace::get_xstate(tid)?;
    let comm =
        std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", r.pid)).unwrap_or_default().trim_end().to_string();
    r.call("prctl(PR_GET_TID_ADDRESS)", nr::PRCTL, &[PR_GET_TID_ADDRESS, r.data])?;
    let clear_child_tid = r.get_u64s(0, 1)?[0];
    let robust_list = ptrace::get_robust_list(tid)?;
    let rseq = ptrace::get_rseq(tid)?;
    r.call("sigaltstack", nr::SIGALTSTACK, &[0, r.data])?;
    let ss = r.get(0, 24)?;
    let le = |a: usize| u64::from_ne_bytes(ss[a..a + 8].try_into().unwrap_or_default());
    let sigaltstack = (le(0), le(8) as u32 as i32, le(16));
    let pending = ptrace::peek_siginfo(tid, false)?.into_iter().map(|s| s.to_vec()).collect();
    let affinity = cryopod_sys::sched::get_affinity(tid)?;
    let seccomp = ptrace::get_seccomp_filters(tid)?;
    let attrs = collect_attrs(r)?;
    Ok(Thread {
        tid,
        regs,
        xstate,
        sigmask,
        comm,
        clear_child_tid,
        robust_list,
        rseq,
        sigaltstack,
        pending,
        affinity,
        seccomp,
        attrs,
    })
}

/// Parent-death signal, timer slack and nice value of the thread `r`
/// injects into.
fn collect_attrs(r: &mut Remote) -> Result<ThreadAttrs> {
    r.call("prctl(PR_GET_PDEATHSIG)", nr::PRCTL, &[PR_GET_PDEATHSIG, r.data])?;
    let pdeathsig = i32::from_ne_bytes(r.get(0, 4)?.try_into().unwrap_or_default());
    let timer_slack_ns = r.call("prctl(PR_GET_TIMERSLACK)", nr::PRCTL, &[PR_GET_TIMERSLACK])?;
    // The raw syscall returns 20 - nice (1..=40).
    let prio = r.call("getpriority", nr::GETPRIORITY, &[PRIO_PROCESS, 0])?;
    let tid = r.tid();
    let s = cryopod_sys::sched::get_sched(tid)?;
    let sched = SchedParams { flags: s.flags & SCHED_FLAGS_KEPT, ..s };
    let ioprio = cryopod_sys::sched::get_ioprio(tid)?;
    // The thread's own memory policy, which only it can read (nodes up to
    // 63: a machine with more fails here, in one sentence).
    r.call("get_mempolicy", nr::GET_MEMPOLICY, &[r.data, r.data + 8, MAX_NODES, 0, 0])?;
    let b = r.get(0, 16)?;
    let mode = i32::from_ne_bytes(b[0..4].try_into().unwrap_or_default());
    let nodes = u64::from_ne_bytes(b[8..16].try_into().unwrap_or_default());
    // (Strict mode: from the seccomp check of the checkpoint, which reads
    // the thread's status already.)
    Ok(ThreadAttrs {
        pdeathsig,
        timer_slack_ns,
        nice: 20 - prio as i32,
        sched,
        ioprio,
        mempolicy: (mode, nodes),
        seccomp_strict: false,
    })
}

/// The scheduling flags a thread keeps: reset-on-fork, reclaim and
/// deadline overrun (not the per-call ones such as the utilisation
/// clamps' "keep" flags).
const SCHED_FLAGS_KEPT: u64 = 0x7;
/// Bits of a memory policy's node mask (get_mempolicy's maxnode).
const MAX_NODES: u64 = 64;
const SCHED_OTHER: u32 = 0;
const MPOL_DEFAULT: i32 = 0;

/// Create thread `tid` from the stopped leader `r`; returns once the new
/// thread is stopped and traced.
/// Create thread `tid` (as the process numbers it) by an injected clone3;
/// returns its host TID.
pub fn create(r: &mut Remote, tid: Pid) -> Result<Pid> {
    let tid_addr = r.put(4096, &tid.to_ne_bytes())?;
    let args = cryopod_sys::clone::thread_clone_args(tid_addr);
    let a = r.put(4096 + 64, &args)?;
    r.inj.new_threads.clear();
    let got = r.call(&format!("clone3(thread {tid})"), nr::CLONE3, &[a, cryopod_sys::clone::CLONE_ARGS_SIZE as u64])?;
    if got as Pid != tid {
        return Err(crate::EngineError::Other(format!("thread created with tid {got} instead of {tid}")));
    }
    // The clone event names the thread as we number it.
    let host = r.inj.new_threads.first().copied().unwrap_or(tid);
    loop {
        match ptrace::wait(host)? {
            Stop::Event(..) | Stop::Signal(libc::SIGSTOP) => return Ok(host),
            Stop::Signal(_) | Stop::Syscall => ptrace::cont(host, 0)?,
            Stop::Exited(_) | Stop::Killed(_) => {
                return Err(crate::EngineError::Other(format!("new thread {tid} died at birth")))
            }
        }
    }
}

/// Per-thread kernel state that must be set from inside the thread.
pub fn restore_state(r: &mut Remote, t: &Thread) -> Result<()> {
    r.call("set_robust_list", nr::SET_ROBUST_LIST, &[t.robust_list.0, t.robust_list.1])?;
    if let Some((ptr, len, sig)) = t.rseq {
        r.call("rseq", nr::RSEQ, &[ptr, u64::from(len), 0, u64::from(sig)])?;
    }
    r.call("set_tid_address", nr::SET_TID_ADDRESS, &[t.clear_child_tid])?;
    // Set in every case: the leader's stub was forked with the restorer's
    // own alternate stack (Rust's std gives every thread one), which no
    // longer exists once the stub's memory is gone; a handler with
    // SA_ONSTACK would then fault on delivery.
    let (sp, flags, size) = t.sigaltstack;
    let ss = if flags & libc::SS_DISABLE == 0 {
        [sp, (flags & !libc::SS_ONSTACK) as u32 as u64, size]
    } else {
        [0, libc::SS_DISABLE as u32 as u64, 0]
    };
    let a = r.put(0, &words(&ss))?;
    r.call("sigaltstack", nr::SIGALTSTACK, &[a, 0])?;
    r.call("prctl(PR_SET_PDEATHSIG)", nr::PRCTL, &[PR_SET_PDEATHSIG, t.attrs.pdeathsig as u32 as u64])?;
    if t.attrs.timer_slack_ns != 0 {
        r.call("prctl(PR_SET_TIMERSLACK)", nr::PRCTL, &[PR_SET_TIMERSLACK, t.attrs.timer_slack_ns])?;
    }
    let mut name = t.comm.as_bytes().to_vec();
    name.truncate(15);
    name.push(0);
    let a = r.put(0, &name)?;
    r.call("prctl(PR_SET_NAME)", nr::PRCTL, &[libc::PR_SET_NAME as u64, a])?;
    let (mode, nodes) = t.attrs.mempolicy;
    if mode != MPOL_DEFAULT {
        let a = r.put(0, &nodes.to_ne_bytes())?;
        // (set_mempolicy reads maxnode - 1 bits.)
        r.call(
            &format!("set_mempolicy({mode:#x}, {nodes:#x})"),
            nr::SET_MEMPOLICY,
            &[mode as u32 as u64, a, MAX_NODES + 1],
        )?;
    }
    Ok(())
}

/// The thread's nice value, set by the thread itself once its credentials
/// are final: it gets a higher priority than the restorer's only if it may
/// (CAP_SYS_NICE, RLIMIT_NICE). Returns false if the kernel refused.
pub fn restore_nice(r: &mut Remote, t: &Thread) -> Result<bool> {
    let nice = t.attrs.nice.clamp(-20, 19);
    let res = r.raw(nr::SETPRIORITY, &[PRIO_PROCESS, 0, nice as i64 as u64])?;
    Ok(res == 0)
}

const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
const ERESTART_RESTARTBLOCK: i64 = -516;

/// Registers to resume with: a syscall that was interrupted by the
/// checkpoint is rewound so that it runs again (nanosleep continues with the
/// remaining time the kernel stored in `rem`).
pub fn resume_regs(t: &Thread, base: &Regs) -> Regs {
    let mut r = vec_to_regs(&t.regs, base);
    let orig = r.orig_rax as i64;
    let ret = r.rax as i64;
    if orig >= 0 {
        match ret {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                r.rax = r.orig_rax;
                r.rip -= 2;
            }
            ERESTART_RESTARTBLOCK => {
                if orig == libc::SYS_nanosleep && r.rsi != 0 {
                    r.rdi = r.rsi;
                } else if orig == libc::SYS_clock_nanosleep && r.r10 != 0 && r.rsi & libc::TIMER_ABSTIME as u64 == 0 {
                    r.rdx = r.r10;
                }
                r.rax = r.orig_rax;
                r.rip -= 2;
            }
            _ => {}
        }
    }
    r.orig_rax = u64::MAX;
    r
}

/// Final step for a thread: xstate (laid out for this CPU; `cpu` is the
/// image's), registers, signal mask, CPU affinity.
pub fn set_final(tid: Pid, t: &Thread, cpu: &cryopod_image::CpuImage) -> Result<()> {
    ptrace::set_xstate(tid, &crate::cpu::fit_xstate(&t.xstate, cpu, crate::cpu::this_cpu())?)?;
    if !t.affinity.is_empty() {
        // CPUs that no longer exist are the kernel's to refuse; the thread
        // then keeps the restorer's CPU rather than failing the restore.
        if cryopod_sys::sched::set_affinity(tid, &t.affinity).is_err() {
            tracing::warn!(tid, "cannot restore CPU affinity {:?}", t.affinity);
        }
    }
    if t.attrs.ioprio != 0 {
        cryopod_sys::sched::set_ioprio(tid, t.attrs.ioprio)?;
    }
    // Last: a real-time thread would outrun the restorer once let go.
    let s = t.attrs.sched;
    if s.policy != SCHED_OTHER || s.flags != 0 {
        cryopod_sys::sched::set_sched(tid, &s, t.attrs.nice)?;
    }
    let base = ptrace::get_regs(tid)?;
    ptrace::set_regs(tid, &resume_regs(t, &base))?;
    ptrace::set_sigmask(tid, t.sigmask)?;
    Ok(())
}

const SECCOMP_SET_MODE_STRICT: u64 = 0;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;
const SECCOMP_FILTER_FLAG_LOG: u64 = 2;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: u64 = 4;
const CAP_SYS_ADMIN: u64 = 21;
const NR_SECCOMP: i64 = 317;

/// Refuse a thread whose seccomp state cannot be restored exactly: strict
/// mode where seccomp cannot be suspended while we trace, filters with a
/// user-space listener, or filters in a thread that could not install
/// them again (neither no_new_privs nor CAP_SYS_ADMIN). Returns whether
/// the thread is in strict mode.
pub fn check_seccomp_restorable(pid: Pid, tid: Pid) -> Result<bool> {
    let status = crate::procfs::read(pid, &format!("task/{tid}/status"))?;
    let mode = crate::procfs::status_field(&status, "Seccomp").unwrap_or_default();
    let refuse =
        |why: &str| Err(crate::EngineError::Unsupported { pid, what: format!("thread {tid} under seccomp: {why}") });
    match mode.as_str() {
        "" | "0" => Ok(false),
        "1" if crate::freeze::seccomp_suspended() => Ok(true),
        "1" => refuse(
            "in strict mode its state cannot be read without syscalls the mode forbids (suspending seccomp while \
             tracing needs CAP_SYS_ADMIN)",
        ),
        _ => {
            let nnp = crate::procfs::status_field(&status, "NoNewPrivs").as_deref() == Some("1");
            let admin = crate::procfs::status_hex(&status, "CapEff") & (1 << CAP_SYS_ADMIN) != 0;
            if !nnp && !admin {
                return refuse("its filters could not be installed again (no no_new_privs, no CAP_SYS_ADMIN)");
            }
            let filters = match ptrace::get_seccomp_filters(tid) {
                Ok(f) => f,
                Err(e) if matches!(e.errno.0, libc::EPERM | libc::EACCES) => {
                    return refuse("reading its filters needs CAP_SYS_ADMIN, which this cryopod lacks");
                }
                Err(e) => return Err(e.into()),
            };
            for (flags, _) in filters {
                if flags & !(SECCOMP_FILTER_FLAG_LOG | SECCOMP_FILTER_FLAG_SPEC_ALLOW) != 0 {
                    return refuse(&format!("filter flags {flags:#x} (a user-space listener) are not supported"));
                }
            }
            Ok(false)
        }
    }
}

/// A thread's stack pointer, as saved (rsp in its user_regs_struct).
pub(crate) fn stack_pointer(t: &Thread) -> u64 {
    t.regs.get(19).copied().unwrap_or(0)
}

/// Install the seccomp state of the threads of process `pid` (each with
/// its host TID) as their very last injected syscalls (nothing of ours
/// goes through it afterwards): the filters every thread has at the start
/// of its list (installed before the threads were made, or with TSYNC:
/// shared) are installed once, from the first thread, with
/// SECCOMP_FILTER_FLAG_TSYNC, so that the threads share them again (a
/// later TSYNC of the program's own needs it); then the rest thread by
/// thread, oldest first; strict mode last. `site` is a `syscall`
/// instruction in the task (its vDSO), `vmas` its memory map.
pub fn install_seccomp(pid: Pid, threads: &[(Pid, &Thread)], site: u64, vmas: &[cryopod_image::Vma]) -> Result<()> {
    let common = match threads {
        [] | [_] => 0,
        [(_, first), rest @ ..] => (0..first.seccomp.len())
            .take_while(|&i| rest.iter().all(|(_, t)| t.seccomp.get(i) == first.seccomp.get(i)))
            .count(),
    };
    if let Some(&(tid, t)) = threads.first().filter(|_| common > 0) {
        install_filters(pid, (tid, t), &t.seccomp[..common], SECCOMP_FILTER_FLAG_TSYNC, site, vmas)
            .map_err(crate::EngineError::during(format!("seccomp filters of thread {} (shared)", t.tid)))?;
    }
    for &(tid, t) in threads {
        install_filters(pid, (tid, t), &t.seccomp[common..], 0, site, vmas)
            .map_err(crate::EngineError::during(format!("seccomp filters of thread {}", t.tid)))?;
    }
    for &(tid, t) in threads.iter().filter(|(_, t)| t.attrs.seccomp_strict) {
        let mut inj = cryopod_sys::inject::Injector::new(tid, site)?;
        inj.call("seccomp(SET_MODE_STRICT)", NR_SECCOMP, &[SECCOMP_SET_MODE_STRICT, 0, 0])
            .map_err(crate::EngineError::from)
            .map_err(crate::EngineError::during(format!("strict mode of thread {}", t.tid)))?;
    }
    Ok(())
}

/// Install `filters` in thread `tid` (`t` as the image has it), with
/// `extra` flags. The program is written just below the red zone under
/// the thread's stack pointer, and those bytes are put back afterwards.
fn install_filters(
    pid: Pid,
    (tid, t): (Pid, &Thread),
    filters: &[(u64, Vec<u8>)],
    extra: u64,
    site: u64,
    vmas: &[cryopod_image::Vma],
) -> Result<()> {
    if filters.is_empty() {
        return Ok(());
    }
    let rsp = stack_pointer(t);
    let largest = filters.iter().map(|(_, p)| p.len()).max().unwrap_or(0) as u64 + 16;
    let at = rsp.saturating_sub(128 + largest) & !15;
    let writable = vmas.iter().any(|v| v.start <= at && at + largest <= v.end && v.prot & libc::PROT_WRITE as u32 != 0);
    if !writable {
        return Err(crate::EngineError::Other(format!(
            "thread {}: no room below its stack for its seccomp filters",
            t.tid
        )));
    }
    let mut saved = vec![0u8; largest as usize];
    cryopod_sys::mem::read(pid, at, &mut saved)?;
    let mut inj = cryopod_sys::inject::Injector::new(tid, site)?;
    let mut res = Ok(());
    for (flags, prog) in filters {
        // struct sock_fprog { u16 len; u64 filter } followed by the program.
        let mut blob = Vec::with_capacity(16 + prog.len());
        blob.extend_from_slice(&((prog.len() / 8) as u16).to_ne_bytes());
        blob.extend_from_slice(&[0u8; 6]);
        blob.extend_from_slice(&(at + 16).to_ne_bytes());
        blob.extend_from_slice(prog);
        res = cryopod_sys::mem::write(pid, at, &blob)
            .and_then(|_| {
                inj.call("seccomp(SET_MODE_FILTER)", NR_SECCOMP, &[SECCOMP_SET_MODE_FILTER, *flags | extra, at])
            })
            .map_err(crate::EngineError::from)
            // With TSYNC, a thread that could not follow is named (its TID).
            .and_then(|r| match r {
                0 => Ok(()),
                tid => Err(crate::EngineError::Other(format!("thread {tid} could not share the filters (TSYNC)"))),
            });
        if res.is_err() {
            break;
        }
    }
    cryopod_sys::mem::write(pid, at, &saved)?;
    res.map(|_| ())
}
