//! A pidfd of a child across checkpoint/restore: it still names that child
//! (signal through it, poll it for the end, wait through it), and keeps
//! O_NONBLOCK. Beside it (issue 11, class 9): a pidfd of a child that has
//! ended and was reaped (it stays readable, a signal through it finds no
//! process, its fdinfo says PID -1), and files of the program's own
//! network and UTS namespaces, which name them again after the restore.

use cryopod_testprogs::*;

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    unsafe {
        let child = libc::fork();
        if child == 0 {
            loop {
                libc::pause();
            }
        }
        let pfd = libc::syscall(libc::SYS_pidfd_open, child, libc::O_NONBLOCK) as i32;
        let gone = libc::fork();
        if gone == 0 {
            libc::_exit(0);
        }
        let ended = libc::syscall(libc::SYS_pidfd_open, gone, 0) as i32;
        libc::waitpid(gone, std::ptr::null_mut(), 0);
        let net = libc::open(c"/proc/self/ns/net".as_ptr(), libc::O_RDONLY);
        let uts = libc::open(c"/proc/self/ns/uts".as_ptr(), libc::O_RDONLY);
        let pid_line = |fd: i32| {
            let s = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
            s.lines().find(|l| l.starts_with("Pid:")).unwrap_or("").to_string()
        };
        if ended < 0 || net < 0 || uts < 0 || pid_line(ended) != "Pid:\t-1" {
            println!("FAIL (setup: ended pidfd {ended} ({}), namespace files {net} {uts})", pid_line(ended));
            std::process::exit(1);
        }
        ready_and_wait(&dir);

        let ino = |fd: i32| {
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(fd, &mut st);
            st.st_ino
        };
        let own = |n: &str| {
            std::fs::metadata(format!("/proc/self/ns/{n}"))
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .unwrap_or(0)
        };
        c.eq("the net namespace file names our net namespace", ino(net), own("net"));
        c.eq("the UTS namespace file names our UTS namespace", ino(uts), own("uts"));
        c.eq("the ended child's pidfd: PID -1", pid_line(ended), "Pid:\t-1".to_string());
        let mut p = libc::pollfd { fd: ended, events: libc::POLLIN, revents: 0 };
        c.eq("the ended child's pidfd is readable", libc::poll(&mut p, 1, 0), 1);
        let r = libc::syscall(libc::SYS_pidfd_send_signal, ended, 0, std::ptr::null::<u8>(), 0);
        c.eq("a signal through it finds no process", (r, *libc::__errno_location()), (-1, libc::ESRCH));

        c.check("still non-blocking", libc::fcntl(pfd, libc::F_GETFL) & libc::O_NONBLOCK != 0, "flag lost");
        let r = libc::syscall(libc::SYS_pidfd_send_signal, pfd, libc::SIGTERM, std::ptr::null::<u8>(), 0);
        c.eq("signal through the pidfd", r, 0);
        let mut p = libc::pollfd { fd: pfd, events: libc::POLLIN, revents: 0 };
        c.eq("the pidfd reports the child's end", libc::poll(&mut p, 1, 5000), 1);
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(libc::P_PIDFD, pfd as u32, &mut info, libc::WEXITED);
        c.eq("wait through the pidfd", r, 0);
        c.eq("it was our child", info.si_pid(), child);
        c.eq("killed by SIGTERM", info.si_status(), libc::SIGTERM);
    }
    c.finish()
}
