//! Event files behind anonymous inodes: eventfd (counter, semaphore mode),
//! signalfd (mask), timerfd (clock, times, unread expirations) and epoll
//! (interest list) — read from fdinfo and a copy of the fd, and the timerfd
//! restore that re-arms a timer with its unread expirations.

use crate::{procfs, EngineError, Result};
use cryopod_image::FileKind;
use cryopod_sys::TargetFd;
use std::os::fd::AsFd;

/// eventfd, signalfd, timerfd and epoll, from the target's own fdinfo.
pub fn anon_inode_kind(pid: i32, fd: i32, target: &str) -> Result<FileKind> {
    let info = || procfs::read(pid, &format!("fdinfo/{fd}"));
    let field = |s: &str, k: &str| procfs::status_field(s, k).unwrap_or_default();
    match target {
        "anon_inode:[eventfd]" => {
            let s = info()?;
            let count = u64::from_str_radix(field(&s, "eventfd-count").trim(), 16).unwrap_or(0);
            Ok(FileKind::EventFd { count, semaphore: field(&s, "eventfd-semaphore") == "1" })
        }
        "anon_inode:[signalfd]" => {
            Ok(FileKind::SignalFd { mask: u64::from_str_radix(field(&info()?, "sigmask").trim(), 16).unwrap_or(0) })
        }
        "anon_inode:[timerfd]" => {
            // timerfd_gettime on a copy brings the unread expirations in
            // fdinfo up to date (KERNEL-NOTES), and gives the times.
            let pidfd = cryopod_sys::pidfd::pidfd_open(pid)?;
            let copy = cryopod_sys::pidfd::pidfd_getfd(&pidfd, pid, TargetFd(fd))?;
            let (interval_ns, value_ns) = cryopod_sys::events::timerfd_gettime(&copy)?;
            let s = info()?;
            Ok(FileKind::TimerFd {
                clock: field(&s, "clockid").parse().unwrap_or(libc::CLOCK_MONOTONIC),
                interval_ns,
                value_ns,
                ticks: field(&s, "ticks").parse().unwrap_or(0),
            })
        }
        "anon_inode:[pidfd]" => {
            // "Pid:" as our PID namespace numbers it (-1: it has ended).
            let pid: i32 = field(&info()?, "Pid").trim().parse().unwrap_or(0);
            if pid == 0 {
                return Err(EngineError::Other("a pidfd of a process outside our PID namespace".into()));
            }
            // (-1: of a process that has ended.)
            Ok(FileKind::Pidfd { pid: pid.max(-1) })
        }
        "anon_inode:[eventpoll]" => {
            let mut entries = Vec::new();
            for line in info()?.lines() {
                let Some(rest) = line.strip_prefix("tfd:") else { continue };
                let w: Vec<&str> = rest.split_whitespace().collect();
                // "<fd> events: <hex> data: <hex> pos:.. ino:.. sdev:.."
                if w.len() >= 5 && w[1] == "events:" && w[3] == "data:" {
                    let tfd = w[0].parse().unwrap_or(-1);
                    let events = u32::from_str_radix(w[2], 16).unwrap_or(0);
                    let data = u64::from_str_radix(w[4], 16).unwrap_or(0);
                    entries.push(cryopod_image::EpollEntry { fd: tfd, events, data, file_at: None });
                }
            }
            Ok(FileKind::Epoll { owner: pid, entries })
        }
        other => Err(EngineError::Other(
            match other {
                "anon_inode:[io_uring]" => {
                    "an io_uring instance: its rings, registered buffers and requests in flight cannot be read or made again from outside"
                }
                "anon_inode:[userfaultfd]" => {
                    "a userfaultfd of the program's own: its registered ranges and waiting faults cannot be read back"
                }
                "anon_inode:bpf-prog" | "anon_inode:bpf_link" => "a BPF program: not carried",
                "anon_inode:[perf_event]" => "a perf event: not carried",
                _ => "a file of this kind",
            }
            .into(),
        )),
    }
}

/// Arm a timerfd so that `ticks` expirations are waiting to be read, the
/// next one comes in `value_ns` and the following every `interval_ns`: the
/// first expiration is set in the past (absolute time), so the kernel counts
/// the ones already due.
pub fn restore_timerfd(fd: impl AsFd, clock: i32, interval_ns: u64, value_ns: u64, ticks: u64) -> Result<()> {
    use cryopod_sys::events::timerfd_settime;
    let fd = fd.as_fd();
    if ticks == 0 {
        if value_ns > 0 {
            timerfd_settime(fd, 0, interval_ns, value_ns)?;
        }
        return Ok(());
    }
    let now = cryopod_sys::events::clock_ns(clock);
    if interval_ns == 0 {
        // A one-shot timer that fired and was not read: one expiration due.
        timerfd_settime(fd, libc::TFD_TIMER_ABSTIME, 0, 1)?;
        return Ok(());
    }
    let back = ticks.saturating_mul(interval_ns);
    let first = (now + value_ns).saturating_sub(back).max(1);
    timerfd_settime(fd, libc::TFD_TIMER_ABSTIME, interval_ns, first)?;
    Ok(())
}

/// Check each epoll entry against the file the owner has at its number
/// (kcmp): an entry outlives the closing of its number as long as its
/// file lives on, and a process sharing the instance registers under its
/// own numbers. Where the file is not the owner's at that number but some
/// process of the tree holds it, the entry is registered through that
/// process's fd at restore (`file_at`); if none holds it, the entry goes
/// with the file's last holder (ours or outside) and is left out.
pub fn check_epolls(files: &mut [cryopod_image::OpenFile], procs: &[cryopod_image::Process]) -> Result<()> {
    use cryopod_sys::events::epoll_watches;
    let live = || procs.iter().filter(|p| p.zombie_status.is_none());
    for p in live() {
        for efd in &p.fds {
            let Some(f) = files.get_mut(efd.file as usize) else { continue };
            let FileKind::Epoll { owner, entries } = &mut f.kind else { continue };
            if *owner != p.pid {
                continue;
            }
            let (pid, e) = (p.pid, TargetFd(efd.fd));
            let mut seen: std::collections::HashMap<i32, u32> = Default::default();
            let mut keep = Vec::with_capacity(entries.len());
            for en in entries.iter() {
                let toff = seen.entry(en.fd).and_modify(|n| *n += 1).or_insert(0);
                if epoll_watches(pid, TargetFd(en.fd), pid, e, en.fd, *toff) {
                    keep.push(*en);
                    continue;
                }
                let holder = live()
                    .flat_map(|q| q.fds.iter().map(move |fd| (q.pid, fd.fd)))
                    .find(|&(q, fd)| epoll_watches(q, TargetFd(fd), pid, e, en.fd, *toff));
                match holder {
                    Some(at) => keep.push(cryopod_image::EpollEntry { file_at: Some(at), ..*en }),
                    None => tracing::info!(
                        pid,
                        epoll = efd.fd,
                        fd = en.fd,
                        "an epoll entry whose file no process of the tree holds any more: left out"
                    ),
                }
            }
            *entries = keep;
        }
    }
    Ok(())
}
