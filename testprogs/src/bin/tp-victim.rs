//! A busy multi-threaded program with a child, for the tests that kill
//! cryopod at random instants while it checkpoints this program. Every
//! thread keeps checking that its world is intact: a thread spinning in
//! user code with values in its vector and callee-saved registers, threads
//! blocked in nanosleep (which must never see EINTR: no signal is sent) and
//! in read on a pipe fed by the main thread (bytes in sequence), a thread
//! making syscalls in a tight loop; each checks its own signal mask, the
//! main thread its SIGUSR1 handler, the child its parent. Each thread bumps
//! its counter in a shared memfd (eight u64: main, regs, sleeper, reader,
//! syscaller, child; its fd number is in `<dir>/beat-fd`) so that the
//! harness sees it work.
//! Once `<dir>/go` exists everything stops and the verdict is printed.

use cryopod_testprogs::*;
use std::arch::asm;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);
static FAILURES: AtomicU64 = AtomicU64::new(0);
const SLOTS: usize = 8;

fn fail(what: &str) {
    FAILURES.fetch_add(1, Ordering::SeqCst);
    println!("FAIL {what}");
}

/// The counters, in a shared mapping of `<dir>/beat`.
struct Beat(*mut u64);
unsafe impl Send for Beat {}
unsafe impl Sync for Beat {}

impl Beat {
    fn map(dir: &std::path::Path) -> Beat {
        // A memfd (the harness reads it as /proc/PID/fd/N; N is in
        // `<dir>/beat-fd`): a file mapping would change under a restore.
        // SAFETY: a name string and flags.
        let fd = unsafe { libc::memfd_create(c"beat".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: sizing our own memfd, then a shared mapping of it that is
        // never unmapped.
        let p = unsafe {
            libc::ftruncate(fd, 4096);
            libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        assert_ne!(p, libc::MAP_FAILED);
        std::fs::write(dir.join("beat-fd"), fd.to_string()).expect("beat-fd");
        Beat(p.cast())
    }
    fn slot(&self, i: usize) -> &AtomicU64 {
        assert!(i < SLOTS);
        // SAFETY: the mapping is 4096 bytes, aligned, shared, and lives for
        // the whole program; AtomicU64 has the layout of u64.
        unsafe { &*(self.0.add(i) as *const AtomicU64) }
    }
    fn bump(&self, i: usize) {
        self.slot(i).fetch_add(1, Ordering::Relaxed);
    }
}

fn own_mask() -> u64 {
    // SAFETY: sigset_t out parameter.
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut old);
        (1..=64).filter(|&s| libc::sigismember(&old, s) == 1).fold(0u64, |m, s| m | 1 << (s - 1))
    }
}

/// Is the calling thread's mask still `mask`? (Says which thread if not.)
fn mask_kept(mask: u64, who: &str) -> bool {
    let kept = own_mask() == mask;
    if !kept {
        fail(&format!("{who}: signal mask changed"));
    }
    kept
}

fn block(sigs: &[i32]) -> u64 {
    // SAFETY: sigset_t built by sigemptyset/sigaddset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    own_mask()
}

fn sleep_ms(ms: i64) -> i32 {
    let ts = libc::timespec { tv_sec: 0, tv_nsec: ms * 1_000_000 };
    // SAFETY: valid timespec.
    if unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) } == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }
}

extern "C" fn on_usr1(_: i32) {}

fn usr1_action() -> (usize, i32, u64) {
    // SAFETY: query only.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut old);
        let m = (1..=64).filter(|&s| libc::sigismember(&old.sa_mask, s) == 1).fold(0u64, |m, s| m | 1 << (s - 1));
        (old.sa_sigaction, old.sa_flags, m)
    }
}

/// The spin of the registers thread: 200 rounds of a 20,000-step loop and
/// a getppid, touching only rax, rcx, r10, r11.
macro_rules! spin {
    () => {
        "mov r10, 200\n2:\nmov ecx, 20000\n3:\ndec ecx\njnz 3b\nmov eax, 110\nsyscall\ndec r10\njnz 2b"
    };
}

/// Count the round (r8), compare the stored registers (rdi) with what they
/// must be (rbp; rcx bytes): al = 1 if they differ; restore rbp and rbx.
macro_rules! compare {
    () => {
        "lock inc qword ptr [r8]\nmov rsi, rbp\nrepe cmpsb\nsetne al\nmovzx eax, al\npop rbp\npop rbx"
    };
}

/// Spin in user code with known values in ymm0-15 (xmm without AVX),
/// rbx and r12-r15; every round stores them and compares with what they
/// must be, then makes one syscall.
fn regs_thread(beat: &Beat) {
    let mask = block(&[libc::SIGUSR2]);
    let avx = std::is_x86_feature_detected!("avx");
    let want: Vec<u8> = pattern(7, 16 * 32 + 5 * 8);
    let mut got = vec![0u8; want.len()];
    let counter = beat.slot(1) as *const AtomicU64 as *mut u64;
    let mut rounds: u64 = 0;
    let len = want.len();
    while !STOP.load(Ordering::Relaxed) {
        let bad: u64;
        // SAFETY: the asm reads `want`, writes `got` (both `len` bytes) and
        // the counter, makes getppid syscalls, and restores rbx/rbp; every
        // other register it touches is declared clobbered.
        unsafe {
            if avx {
                asm!(
                    "push rbx",
                    "push rbp",
                    "mov rbp, rsi",
                    "vmovdqu ymm0, [rsi + 0]", "vmovdqu ymm1, [rsi + 32]", "vmovdqu ymm2, [rsi + 64]",
                    "vmovdqu ymm3, [rsi + 96]", "vmovdqu ymm4, [rsi + 128]", "vmovdqu ymm5, [rsi + 160]",
                    "vmovdqu ymm6, [rsi + 192]", "vmovdqu ymm7, [rsi + 224]", "vmovdqu ymm8, [rsi + 256]",
                    "vmovdqu ymm9, [rsi + 288]", "vmovdqu ymm10, [rsi + 320]", "vmovdqu ymm11, [rsi + 352]",
                    "vmovdqu ymm12, [rsi + 384]", "vmovdqu ymm13, [rsi + 416]", "vmovdqu ymm14, [rsi + 448]",
                    "vmovdqu ymm15, [rsi + 480]",
                    "mov rbx, [rsi + 512]", "mov r12, [rsi + 520]", "mov r13, [rsi + 528]",
                    "mov r14, [rsi + 536]", "mov r15, [rsi + 544]",
                    spin!(),
                    "vmovdqu [rdi + 0], ymm0", "vmovdqu [rdi + 32], ymm1", "vmovdqu [rdi + 64], ymm2",
                    "vmovdqu [rdi + 96], ymm3", "vmovdqu [rdi + 128], ymm4", "vmovdqu [rdi + 160], ymm5",
                    "vmovdqu [rdi + 192], ymm6", "vmovdqu [rdi + 224], ymm7", "vmovdqu [rdi + 256], ymm8",
                    "vmovdqu [rdi + 288], ymm9", "vmovdqu [rdi + 320], ymm10", "vmovdqu [rdi + 352], ymm11",
                    "vmovdqu [rdi + 384], ymm12", "vmovdqu [rdi + 416], ymm13", "vmovdqu [rdi + 448], ymm14",
                    "vmovdqu [rdi + 480], ymm15",
                    "mov [rdi + 512], rbx", "mov [rdi + 520], r12", "mov [rdi + 528], r13",
                    "mov [rdi + 536], r14", "mov [rdi + 544], r15",
                    "mov rcx, r9",
                    compare!(),
                    inout("rsi") want.as_ptr() => _,
                    inout("rdi") got.as_mut_ptr() => _,
                    in("r8") counter,
                    in("r9") len,
                    out("rax") bad,
                    out("rcx") _, out("rdx") _, out("r10") _, out("r11") _,
                    out("r12") _, out("r13") _, out("r14") _, out("r15") _,
                    out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                    out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                    out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                    out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                );
            } else {
                asm!(
                    "push rbx",
                    "push rbp",
                    "mov rbp, rsi",
                    "movdqu xmm0, [rsi + 0]", "movdqu xmm1, [rsi + 16]", "movdqu xmm2, [rsi + 32]",
                    "movdqu xmm3, [rsi + 48]", "movdqu xmm4, [rsi + 64]", "movdqu xmm5, [rsi + 80]",
                    "movdqu xmm6, [rsi + 96]", "movdqu xmm7, [rsi + 112]",
                    "mov rbx, [rsi + 512]", "mov r12, [rsi + 520]",
                    spin!(),
                    "movdqu [rdi + 0], xmm0", "movdqu [rdi + 16], xmm1", "movdqu [rdi + 32], xmm2",
                    "movdqu [rdi + 48], xmm3", "movdqu [rdi + 64], xmm4", "movdqu [rdi + 80], xmm5",
                    "movdqu [rdi + 96], xmm6", "movdqu [rdi + 112], xmm7",
                    "mov [rdi + 512], rbx", "mov [rdi + 520], r12",
                    "mov rcx, 128",
                    compare!(),
                    inout("rsi") want.as_ptr() => _,
                    inout("rdi") got.as_mut_ptr() => _,
                    in("r8") counter,
                    in("r9") len,
                    out("rax") bad,
                    out("rcx") _, out("rdx") _, out("r10") _, out("r11") _, out("r12") _,
                    out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
                    out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
                );
            }
        }
        rounds += 1;
        if bad != 0 {
            fail(&format!("registers changed in round {rounds}"));
            return;
        }
        if !mask_kept(mask, "regs thread") {
            return;
        }
    }
}

fn sleeper_thread(beat: &Beat) {
    let mask = block(&[libc::SIGWINCH]);
    while !STOP.load(Ordering::Relaxed) {
        let e = sleep_ms(2);
        if e != 0 {
            fail(&format!("nanosleep failed with errno {e}"));
            return;
        }
        if !mask_kept(mask, "sleeper") {
            return;
        }
        beat.bump(2);
    }
}

fn reader_thread(beat: &Beat, fd: i32) {
    let mask = block(&[libc::SIGURG]);
    let mut want: u8 = 0;
    loop {
        let mut b = [0u8; 1];
        // SAFETY: one-byte buffer.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        if n == 0 {
            return;
        }
        if n != 1 {
            fail(&format!("read failed: {}", std::io::Error::last_os_error()));
            return;
        }
        if b[0] != want {
            fail(&format!("reader got byte {} instead of {want}", b[0]));
            return;
        }
        want = want.wrapping_add(1);
        if !mask_kept(mask, "reader") {
            return;
        }
        beat.bump(3);
    }
}

fn syscaller_thread(beat: &Beat) {
    let mask = block(&[libc::SIGPROF]);
    // SAFETY: getpid has no arguments.
    let me = unsafe { libc::getpid() };
    while !STOP.load(Ordering::Relaxed) {
        for _ in 0..1000 {
            // SAFETY: as above.
            if unsafe { libc::syscall(libc::SYS_getpid) } as i32 != me {
                fail("getpid changed");
                return;
            }
        }
        if !mask_kept(mask, "syscaller") {
            return;
        }
        beat.bump(4);
    }
}

fn child(dir: &std::path::Path, beat: &Beat, parent: i32) -> ! {
    let mask = block(&[libc::SIGTTIN]);
    let go = dir.join("go");
    let mut bad = 0;
    while !go.exists() {
        if sleep_ms(2) != 0 {
            bad |= 1;
        }
        // SAFETY: no arguments.
        if unsafe { libc::getppid() } != parent {
            bad |= 2;
        }
        if own_mask() != mask {
            bad |= 4;
        }
        beat.bump(5);
    }
    // SAFETY: leaving the forked child.
    unsafe { libc::_exit(bad) }
}

fn main() {
    let dir = work_dir();
    let beat = Beat::map(&dir);
    // SAFETY: a handler that does nothing, installed with a known mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaddset(&mut sa.sa_mask, libc::SIGALRM);
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    let handler = usr1_action();
    // SAFETY: getpid/fork; the child only sleeps, checks and exits.
    let me = unsafe { libc::getpid() };
    let kid = unsafe { libc::fork() };
    if kid == 0 {
        child(&dir, &beat, me);
    }
    let mut fds = [0i32; 2];
    // SAFETY: room for two fds.
    unsafe { libc::pipe(fds.as_mut_ptr()) };
    let main_mask = block(&[libc::SIGXCPU]);
    let go = dir.join("go");
    std::thread::scope(|s| {
        let b = &beat;
        s.spawn(move || regs_thread(b));
        s.spawn(move || sleeper_thread(b));
        s.spawn(move || reader_thread(b, fds[0]));
        s.spawn(move || syscaller_thread(b));
        println!("READY");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let mut n: u8 = 0;
        while !go.exists() {
            // SAFETY: one byte from a live buffer.
            if unsafe { libc::write(fds[1], [n].as_ptr().cast(), 1) } != 1 {
                fail("write to the reader's pipe");
                break;
            }
            n = n.wrapping_add(1);
            std::thread::park_timeout(std::time::Duration::from_millis(2));
            if !mask_kept(main_mask, "main") {
                break;
            }
            if usr1_action() != handler {
                fail("main: SIGUSR1 handler changed");
                break;
            }
            beat.bump(0);
        }
        STOP.store(true, Ordering::SeqCst);
        // SAFETY: closing our write end ends the reader.
        unsafe { libc::close(fds[1]) };
    });
    let mut c = Checks::new();
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(kid, &mut st, 0) };
    c.check("child exited cleanly", libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, format!("status {st:#x}"));
    c.eq("failures seen by the threads", FAILURES.load(Ordering::SeqCst), 0);
    for (i, name) in ["main", "regs", "sleeper", "reader", "syscaller", "child"].iter().enumerate() {
        c.check(&format!("{name} worked"), beat.slot(i).load(Ordering::Relaxed) > 0, "no beat");
    }
    c.finish();
}
