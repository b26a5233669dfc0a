//! A program whose writes a dirty tracker must see exactly. It maps area A
//! (32 MiB), C and D (1 MiB each), writes their addresses to `<dir>/areas`
//! ("A start end" lines), and then runs the commands the harness writes to
//! `<dir>/cmd` ("N verb args"), answering with N in `<dir>/done`:
//! - `write P...`: write pages P of A; `read P...`: only read them;
//! - `pipe P`: read() from a pipe into page P (the kernel writes it);
//! - `dontneed P`: madvise(MADV_DONTNEED) page P;
//! - `mmap`: map and fill a new 1 MiB area B (its line added to `areas`);
//!   `writeb`: write B's first page;
//! - `mremap`: move C elsewhere (its new line replaces the old);
//! - `remap`: map D anew at the same address (MAP_FIXED) and write it;
//! - `fork`: fork a child that writes page 0 of its copy of A once, then
//!   sleeps (its pid in `<dir>/child`).
//!
//! On `go` it checks that every page of A holds what it last wrote there.

use cryopod_testprogs::*;
use std::io::Write;
use std::path::Path;

const PAGE: usize = 4096;
const A_PAGES: usize = 8192;
const MB: usize = 1 << 20;

unsafe fn map(at: usize, len: usize, fixed: bool) -> *mut u8 {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if fixed { libc::MAP_FIXED } else { 0 };
    let p = libc::mmap(at as *mut libc::c_void, len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0);
    assert!(p != libc::MAP_FAILED, "mmap failed");
    p as *mut u8
}

fn write_areas(dir: &Path, areas: &[(&str, usize, usize)]) {
    let text: String = areas.iter().map(|(n, s, l)| format!("{n} {s:x} {:x}\n", s + l)).collect();
    std::fs::write(dir.join("areas.tmp"), text).unwrap();
    std::fs::rename(dir.join("areas.tmp"), dir.join("areas")).unwrap();
}

fn main() {
    let dir = work_dir();
    // SAFETY: fresh anonymous mappings of the given sizes, used only
    // within their bounds below.
    let (a, c, d) = unsafe { (map(0, A_PAGES * PAGE, false), map(0, MB, false), map(0, MB, false)) };
    let mut gen = vec![1u8; A_PAGES];
    for p in 0..A_PAGES {
        // SAFETY: p < A_PAGES: inside A.
        unsafe { std::ptr::write_bytes(a.add(p * PAGE), 1, PAGE) };
    }
    // SAFETY: inside C and D.
    unsafe {
        std::ptr::write_bytes(c, 7, MB);
        std::ptr::write_bytes(d, 9, MB);
    }
    let mut areas = vec![("A", a as usize, A_PAGES * PAGE), ("C", c as usize, MB), ("D", d as usize, MB)];
    write_areas(&dir, &areas);
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into `fds`.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (rd, wr) = (fds[0], fds[1]);
    println!("READY");
    let _ = std::io::stdout().flush();
    let mut b: usize = 0;
    let mut done = 0u64;
    let ts = libc::timespec { tv_sec: 0, tv_nsec: 2_000_000 };
    while !dir.join("go").exists() {
        let cmd = std::fs::read_to_string(dir.join("cmd")).unwrap_or_default();
        let mut words = cmd.split_whitespace();
        let n: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        if n <= done {
            // SAFETY: nanosleep gets a valid timespec.
            unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
            continue;
        }
        let verb = words.next().unwrap_or("");
        let pages: Vec<usize> = words.filter_map(|w| w.parse().ok()).filter(|&p| p < A_PAGES).collect();
        // SAFETY (all arms): addresses are inside the areas mapped above,
        // pages are bounds-checked against A_PAGES.
        unsafe {
            match verb {
                "write" => {
                    for &p in &pages {
                        gen[p] = gen[p].wrapping_add(1).max(1);
                        std::ptr::write_bytes(a.add(p * PAGE), gen[p], PAGE);
                    }
                }
                "read" => {
                    for &p in &pages {
                        let _ = std::ptr::read_volatile(a.add(p * PAGE));
                    }
                }
                "pipe" => {
                    for &p in &pages {
                        gen[p] = gen[p].wrapping_add(1).max(1);
                        let buf = vec![gen[p]; PAGE];
                        assert_eq!(libc::write(wr, buf.as_ptr() as *const libc::c_void, PAGE), PAGE as isize);
                        assert_eq!(libc::read(rd, a.add(p * PAGE) as *mut libc::c_void, PAGE), PAGE as isize);
                    }
                }
                "dontneed" => {
                    for &p in &pages {
                        gen[p] = 0;
                        libc::madvise(a.add(p * PAGE) as *mut libc::c_void, PAGE, libc::MADV_DONTNEED);
                    }
                }
                "mmap" => {
                    b = map(0, MB, false) as usize;
                    std::ptr::write_bytes(b as *mut u8, 3, MB);
                    areas.push(("B", b, MB));
                    write_areas(&dir, &areas);
                }
                "writeb" if b != 0 => std::ptr::write_bytes(b as *mut u8, 4, PAGE),
                "mremap" => {
                    // Moved to a fresh place: reserve one, then move over it.
                    let to = map(0, 2 * MB, false) as usize;
                    let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
                    let moved = libc::mremap(c as *mut libc::c_void, MB, MB, flags, to as *mut libc::c_void);
                    assert!(moved != libc::MAP_FAILED, "mremap failed");
                    libc::munmap((to + MB) as *mut libc::c_void, MB);
                    areas.retain(|x| x.0 != "C");
                    areas.push(("C", moved as usize, MB));
                    write_areas(&dir, &areas);
                }
                "remap" => {
                    map(d as usize, MB, true);
                    std::ptr::write_bytes(d, 5, PAGE);
                }
                "fork" => {
                    let pid = libc::fork();
                    if pid == 0 {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        std::ptr::write_bytes(a, 2, PAGE);
                        loop {
                            libc::pause();
                        }
                    }
                    std::fs::write(dir.join("child"), format!("{pid}\n")).unwrap();
                }
                _ => {}
            }
        }
        done = n;
        std::fs::write(dir.join("done.tmp"), format!("{n}\n")).unwrap();
        std::fs::rename(dir.join("done.tmp"), dir.join("done")).unwrap();
    }
    let mut checks = Checks::new();
    let mut bad = Vec::new();
    for (p, &g) in gen.iter().enumerate() {
        // SAFETY: inside A.
        let page = unsafe { std::slice::from_raw_parts(a.add(p * PAGE), PAGE) };
        if page.iter().any(|&x| x != g) {
            bad.push(p);
        }
    }
    checks.check("area A holds what was last written", bad.is_empty(), format!("pages {bad:?}"));
    checks.finish();
}
