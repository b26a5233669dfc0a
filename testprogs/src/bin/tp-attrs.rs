//! Attributes a restored process could carry over from the stub it was
//! made from (a fork of the restorer): per thread its alternate signal
//! stack, signal mask, parent-death signal, timer slack, nice value, name,
//! CPU affinity, clear_child_tid, robust list and FS base; per process
//! dumpable, child subreaper, THP disable, core dump filter, umask,
//! personality, rlimits, cwd, dispositions, pending signals, securebits and
//! no_new_privs. Each is set away from its default, read before the
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
        v
    }
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
