//! seccomp across a checkpoint (issue 11, class 12). `tp-seccomp DIR MODE`:
//!
//! - `tsync`: with no_new_privs, the main thread installs a filter that
//!   kills the process on prctl and rt_sigaction — syscalls a checkpoint
//!   injects, so the checkpoint must suspend the filters of the tasks it
//!   traces — and makes getppid fail with EPERM; then it starts a worker,
//!   which shares that filter. After the restore both threads must still
//!   share it: the main thread installs a second filter with
//!   SECCOMP_FILTER_FLAG_TSYNC, which the kernel allows only if every
//!   other thread's filters are an ancestor of its own (a copy installed
//!   thread by thread is not); then the worker sees both filters act.
//! - `strict`: a thread enters strict mode and blocks in read() on a pipe;
//!   after the restore it is still in strict mode (its status says so) and
//!   answers through another pipe, then ends with the raw exit syscall (the
//!   only ways out strict mode leaves it).
//!
//! PASS only if all of that holds.

use cryopod_testprogs::*;
use std::sync::atomic::{AtomicI32, Ordering};

const SECCOMP_SET_MODE_FILTER: i32 = 1;
const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO_EPERM: u32 = 0x0005_0000 | 1;
const RET_ALLOW: u32 = 0x7fff_0000;

/// One BPF instruction: code, jt, jf, k.
fn insn(code: u16, jt: u8, jf: u8, k: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..2].copy_from_slice(&code.to_ne_bytes());
    b[2] = jt;
    b[3] = jf;
    b[4..].copy_from_slice(&k.to_ne_bytes());
    b
}

/// A filter returning `ret` for syscall `nr` (each pair) and allowing the
/// rest.
fn filter(rules: &[(u32, u32)]) -> Vec<[u8; 8]> {
    let mut p = vec![insn(0x20, 0, 0, 0)]; // ld [nr]
    for &(nr, ret) in rules {
        p.push(insn(0x15, 0, 1, nr)); // jeq nr
        p.push(insn(0x06, 0, 0, ret)); // ret
    }
    p.push(insn(0x06, 0, 0, RET_ALLOW));
    p
}

/// Install `prog` in the calling thread; the syscall's result.
fn install(prog: &[[u8; 8]], flags: u64) -> i64 {
    #[repr(C)]
    struct Fprog {
        len: u16,
        filter: *const [u8; 8],
    }
    let f = Fprog { len: prog.len() as u16, filter: prog.as_ptr() };
    // SAFETY: seccomp reads the sock_fprog `f`, which points at `prog`.
    unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &f as *const Fprog) }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// getppid's result and errno in the calling thread.
fn getppid_raw() -> (i64, i32) {
    // SAFETY: getppid has no arguments.
    let r = unsafe { libc::syscall(libc::SYS_getppid) };
    (r, if r < 0 { errno() } else { 0 })
}

fn tsync(dir: &std::path::Path, c: &mut Checks) {
    // (glibc installs a signal handler of its own with the first thread it
    // makes: done now, before the filter forbids it.)
    let _ = std::thread::spawn(|| {}).join();
    // SAFETY: prctl with integer arguments, before the filter exists.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        println!("FAIL (setup: no_new_privs)");
        std::process::exit(1);
    }
    let first = filter(&[
        (libc::SYS_prctl as u32, RET_KILL_PROCESS),
        (libc::SYS_rt_sigaction as u32, RET_KILL_PROCESS),
        (libc::SYS_getppid as u32, RET_ERRNO_EPERM),
    ]);
    if install(&first, 0) != 0 {
        println!("FAIL (setup: seccomp: errno {})", errno());
        std::process::exit(1);
    }
    let d = dir.to_path_buf();
    let worker = std::thread::spawn(move || {
        wait_go(&d);
        // (Until the main thread installed its second filter.)
        while SECOND.load(Ordering::SeqCst) == 0 {
            // SAFETY: sched_yield has no arguments.
            unsafe { libc::sched_yield() };
        }
        // SAFETY: getpid has no arguments.
        let pid = unsafe { libc::syscall(libc::SYS_getpid) };
        (getppid_raw(), pid)
    });
    ready_and_wait(dir);
    c.eq("main: getppid under the first filter", getppid_raw(), (-1, libc::EPERM));
    let second = filter(&[(libc::SYS_getpid as u32, RET_ERRNO_EPERM)]);
    let r = install(&second, SECCOMP_FILTER_FLAG_TSYNC);
    c.check(
        "a second filter installed with TSYNC (the threads share the first)",
        r == 0,
        format!("returned {r}, errno {}", errno()),
    );
    SECOND.store(1, Ordering::SeqCst);
    match worker.join() {
        Ok((ppid, pid)) => {
            c.eq("worker: getppid under the first filter", ppid, (-1, libc::EPERM));
            c.check("worker: getpid under the second filter", r != 0 || pid == -1, format!("getpid gave {pid}"));
        }
        Err(_) => c.check("worker ended", false, "it panicked"),
    }
}

static SECOND: AtomicI32 = AtomicI32::new(0);
/// The strict thread's kernel id, and its mode as its status said.
static STRICT_TID: AtomicI32 = AtomicI32::new(0);

fn strict(dir: &std::path::Path, c: &mut Checks) {
    let mut to = [0i32; 2];
    let mut from = [0i32; 2];
    // SAFETY: pipe fills the two-element arrays.
    if unsafe { libc::pipe(to.as_mut_ptr()) } != 0 || unsafe { libc::pipe(from.as_mut_ptr()) } != 0 {
        println!("FAIL (setup: pipe)");
        std::process::exit(1);
    }
    let (rd, wr) = (to[0], from[1]);
    let entered = std::sync::Arc::new(AtomicI32::new(0));
    let e2 = entered.clone();
    // (Never joined: it ends with the raw exit syscall.)
    let _t = std::thread::spawn(move || {
        STRICT_TID.store(gettid(), Ordering::SeqCst);
        // SAFETY: prctl with integer arguments; from here on only read,
        // write and exit are made, with stack buffers.
        unsafe {
            let ok = libc::prctl(libc::PR_SET_SECCOMP, 1, 0, 0, 0) == 0;
            e2.store(if ok { 1 } else { -1 }, Ordering::SeqCst);
            let mut b = [0u8; 1];
            libc::syscall(libc::SYS_read, rd, b.as_mut_ptr(), 1usize);
            b[0] = b[0].wrapping_add(1);
            libc::syscall(libc::SYS_write, wr, b.as_ptr(), 1usize);
            libc::syscall(libc::SYS_exit, 0);
        }
    });
    while entered.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    if entered.load(Ordering::SeqCst) != 1 {
        println!("FAIL (setup: strict mode refused)");
        std::process::exit(1);
    }
    ready_and_wait(dir);
    let tid = STRICT_TID.load(Ordering::SeqCst);
    let st = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap_or_default();
    let mode = st.lines().find_map(|l| l.strip_prefix("Seccomp:")).map(|v| v.trim().to_string());
    c.eq("the thread is in strict mode", mode.as_deref(), Some("1"));
    let b = [41u8];
    // SAFETY: write and read of one byte through the pipes made above.
    let (w, r, got) = unsafe {
        let w = libc::write(to[1], b.as_ptr().cast(), 1);
        let mut got = [0u8; 1];
        let r = libc::read(from[0], got.as_mut_ptr().cast(), 1);
        (w, r, got[0])
    };
    c.eq("the strict thread answered", (w, r, got), (1, 1, 42));
}

fn main() {
    let dir = work_dir();
    let mode = std::env::args().nth(2).unwrap_or_default();
    let mut c = Checks::new();
    match mode.as_str() {
        "tsync" => tsync(&dir, &mut c),
        "strict" => strict(&dir, &mut c),
        m => {
            println!("FAIL (usage: tp-seccomp DIR tsync|strict, not {m:?})");
            std::process::exit(1);
        }
    }
    c.finish();
}
