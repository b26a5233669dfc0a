//! The error pending on each socket a process holds (`sk_err`), read
//! without clearing it. A socket's pending error is the last thing a
//! program learns of a connection that failed: a reset, a refused or timed
//! out connect. SO_ERROR and any read or write hand it over and clear it,
//! and a poll says only that one is there (POLLERR), not which; so a
//! checkpoint that read it would take it from the program. The kernel's
//! `task_file` BPF iterator visits every descriptor of a process: for a
//! socket (`bpf_sock_from_file`), the program writes `(fd, sk_err)` when an
//! error is pending. Built like the `vma_iter` program (see `bpf_iter`).

use crate::bpf_iter::*;
use crate::{Errno, Pid, SysError, SysResult};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

const FUNC_SOCK_FROM_FILE: i32 = 162;
/// Bytes the program writes per socket.
const RECORD: usize = 16;
/// More descriptors than a process may have (fs.nr_open's ceiling).
const MAX_FDS: usize = 1 << 30;

/// A loaded program, ready to read any process's socket errors. Its
/// descriptor is inherited by children forked while it lives: drop it
/// before forking a process that will be checkpointed.
pub struct SockErrors {
    prog: OwnedFd,
}

/// Where the fields the program loads sit, in bytes.
struct Offsets {
    /// In `struct bpf_iter__task_file`.
    meta: i16,
    fd: i16,
    file: i16,
    /// `struct socket`'s `sk`.
    sk: i16,
    /// `struct sock`'s `sk_err`.
    err: i16,
}

fn program(o: &Offsets) -> Vec<Insn> {
    let mut p = vec![
        load(6, 1, o.file), // r6 = ctx->file (NULL at the end)
        if_zero(6, 16),     // if r6 == 0 goto out
        load(7, 1, o.meta), // r7 = ctx->meta
        load32(8, 1, o.fd), // r8 = ctx->fd
        mov(1, 6),          // r1 = file
        call(FUNC_SOCK_FROM_FILE),
        if_zero(0, 11),      // not a socket: out
        load(2, 0, o.sk),    // r2 = socket->sk
        if_zero(2, 9),       // out
        load32(3, 2, o.err), // r3 = sk->sk_err
        if_zero(3, 7),       // no error: out
        store(10, -16, 8),
        store(10, -8, 3),
        load(1, 7, 0), // r1 = meta->seq
        mov(2, 10),
        add_imm(2, -16),
        mov_imm(3, RECORD as i32),
        call(FUNC_SEQ_WRITE),
    ];
    p.extend(exit_zero()); // out:
    p
}

impl SockErrors {
    /// Read the kernel's BTF and load the program (needs CAP_BPF and
    /// CAP_PERFMON, or root; a kernel with BTF, Linux 6.1 or later).
    pub fn load() -> SysResult<SockErrors> {
        let btf = kernel_btf()?;
        let func_id = func_id(&btf, "bpf_iter_task_file")?;
        let ctx = struct_type(&btf, "bpf_iter__task_file")?;
        let socket = struct_type(&btf, "socket")?;
        let sock = struct_type(&btf, "sock")?;
        let o = Offsets {
            meta: field(&btf, &ctx, "bpf_iter__task_file", "meta")?,
            fd: field(&btf, &ctx, "bpf_iter__task_file", "fd")?,
            file: field(&btf, &ctx, "bpf_iter__task_file", "file")?,
            sk: field(&btf, &socket, "socket", "sk")?,
            err: field(&btf, &sock, "sock", "sk_err")?,
        };
        let prog = load_iter(&program(&o), func_id, "cryopod_e", "the socket errors iterator")?;
        Ok(SockErrors { prog })
    }

    /// The errors pending on the sockets of process `pid`, by fd number
    /// (a socket with none is not listed).
    pub fn of(&self, pid: Pid) -> SysResult<BTreeMap<i32, i32>> {
        let task = IterTask { tid: pid as u32, ..Default::default() };
        let what = "the socket errors iterator";
        let file = start(&self.prog, Some(&task), what, pid)?;
        let records = ordered_records(file, RECORD, MAX_FDS, what, pid)?;
        records
            .chunks_exact(RECORD)
            .map(|c| match (i32::try_from(word(c, 0)), i32::try_from(word(c, 1))) {
                (Ok(fd), Ok(err)) => Ok((fd, err)),
                _ => Err(SysError::new(format!("{what}: a record out of range"), pid, Errno(libc::ERANGE))),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A connect refused over loopback leaves ECONNREFUSED pending: the
    /// iterator sees it, twice, and SO_ERROR still gives it afterwards.
    #[test]
    fn sees_a_refused_connect_without_clearing_it() {
        let it = SockErrors::load().expect("load the iterator");
        let lo = [127u8, 0, 0, 1];
        // A port of ours that nothing listens on: a connect to it is reset.
        let holder =
            crate::sock::inet_socket(libc::SOCK_STREAM, libc::AF_INET, (&lo, 0), (false, false), &[]).expect("bind");
        let (_, port) = crate::sock::inet_name(&holder).expect("name");
        let s = crate::sock::inet_raw_socket(libc::AF_INET, libc::SOCK_STREAM, "socket").expect("socket");
        crate::fd::set_status_flags(&s, libc::O_NONBLOCK).expect("nonblock");
        crate::sock::inet_connect_start(&s, libc::AF_INET, &lo, port).expect("connect");
        let t = std::time::Instant::now();
        while !crate::sock::error_pending(&s).expect("poll") && t.elapsed().as_secs() < 2 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let me = std::process::id() as i32;
        for _ in 0..2 {
            let errs = it.of(me).expect("errors");
            assert_eq!(errs.get(&s.as_raw_fd()), Some(&libc::ECONNREFUSED), "{errs:?}");
        }
        let e = rustix::net::sockopt::socket_error(&s).expect("SO_ERROR");
        assert_eq!(e.err().map(|e| e.raw_os_error()), Some(libc::ECONNREFUSED));
        assert!(!it.of(me).expect("errors").contains_key(&s.as_raw_fd()), "read, it is cleared");
    }
}
