//! A shell job on a terminal: checkpointed while its standard streams are a
//! pty, restored from another pty, it writes to the terminal `cryopod
//! restore` runs in, and the restorer exits with the job's status.

mod common;
use common::*;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn openpty() -> (std::fs::File, OwnedFd, String) {
    let (mut m, mut s) = (0, 0);
    let mut name = [0i8; 64];
    // SAFETY: openpty writes two fds and a NUL-terminated name of < 64 bytes.
    let r = unsafe { libc::openpty(&mut m, &mut s, name.as_mut_ptr(), std::ptr::null(), std::ptr::null()) };
    assert_eq!(r, 0, "openpty");
    // SAFETY: both fds were just created for us.
    let (m, s) = unsafe { (std::fs::File::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&m), libc::F_SETFL, libc::O_NONBLOCK) };
    // (Neither end leaks into the job: its terminal's master is ours,
    // outside the tree.)
    for fd in [std::os::fd::AsRawFd::as_raw_fd(&m), std::os::fd::AsRawFd::as_raw_fd(&s)] {
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
    (m, s, name)
}

fn read_until(m: &mut std::fs::File, needle: &str, timeout: Duration) -> String {
    let t = Instant::now();
    let mut acc = String::new();
    let mut buf = [0u8; 4096];
    while !acc.contains(needle) {
        assert!(t.elapsed() < timeout, "timed out waiting for {needle:?} on the terminal; got {acc:?}");
        match m.read(&mut buf) {
            Ok(n) if n > 0 => acc.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    acc
}

#[test]
fn shell_job_attaches_to_the_restoring_terminal() {
    let _lock = serial();
    let dir = std::path::PathBuf::from(format!("/tmp/cryopod-test-tty-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (mut ma, sa, name_a) = openpty();
    // A job in its own process group, as a shell starts it.
    let script = "echo started on $(tty); echo READY > state; while [ ! -e go ]; do sleep 0.02; done; \
                  read -ra s < /proc/$$/stat; [ \"${s[4]}\" = \"${s[7]}\" ] && echo in the foreground; \
                  echo now on $(tty); exit 3";
    let mut child = Command::new("bash")
        .args(["-c", script])
        .process_group(0)
        .current_dir(&dir)
        .stdin(Stdio::from(sa.try_clone().unwrap()))
        .stdout(Stdio::from(sa.try_clone().unwrap()))
        .stderr(Stdio::from(sa))
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let guard = Killer { pids: Default::default(), dir: dir.clone() };
    guard.push(pid);
    read_until(&mut ma, &format!("started on {name_a}"), Duration::from_secs(10));
    while !dir.join("state").exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let image = dir.join("image");
    let o = cryopod(&["checkpoint", "--pid", &pid.to_string(), "-o", image.to_str().unwrap()], &[]);
    assert_eq!(o.0, 0, "{}", o.2);
    let _ = child.wait();
    let i = cryopod(&["inspect", image.to_str().unwrap()], &[]);
    assert!(i.1.contains("(terminal)"), "stdin should be recorded as a terminal: {}", i.1);
    let t = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        reap_all();
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(2));
    }
    // Restore from another terminal, waiting for the job like a shell would.
    let (mut mb, sb, name_b) = openpty();
    // The restorer runs like an interactive shell: its own session, with
    // the pty as its controlling terminal.
    let mut restorer = Command::new(cryopod_bin());
    // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe.
    unsafe {
        restorer.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let mut restorer = restorer
        .args(["restore", image.to_str().unwrap()])
        .stdin(Stdio::from(sb.try_clone().unwrap()))
        .stdout(Stdio::from(sb.try_clone().unwrap()))
        .stderr(Stdio::from(sb))
        .spawn()
        .unwrap();
    guard.push(restorer.id() as i32);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(dir.join("go"), b"").unwrap();
    let seen = read_until(&mut mb, &format!("now on {name_b}"), Duration::from_secs(10));
    assert!(seen.contains("in the foreground"), "the restored job should own the terminal: {seen:?}");
    let status = restorer.wait().unwrap();
    assert_eq!(status.code(), Some(3), "restorer should exit with the job's status; terminal showed {seen:?}");
    drop(ma);
}

/// Kills the listed pids (with their descendants) and removes the test's
/// directory when the test ends, however it ends.
#[derive(Default)]
struct Killer {
    pids: std::cell::RefCell<Vec<i32>>,
    dir: std::path::PathBuf,
}
impl Killer {
    fn push(&self, p: i32) {
        self.pids.borrow_mut().push(p);
    }
}
impl Drop for Killer {
    fn drop(&mut self) {
        let all: Vec<i32> = self.pids.borrow().iter().flat_map(|&p| tree_of(p)).collect();
        for &p in &all {
            // SAFETY: kill by pid of a process this test started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let t = Instant::now();
        while all.iter().any(|p| std::path::Path::new(&format!("/proc/{p}")).exists()) && t.elapsed().as_secs() < 5 {
            reap_all();
            std::thread::sleep(Duration::from_millis(1));
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
