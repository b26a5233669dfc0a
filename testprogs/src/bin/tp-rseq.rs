//! A thread that lives inside a restartable sequence (rseq critical
//! section, registered through glibc's rseq area) spins there until the
//! kernel aborts it, which it does on every signal delivered to the thread
//! (the main thread sends one every few ms) and every preemption; each
//! abort is counted and the section entered again. A checkpoint stops the
//! thread inside the section; if it is then resumed (or restored) inside
//! the section after the kernel forgot it (injected calls run outside it),
//! it spins there for good and no abort comes any more: after the go file,
//! aborts must keep coming.

use cryopod_testprogs::*;
use std::arch::{asm, global_asm};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static ABORTS: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

// rdi: the rseq area's rseq_cs field; rsi: the section's descriptor.
// The section spins; it is left only through the abort handler (preceded
// by the x86 rseq signature), which returns to the caller.
global_asm!(
    ".globl tp_rseq_enter",
    "tp_rseq_enter:",
    "mov [rdi], rsi",
    "tp_rseq_start:",
    "pause",
    "jmp tp_rseq_start",
    "tp_rseq_post:",
    "ret",
    ".long 0x53053053",
    "tp_rseq_abort:",
    "ret",
);

extern "C" {
    fn tp_rseq_enter(cs_field: *mut u64, cs: *const RseqCs);
    fn tp_rseq_start();
    fn tp_rseq_post();
    fn tp_rseq_abort();
    static __rseq_offset: isize;
    static __rseq_size: u32;
}

/// `struct rseq_cs`.
#[repr(C, align(32))]
struct RseqCs {
    version: u32,
    flags: u32,
    start_ip: u64,
    post_commit_offset: u64,
    abort_ip: u64,
}

extern "C" fn on_usr1(_: i32) {}

fn thread_pointer() -> u64 {
    let tp: u64;
    // SAFETY: reads the TCB's self pointer at fs:0 (x86_64 TLS ABI).
    unsafe { asm!("mov {}, fs:0", out(reg) tp) };
    tp
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    // SAFETY: glibc's exported rseq registration facts.
    let (offset, size) = unsafe { (__rseq_offset, __rseq_size) };
    if size == 0 {
        c.check("glibc registered rseq", false, "rseq is not registered (GLIBC_TUNABLES?)");
        c.finish();
    }
    // SAFETY: an empty handler.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    let cs = Box::new(RseqCs {
        version: 0,
        flags: 0,
        start_ip: tp_rseq_start as *const () as u64,
        post_commit_offset: tp_rseq_post as *const () as u64 - tp_rseq_start as *const () as u64,
        abort_ip: tp_rseq_abort as *const () as u64,
    });
    let cs_addr = &*cs as *const RseqCs as u64;
    let (tx, rx) = std::sync::mpsc::channel();
    let spinner = std::thread::spawn(move || {
        // SAFETY: pthread_self has no arguments.
        tx.send(unsafe { libc::pthread_self() }).unwrap();
        let field = (thread_pointer() as isize + offset + 8) as *mut u64;
        while !STOP.load(Ordering::Relaxed) {
            // SAFETY: `field` is this thread's rseq_cs field; the descriptor
            // lives as long as the program.
            unsafe { tp_rseq_enter(field, cs_addr as *const RseqCs) };
            ABORTS.fetch_add(1, Ordering::Relaxed);
        }
    });
    let spin = rx.recv().unwrap();
    let poke = || {
        // SAFETY: signalling our own live thread.
        unsafe { libc::pthread_kill(spin, libc::SIGUSR1) };
    };
    let go = dir.join("go");
    let mut started = false;
    while !go.exists() {
        poke();
        std::thread::sleep(std::time::Duration::from_millis(2));
        if !started && ABORTS.load(Ordering::Relaxed) > 10 {
            started = true;
            println!("READY");
            use std::io::Write;
            std::io::stdout().flush().unwrap();
        }
    }
    let before = ABORTS.load(Ordering::Relaxed);
    let t = std::time::Instant::now();
    while ABORTS.load(Ordering::Relaxed) < before + 20 && t.elapsed().as_secs() < 3 {
        poke();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let after = ABORTS.load(Ordering::Relaxed);
    c.check("aborts keep coming after the checkpoint", after >= before + 20, format!("{before} then {after}"));
    STOP.store(true, Ordering::Relaxed);
    if after >= before + 20 {
        poke();
        let _ = spinner.join();
    }
    c.finish();
}
