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
//! as before (lo; lo and lf), while one the parent maps is not. Areas
//! with memory policies of their own (mbind: bind, interleave with static
//! nodes, preferred) have them again, one without has none, and so in a
//! child whose own policy binds it (its area without one still has none).
//! With `big`, 160 MiB more are written first, so that the checkpoint
//! reads the areas through its BPF iterator rather than smaps. PASS only
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

const MPOL_PREFERRED: i32 = 1;
const MPOL_BIND: i32 = 2;
const MPOL_INTERLEAVE: i32 = 3;
const MPOL_F_STATIC_NODES: i32 = 1 << 15;
const MPOL_F_ADDR: u64 = 2;

/// mbind(`p`, whole area, `mode`, node 0).
fn bind(p: *mut u8, mode: i32) -> bool {
    let nodes = 1u64;
    // SAFETY: mbind on our own area with a live one-word node mask.
    unsafe { libc::syscall(libc::SYS_mbind, p, PAGES * PAGE, mode, &nodes as *const u64, 65, 0) == 0 }
}

/// get_mempolicy of the area at `p` (Some) or of this thread (None).
fn policy(p: Option<*mut u8>) -> (i32, u64) {
    let (mut mode, mut nodes) = (-1i32, 0u64);
    let (addr, flags) = p.map_or((std::ptr::null_mut(), 0), |p| (p, MPOL_F_ADDR));
    // SAFETY: get_mempolicy writes one int and one word of nodes.
    unsafe { libc::syscall(libc::SYS_get_mempolicy, &mut mode as *mut i32, &mut nodes as *mut u64, 65, addr, flags) };
    (mode, nodes)
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    if std::env::args().nth(2).as_deref() == Some("big") {
        let big = pattern(9, 160 << 20);
        std::mem::forget(big);
    }
    let (bound, inter, pref) = (area(), area(), area());
    if !bind(bound, MPOL_BIND) || !bind(inter, MPOL_INTERLEAVE | MPOL_F_STATIC_NODES) || !bind(pref, MPOL_PREFERRED) {
        setup_failed("mbind");
    }
    fill(bound, 5, PAGES);
    fill(inter, 6, PAGES);
    let policies = || [policy(Some(bound)), policy(Some(inter)), policy(Some(pref))];
    let policies_before = policies();
    if policies_before != [(MPOL_BIND, 1), (MPOL_INTERLEAVE | MPOL_F_STATIC_NODES, 1), (MPOL_PREFERRED, 1)] {
        println!("FAIL (setup: policies {policies_before:?})");
        std::process::exit(1);
    }
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
    // A child bound as a whole: its area without a policy of its own has
    // none after the restore either, one with its own keeps it.
    // SAFETY: the child runs to its _exit below.
    let bound_child = unsafe { libc::fork() };
    if bound_child == 0 {
        let (plain, own) = (area(), area());
        let nodes = 1u64;
        // SAFETY: set_mempolicy with a live one-word node mask.
        let set = unsafe { libc::syscall(libc::SYS_set_mempolicy, MPOL_BIND, &nodes as *const u64, 65) } == 0
            && bind(own, MPOL_PREFERRED);
        let all = || (policy(None), policy(Some(plain)), policy(Some(own)));
        let want = ((MPOL_BIND, 1), (0, 0), (MPOL_PREFERRED, 1));
        let set = set && all() == want;
        wait_go(&dir);
        let ok = set && all() == want;
        // SAFETY: ends the child.
        unsafe {
            libc::_exit(if !set {
                4
            } else if ok {
                0
            } else {
                3
            })
        };
    }
    ready_and_wait(&dir);

    let mut st = 0;
    // SAFETY: waits for our child.
    unsafe { libc::waitpid(bound_child, &mut st, 0) };
    c.check(
        "a child bound as a whole: its areas' policies as before",
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        format!("status {st:#x}"),
    );
    c.eq("the areas' own memory policies", policies(), policies_before);
    c.eq("an area without one has none", policy(Some(seq)), (0, 0));
    c.check("the bound areas' patterns", same(bound, 5, PAGES) && same(inter, 6, PAGES), "changed");
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
