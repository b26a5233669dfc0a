//! Locked memory and access advice across a checkpoint (issue 11, class
//! 4). `tp-mlock DIR`: an area locked with mlock, one locked with
//! mlock2(MLOCK_ONFAULT) of which three pages were touched, one advised
//! MADV_SEQUENTIAL and one MADV_RANDOM, each with a pattern in it. After
//! the restore each area has its flags again (smaps VmFlags lo, lf, sr,
//! rr), as much memory is locked as before (VmLck), and every pattern is
//! there. Also one area offered to KSM (MADV_MERGEABLE: VmFlags mg), and
//! a child that offered its whole memory (PR_SET_MEMORY_MERGE): after the
//! restore it still has (ksm_merge_any), so an area it maps then is
//! mergeable too. Two more children called mlockall(MCL_FUTURE), one of
//! them with MCL_ONFAULT: an area either maps after the restore is locked
//! as before (lo; lo and lf), while one the parent maps is not. PASS only
//! if all of that holds.

use cryopod_testprogs::*;

const PAGE: usize = 4096;
const PAGES: usize = 16;

fn setup_failed(what: &str) -> ! {
    println!("FAIL (setup: {what}: {})", std::io::Error::last_os_error());
    std::process::exit(1)
}

fn area() -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGES * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        setup_failed("mmap");
    }
    p.cast()
}

/// The VmFlags of the area starting at `start`.
fn vm_flags(start: usize) -> Vec<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, _)) = range.split_once('-') {
                if a.chars().all(|c| c.is_ascii_hexdigit()) && !a.is_empty() {
                    inside = usize::from_str_radix(a, 16).ok() == Some(start);
                    continue;
                }
            }
        }
        if inside {
            if let Some(f) = line.strip_prefix("VmFlags:") {
                return f.split_whitespace().map(String::from).collect();
            }
        }
    }
    Vec::new()
}

fn fill(p: *mut u8, seed: u64, pages: usize) {
    let data = pattern(seed, pages * PAGE);
    // SAFETY: `p` maps at least `pages` pages of ours.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
}

fn same(p: *mut u8, seed: u64, pages: usize) -> bool {
    // SAFETY: as above, read only.
    let now = unsafe { std::slice::from_raw_parts(p, pages * PAGE) };
    now == pattern(seed, pages * PAGE).as_slice()
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    let (locked, onfault, seq, rand, merge) = (area(), area(), area(), area(), area());
    fill(locked, 1, PAGES);
    fill(onfault, 2, 3);
    fill(seq, 3, PAGES);
    fill(rand, 4, PAGES);
    // SAFETY: calls on our own mappings.
    unsafe {
        if libc::mlock(locked.cast(), PAGES * PAGE) != 0
            || libc::mlock2(onfault.cast(), PAGES * PAGE, libc::MLOCK_ONFAULT) != 0
            || libc::madvise(seq.cast(), PAGES * PAGE, libc::MADV_SEQUENTIAL) != 0
            || libc::madvise(rand.cast(), PAGES * PAGE, libc::MADV_RANDOM) != 0
            || libc::madvise(merge.cast(), PAGES * PAGE, libc::MADV_MERGEABLE) != 0
        {
            setup_failed("mlock, madvise");
        }
    }
    let has = |p: *mut u8, f: &str| vm_flags(p as usize).iter().any(|x| x == f);
    let flags = |p: *mut u8| (has(p, "lo"), has(p, "lf"), has(p, "sr"), has(p, "rr"), has(p, "mg"));
    let before = [flags(locked), flags(onfault), flags(seq), flags(rand), flags(merge)];
    let vmlck = || status("VmLck");
    let lck_before = vmlck();
    if before
        != [
            (true, false, false, false, false),
            (true, true, false, false, false),
            (false, false, true, false, false),
            (false, false, false, true, false),
            (false, false, false, false, true),
        ]
    {
        println!("FAIL (setup: flags {before:?})");
        std::process::exit(1);
    }
    let merging = || {
        std::fs::read_to_string("/proc/self/ksm_stat").unwrap_or_default().lines().any(|l| l == "ksm_merge_any: yes")
    };
    // SAFETY: the child runs to its _exit below.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: prctl with integer arguments; then this process's own
        // mapping; _exit ends it.
        unsafe {
            let on = libc::prctl(67, 1, 0, 0, 0) == 0 && merging();
            wait_go(&dir);
            let later = area();
            let ok = on && merging() && has(later, "mg");
            libc::_exit(if ok { 0 } else { 3 });
        }
    }
    // Each checks, after the restore, that an area it maps then is locked
    // as mlockall made it (before the checkpoint too, for the setup).
    let mut future = Vec::new();
    for (flags, want) in [(libc::MCL_FUTURE, (true, false)), (libc::MCL_FUTURE | libc::MCL_ONFAULT, (true, true))] {
        // SAFETY: the child runs to its _exit below.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: mlockall with flags; then mappings of this process's
            // own; _exit ends it.
            unsafe {
                let locks = |p: *mut u8| (has(p, "lo"), has(p, "lf"));
                let set = libc::mlockall(flags) == 0 && locks(area()) == want;
                wait_go(&dir);
                let ok = set && locks(area()) == want;
                libc::_exit(if !set {
                    4
                } else if ok {
                    0
                } else {
                    3
                });
            }
        }
        future.push((flags, pid));
    }
    ready_and_wait(&dir);

    for (flags, pid) in future {
        let mut st = 0;
        // SAFETY: waits for our child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        c.check(
            &format!("an area mapped after the restore is locked as mlockall({flags:#x}) said"),
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            format!("status {st:#x}"),
        );
    }
    let later = area();
    c.eq("an area the parent maps now is not locked", (has(later, "lo"), has(later, "lf")), (false, false));
    let mut st = 0;
    // SAFETY: waits for our child.
    unsafe { libc::waitpid(child, &mut st, 0) };
    c.check(
        "the child still offers all its memory to KSM (and an area it maps now)",
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        format!("status {st:#x}"),
    );
    c.eq(
        "each area's flags (lo, lf, sr, rr, mg)",
        [flags(locked), flags(onfault), flags(seq), flags(rand), flags(merge)],
        before,
    );
    c.eq("locked memory (VmLck)", vmlck(), lck_before);
    c.check(
        "the patterns",
        same(locked, 1, PAGES) && same(onfault, 2, 3) && same(seq, 3, PAGES) && same(rand, 4, PAGES),
        "changed",
    );
    c.finish()
}
