//! Copy-on-write sharing between a parent and its forked children (issue
//! 11, class 4). `tp-cowshare DIR`: the parent fills 32 MiB of private
//! memory, then forks two children, the second of which forks a
//! grandchild. After the forks the first child writes a page of its own
//! and drops another (MADV_DONTNEED), and the parent writes a page. The
//! pages nobody changed are shared by all four processes: each has at most
//! 1 MiB of the area to itself (smaps' Private_Dirty) and the rest shared
//! (Shared_Dirty). After the restore every process checks that it is still
//! so, then that the area holds what it held: the pattern, with its own
//! changes. Without sharing, each would have 32 MiB of its own.
//! Each child reports by its exit status (0: every check held; 3:
//! sharing; 4: contents; 5: its own child failed). PASS only if all holds.

use cryopod_testprogs::*;

const PAGE: usize = 4096;
const LEN: usize = 32 << 20;
/// At most this much of the area may be a process's own (KiB).
const OWN_MAX_KB: u64 = 1024;
/// At least this much of it must be shared (KiB).
const SHARED_MIN_KB: u64 = 30 << 10;

fn setup_failed(what: &str) -> ! {
    println!("FAIL (setup: {what}: {})", std::io::Error::last_os_error());
    std::process::exit(1)
}

/// (Private_Dirty, Shared_Dirty) of the area starting at `start`, in KiB.
fn dirty(start: usize) -> (u64, u64) {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut inside = false;
    let (mut own, mut shared) = (0, 0);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, _)) = first.split_once('-') {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_hexdigit()) {
                inside = usize::from_str_radix(a, 16).ok() == Some(start);
                continue;
            }
        }
        let kb = |l: &str| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        if inside && line.starts_with("Private_Dirty:") {
            own = kb(line);
        }
        if inside && line.starts_with("Shared_Dirty:") {
            shared = kb(line);
        }
    }
    (own, shared)
}

fn shared_enough(area: *mut u8) -> bool {
    let (own, shared) = dirty(area as usize);
    own <= OWN_MAX_KB && shared >= SHARED_MIN_KB
}

/// The area as expected: the pattern, with `changes` (page, seed; seed 0:
/// zeros).
fn holds(area: *mut u8, changes: &[(usize, u64)]) -> bool {
    let mut want = pattern(1, LEN);
    for &(page, seed) in changes {
        let bytes = if seed == 0 { vec![0u8; PAGE] } else { pattern(seed, PAGE) };
        want[page * PAGE..(page + 1) * PAGE].copy_from_slice(&bytes);
    }
    // SAFETY: the area maps LEN bytes of ours.
    let now = unsafe { std::slice::from_raw_parts(area, LEN) };
    now == want.as_slice()
}

/// Write page `page` of the area with pattern `seed`.
fn write_page(area: *mut u8, page: usize, seed: u64) {
    let data = pattern(seed, PAGE);
    // SAFETY: the page lies in the area.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), area.add(page * PAGE), PAGE) };
}

/// In a child: tell the parent it is set, wait for the restore, check.
fn child_checks(dir: &std::path::Path, ready: i32, area: *mut u8, changes: &[(usize, u64)]) -> i32 {
    // SAFETY: one byte to the pipe the parent reads.
    unsafe { libc::write(ready, b"x".as_ptr().cast(), 1) };
    wait_go(dir);
    if !shared_enough(area) {
        return 3;
    }
    if !holds(area, changes) {
        return 4;
    }
    0
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    // SAFETY: a fresh private anonymous mapping.
    let area = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if area == libc::MAP_FAILED {
        setup_failed("mmap");
    }
    let area: *mut u8 = area.cast();
    let data = pattern(1, LEN);
    // SAFETY: the area maps LEN bytes.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), area, LEN) };
    drop(data);
    let mut fds = [0i32; 2];
    // SAFETY: pipe fills two fds.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        setup_failed("pipe");
    }
    let (rd, wr) = (fds[0], fds[1]);
    // The first child: a page of its own, a page dropped.
    // SAFETY: the child runs to its _exit.
    let first = unsafe { libc::fork() };
    if first == 0 {
        write_page(area, 5, 3);
        // SAFETY: drops one page of our own area.
        unsafe { libc::madvise(area.add(9 * PAGE).cast(), PAGE, libc::MADV_DONTNEED) };
        let code = child_checks(&dir, wr, area, &[(5, 3), (9, 0)]);
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) };
    }
    // The second child, with a child of its own; neither changes a page.
    // SAFETY: as above.
    let second = unsafe { libc::fork() };
    if second == 0 {
        // SAFETY: as above.
        let grandchild = unsafe { libc::fork() };
        if grandchild == 0 {
            let code = child_checks(&dir, wr, area, &[]);
            // SAFETY: ends the grandchild.
            unsafe { libc::_exit(code) };
        }
        let mut code = child_checks(&dir, wr, area, &[]);
        let mut st = 0;
        // SAFETY: waits for our child.
        unsafe { libc::waitpid(grandchild, &mut st, 0) };
        if code == 0 && !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
            code = 5;
        }
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) };
    }
    write_page(area, 7, 2);
    let mut b = [0u8; 3];
    let mut got = 0;
    while got < 3 {
        // SAFETY: reads into our buffer.
        let n = unsafe { libc::read(rd, b.as_mut_ptr().cast(), 3 - got) };
        if n <= 0 {
            setup_failed("the children did not report");
        }
        got += n as usize;
    }
    if !shared_enough(area) {
        println!("FAIL (setup: not shared before the checkpoint: {:?})", dirty(area as usize));
        std::process::exit(1);
    }
    ready_and_wait(&dir);

    let (own, shared) = dirty(area as usize);
    c.check(
        "the parent's area is shared as before",
        own <= OWN_MAX_KB && shared >= SHARED_MIN_KB,
        format!("own {own} KiB, shared {shared} KiB"),
    );
    c.check("the parent's area holds the pattern and its page", holds(area, &[(7, 2)]), "changed");
    for (who, pid) in [("the first child", first), ("the second child (and its child)", second)] {
        let mut st = 0;
        // SAFETY: waits for our child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        c.check(
            &format!("{who}: its area shared as before and as it was"),
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            format!("status {st:#x}"),
        );
    }
    c.finish()
}
