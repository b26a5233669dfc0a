//! Helpers shared by the self-checking test programs: the ready/go protocol
//! and a check list that ends in PASS or FAIL.
//!
//! Protocol: a program is started with one argument, a directory. It sets up
//! its state, prints `READY` on stdout, then polls for `<dir>/go` (sleeping
//! in nanosleep between polls). The harness checkpoints it, restores it,
//! creates `go`; the program verifies everything, prints one line per check
//! and finally `PASS` or `FAIL`, exiting 0 or 1.

use std::io::Write;
use std::path::{Path, PathBuf};

pub mod net;

pub struct Checks {
    failed: usize,
    total: usize,
}

impl Default for Checks {
    fn default() -> Self {
        Self::new()
    }
}

impl Checks {
    pub fn new() -> Self {
        Checks { failed: 0, total: 0 }
    }

    pub fn check(&mut self, name: &str, ok: bool, detail: impl std::fmt::Display) {
        self.total += 1;
        if ok {
            println!("ok {name}");
        } else {
            self.failed += 1;
            println!("FAIL {name}: {detail}");
        }
    }

    pub fn eq<T: PartialEq + std::fmt::Debug>(&mut self, name: &str, got: T, want: T) {
        let ok = got == want;
        self.check(name, ok, format!("got {got:?}, want {want:?}"));
    }

    /// Print the verdict and exit.
    pub fn finish(self) -> ! {
        if self.failed == 0 && self.total > 0 {
            println!("PASS ({} checks)", self.total);
            let _ = std::io::stdout().flush();
            std::process::exit(0);
        }
        println!("FAIL ({} of {} checks failed)", self.failed, self.total);
        let _ = std::io::stdout().flush();
        std::process::exit(1);
    }
}

/// The directory given as the first argument.
pub fn work_dir() -> PathBuf {
    PathBuf::from(std::env::args().nth(1).expect("usage: testprog DIR"))
}

/// Tell the harness we are ready, then wait until it creates `dir/go`.
pub fn ready_and_wait(dir: &Path) {
    println!("READY");
    let _ = std::io::stdout().flush();
    wait_go(dir);
}

/// Poll for `dir/go`, sleeping 5 ms in nanosleep between polls. The loop
/// allocates nothing, so the heap is as the checkpoint left it on return.
pub fn wait_go(dir: &Path) {
    let go = std::ffi::CString::new(dir.join("go").as_os_str().as_encoded_bytes()).unwrap_or_default();
    let ts = libc::timespec { tv_sec: 0, tv_nsec: 5_000_000 };
    // SAFETY: access and nanosleep get valid pointers.
    while unsafe { libc::access(go.as_ptr(), libc::F_OK) } != 0 {
        unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
    }
}

/// Lines of /proc/self/maps as "range perms offset path" (the device and
/// inode columns are left out: a restored shared memory object is new).
pub fn maps() -> Vec<String> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} {} {}", f[0], f[1], f[2], f.get(5..).map(|x| x.join(" ")).unwrap_or_default())
        })
        .collect()
}

/// A field of /proc/self/status.
pub fn status(key: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

pub fn gettid() -> i32 {
    // SAFETY: gettid has no arguments.
    unsafe { libc::gettid() }
}

/// Deterministic pseudo-random bytes (xorshift), for memory patterns.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
