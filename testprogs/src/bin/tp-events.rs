//! Event fds across checkpoint/restore: eventfds (plain and semaphore) with
//! their counters, a signalfd with a pending signal and its value, timerfds
//! (periodic with unread expirations, one-shot far away), and an epoll set
//! whose entries keep their events and data and can still be modified or
//! removed under the program's own fd numbers.

use cryopod_testprogs::*;

fn read_u64(fd: i32) -> Option<u64> {
    let mut v = 0u64;
    let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    (n == 8).then_some(v)
}

fn ready(ep: i32) -> Vec<u64> {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 8];
    let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 8, 0) };
    let mut v: Vec<u64> = evs[..n.max(0) as usize].iter().map(|e| e.u64).collect();
    v.sort();
    v
}

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    unsafe {
        let a = libc::eventfd(0, libc::EFD_NONBLOCK);
        libc::write(a, (&5u64 as *const u64).cast(), 8);
        let b = libc::eventfd(3, libc::EFD_SEMAPHORE | libc::EFD_NONBLOCK);
        // signalfd for SIGUSR2, with one queued (value 42).
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let sfd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK);
        libc::sigqueue(libc::getpid(), libc::SIGUSR2, libc::sigval { sival_ptr: 42 as *mut _ });
        // timerfds: periodic every 20 ms (unread for a while), one-shot in 100 s.
        let tp = libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK);
        let ms = |v: i64| libc::timespec { tv_sec: v / 1000, tv_nsec: (v % 1000) * 1_000_000 };
        let spec = libc::itimerspec { it_interval: ms(20), it_value: ms(20) };
        libc::timerfd_settime(tp, 0, &spec, std::ptr::null_mut());
        let to = libc::timerfd_create(libc::CLOCK_REALTIME, 0);
        let spec = libc::itimerspec { it_interval: ms(0), it_value: ms(100_000) };
        libc::timerfd_settime(to, 0, &spec, std::ptr::null_mut());
        // epoll: a (0xdead), b (0xb), pipe read end edge-triggered (0xbeef).
        let mut p = [0i32; 2];
        libc::pipe(p.as_mut_ptr());
        let ep = libc::epoll_create1(0);
        for (fd, ev, data) in [
            (a, libc::EPOLLIN as u32, 0xdead),
            (b, libc::EPOLLIN as u32, 0xb),
            (p[0], (libc::EPOLLIN | libc::EPOLLET) as u32, 0xbeef),
        ] {
            let mut e = libc::epoll_event { events: ev, u64: data };
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut e);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));

        ready_and_wait(&dir);

        c.eq("epoll: ready entries with their data", ready(ep), vec![0xb, 0xdead]);
        libc::write(p[1], b"x".as_ptr().cast(), 1);
        c.eq("epoll: edge-triggered pipe entry fires", ready(ep), vec![0xb, 0xbeef, 0xdead]);
        c.eq(
            "epoll: entry removable by its fd number",
            libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, p[0], std::ptr::null_mut()),
            0,
        );
        let mut e = libc::epoll_event { events: libc::EPOLLOUT as u32, u64: 0xa };
        c.eq("epoll: entry modifiable by its fd number", libc::epoll_ctl(ep, libc::EPOLL_CTL_MOD, a, &mut e), 0);
        c.eq("eventfd counter", read_u64(a), Some(5));
        c.eq("eventfd empty after read", read_u64(a), None);
        c.eq("semaphore eventfd reads 1", read_u64(b), Some(1));
        c.eq("semaphore eventfd reads 1 again", read_u64(b), Some(1));
        let mut si = [0u8; 128];
        let n = libc::read(sfd, si.as_mut_ptr().cast(), 128);
        let signo = u32::from_ne_bytes(si[0..4].try_into().unwrap());
        let ssi_int = i32::from_ne_bytes(si[48..52].try_into().unwrap());
        c.check(
            "signalfd delivers the pending signal",
            n == 128 && signo == libc::SIGUSR2 as u32,
            format!("n={n} signo={signo}"),
        );
        c.eq("signalfd signal value", ssi_int, 42);
        let ticks = read_u64(tp);
        c.check("periodic timerfd: unread expirations kept", ticks.is_some_and(|t| t >= 1), format!("{ticks:?}"));
        std::thread::sleep(std::time::Duration::from_millis(60));
        c.check("periodic timerfd keeps expiring", read_u64(tp).is_some_and(|t| t >= 1), "no expirations");
        let mut cur: libc::itimerspec = std::mem::zeroed();
        libc::timerfd_gettime(to, &mut cur);
        c.check("one-shot timerfd still armed far away", cur.it_value.tv_sec > 50, format!("{}", cur.it_value.tv_sec));
        c.check(
            "fd links",
            std::fs::read_link(format!("/proc/self/fd/{ep}"))
                .map(|l| l.display().to_string() == "anon_inode:[eventpoll]")
                .unwrap_or(false),
            "epoll link",
        );
    }
    c.finish();
}
