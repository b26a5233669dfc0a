//! Counts queued real-time signals (SIGRTMIN+5 with a value each) while the
//! harness checkpoints it again and again with --leave-running. After go,
//! it waits until it has received as many as the harness says it sent
//! (file `sent`: "count sum") and passes only if none was lost or doubled.

use cryopod_testprogs::*;
use std::sync::atomic::{AtomicU64, Ordering};

static COUNT: AtomicU64 = AtomicU64::new(0);
static SUM: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_rt(_: i32, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    COUNT.fetch_add(1, Ordering::SeqCst);
    SUM.fetch_add(unsafe { (*info).si_value().sival_ptr as u64 }, Ordering::SeqCst);
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_rt as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigaction(libc::SIGRTMIN() + 5, &sa, std::ptr::null_mut());
    }
    ready_and_wait(&dir);
    let sent = std::fs::read_to_string(dir.join("sent")).unwrap_or_default();
    let mut it = sent.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
    let (n, sum) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    let t = std::time::Instant::now();
    while COUNT.load(Ordering::SeqCst) < n && t.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    c.eq("every queued signal delivered exactly once", COUNT.load(Ordering::SeqCst), n);
    c.eq("their values", SUM.load(Ordering::SeqCst), sum);
    c.finish();
}
