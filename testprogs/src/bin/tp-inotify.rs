//! inotify across checkpoint/restore: watches on directories and a file,
//! with a gap in the watch numbers (one removed), keep their numbers and
//! masks; the removed one stays removed; a new watch gets the next number;
//! the instance stays non-blocking.

use cryopod_testprogs::*;
use std::ffi::CString;

fn cstr(p: &std::path::Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

/// Every event queued now: (wd, mask, name).
fn events(fd: i32) -> Vec<(i32, u32, String)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    std::thread::sleep(std::time::Duration::from_millis(50));
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    let mut off = 0usize;
    while n > 0 && off + 16 <= n as usize {
        let wd = i32::from_ne_bytes(buf[off..off + 4].try_into().unwrap());
        let mask = u32::from_ne_bytes(buf[off + 4..off + 8].try_into().unwrap());
        let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap()) as usize;
        let name = String::from_utf8_lossy(&buf[off + 16..off + 16 + len]).trim_end_matches('\0').to_string();
        out.push((wd, mask, name));
        off += 16 + len;
    }
    out
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    for d in ["a", "b", "c", "d"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("file"), b"x").unwrap();
    unsafe {
        let fd = libc::inotify_init1(libc::IN_NONBLOCK);
        let wa = libc::inotify_add_watch(fd, cstr(&dir.join("a")).as_ptr(), libc::IN_CREATE);
        let wb = libc::inotify_add_watch(fd, cstr(&dir.join("b")).as_ptr(), libc::IN_CREATE);
        let wc = libc::inotify_add_watch(fd, cstr(&dir.join("c")).as_ptr(), libc::IN_CREATE | libc::IN_DELETE);
        let wf = libc::inotify_add_watch(fd, cstr(&dir.join("file")).as_ptr(), libc::IN_MODIFY);
        libc::inotify_rm_watch(fd, wb);
        events(fd);
        ready_and_wait(&dir);

        std::fs::write(dir.join("a/new"), b"").unwrap();
        std::fs::write(dir.join("b/new"), b"").unwrap();
        std::fs::write(dir.join("c/new"), b"").unwrap();
        std::fs::remove_file(dir.join("c/new")).unwrap();
        std::fs::write(dir.join("file"), b"changed").unwrap();
        let got = events(fd);
        let want = vec![
            (wa, libc::IN_CREATE, "new".to_string()),
            (wc, libc::IN_CREATE, "new".to_string()),
            (wc, libc::IN_DELETE, "new".to_string()),
            (wf, libc::IN_MODIFY, String::new()),
        ];
        let modify_once: Vec<_> = got.iter().cloned().fold(Vec::new(), |mut v, e| {
            if !v.contains(&e) {
                v.push(e);
            }
            v
        });
        c.eq("events with their watch numbers (none from the removed watch)", modify_once, want);
        let wd = libc::inotify_add_watch(fd, cstr(&dir.join("d")).as_ptr(), libc::IN_CREATE);
        c.eq("a new watch gets the next number", wd, wf + 1);
        c.check("still non-blocking", libc::fcntl(fd, libc::F_GETFL) & libc::O_NONBLOCK != 0, "flag lost");
    }
    c.finish()
}
