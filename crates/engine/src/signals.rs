//! Signals and timers: dispositions (handler, flags, mask, restorer),
//! pending signals per thread and per process, interval timers and POSIX
//! timers with their ids. All read by syscalls injected into the task, since
//! the kernel offers no outside view of them.

use crate::procfs;
use crate::remote::{nr, words, Remote};
use crate::Result;
use cryopod_image::{ItimerVal, PosixTimer, SigAction};

/// Signals whose disposition is not SIG_DFL (caught or ignored), from
/// /proc/pid/status, plus SIGCHLD (its flags matter even at SIG_DFL).
pub fn non_default(pid: i32) -> Result<u64> {
    let st = procfs::read(pid, "status")?;
    Ok(procfs::status_hex(&st, "SigIgn") | procfs::status_hex(&st, "SigCgt") | (1 << (libc::SIGCHLD - 1)))
}

/// Dispositions of signals 1..=64; only non-default ones need an injected
/// rt_sigaction, the rest are SIG_DFL with no flags.
pub fn collect_actions(r: &mut Remote) -> Result<Vec<SigAction>> {
    let nd = non_default(r.pid)?;
    let mut out = Vec::with_capacity(64);
    for sig in 1..=64u64 {
        if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 || nd & (1 << (sig - 1)) == 0 {
            out.push(SigAction::default());
            continue;
        }
        let res = r.raw(nr::RT_SIGACTION, &[sig, 0, r.data, 8])?;
        if res < 0 {
            out.push(SigAction::default());
            continue;
        }
        let v = r.get_u64s(0, 4)?;
        out.push(SigAction { handler: v[0], flags: v[1], restorer: v[2], mask: v[3] });
    }
    Ok(out)
}

/// Set every disposition that differs from what the stub has (the stub's
/// non-default ones, inherited from the restorer, and the image's), except
/// SIGTRAP's: see [`restore_trap_action`].
pub fn restore_actions(r: &mut Remote, acts: &[SigAction]) -> Result<()> {
    let stub_nd = non_default(r.pid)?;
    for (i, a) in acts.iter().enumerate() {
        let sig = i as u64 + 1;
        if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 || sig == libc::SIGTRAP as u64 {
            continue;
        }
        if *a == SigAction::default() && stub_nd & (1 << (sig - 1)) == 0 {
            continue;
        }
        set_action(r, sig, a)?;
    }
    Ok(())
}

/// SIGTRAP's disposition, set once the injection gadget's `int3` will not
/// raise SIGTRAP any more (a forced SIGTRAP resets a blocked or ignored
/// handler to SIG_DFL).
pub fn restore_trap_action(r: &mut Remote, acts: &[SigAction]) -> Result<()> {
    let sig = libc::SIGTRAP as u64;
    match acts.get(sig as usize - 1) {
        Some(a) => set_action(r, sig, a),
        None => Ok(()),
    }
}

fn set_action(r: &mut Remote, sig: u64, a: &SigAction) -> Result<()> {
    let addr = r.put(0, &words(&[a.handler, a.flags, a.restorer, a.mask]))?;
    r.call(&format!("rt_sigaction({sig})"), nr::RT_SIGACTION, &[sig, addr, 0, 8])?;
    Ok(())
}

pub fn collect_itimers(r: &mut Remote) -> Result<Vec<ItimerVal>> {
    let mut out = Vec::new();
    for which in 0..3u64 {
        r.call("getitimer", nr::GETITIMER, &[which, r.data])?;
        let v = r.get_u64s(0, 4)?;
        out.push(ItimerVal { interval_us: v[0] * 1_000_000 + v[1], value_us: v[2] * 1_000_000 + v[3] });
    }
    Ok(out)
}

pub fn restore_itimers(r: &mut Remote, its: &[ItimerVal]) -> Result<()> {
    for (which, it) in its.iter().enumerate() {
        // A periodic ITIMER_REAL whose SIGALRM is pending reads as stopped:
        // the kernel arms it again when the signal is taken. Restored, it
        // starts a fresh period (the pending signal is queued again).
        let value_us = if it.value_us == 0 { it.interval_us } else { it.value_us };
        if value_us == 0 {
            continue;
        }
        let v = [it.interval_us / 1_000_000, it.interval_us % 1_000_000, value_us / 1_000_000, value_us % 1_000_000];
        let a = r.put(0, &words(&v))?;
        r.call("setitimer", nr::SETITIMER, &[which as u64, a, 0])?;
    }
    Ok(())
}

/// POSIX timers: ids, clocks and notification from /proc/pid/timers;
/// value, interval and overrun by injected timer_gettime/timer_getoverrun.
pub fn collect_timers(r: &mut Remote) -> Result<Vec<PosixTimer>> {
    let text = procfs::read(r.pid, "timers")?;
    let mut out: Vec<PosixTimer> = Vec::new();
    for line in text.lines() {
        let (k, v) = match line.split_once(':') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => continue,
        };
        match k {
            "ID" => out.push(PosixTimer {
                id: v.parse().unwrap_or(-1),
                clock: 0,
                notify: 0,
                signo: 0,
                sigval: 0,
                notify_tid: 0,
                interval_ns: 0,
                value_ns: 0,
                overrun: 0,
            }),
            "signal" => {
                if let (Some(t), Some((s, val))) = (out.last_mut(), v.split_once('/')) {
                    t.signo = s.parse().unwrap_or(0);
                    t.sigval = u64::from_str_radix(val, 16).unwrap_or(0);
                }
            }
            "notify" => {
                if let (Some(t), Some((how, who))) = (out.last_mut(), v.split_once('/')) {
                    t.notify = match how {
                        "none" => libc::SIGEV_NONE,
                        "thread" => libc::SIGEV_THREAD_ID,
                        _ => libc::SIGEV_SIGNAL,
                    };
                    t.notify_tid = who.rsplit('.').next().and_then(|x| x.parse().ok()).unwrap_or(0);
                }
            }
            "ClockID" => {
                if let Some(t) = out.last_mut() {
                    t.clock = v.parse().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    for t in &mut out {
        r.call("timer_gettime", nr::TIMER_GETTIME, &[t.id as u64, r.data])?;
        let v = r.get_u64s(0, 4)?;
        t.interval_ns = v[0] * 1_000_000_000 + v[1];
        t.value_ns = v[2] * 1_000_000_000 + v[3];
        t.overrun = r.call("timer_getoverrun", nr::TIMER_GETOVERRUN, &[t.id as u64])? as i32;
    }
    Ok(out)
}

const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;

/// Re-create POSIX timers with their original ids, then arm them.
pub fn restore_timers(r: &mut Remote, timers: &[PosixTimer]) -> Result<()> {
    if timers.is_empty() {
        return Ok(());
    }
    r.call("prctl(PR_TIMER_CREATE_RESTORE_IDS)", nr::PRCTL, &[PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0])?;
    for t in timers {
        // struct sigevent: sigval, signo, notify, tid, padding to 64 bytes.
        let mut ev = vec![0u8; 64];
        ev[0..8].copy_from_slice(&t.sigval.to_ne_bytes());
        ev[8..12].copy_from_slice(&t.signo.to_ne_bytes());
        ev[12..16].copy_from_slice(&t.notify.to_ne_bytes());
        ev[16..20].copy_from_slice(&t.notify_tid.to_ne_bytes());
        let eva = r.put(0, &ev)?;
        let ida = r.put(128, &t.id.to_ne_bytes())?;
        r.call(&format!("timer_create(id {})", t.id), nr::TIMER_CREATE, &[t.clock as u64, eva, ida])?;
        if t.value_ns != 0 {
            let spec = [
                t.interval_ns / 1_000_000_000,
                t.interval_ns % 1_000_000_000,
                t.value_ns / 1_000_000_000,
                t.value_ns % 1_000_000_000,
            ];
            let sa = r.put(256, &words(&spec))?;
            r.call("timer_settime", nr::TIMER_SETTIME, &[t.id as u64, 0, sa, 0])?;
        }
    }
    r.call("prctl(PR_TIMER_CREATE_RESTORE_IDS off)", nr::PRCTL, &[PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0])?;
    Ok(())
}

/// Discard every signal pending for the stub (sent to it during the
/// restore; it blocks them all): dequeued by an injected rt_sigtimedwait
/// with a zero timeout, until none is left. Other threads are new and
/// have none.
pub fn drain_pending(r: &mut Remote) -> Result<()> {
    let st = procfs::read(r.pid, "status")?;
    let set = procfs::status_hex(&st, "SigPnd") | procfs::status_hex(&st, "ShdPnd");
    if set == 0 {
        return Ok(());
    }
    tracing::debug!(pid = r.pid, "discarding the stub's own pending signals {set:#x}");
    let set_addr = r.put(0, &set.to_ne_bytes())?;
    let zero = r.put(16, &[0u8; 16])?;
    // Each call takes one; RT signals may be queued many times.
    for _ in 0..100_000 {
        if r.raw(nr::RT_SIGTIMEDWAIT, &[set_addr, 0, zero, 8])? < 0 {
            return Ok(());
        }
    }
    Err(crate::EngineError::Other(format!("pid {}: signals keep arriving during the restore", r.pid)))
}

/// Queue a saved siginfo again: on thread `tid`, or process-wide (`None`).
pub fn queue(r: &mut Remote, tid: Option<i32>, info: &[u8]) -> Result<()> {
    if info.len() != 128 {
        return Err(crate::EngineError::Other("siginfo of wrong size".into()));
    }
    let sig = i32::from_ne_bytes(info[0..4].try_into().unwrap_or_default());
    let a = r.put(512, info)?;
    match tid {
        Some(t) => r.call(
            &format!("rt_tgsigqueueinfo({sig})"),
            nr::RT_TGSIGQUEUEINFO,
            &[r.vpid as u64, t as u64, sig as u64, a],
        )?,
        None => r.call(&format!("rt_sigqueueinfo({sig})"), nr::RT_SIGQUEUEINFO, &[r.vpid as u64, sig as u64, a])?,
    };
    Ok(())
}
