//! A fanotify group across checkpoint/restore (issue 11, class 9), made by
//! root: marks on a file (modify, close-after-write), on the work
//! directory (opens of its children) with one child's opens ignored
//! (surviving its modification), and on the work directory's mount
//! (close-without-write). After the restore fdinfo shows the same group
//! flags and marks, and events come as the marks say: a write to the file
//! and an open of a child are reported, an open of the ignored child is
//! not.

use cryopod_testprogs::*;
use std::ffi::CString;
use std::time::{Duration, Instant};

fn fanotify_lines(fd: i32) -> Vec<String> {
    let s = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
    let mut v: Vec<String> = s.lines().filter(|l| l.starts_with("fanotify ")).map(String::from).collect();
    v.sort();
    v
}

fn cpath(p: &std::path::Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap_or_default()
}

/// Read the group's events until `until` holds, `quiet` passes with none,
/// or `limit` is over: (mask, path) of each; every event's fd is closed.
unsafe fn events(
    g: i32,
    (limit, quiet): (Duration, Option<Duration>),
    until: impl Fn(&[(u64, String)]) -> bool,
) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let t = Instant::now();
    let mut buf = vec![0u8; 8192];
    let wait = quiet.map_or(50, |q| q.as_millis() as i32);
    while t.elapsed() < limit && !until(&out) {
        let mut p = libc::pollfd { fd: g, events: libc::POLLIN, revents: 0 };
        if libc::poll(&mut p, 1, wait) != 1 {
            if quiet.is_some() {
                break;
            }
            continue;
        }
        let n = libc::read(g, buf.as_mut_ptr().cast(), buf.len());
        let mut off = 0;
        while n > 0 && off + std::mem::size_of::<libc::fanotify_event_metadata>() <= n as usize {
            let m = buf.as_ptr().add(off).cast::<libc::fanotify_event_metadata>().read_unaligned();
            if m.fd >= 0 {
                let path = std::fs::read_link(format!("/proc/self/fd/{}", m.fd)).map(|p| p.display().to_string());
                out.push((m.mask, path.unwrap_or_default()));
                libc::close(m.fd);
            }
            if m.event_len == 0 {
                break;
            }
            off += m.event_len as usize;
        }
    }
    out
}

/// Drop the events queued so far: until none comes for 50 ms, for 300 ms
/// at most (the mount mark reports other processes' reads on the mount,
/// which go on).
unsafe fn drain(g: i32) {
    events(g, (Duration::from_millis(300), Some(Duration::from_millis(50))), |_| false);
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    let (file, loud, quiet) = (dir.join("watched"), dir.join("loud"), dir.join("quiet"));
    for f in [&file, &loud, &quiet] {
        std::fs::write(f, b"x").unwrap_or_default();
    }
    // SAFETY: fanotify calls on our own group with live C strings; event
    // fds are closed as they are read.
    unsafe {
        let g =
            libc::fanotify_init(libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK, libc::O_RDONLY as u32);
        let add = |flags: u32, mask: u64, p: &std::path::Path| {
            libc::fanotify_mark(g, libc::FAN_MARK_ADD | flags, mask, libc::AT_FDCWD, cpath(p).as_ptr()) == 0
        };
        let ok = g >= 0
            && add(0, libc::FAN_MODIFY | libc::FAN_CLOSE_WRITE, &file)
            && add(0, libc::FAN_OPEN | libc::FAN_EVENT_ON_CHILD, &dir)
            && add(libc::FAN_MARK_IGNORED_MASK | libc::FAN_MARK_IGNORED_SURV_MODIFY, libc::FAN_OPEN, &quiet)
            && add(libc::FAN_MARK_MOUNT, libc::FAN_CLOSE_NOWRITE, &dir);
        if !ok {
            println!("FAIL (setup: fanotify: {})", std::io::Error::last_os_error());
            std::process::exit(1);
        }
        let before = fanotify_lines(g);
        if before.len() != 5 {
            println!("FAIL (setup: fdinfo {before:?})");
            std::process::exit(1);
        }
        drain(g);
        ready_and_wait(&dir);

        c.eq("the group's flags and marks (fdinfo)", fanotify_lines(g), before);
        drain(g);
        std::fs::write(&quiet, b"quiet").unwrap_or_default();
        std::fs::write(&file, b"written").unwrap_or_default();
        let _ = std::fs::read(&loud);
        let name = |p: &std::path::Path| p.display().to_string();
        let got = events(g, (Duration::from_secs(2), None), |e| {
            e.iter().any(|(m, p)| m & libc::FAN_OPEN != 0 && *p == name(&loud))
        });
        let seen = |mask: u64, p: &std::path::Path| got.iter().any(|(m, q)| m & mask != 0 && *q == name(p));
        c.check("a write to the marked file is reported", seen(libc::FAN_MODIFY, &file), format!("{got:?}"));
        c.check("an open of a child of the directory is reported", seen(libc::FAN_OPEN, &loud), format!("{got:?}"));
        c.check("an open of the ignored child is not", !seen(libc::FAN_OPEN, &quiet), format!("{got:?}"));
        c.check("a read's close on the mount is reported", seen(libc::FAN_CLOSE_NOWRITE, &loud), format!("{got:?}"));
    }
    c.finish()
}
