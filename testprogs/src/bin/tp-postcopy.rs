//! Memory used while it is still being filled behind the program (a live
//! migration's destination, see cryopod_engine::lazy): `tp-postcopy DIR`
//! maps area A (192 MiB), B and C (16 MiB each) of private memory, each
//! page holding a pattern of its area and number, says READY and waits
//! for `<dir>/go`. Then at once, while its pages may still be arriving:
//! it forks a child that checks all of A in its own copy; it drops B with
//! MADV_DONTNEED (B must then read as zeros, not as what the image held);
//! it moves C with mremap (C's pages must follow it); and it checks A
//! itself. PASS only if all of that holds.

use cryopod_testprogs::*;

const PAGE: usize = 4096;
const MB: usize = 1 << 20;

fn word(area: u64, page: usize) -> u64 {
    (area << 56) ^ (page as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555
}

unsafe fn map(len: usize) -> *mut u64 {
    let p = libc::mmap(
        std::ptr::null_mut(),
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    );
    assert!(p != libc::MAP_FAILED, "mmap");
    p as *mut u64
}

fn fill(p: *mut u64, len: usize, area: u64) {
    for pg in 0..len / PAGE {
        for i in 0..PAGE / 8 {
            // SAFETY: inside the mapping of `len` bytes.
            unsafe { *p.add(pg * PAGE / 8 + i) = word(area, pg) ^ i as u64 };
        }
    }
}

/// Pages of `p` that do not hold their pattern.
fn bad(p: *const u64, len: usize, area: u64) -> usize {
    (0..len / PAGE)
        .filter(|&pg| {
            // SAFETY: inside the mapping of `len` bytes.
            (0..PAGE / 8).any(|i| unsafe { *p.add(pg * PAGE / 8 + i) } != word(area, pg) ^ i as u64)
        })
        .count()
}

fn main() {
    let dir = work_dir();
    let (la, lb, lc) = (192 * MB, 16 * MB, 16 * MB);
    // SAFETY: fresh mappings, used only through the helpers above. B and
    // C first: above A, they are filled after it (in address order).
    let (c, b, a) = unsafe { (map(lc), map(lb), map(la)) };
    fill(a, la, 1);
    fill(b, lb, 2);
    fill(c, lc, 3);
    ready_and_wait(&dir);
    let mut ck = Checks::new();
    // SAFETY: fork; the child only reads its copy of A and exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let n = bad(a, la, 1);
        // SAFETY: leave at once, without the parent's exit handlers.
        unsafe { libc::_exit(i32::from(n != 0)) };
    }
    // SAFETY: B is ours; dropped pages of private memory read as zeros.
    let dropped = unsafe { libc::madvise(b.cast(), lb, libc::MADV_DONTNEED) };
    let zeros = (0..lb / 8).all(|i| unsafe { *b.add(i) } == 0);
    ck.check("B reads as zeros once dropped", dropped == 0 && zeros, "B holds data after MADV_DONTNEED");
    // SAFETY: C moves as a whole onto a place reserved for it.
    let moved = unsafe {
        let to = libc::mmap(std::ptr::null_mut(), lc, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
        libc::mremap(c.cast(), lc, lc, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, to)
    };
    ck.check("C moved", moved != libc::MAP_FAILED, "mremap failed");
    if moved != libc::MAP_FAILED {
        let n = bad(moved as *const u64, lc, 3);
        ck.check("C's pages followed it", n == 0, format!("{n} pages of C differ"));
    }
    let n = bad(a, la, 1);
    ck.check("A holds its pages", n == 0, format!("{n} pages of A differ"));
    let mut st = 0;
    // SAFETY: wait for our own child.
    let got = unsafe { libc::waitpid(child, &mut st, 0) };
    ck.check(
        "the child forked at once saw all of A",
        got == child && libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        format!("child status {st:#x}"),
    );
    ck.finish();
}
