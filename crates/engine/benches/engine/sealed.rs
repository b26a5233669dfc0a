//! Restore from a compressed and sealed image (`CRYOPOD_BENCH_ONLY=sealed`):
//! `CRYOPOD_BENCH_GIB` GiB of text-like memory checkpointed with zstd (the
//! default) and `--key`, restored, against first-touch anonymous memory
//! bandwidth measured right before and after (the better of the two, the
//! strict choice). Target: restore ≥ 80% of first touch.

use super::{first_touch_bw, gbps, median, quiet, reap, spawn_holding, text_fill, tree_options, wait_gone, SHM};
use cryopod_engine::{checkpoint, restore, CheckedImage, RestoreOptions};
use cryopod_image::ImageKey;
use std::sync::Arc;
use std::time::Instant;

pub fn sealed_restore(threads: usize, rounds: usize, bytes: u64) {
    let key = Arc::new(ImageKey::from_bytes(&[0x5a; 32]));
    let mut ratios = Vec::new();
    for round in 0..rounds.max(1) {
        let pid = spawn_holding(bytes, text_fill);
        let img = std::path::PathBuf::from(format!("{SHM}/sealed"));
        let _ = std::fs::remove_dir_all(&img);
        let mut o = tree_options(pid, &img, false, false, threads);
        o.key = Some(&key);
        let s = checkpoint(&o, &quiet).expect("sealed checkpoint");
        reap(pid);
        wait_gone(pid);
        let touch_before = first_touch_bw(bytes);
        let t = Instant::now();
        let image = CheckedImage::open(&img, Some(key.clone())).expect("open sealed image");
        let r = restore(&RestoreOptions { image: &image, threads, pod: None, guard: None }, &quiet).expect("restore");
        let took = t.elapsed();
        unsafe { libc::kill(r.root_pid, libc::SIGUSR1) };
        let st = reap(r.root_pid);
        let ok = libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0;
        drop(image);
        let touch = touch_before.max(first_touch_bw(bytes));
        let bw = gbps(r.memory_bytes, took);
        println!(
            "sealed round {}: image {:.0}% of {} GiB; restore {bw:.2} GB/s, first touch (best of before/after) {touch:.2} GB/s: {:.0}%; process verified its memory: {ok}",
            round + 1,
            100.0 * s.image_bytes as f64 / s.memory_bytes as f64,
            bytes >> 30,
            100.0 * bw / touch
        );
        ratios.push(bw / touch);
        let _ = std::fs::remove_dir_all(&img);
    }
    let (m, lo, hi) = median(&mut ratios);
    println!(
        "restore from a compressed, sealed image: median {:.0}% of first-touch bandwidth (range {:.0}-{:.0}%), target >= 80%",
        100.0 * m,
        100.0 * lo,
        100.0 * hi
    );
}
