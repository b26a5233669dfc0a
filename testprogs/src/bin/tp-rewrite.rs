//! Memory rewritten all the time, for running checkpoints: the image must
//! be the memory of one instant. The parent sweeps a private area (size in
//! MiB as second argument, default 256) page after page with a pattern of
//! (generation, page), every fourth page through read() from a pipe (the
//! kernel writes it); a forked child does the same over a shared anonymous
//! area. Each keeps one word `generation * pages + next page` updated
//! after every page: pages before `next` hold the generation, the others
//! the one before (the page at `next` may be half written). They never
//! stop writing; once restored and told `go`, each checks that its memory
//! matches its word exactly — which holds only if the image is the memory
//! of the freeze moment. A third argument `solo` leaves the child out;
//! `churn` also drops and refills a scratch area all the time with
//! madvise(MADV_DONTNEED) (what write-protection cannot see: a running
//! checkpoint must then fall back to a frozen one).

use cryopod_testprogs::*;
use std::ptr;

const PAGE: usize = 4096;
const WORDS: usize = PAGE / 8;
const SHARED_MB: usize = 16;
const CHURN: usize = 1 << 20;

fn word(gen: u64, page: usize, i: usize) -> u64 {
    (gen << 40) ^ ((page as u64) << 12) ^ (i as u64) ^ 0x9E37_79B9_7F4A_7C15
}

unsafe fn map(len: usize, flags: i32) -> *mut u64 {
    let p = libc::mmap(ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags | libc::MAP_ANONYMOUS, -1, 0);
    assert!(p != libc::MAP_FAILED, "mmap failed");
    p as *mut u64
}

/// Pages `base[first..pages]` swept forever; `state` is the progress word.
struct Sweep {
    /// A scratch area dropped and refilled every few pages, if any.
    churn: Option<*mut u64>,
    base: *mut u64,
    first: usize,
    pages: usize,
    state: *mut u64,
    pipe: [i32; 2],
}

impl Sweep {
    fn fill(&self, page: usize, gen: u64, scratch: &mut [u64; WORDS]) {
        // SAFETY: `page` is inside the mapping; the pipe is ours.
        unsafe {
            let dst = self.base.add(page * WORDS);
            if page % 4 == 1 {
                for (i, w) in scratch.iter_mut().enumerate() {
                    *w = word(gen, page, i);
                }
                let n = libc::write(self.pipe[1], scratch.as_ptr().cast(), PAGE);
                assert_eq!(n, PAGE as isize, "write to the pipe");
                let mut got = 0usize;
                while got < PAGE {
                    let n = libc::read(self.pipe[0], dst.cast::<u8>().add(got).cast(), PAGE - got);
                    assert!(n > 0, "read from the pipe");
                    got += n as usize;
                }
            } else {
                for i in 0..WORDS {
                    ptr::write_volatile(dst.add(i), word(gen, page, i));
                }
            }
        }
    }

    fn set(&self, v: u64) {
        // SAFETY: the state word is inside a live mapping.
        unsafe { ptr::write_volatile(self.state, v) }
    }

    fn get(&self) -> u64 {
        // SAFETY: as above.
        unsafe { ptr::read_volatile(self.state) }
    }

    /// Fill everything with generation 1, then sweep until `go` appears.
    fn run(&self, dir: &std::path::Path, ready: bool) {
        let n = (self.pages - self.first) as u64;
        let mut scratch = [0u64; WORDS];
        for p in self.first..self.pages {
            self.fill(p, 1, &mut scratch);
        }
        self.set(2 * n);
        if ready {
            println!("READY");
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
        let go = std::ffi::CString::new(dir.join("go").as_os_str().as_encoded_bytes()).unwrap_or_default();
        loop {
            let s = self.get();
            let (gen, k) = (s / n, (s % n) as usize);
            self.fill(self.first + k, gen, &mut scratch);
            self.set(if k + 1 == n as usize { (gen + 1) * n } else { s + 1 });
            if let Some(c) = self.churn.filter(|_| k % 16 == 0) {
                // SAFETY: the scratch area is ours, CHURN bytes long.
                unsafe {
                    libc::madvise(c.cast(), CHURN, libc::MADV_DONTNEED);
                    for i in (0..CHURN / 8).step_by(WORDS) {
                        ptr::write_volatile(c.add(i), k as u64);
                    }
                }
            }
            // SAFETY: access on a valid C string.
            if k % 256 == 0 && unsafe { libc::access(go.as_ptr(), libc::F_OK) } == 0 {
                return;
            }
        }
    }

    /// Does memory match the state word? None if so, else what differs.
    fn verify(&self) -> Option<String> {
        let n = (self.pages - self.first) as u64;
        let s = self.get();
        let (gen, k) = (s / n, (s % n) as usize);
        for j in 0..n as usize {
            let want = if j < k { gen } else { gen - 1 };
            let p = self.first + j;
            for i in 0..WORDS {
                // SAFETY: inside the mapping.
                let got = unsafe { ptr::read_volatile(self.base.add(p * WORDS + i)) };
                if got != word(want, p, i) {
                    let seen = (got ^ word(0, p, i)) >> 40;
                    return Some(format!(
                        "page {j} of {n} word {i}: generation {seen}, want {want} (at generation {gen}, next page {k})"
                    ));
                }
            }
        }
        None
    }
}

fn pipe() -> [i32; 2] {
    let mut p = [0i32; 2];
    // SAFETY: pipe writes two fds into the array.
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0, "pipe");
    p
}

fn main() {
    let dir = work_dir();
    let mb: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(256);
    let mut c = Checks::new();
    let mode = std::env::args().nth(3).unwrap_or_default();
    // Mapped first, so above the others: read last by a checkpoint.
    // SAFETY: a fresh mapping, touched once so that it has pages.
    let churn = (mode == "churn").then(|| unsafe {
        let c = map(CHURN, libc::MAP_PRIVATE);
        for i in (0..CHURN / 8).step_by(WORDS) {
            ptr::write_volatile(c.add(i), 1);
        }
        c
    });
    // SAFETY: fresh mappings, used only through the sweeps below.
    let (private, shared) = unsafe { (map(mb << 20, libc::MAP_PRIVATE), map(SHARED_MB << 20, libc::MAP_SHARED)) };
    let solo = mode == "solo";
    // SAFETY: fork; the child only sweeps its shared area and exits.
    let child = if solo { -1 } else { unsafe { libc::fork() } };
    if child == 0 {
        // Page 0 of the shared area holds the child's state word.
        let sweep =
            Sweep { churn: None, base: shared, first: 1, pages: (SHARED_MB << 20) / PAGE, state: shared, pipe: pipe() };
        sweep.run(&dir, false);
        let r = sweep.verify();
        match &r {
            None => println!("ok shared memory of the child is one instant"),
            Some(e) => println!("FAIL shared memory of the child: {e}"),
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // SAFETY: leave without running the parent's atexit handlers.
        unsafe { libc::_exit(i32::from(r.is_some())) };
    }
    let state = Box::leak(Box::new(0u64)) as *mut u64;
    let sweep = Sweep { churn, base: private, first: 0, pages: (mb << 20) / PAGE, state, pipe: pipe() };
    sweep.run(&dir, true);
    let r = sweep.verify();
    c.check("private memory is one instant", r.is_none(), r.unwrap_or_default());
    if solo {
        c.finish();
    }
    let mut st = 0;
    // SAFETY: wait for our own child.
    let got = unsafe { libc::waitpid(child, &mut st, 0) };
    c.check(
        "the child's shared memory is one instant",
        got == child && libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        format!("child status {st:#x}"),
    );
    c.finish();
}
