//! Memory marked MADV_DONTDUMP, for `--exclude-dontdump`. Areas: A (8 MiB,
//! don't-dump, a secret pattern, untouched after READY), B (8 MiB,
//! don't-dump, rewritten by a thread until told to stop: a running
//! checkpoint must let those writes go), C (8 MiB, a pattern) and D
//! (136 MiB, a pattern per page: enough for a running checkpoint to arm
//! the tree first). Their ranges and the address of the writer's pass
//! counter go to `<dir>/areas`. After go, `<dir>/expect` says whether A
//! must now be zero ("zero") or hold its secret ("kept").

use cryopod_testprogs::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const MB: usize = 1 << 20;
const SECRET: &[u8; 16] = b"cryopod secret!!";
static PASSES: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

fn map(len: usize) -> &'static mut [u8] {
    // SAFETY: a fresh private anonymous mapping, never unmapped: the slice
    // is the only view of it.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert!(p != libc::MAP_FAILED);
        std::slice::from_raw_parts_mut(p.cast(), len)
    }
}

fn dontdump(a: &mut [u8]) {
    // SAFETY: advice on a mapping of ours.
    assert_eq!(unsafe { libc::madvise(a.as_mut_ptr().cast(), a.len(), libc::MADV_DONTDUMP) }, 0);
}

fn page_pattern(d: &mut [u8]) {
    for (i, page) in d.chunks_mut(4096).enumerate() {
        page.fill((i % 251) as u8 + 1);
    }
}

struct Area(usize);
unsafe impl Send for Area {}

fn main() {
    let dir = work_dir();
    let a = map(8 * MB);
    dontdump(a);
    for c in a.chunks_mut(16) {
        c.copy_from_slice(SECRET);
    }
    let b = map(8 * MB);
    dontdump(b);
    let c = map(8 * MB);
    page_pattern(c);
    let d = map(136 * MB);
    page_pattern(d);
    let range = |s: &[u8]| format!("{:x} {:x}", s.as_ptr() as usize, s.as_ptr() as usize + s.len());
    let areas = format!(
        "A {}\nB {}\nC {}\nD {}\npasses {:x}\n",
        range(a),
        range(b),
        range(c),
        range(d),
        &PASSES as *const AtomicU64 as usize
    );
    std::fs::write(dir.join("areas"), areas).unwrap();
    let (b_ptr, b_len) = (Area(b.as_mut_ptr() as usize), b.len());
    let writer = std::thread::spawn(move || {
        let b_ptr = b_ptr;
        let mut v = 1u8;
        while !STOP.load(Ordering::Relaxed) {
            // SAFETY: area B is this thread's alone until STOP.
            unsafe { std::ptr::write_bytes(b_ptr.0 as *mut u8, v, b_len) };
            v = v.wrapping_add(1).max(1);
            PASSES.fetch_add(1, Ordering::SeqCst);
        }
    });
    ready_and_wait(&dir);
    STOP.store(true, Ordering::SeqCst);
    let _ = writer.join();
    let expect = std::fs::read_to_string(dir.join("expect")).unwrap_or_default();
    let mut ch = Checks::new();
    match expect.trim() {
        "zero" => ch.check("don't-dump area A came back zero-filled", a.iter().all(|&x| x == 0), "it holds data"),
        _ => ch.check("don't-dump area A kept its data", a.chunks(16).all(|x| x == SECRET), "it differs"),
    }
    let mut want = vec![0u8; 8 * MB];
    page_pattern(&mut want);
    ch.check("area C intact", c[..] == want[..], "differs");
    let mut want = vec![0u8; 136 * MB];
    page_pattern(&mut want);
    ch.check("area D intact", d[..] == want[..], "differs");
    let at = a.as_ptr() as u64;
    let (mut inside, mut flags) = (false, String::new());
    for l in std::fs::read_to_string("/proc/self/smaps").unwrap_or_default().lines() {
        let range = l.split(' ').next().and_then(|r| r.split_once('-'));
        if let Some((lo, hi)) =
            range.and_then(|(lo, hi)| Some((u64::from_str_radix(lo, 16).ok()?, u64::from_str_radix(hi, 16).ok()?)))
        {
            inside = lo <= at && at < hi;
        } else if let (true, Some(f)) = (inside, l.strip_prefix("VmFlags:")) {
            flags = f.to_string();
        }
    }
    ch.check("area A is still marked don't-dump", flags.split_whitespace().any(|f| f == "dd"), &flags);
    ch.finish();
}
