//! A multi-threaded Rust program in the middle of its work: a pool of
//! workers takes jobs from a shared queue (Mutex + Condvar), computes, and
//! sends results over a channel to the main thread, which aggregates. The
//! final sum must equal the one computed single-threaded.

use cryopod_testprogs::*;
use std::collections::VecDeque;
use std::sync::{mpsc, Arc, Condvar, Mutex};

const JOBS: u64 = 4000;

fn work(n: u64) -> u64 {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x % 1_000_003
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    let queue = Arc::new((Mutex::new(VecDeque::from_iter(0..JOBS)), Condvar::new()));
    let (tx, rx) = mpsc::channel::<(u64, u64)>();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let q = queue.clone();
        let tx = tx.clone();
        workers.push(std::thread::spawn(move || loop {
            let job = {
                let (lock, cv) = &*q;
                let mut g = lock.lock().unwrap();
                match g.pop_front() {
                    Some(j) => {
                        cv.notify_one();
                        j
                    }
                    None => return,
                }
            };
            tx.send((job, work(job))).unwrap();
        }));
    }
    drop(tx);
    let mut sum = 0u64;
    let mut seen = vec![false; JOBS as usize];
    let mut dup = false;
    let mut announced = false;
    for (job, v) in rx {
        if std::mem::replace(&mut seen[job as usize], true) {
            dup = true;
        }
        sum += v;
        if !announced && job > JOBS / 10 {
            println!("READY");
            use std::io::Write;
            std::io::stdout().flush().unwrap();
            announced = true;
        }
    }
    for w in workers {
        c.check("worker joined", w.join().is_ok(), "panicked");
    }
    wait_go(&dir);
    c.check("no job done twice", !dup, "duplicate");
    c.check("every job done", seen.iter().all(|&s| s), "missing");
    c.eq("sum matches single-threaded", sum, (0..JOBS).map(work).sum::<u64>());
    c.finish();
}
