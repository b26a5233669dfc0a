//! Handlers installed with SA_ONSTACK (as CPython and Go install every
//! handler) in threads that have no alternate signal stack: after restore
//! each thread must still report SS_DISABLE, and a signal sent to each must
//! run its handler on the thread's normal stack (a leftover alternate stack
//! of the restorer would make the delivery fault).

use cryopod_testprogs::*;
use std::sync::atomic::{AtomicUsize, Ordering};

const THREADS: usize = 4;
static HANDLED: AtomicUsize = AtomicUsize::new(0);
static ON_ALT: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_usr1(_: i32, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: sigaltstack only reads into a local.
    let mut cur: libc::stack_t = unsafe { std::mem::zeroed() };
    unsafe { libc::sigaltstack(std::ptr::null(), &mut cur) };
    if cur.ss_flags & libc::SS_ONSTACK != 0 {
        ON_ALT.fetch_add(1, Ordering::SeqCst);
    }
    HANDLED.fetch_add(1, Ordering::SeqCst);
}

/// Drop this thread's alternate stack (Rust's std gives every thread one).
fn no_altstack() {
    let ss = libc::stack_t { ss_sp: std::ptr::null_mut(), ss_flags: libc::SS_DISABLE, ss_size: 0 };
    // SAFETY: a valid stack_t; the old one is not wanted.
    unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) };
}

fn altstack_flags() -> i32 {
    // SAFETY: sigaltstack only reads into a local.
    let mut cur: libc::stack_t = unsafe { std::mem::zeroed() };
    unsafe { libc::sigaltstack(std::ptr::null(), &mut cur) };
    cur.ss_flags
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    // SAFETY: a zeroed sigaction with a valid handler.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    no_altstack();
    let mut workers = Vec::new();
    for _ in 1..THREADS {
        let d = dir.clone();
        workers.push(std::thread::spawn(move || {
            no_altstack();
            wait_go(&d);
            let flags = altstack_flags();
            let before = HANDLED.load(Ordering::SeqCst);
            // SAFETY: a signal to this very thread.
            unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR1) };
            (flags, HANDLED.load(Ordering::SeqCst) > before)
        }));
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    ready_and_wait(&dir);
    c.eq("main thread: sigaltstack SS_DISABLE", altstack_flags(), libc::SS_DISABLE);
    let before = HANDLED.load(Ordering::SeqCst);
    // SAFETY: a signal to this very thread.
    unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR1) };
    c.check("main thread: SA_ONSTACK handler ran", HANDLED.load(Ordering::SeqCst) > before, "not run");
    for (i, w) in workers.into_iter().enumerate() {
        let (flags, ran) = w.join().unwrap_or((-1, false));
        c.eq(&format!("thread {}: sigaltstack SS_DISABLE", i + 1), flags, libc::SS_DISABLE);
        c.check(&format!("thread {}: SA_ONSTACK handler ran", i + 1), ran, "not run");
    }
    // A process-wide signal, taken by whichever thread.
    let before = HANDLED.load(Ordering::SeqCst);
    // SAFETY: kill of our own process.
    unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
    std::thread::sleep(std::time::Duration::from_millis(20));
    c.check("process-wide SIGUSR1 handled", HANDLED.load(Ordering::SeqCst) > before, "not run");
    c.eq("no handler ran on an alternate stack", ON_ALT.load(Ordering::SeqCst), 0);
    c.eq("handlers run", HANDLED.load(Ordering::SeqCst), THREADS + 1);
    c.finish();
}
