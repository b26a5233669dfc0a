//! The pod of the live-migration benchmark: `tp-migrant DIR MIB MBPS PORT`.
//! It fills MIB MiB of private memory with incompressible pages, then
//! rewrites MBPS megabytes of randomly chosen pages per second (paced every
//! 10 ms), and answers 8-byte requests on TCP port PORT with the same 8
//! bytes (one client at a time), until `<dir>/go` appears. Every page is a
//! function of its number and its generation (kept in an array beside
//! them), so that after any number of moves the program checks all of its
//! memory: PASS only if every page is what it last wrote.

use cryopod_testprogs::*;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

const PAGE: usize = 4096;
const WORDS: usize = PAGE / 8;

static STOP: AtomicBool = AtomicBool::new(false);

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Page `p`'s contents at generation `gen`.
fn page_words(p: usize, gen: u32, out: &mut [u64]) {
    let mut s = ((p as u64) << 32) | u64::from(gen);
    for w in out.iter_mut() {
        *w = splitmix(&mut s);
    }
}

fn serve(port: u16) {
    let l = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind");
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        let _ = c.set_nodelay(true);
        let mut b = [0u8; 8];
        while c.read_exact(&mut b).is_ok() {
            if c.write_all(&b).is_err() {
                break;
            }
        }
        if STOP.load(Ordering::Relaxed) {
            return;
        }
    }
}

fn main() {
    let dir = work_dir();
    let arg = |i: usize, d: usize| std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (mib, mbps, port) = (arg(2, 1024), arg(3, 50), arg(4, 9000) as u16);
    let pages = (mib << 20) / PAGE;
    // SAFETY: a fresh private anonymous mapping, used only as a slice below.
    let mem = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            pages * PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert!(p != libc::MAP_FAILED, "mmap");
        std::slice::from_raw_parts_mut(p as *mut u64, pages * WORDS)
    };
    let mut gens = vec![0u32; pages];
    for p in 0..pages {
        page_words(p, 0, &mut mem[p * WORDS..(p + 1) * WORDS]);
    }
    std::thread::spawn(move || serve(port));
    println!("READY");
    let _ = std::io::stdout().flush();
    let go = dir.join("go");
    // Pages per 10 ms tick.
    let per_tick = (mbps * 1_000_000 / PAGE / 100).max(1);
    let mut rng = 0x1234_5678u64;
    let start = std::time::Instant::now();
    let mut tick = 0u64;
    let mut written = 0u64;
    while !go.exists() {
        for _ in 0..per_tick {
            let p = (splitmix(&mut rng) % pages as u64) as usize;
            gens[p] = gens[p].wrapping_add(1);
            page_words(p, gens[p], &mut mem[p * WORDS..(p + 1) * WORDS]);
            written += PAGE as u64;
        }
        tick += 1;
        let due = start + std::time::Duration::from_millis(10 * tick);
        if let Some(d) = due.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(d);
        }
    }
    STOP.store(true, Ordering::Relaxed);
    let mut c = Checks::new();
    let mut want = vec![0u64; WORDS];
    let bad = (0..pages)
        .filter(|&p| {
            page_words(p, gens[p], &mut want);
            mem[p * WORDS..(p + 1) * WORDS] != want[..]
        })
        .count();
    c.check("every page holds what was last written to it", bad == 0, format!("{bad} of {pages} pages differ"));
    println!("rewrote {} MB in {:.1} s", written / 1_000_000, start.elapsed().as_secs_f64());
    c.finish();
}
