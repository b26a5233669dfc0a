//! Memory that changes a little between checkpoints, for incremental
//! images: an area of MiB (second argument, default 64) where every page
//! holds noise derived from (page, generation). When the harness writes a
//! number K into `<dir>/step`, 1% of the pages (a different set for every
//! K) get generation K, and the program writes K into `<dir>/stepped`.
//! Once restored and told `go`, it checks every page against the
//! generation it recorded: a page restored from the wrong link of a chain
//! fails.

use cryopod_testprogs::*;
use std::path::Path;

const PAGE: usize = 4096;

/// The contents of `page` at generation `gen`.
fn fill(buf: &mut [u8], page: usize, gen: u32) {
    let mut x = ((page as u64) << 20) ^ u64::from(gen) ^ 0x9E37_79B9_7F4A_7C15;
    for w in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
    }
}

/// The pages step `k` rewrites: every 100th page, starting at a place that
/// depends on `k`.
fn pages_of_step(k: u32, pages: usize) -> impl Iterator<Item = usize> {
    let start = (k as usize * 37) % 100;
    (start..pages).step_by(100)
}

fn read_num(p: &Path) -> Option<u32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn main() {
    let dir = work_dir();
    let mb: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(64);
    let pages = mb * (1 << 20) / PAGE;
    let mut mem = vec![0u8; pages * PAGE];
    let mut gens = vec![0u32; pages];
    for (i, p) in mem.chunks_mut(PAGE).enumerate() {
        fill(p, i, 0);
    }
    println!("READY");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let mut done = 0u32;
    let ts = libc::timespec { tv_sec: 0, tv_nsec: 5_000_000 };
    while !dir.join("go").exists() {
        if let Some(k) = read_num(&dir.join("step")).filter(|&k| k > done) {
            for i in pages_of_step(k, pages) {
                fill(&mut mem[i * PAGE..(i + 1) * PAGE], i, k);
                gens[i] = k;
            }
            done = k;
            let tmp = dir.join("stepped.tmp");
            let _ = std::fs::write(&tmp, format!("{k}\n"));
            let _ = std::fs::rename(&tmp, dir.join("stepped"));
        }
        // SAFETY: nanosleep gets a valid timespec.
        unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
    }
    let mut c = Checks::new();
    let mut want = vec![0u8; PAGE];
    let mut bad = Vec::new();
    for (i, p) in mem.chunks(PAGE).enumerate() {
        fill(&mut want, i, gens[i]);
        if p != &want[..] {
            bad.push(i);
        }
    }
    c.check(
        "every page holds its last generation",
        bad.is_empty(),
        format!("{} pages differ: {:?}", bad.len(), &bad[..bad.len().min(8)]),
    );
    c.eq("steps seen", done, read_num(&dir.join("step")).unwrap_or(0));
    c.finish();
}
