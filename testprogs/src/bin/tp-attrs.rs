//! Attributes a restored process could carry over from the stub it was
//! made from (a fork of the restorer): per thread its alternate signal
//! stack, signal mask, parent-death signal, timer slack, nice value, name,
//! CPU affinity, clear_child_tid, robust list, FS base, scheduling policy
//! (batch with reset-on-fork, FIFO, idle), I/O priority (best effort, idle,
//! real time) and memory policy (preferred, bind, interleave); per process
//! dumpable, child subreaper, THP disable, core dump filter, umask,
//! personality, rlimits, cwd, dispositions, pending signals, securebits,
//! no_new_privs, OOM score adjustment, login uid and membarrier
//! registrations. Each is set away from its default, read before the
//! checkpoint and compared after the restore, thread by thread.

use cryopod_testprogs::*;
use std::sync::mpsc;

/// What one thread reads of itself.
fn thread_view() -> Vec<String> {
    // SAFETY: every call below writes only into locals it is given.
    unsafe {
        let mut v = Vec::new();
        let mut ss: libc::stack_t = std::mem::zeroed();
        libc::sigaltstack(std::ptr::null(), &mut ss);
        v.push(format!("sigaltstack {:?} {} {}", ss.ss_sp, ss.ss_flags, ss.ss_size));
        let mut mask: u64 = 0;
        libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_BLOCK, 0usize, &mut mask as *mut u64, 8usize);
        v.push(format!("sigmask {mask:#x}"));
        let mut pd: i32 = -1;
        libc::prctl(libc::PR_GET_PDEATHSIG, &mut pd as *mut i32);
        v.push(format!("pdeathsig {pd}"));
        v.push(format!("timerslack {}", libc::prctl(libc::PR_GET_TIMERSLACK)));
        *libc::__errno_location() = 0;
        v.push(format!("nice {}", libc::getpriority(libc::PRIO_PROCESS, 0)));
        let mut name = [0u8; 17];
        libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr());
        v.push(format!("name {:?}", std::ffi::CStr::from_ptr(name.as_ptr().cast())));
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        let cpus: Vec<usize> = (0..64).filter(|&i| libc::CPU_ISSET(i, &set)).collect();
        v.push(format!("affinity {cpus:?}"));
        let mut tid_addr: usize = 0;
        libc::prctl(40, &mut tid_addr as *mut usize); // PR_GET_TID_ADDRESS
        v.push(format!("clear_child_tid {tid_addr:#x}"));
        let (mut head, mut len): (usize, usize) = (0, 0);
        libc::syscall(libc::SYS_get_robust_list, 0, &mut head as *mut usize, &mut len as *mut usize);
        v.push(format!("robust_list {head:#x} {len}"));
        let mut fs: u64 = 0;
        libc::syscall(libc::SYS_arch_prctl, 0x1003, &mut fs as *mut u64); // ARCH_GET_FS
        v.push(format!("fs_base {fs:#x}"));
        v.push(format!("seccomp {}", libc::prctl(libc::PR_GET_SECCOMP)));
        v.push(format!("no_new_privs {}", libc::prctl(libc::PR_GET_NO_NEW_PRIVS)));
        v.push(format!("securebits {}", libc::prctl(libc::PR_GET_SECUREBITS)));
        v.push(format!("keepcaps {}", libc::prctl(libc::PR_GET_KEEPCAPS)));
        let mut attr = [0u32; 14];
        libc::syscall(libc::SYS_sched_getattr, 0, attr.as_mut_ptr(), 56u32, 0u32);
        // size, policy, flags (2 words), nice, priority.
        v.push(format!("sched policy {} flags {:#x} priority {}", attr[1], attr[2], attr[5]));
        v.push(format!("ioprio {:#x}", libc::syscall(libc::SYS_ioprio_get, 1, 0)));
        let (mut mode, mut nodes): (i32, u64) = (-1, 0);
        libc::syscall(libc::SYS_get_mempolicy, &mut mode as *mut i32, &mut nodes as *mut u64, 64u64, 0usize, 0u64);
        v.push(format!("mempolicy {mode:#x} {nodes:#x}"));
        v
    }
}

/// What the process reads of itself (process-wide attributes).
fn process_view() -> Vec<String> {
    // SAFETY: every call below writes only into locals it is given.
    unsafe {
        let mut v = Vec::new();
        v.push(format!("dumpable {}", libc::prctl(libc::PR_GET_DUMPABLE)));
        let mut r: i32 = -1;
        libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut r as *mut i32);
        v.push(format!("subreaper {r}"));
        v.push(format!("thp_disable {}", libc::prctl(libc::PR_GET_THP_DISABLE)));
        let read = |f: &str| std::fs::read_to_string(f).unwrap_or_else(|e| format!("({e})"));
        v.push(format!("coredump_filter {}", read("/proc/self/coredump_filter").trim()));
        v.push(format!("umask {}", status("Umask")));
        v.push(format!("personality {:#x}", libc::personality(0xffff_ffff)));
        for res in 0..16 {
            let mut l: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(res, &mut l);
            v.push(format!("rlimit {res} {} {}", l.rlim_cur, l.rlim_max));
        }
        v.push(format!("cwd {:?}", std::env::current_dir().ok()));
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, std::ptr::null(), &mut sa);
            v.push(format!("sigaction {sig} {:#x} {:#x}", sa.sa_sigaction, sa.sa_flags));
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut set);
        let pend: Vec<i32> = (1..=64).filter(|&s| libc::sigismember(&set, s) == 1).collect();
        v.push(format!("pending {pend:?}"));
        v.push(format!("oom_score_adj {}", read("/proc/self/oom_score_adj").trim()));
        v.push(format!("loginuid {}", read("/proc/self/loginuid").trim()));
        v.push(format!("membarrier {:#x}", libc::syscall(libc::SYS_membarrier, 1 << 9, 0, 0)));
        v
    }
}

/// A setting the test needs could not be made: the test cannot pass.
fn setup_failed(what: &str) {
    println!("FAIL (setup: {what})");
    std::process::exit(1);
}

/// Set this thread's attributes away from their defaults (`k` varies them).
fn set_thread(k: i32, pdeathsig: i32) {
    // SAFETY: prctl/setpriority/sigaltstack with valid arguments.
    unsafe {
        let ss = libc::stack_t { ss_sp: std::ptr::null_mut(), ss_flags: libc::SS_DISABLE, ss_size: 0 };
        libc::sigaltstack(&ss, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_PDEATHSIG, pdeathsig as libc::c_ulong);
        libc::prctl(libc::PR_SET_TIMERSLACK, (100_000 + k * 1_111) as libc::c_ulong);
        libc::setpriority(libc::PRIO_PROCESS, 0, 2 + k);
        let name = std::ffi::CString::new(format!("tp-attrs-{k}")).unwrap_or_default();
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        libc::sigaddset(&mut mask, libc::SIGRTMIN() + k);
        libc::pthread_sigmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut());
        // Policy (batch with reset-on-fork, FIFO 1, idle), I/O priority
        // (best effort 2, idle, real time 4), memory policy (preferred,
        // bind, interleave; node 0, the one every machine has).
        let (policy, flags, priority) = [(3u32, 1u64, 0u32), (1, 0, 1), (5, 0, 0)][k as usize % 3];
        let mut attr = [0u32; 14];
        attr[0] = 56;
        attr[1] = policy;
        attr[2] = flags as u32;
        attr[4] = (2 + k) as u32;
        attr[5] = priority;
        if libc::syscall(libc::SYS_sched_setattr, 0, attr.as_ptr(), 0u32) != 0 {
            setup_failed(&format!("sched_setattr({policy}): {}", std::io::Error::last_os_error()));
        }
        let ioprio = [(2 << 13) | 2, 3 << 13, (1 << 13) | 4][k as usize % 3];
        if libc::syscall(libc::SYS_ioprio_set, 1, 0, ioprio) != 0 {
            setup_failed(&format!("ioprio_set({ioprio:#x}): {}", std::io::Error::last_os_error()));
        }
        let mode = [1i32, 2, 3][k as usize % 3];
        let nodes: u64 = 1;
        if libc::syscall(libc::SYS_set_mempolicy, mode, &nodes as *const u64, 65u64) != 0 {
            setup_failed(&format!("set_mempolicy({mode}): {}", std::io::Error::last_os_error()));
        }
    }
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    // SAFETY: prctl/umask/personality with valid arguments.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0);
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        libc::umask(0o027);
    }
    let _ = std::fs::write("/proc/self/coredump_filter", "0x13");
    for (f, v) in [("/proc/self/oom_score_adj", "321"), ("/proc/self/loginuid", "4242")] {
        if let Err(e) = std::fs::write(f, v) {
            setup_failed(&format!("{f}: {e}"));
        }
    }
    // SAFETY: membarrier registrations with integer arguments only.
    unsafe {
        for cmd in [1 << 2, 1 << 4] {
            if libc::syscall(libc::SYS_membarrier, cmd, 0, 0) != 0 {
                setup_failed(&format!("membarrier({cmd:#x}): {}", std::io::Error::last_os_error()));
            }
        }
    }
    set_thread(0, libc::SIGWINCH);
    let mut workers = Vec::new();
    for k in 1..3 {
        let (tx, rx) = mpsc::channel();
        let d = dir.clone();
        let h = std::thread::spawn(move || {
            set_thread(k, if k == 1 { libc::SIGURG } else { 0 });
            let before = thread_view();
            let _ = tx.send(before.clone());
            wait_go(&d);
            (before, thread_view())
        });
        let _ = rx.recv();
        workers.push(h);
    }
    let before = (thread_view(), process_view());
    for l in before.0.iter().chain(&before.1) {
        println!("before: {l}");
    }
    ready_and_wait(&dir);
    let after = (thread_view(), process_view());
    for (b, a) in before.0.iter().zip(&after.0).chain(before.1.iter().zip(&after.1)) {
        c.eq(&format!("main/process {}", b.split(' ').next().unwrap_or("")), a, b);
    }
    for (k, w) in workers.into_iter().enumerate() {
        let (b, a) = w.join().unwrap_or_default();
        c.eq(&format!("thread {} view length", k + 1), a.len(), b.len());
        for (b, a) in b.iter().zip(&a) {
            c.eq(&format!("thread {} {}", k + 1, b.split(' ').next().unwrap_or("")), a, b);
        }
    }
    c.finish();
}
