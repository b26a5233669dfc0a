//! Timers across checkpoint/restore: an interval timer with its handler,
//! alarm(), and POSIX timers keeping their ids, clocks, values, intervals,
//! notification and signal values; one of them blocked and overrunning.

use cryopod_testprogs::*;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

static ALRM: AtomicU64 = AtomicU64::new(0);
static T2_HITS: AtomicU64 = AtomicU64::new(0);
static T2_VAL: AtomicU64 = AtomicU64::new(0);
static T3_OVERRUN: AtomicI32 = AtomicI32::new(-1);
static T3_ID: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_alrm(_: i32) {
    ALRM.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_rt(sig: i32, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    unsafe {
        if sig == libc::SIGRTMIN() + 1 {
            T2_HITS.fetch_add(1, Ordering::SeqCst);
            T2_VAL.store((*info).si_value().sival_ptr as u64, Ordering::SeqCst);
        } else {
            // siginfo for SI_TIMER (x86_64): the union starts at 16: si_tid, si_overrun.
            let raw = info as *const u8;
            T3_ID.store(*(raw.add(16) as *const i32), Ordering::SeqCst);
            T3_OVERRUN.fetch_max(*(raw.add(20) as *const i32), Ordering::SeqCst);
        }
    }
}

unsafe fn new_timer(clock: i32, notify: i32, sig: i32, val: u64) -> libc::timer_t {
    let mut ev: libc::sigevent = std::mem::zeroed();
    ev.sigev_notify = notify;
    ev.sigev_signo = sig;
    ev.sigev_value = libc::sigval { sival_ptr: val as *mut _ };
    let mut t: libc::timer_t = std::ptr::null_mut();
    assert_eq!(libc::timer_create(clock, &mut ev, &mut t), 0);
    t
}

unsafe fn arm(t: libc::timer_t, value_ms: i64, interval_ms: i64) {
    let ts = |ms: i64| libc::timespec { tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000 };
    let spec = libc::itimerspec { it_interval: ts(interval_ms), it_value: ts(value_ms) };
    libc::timer_settime(t, 0, &spec, std::ptr::null_mut());
}

unsafe fn get(t: libc::timer_t) -> Option<libc::itimerspec> {
    let mut s: libc::itimerspec = std::mem::zeroed();
    (libc::timer_gettime(t, &mut s) == 0).then_some(s)
}

fn ms(ts: libc::timespec) -> i64 {
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    unsafe {
        libc::signal(libc::SIGALRM, on_alrm as *const () as usize);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_rt as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigaction(libc::SIGRTMIN() + 1, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGRTMIN() + 4, &sa, std::ptr::null_mut());
        // ITIMER_VIRTUAL is not used (CPU time); ITIMER_REAL drives SIGALRM.
        let it = libc::itimerval {
            it_interval: libc::timeval { tv_sec: 0, tv_usec: 100_000 },
            it_value: libc::timeval { tv_sec: 0, tv_usec: 100_000 },
        };
        libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut());
        // POSIX timers: a throw-away one makes the ids non-trivial.
        let t0 = new_timer(libc::CLOCK_MONOTONIC, libc::SIGEV_NONE, 0, 0);
        let t1 = new_timer(libc::CLOCK_REALTIME, libc::SIGEV_NONE, 0, 0);
        libc::timer_delete(t0);
        arm(t1, 100_000, 0);
        let t2 = new_timer(libc::CLOCK_MONOTONIC, libc::SIGEV_SIGNAL, libc::SIGRTMIN() + 1, 77);
        arm(t2, 50, 50);
        // t3: its signal is blocked, so expirations pile up as overruns.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGRTMIN() + 4);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let t3 = new_timer(libc::CLOCK_MONOTONIC, libc::SIGEV_SIGNAL, libc::SIGRTMIN() + 4, 5);
        arm(t3, 5, 5);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let ids = [t1 as usize, t2 as usize, t3 as usize];
        let alarms_before = ALRM.load(Ordering::SeqCst);
        let hits_before = T2_HITS.load(Ordering::SeqCst);

        ready_and_wait(&dir);

        let t1s = get(t1);
        c.check(
            "SIGEV_NONE timer kept its id and value",
            t1s.is_some_and(|s| (90_000..=100_000).contains(&ms(s.it_value))),
            format!("{:?}", t1s.map(|s| ms(s.it_value))),
        );
        let t2s = get(t2);
        c.check("periodic timer kept its interval", t2s.is_some_and(|s| ms(s.it_interval) == 50), "lost");
        c.eq("timer ids", [t1 as usize, t2 as usize, t3 as usize], ids);
        let mut it_now: libc::itimerval = std::mem::zeroed();
        libc::getitimer(libc::ITIMER_REAL, &mut it_now);
        c.eq("itimer interval", it_now.it_interval.tv_usec, 100_000);
        // Both periodic timers keep firing after restore.
        std::thread::sleep(std::time::Duration::from_millis(400));
        c.check(
            "SIGALRM keeps coming",
            ALRM.load(Ordering::SeqCst) >= alarms_before + 2,
            format!("{} then {}", alarms_before, ALRM.load(Ordering::SeqCst)),
        );
        c.check(
            "POSIX timer keeps firing",
            T2_HITS.load(Ordering::SeqCst) >= hits_before + 2,
            format!("{} then {}", hits_before, T2_HITS.load(Ordering::SeqCst)),
        );
        c.eq("POSIX timer signal value", T2_VAL.load(Ordering::SeqCst), 77);
        // The blocked timer: the signal pending at checkpoint arrives naming
        // its timer, and the restored timer goes on counting overruns while
        // blocked. (The overrun count of a signal pending at checkpoint is
        // computed by the kernel only at delivery and cannot be carried.)
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        c.eq("blocked timer's signal names its timer", T3_ID.load(Ordering::SeqCst), t3 as usize as i32);
        c.check(
            "restored timer counts overruns",
            T3_OVERRUN.load(Ordering::SeqCst) >= 1,
            format!("max overrun {}", T3_OVERRUN.load(Ordering::SeqCst)),
        );
        // alarm(): arm a new one, the old REAL itimer is replaced.
        let left = libc::alarm(0);
        c.check("alarm/itimer remaining", left <= 1, format!("{left}"));
    }
    c.finish();
}
