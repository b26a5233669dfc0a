//! A pidfd of a child across checkpoint/restore: it still names that child
//! (signal through it, poll it for the end, wait through it), and keeps
//! O_NONBLOCK.

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
        ready_and_wait(&dir);

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
