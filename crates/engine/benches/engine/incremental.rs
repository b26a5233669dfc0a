//! Incremental checkpoints (`CRYOPOD_BENCH_ONLY=incremental`): a process
//! of `CRYOPOD_BENCH_GIB` GiB of incompressible memory is checkpointed in
//! full with tracking armed, rewrites 1% of its pages (one page in a
//! hundred, spread over all of it: the hard case for 64 KiB chunks), and
//! is checkpointed again on the first image, tracked, and untracked
//! (every page read and hashed, only new chunks stored). Reported against
//! the full checkpoint of the same run: time (target ≤ 5%) and image size
//! (target ≤ 2%); the tracked image is then restored and the process
//! checks its memory.

use super::{anon_map, gbps, median, quiet, reap, tree_options, wait_gone, xorshift_fill, SHM};
use cryopod_engine::track::Tracker;
use cryopod_engine::{checkpoint, restore, CheckedImage, RestoreOptions};
use cryopod_image::chain::Base;
use cryopod_image::{ImageDir, ImageOwner};
use std::path::PathBuf;
use std::time::Instant;

const PAGE: usize = 4096;

/// Fork a child holding `bytes` of noise. On SIGUSR2 it rewrites one page
/// in a hundred (a different set each time) and answers on the pipe it
/// returns; on SIGUSR1 it exits 0 if its memory matches its checksum.
fn spawn_rewriter(bytes: u64) -> (i32, i32) {
    let (mut to_us, mut ready) = ([0; 2], [0; 2]);
    // SAFETY: pipe fills the arrays; the bench is single-threaded here and
    // the child only computes and makes raw syscalls.
    unsafe {
        libc::pipe(to_us.as_mut_ptr());
        libc::pipe(ready.as_mut_ptr());
    }
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let words = (bytes / 8) as usize;
        // Page-aligned: a rewritten page is one page, not two halves.
        // SAFETY: a fresh private mapping of `bytes`, used only as `words`
        // u64s by this process.
        let mem: &mut [u64] = unsafe { std::slice::from_raw_parts_mut(anon_map(bytes) as *mut u64, words) };
        xorshift_fill(mem, 7);
        let sum = |m: &[u64]| m.iter().fold(0u64, |a, &b| a.wrapping_add(b));
        let mut want = sum(mem);
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            libc::write(ready[1], b"r".as_ptr().cast(), 1);
            let mut round = 0usize;
            loop {
                let mut sig = 0;
                libc::sigwait(&set, &mut sig);
                if sig == libc::SIGUSR1 {
                    libc::_exit(if sum(mem) == want { 0 } else { 1 });
                }
                round += 1;
                let per = PAGE / 8;
                let mut p = (round * 37) % 100;
                while (p + 1) * per <= words {
                    xorshift_fill(&mut mem[p * per..(p + 1) * per], (round * 1_000_003 + p) as u64);
                    p += 100;
                }
                want = sum(mem);
                libc::write(to_us[1], b"w".as_ptr().cast(), 1);
            }
        }
    }
    let mut b = [0u8; 1];
    unsafe {
        libc::close(to_us[1]);
        libc::close(ready[1]);
        libc::read(ready[0], b.as_mut_ptr().cast(), 1);
        libc::close(ready[0]);
    }
    (pid, to_us[0])
}

fn rewrite(pid: i32, answer: i32) {
    let mut b = [0u8; 1];
    unsafe {
        libc::kill(pid, libc::SIGUSR2);
        libc::read(answer, b.as_mut_ptr().cast(), 1);
    }
}

pub fn incremental(threads: usize, rounds: usize, bytes: u64) {
    println!("incremental checkpoints: {} GiB, 1% of the pages rewritten (one in a hundred)", bytes >> 30);
    let (mut t_tracked, mut s_tracked, mut t_untracked, mut s_untracked) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let (pid, answer) = spawn_rewriter(bytes);
        let dir = |n: &str| PathBuf::from(format!("{SHM}/inc-{n}"));
        let (full, tracked, untracked) = (dir("full"), dir("tracked"), dir("untracked"));
        for d in [&full, &tracked, &untracked] {
            let _ = std::fs::remove_dir_all(d);
        }
        let tracker = std::sync::Mutex::new(Tracker::arm(pid).expect("arm tracking"));
        let t = Instant::now();
        let mut o = tree_options(pid, &full, true, true, threads);
        o.tracker = Some(&tracker);
        let s_full = checkpoint(&o, &quiet).expect("full checkpoint");
        let full_time = t.elapsed();
        let hash = ImageDir::open(&full).expect("full image").manifest_hash();
        tracker.lock().unwrap().set_since(hash);
        rewrite(pid, answer);
        // Tracked: only the pages written since the full image are read.
        let t = Instant::now();
        let base = Base::open(&tracked, ImageOwner::current(), (Some(&full), None), None).expect("base");
        let base_time = t.elapsed();
        let mut o = tree_options(pid, &tracked, true, true, threads);
        o.tracker = Some(&tracker);
        o.base = Some(&base);
        let s_tr = checkpoint(&o, &quiet).expect("tracked checkpoint");
        let tr_time = t.elapsed();
        drop(tracker);
        // Untracked: every page read and hashed, new chunks stored.
        let t = Instant::now();
        let base2 = Base::open(&untracked, ImageOwner::current(), (Some(&full), None), None).expect("base");
        let mut o = tree_options(pid, &untracked, true, true, threads);
        o.base = Some(&base2);
        let s_un = checkpoint(&o, &quiet).expect("untracked checkpoint");
        let un_time = t.elapsed();
        let pct = |a: f64, b: f64| 100.0 * a / b;
        let (ft, fs) = (full_time.as_secs_f64(), s_full.image_bytes as f64);
        println!(
            "round {}: full {:.0} ms ({:.2} GB/s, image {:.0} MiB); tracked {:.0} ms = {:.1}% of full (parent opened in {:.0} ms, frozen {:.0} ms), image {:.1} MiB = {:.2}%; untracked {:.0} ms = {:.0}%, image {:.1} MiB = {:.1}%",
            round + 1,
            ft * 1e3,
            gbps(s_full.memory_bytes, full_time),
            fs / 1048576.0,
            tr_time.as_secs_f64() * 1e3,
            pct(tr_time.as_secs_f64(), ft),
            base_time.as_secs_f64() * 1e3,
            s_tr.frozen.as_secs_f64() * 1e3,
            s_tr.image_bytes as f64 / 1048576.0,
            pct(s_tr.image_bytes as f64, fs),
            un_time.as_secs_f64() * 1e3,
            pct(un_time.as_secs_f64(), ft),
            s_un.image_bytes as f64 / 1048576.0,
            pct(s_un.image_bytes as f64, fs),
        );
        t_tracked.push(pct(tr_time.as_secs_f64(), ft));
        s_tracked.push(pct(s_tr.image_bytes as f64, fs));
        t_untracked.push(pct(un_time.as_secs_f64(), ft));
        s_untracked.push(pct(s_un.image_bytes as f64, fs));
        // The process goes; the tracked image (a chain of two) comes back.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        reap(pid);
        wait_gone(pid);
        unsafe { libc::close(answer) };
        let image = CheckedImage::open(&tracked, None).expect("open tracked image");
        let r = restore(&RestoreOptions { image: &image, threads, pod: None, guard: None }, &quiet).expect("restore");
        unsafe { libc::kill(r.root_pid, libc::SIGUSR1) };
        let st = reap(r.root_pid);
        let ok = libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0;
        println!("round {}: the process restored from the tracked chain verified its memory: {ok}", round + 1);
        drop(base);
        drop(base2);
        for d in [&full, &tracked, &untracked] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    let show = |what: &str, mut v: Vec<f64>, target: &str| {
        let (m, lo, hi) = median(&mut v);
        println!("  {what}: median {m:.2}% (range {lo:.2}-{hi:.2}%){target}");
    };
    println!("incremental, against the full checkpoint of the same round:");
    show("tracked time", t_tracked, ", target <= 5%");
    show("tracked image", s_tracked, ", target <= 2%");
    show("untracked time", t_untracked, "");
    show("untracked image", s_untracked, "");
}
