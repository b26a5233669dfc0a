//! Signals across checkpoint/restore: handlers with flags and masks,
//! ignored signals, sigaltstack, blocked masks, and pending signals both
//! process-wide (including queued real-time signals with their values) and
//! per thread, delivered after restore with their siginfo intact.

use cryopod_testprogs::*;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};

static USR1_COUNT: AtomicUsize = AtomicUsize::new(0);
static USR1_PID: AtomicI32 = AtomicI32::new(0);
static RT_VALUES: [AtomicU64; 4] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
static RT_N: AtomicUsize = AtomicUsize::new(0);
static THREAD_VAL: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_usr1(_: i32, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    USR1_COUNT.fetch_add(1, Ordering::SeqCst);
    unsafe { USR1_PID.store((*info).si_pid(), Ordering::SeqCst) };
}

extern "C" fn on_rt(sig: i32, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let v = unsafe { (*info).si_value().sival_ptr as u64 };
    if sig == libc::SIGRTMIN() + 3 {
        THREAD_VAL.store(v, Ordering::SeqCst);
        return;
    }
    let i = RT_N.fetch_add(1, Ordering::SeqCst);
    if i < 4 {
        RT_VALUES[i].store(v, Ordering::SeqCst);
    }
}

unsafe fn install(sig: i32, h: usize, flags: i32, mask_sig: i32) -> libc::sigaction {
    let mut sa: libc::sigaction = std::mem::zeroed();
    sa.sa_sigaction = h;
    sa.sa_flags = flags;
    libc::sigemptyset(&mut sa.sa_mask);
    if mask_sig > 0 {
        libc::sigaddset(&mut sa.sa_mask, mask_sig);
    }
    libc::sigaction(sig, &sa, std::ptr::null_mut());
    let mut got: libc::sigaction = std::mem::zeroed();
    libc::sigaction(sig, std::ptr::null(), &mut got);
    got
}

unsafe fn get(sig: i32) -> libc::sigaction {
    let mut got: libc::sigaction = std::mem::zeroed();
    libc::sigaction(sig, std::ptr::null(), &mut got);
    got
}

fn same(a: &libc::sigaction, b: &libc::sigaction) -> bool {
    let mask = |s: &libc::sigaction| (1..=64).filter(|&i| unsafe { libc::sigismember(&s.sa_mask, i) } == 1).count();
    a.sa_sigaction == b.sa_sigaction && a.sa_flags == b.sa_flags && mask(a) == mask(b)
}

fn block(sigs: &[i32], how: i32) {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

fn pending(sig: i32) -> bool {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut set);
        libc::sigismember(&set, sig) == 1
    }
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    let rt2 = libc::SIGRTMIN() + 2;
    let rt3 = libc::SIGRTMIN() + 3;
    unsafe {
        let usr1 =
            install(libc::SIGUSR1, on_usr1 as *const () as usize, libc::SA_SIGINFO | libc::SA_RESTART, libc::SIGUSR2);
        let rt = install(rt2, on_rt as *const () as usize, libc::SA_SIGINFO, 0);
        let rt3a = install(rt3, on_rt as *const () as usize, libc::SA_SIGINFO | libc::SA_ONSTACK, 0);
        let ign = install(libc::SIGUSR2, libc::SIG_IGN, 0, 0);
        // The restorer's injection gadget raises SIGTRAP: the program's own
        // SIGTRAP handler must survive it.
        let trap =
            install(libc::SIGTRAP, on_usr1 as *const () as usize, libc::SA_SIGINFO | libc::SA_NODEFER, libc::SIGHUP);
        let dfl_hup = get(libc::SIGHUP);
        // Alternate signal stack.
        let stack = vec![0u8; 64 * 1024].leak();
        let ss = libc::stack_t { ss_sp: stack.as_mut_ptr().cast(), ss_flags: 0, ss_size: stack.len() };
        libc::sigaltstack(&ss, std::ptr::null_mut());
        // Process-wide pending: SIGUSR1 (blocked) and two queued RT signals.
        block(&[libc::SIGUSR1, rt2, libc::SIGPIPE], libc::SIG_BLOCK);
        libc::kill(libc::getpid(), libc::SIGUSR1);
        libc::sigqueue(libc::getpid(), rt2, libc::sigval { sival_ptr: 1234 as *mut _ });
        libc::sigqueue(libc::getpid(), rt2, libc::sigval { sival_ptr: 5678 as *mut _ });
        // A thread with its own pending signal.
        let (tx, rx) = std::sync::mpsc::channel();
        let d2 = dir.clone();
        let th = std::thread::spawn(move || {
            block(&[rt3], libc::SIG_BLOCK);
            tx.send(libc::pthread_self()).unwrap();
            wait_go(&d2);
            let was_pending = pending(rt3);
            block(&[rt3], libc::SIG_UNBLOCK);
            (was_pending, THREAD_VAL.load(Ordering::SeqCst))
        });
        let t = rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        libc::pthread_sigqueue(t, rt3, libc::sigval { sival_ptr: 999 as *mut _ });
        std::thread::sleep(std::time::Duration::from_millis(20));

        ready_and_wait(&dir);

        c.check("SIGUSR1 handler, flags and mask", same(&get(libc::SIGUSR1), &usr1), "differs");
        c.check("RT handler", same(&get(rt2), &rt), "differs");
        c.check("RT+3 handler with SA_ONSTACK", same(&get(rt3), &rt3a), "differs");
        c.check("SIGTRAP handler", same(&get(libc::SIGTRAP), &trap), "differs");
        c.check("SIGUSR2 ignored", get(libc::SIGUSR2).sa_sigaction == ign.sa_sigaction, "not ignored");
        c.check("SIGHUP default", same(&get(libc::SIGHUP), &dfl_hup), "differs");
        let mut old: libc::stack_t = std::mem::zeroed();
        libc::sigaltstack(std::ptr::null(), &mut old);
        c.check(
            "sigaltstack",
            old.ss_sp == ss.ss_sp && old.ss_size == ss.ss_size,
            format!("{:?} {}", old.ss_sp, old.ss_size),
        );
        let mut cur: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
        c.check(
            "blocked mask",
            libc::sigismember(&cur, libc::SIGUSR1) == 1
                && libc::sigismember(&cur, rt2) == 1
                && libc::sigismember(&cur, libc::SIGPIPE) == 1
                && libc::sigismember(&cur, libc::SIGTERM) == 0,
            "differs",
        );
        c.check("SIGUSR1 still pending", pending(libc::SIGUSR1), "lost");
        c.check("RT signal still pending", pending(rt2), "lost");
        c.eq("no handler ran early", USR1_COUNT.load(Ordering::SeqCst) + RT_N.load(Ordering::SeqCst), 0);
        block(&[libc::SIGUSR1, rt2], libc::SIG_UNBLOCK);
        c.eq("SIGUSR1 delivered once", USR1_COUNT.load(Ordering::SeqCst), 1);
        c.eq("SIGUSR1 sender pid kept", USR1_PID.load(Ordering::SeqCst), libc::getpid());
        c.eq("both queued RT signals delivered", RT_N.load(Ordering::SeqCst), 2);
        c.eq(
            "RT values in order",
            (RT_VALUES[0].load(Ordering::SeqCst), RT_VALUES[1].load(Ordering::SeqCst)),
            (1234, 5678),
        );
        let (was_pending, val) = th.join().unwrap();
        c.check("thread's own signal was pending", was_pending, "not pending");
        c.eq("thread's signal value", val, 999);
    }
    c.finish();
}
