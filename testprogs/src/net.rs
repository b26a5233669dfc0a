//! Socket helpers the test programs share: loopback TCP listeners and
//! connections, a TCP socket's state, and reading a socket's classic BPF
//! filter.

/// A TCP listener on 127.0.0.1 at a port the kernel chose: (fd, its
/// address).
pub fn loopback_listener(backlog: i32) -> Option<(i32, libc::sockaddr_in)> {
    // SAFETY: socket calls on a new descriptor with a live sockaddr_in.
    unsafe {
        let l = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let mut a: libc::sockaddr_in = std::mem::zeroed();
        a.sin_family = libc::AF_INET as u16;
        a.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        let ap = (&mut a as *mut libc::sockaddr_in).cast();
        if l < 0
            || libc::bind(l, ap, len) != 0
            || libc::listen(l, backlog) != 0
            || libc::getsockname(l, ap, &mut len) != 0
        {
            return None;
        }
        Some((l, a))
    }
}

/// A TCP connection over loopback: (client end, accepted end); the
/// listener is closed.
pub fn loopback_pair() -> Option<(i32, i32)> {
    let (l, a) = loopback_listener(1)?;
    // SAFETY: socket calls on our descriptors with a live sockaddr_in.
    unsafe {
        let c = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        if libc::connect(c, (&a as *const libc::sockaddr_in).cast(), len) != 0 {
            return None;
        }
        let s = libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut());
        libc::close(l);
        (s >= 0).then_some((c, s))
    }
}

/// Give `fd` a classic BPF filter that drops every packet (return 0):
/// nothing reaches the socket any more, so it acknowledges nothing.
pub fn drop_everything(fd: i32) -> bool {
    let drop_all = [libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0 }];
    let prog = libc::sock_fprog { len: 1, filter: drop_all.as_ptr() as *mut libc::sock_filter };
    let len = std::mem::size_of::<libc::sock_fprog>() as u32;
    // SAFETY: setsockopt on a descriptor of ours with a live program.
    unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, (&prog as *const libc::sock_fprog).cast(), len)
            == 0
    }
}

/// The classic BPF filter on `fd` (its instructions; SO_GET_FILTER
/// counts them, not bytes) and whether it is locked.
pub fn socket_filter(fd: i32) -> (Vec<u8>, i32) {
    let mut b = vec![0u8; 64 * 8];
    let mut len = 64u32;
    let mut lock = 0i32;
    let mut ll = 4u32;
    // SAFETY: getsockopt into live buffers whose sizes the lengths say.
    unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_GET_FILTER, b.as_mut_ptr().cast(), &mut len);
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_LOCK_FILTER, (&mut lock as *mut i32).cast(), &mut ll);
    }
    b.truncate(len as usize * 8);
    (b, lock)
}

/// The TCP state of `fd` (TCP_INFO's tcpi_state: 1 established, 2
/// SYN_SENT, 4 FIN_WAIT1, ...).
pub fn tcp_state(fd: i32) -> u8 {
    // SAFETY: tcp_info is plain data, filled by getsockopt up to `len`.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as u32;
    unsafe {
        libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&mut info as *mut libc::tcp_info).cast(), &mut len)
    };
    info.tcpi_state
}
