//! Threads across checkpoint/restore: TIDs, names, per-thread signal masks,
//! TLS, robust futex lists, rseq registration, clear_child_tid (join works),
//! and threads blocked in futex, nanosleep and read that must resume.

use cryopod_testprogs::*;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

extern "C" {
    static __rseq_offset: isize;
    static __rseq_size: u32;
}

thread_local! {
    static MINE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

struct Before {
    tid: i32,
    mask: u64,
    robust: u64,
}

/// This thread's Cpus_allowed_list (/proc/self is the leader's).
fn own_affinity() -> String {
    std::fs::read_to_string(format!("/proc/self/task/{}/status", gettid()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:").map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

fn sigmask() -> u64 {
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut old);
        (1..=64).filter(|&s| libc::sigismember(&old, s) == 1).map(|s| 1u64 << (s - 1)).sum()
    }
}

fn robust_head() -> u64 {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    unsafe { libc::syscall(libc::SYS_get_robust_list, 0, &mut head as *mut u64, &mut len as *mut usize) };
    head
}

/// rseq(area, size, 0, sig) fails with EBUSY when this thread already has
/// that area registered.
fn rseq_registered() -> Option<bool> {
    unsafe {
        if __rseq_size == 0 {
            return None;
        }
        let mut tp: u64 = 0;
        libc::syscall(libc::SYS_arch_prctl, 0x1003, &mut tp as *mut u64);
        let area = (tp as isize + __rseq_offset) as u64;
        let r = libc::syscall(libc::SYS_rseq, area, __rseq_size.max(32), 0, 0x5305_3053u32);
        Some(r == -1 && *libc::__errno_location() == libc::EBUSY)
    }
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    let futex_word = Arc::new(AtomicU32::new(0));
    let stop_spin = Arc::new(AtomicBool::new(false));
    // Set once main has counted the threads: a worker that is not blocked
    // after the restore (the sleeper, when its sleep ended before) must not
    // end before that.
    let counted = Arc::new(AtomicBool::new(false));
    let mut p = [0i32; 2];
    unsafe { libc::pipe(p.as_mut_ptr()) };
    let (rfd, wfd) = (p[0], p[1]);
    let befores = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for i in 0..4u64 {
        let fw = futex_word.clone();
        let stop = stop_spin.clone();
        let bf = befores.clone();
        let counted = counted.clone();
        let dir = dir.clone();
        handles.push(std::thread::spawn(move || -> Vec<(String, bool, String)> {
            MINE.with(|m| m.set(1000 + i));
            unsafe {
                let name = format!("worker-{i}\0");
                libc::prctl(libc::PR_SET_NAME, name.as_ptr());
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, if i % 2 == 0 { libc::SIGUSR1 } else { libc::SIGUSR2 });
                libc::sigaddset(&mut set, libc::SIGRTMIN() + i as i32);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            }
            // Worker 1 is pinned to the last CPU: the affinity must survive.
            let ncpu = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            if i == 1 && ncpu > 1 {
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(ncpu - 1, &mut set);
                    libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                }
            }
            let affinity = own_affinity();
            let me = Before { tid: gettid(), mask: sigmask(), robust: robust_head() };
            let tid0 = me.tid;
            let (mask0, robust0) = (me.mask, me.robust);
            bf.lock().unwrap().push(me);
            let mut res = Vec::new();
            match i {
                0 => {
                    // Blocked in FUTEX_WAIT until main changes the word.
                    while fw.load(Ordering::SeqCst) == 0 {
                        unsafe { libc::syscall(libc::SYS_futex, fw.as_ptr(), libc::FUTEX_WAIT, 0, 0, 0, 0) };
                    }
                    res.push(("futex waiter woke".into(), fw.load(Ordering::SeqCst) == 7, String::new()));
                }
                1 => {
                    let ts = libc::timespec { tv_sec: 1, tv_nsec: 500_000_000 };
                    let mut rem = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                    let r = unsafe { libc::nanosleep(&ts, &mut rem) };
                    res.push(("nanosleep completes without EINTR".into(), r == 0, format!("returned {r}")));
                }
                2 => {
                    let mut buf = [0u8; 16];
                    let n = unsafe { libc::read(rfd, buf.as_mut_ptr().cast(), 16) };
                    res.push(("blocked read gets the data".into(), n == 5 && &buf[..5] == b"hello", format!("n={n}")));
                }
                _ => {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    }
                    res.push(("spinning thread stops".into(), x != 1, String::new()));
                }
            }
            wait_go(&dir);
            res.push((format!("tid of worker {i}"), gettid() == tid0, format!("{} vs {tid0}", gettid())));
            res.push((format!("sigmask of worker {i}"), sigmask() == mask0, format!("{:#x} vs {mask0:#x}", sigmask())));
            res.push((format!("robust list of worker {i}"), robust_head() == robust0, String::new()));
            res.push((format!("TLS of worker {i}"), MINE.with(|m| m.get()) == 1000 + i, String::new()));
            let now = own_affinity();
            res.push((format!("CPU affinity of worker {i}"), now == affinity, format!("{now} vs {affinity}")));
            let comm = std::fs::read_to_string(format!("/proc/self/task/{}/comm", gettid())).unwrap_or_default();
            res.push((format!("name of worker {i}"), comm.trim() == format!("worker-{i}"), comm.trim().to_string()));
            if let Some(reg) = rseq_registered() {
                res.push((format!("rseq of worker {i}"), reg, "not registered".into()));
            }
            while !counted.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            res
        }));
    }
    while befores.lock().unwrap().len() < 4 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    let main_tid = gettid();
    let threads_before = std::fs::read_dir("/proc/self/task").unwrap().count();
    ready_and_wait(&dir);
    c.eq("main tid", gettid(), main_tid);
    c.eq("thread count", std::fs::read_dir("/proc/self/task").unwrap().count(), threads_before);
    if let Some(reg) = rseq_registered() {
        c.check("rseq of main thread", reg, "not registered");
    }
    let live: Vec<i32> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for b in befores.lock().unwrap().iter() {
        c.check(&format!("thread {} exists", b.tid), live.contains(&b.tid), "missing");
    }
    counted.store(true, Ordering::SeqCst);
    // Release the blocked threads.
    futex_word.store(7, Ordering::SeqCst);
    unsafe { libc::syscall(libc::SYS_futex, futex_word.as_ptr(), libc::FUTEX_WAKE, 1, 0, 0, 0) };
    unsafe { libc::write(wfd, b"hello".as_ptr().cast(), 5) };
    stop_spin.store(true, Ordering::Relaxed);
    for h in handles {
        // join relies on clear_child_tid + futex wake at thread exit.
        match h.join() {
            Ok(res) => {
                for (name, ok, detail) in res {
                    c.check(&name, ok, detail);
                }
            }
            Err(_) => c.check("thread joined", false, "panicked"),
        }
    }
    c.finish();
}
