//! A stopped task we inject syscalls into, with a scratch area in its
//! address space for syscall arguments and results (paths, structs, iovecs).

use crate::Result;
use cryopod_sys::inject::Injector;
use cryopod_sys::{mem, Pid};

/// Syscall numbers (x86_64) used by injection.
pub mod nr {
    pub const READ: i64 = 0;
    pub const WRITE: i64 = 1;
    pub const SET_MEMPOLICY: i64 = 238;
    pub const GET_MEMPOLICY: i64 = 239;
    pub const MEMBARRIER: i64 = 324;
    pub const CLOSE: i64 = 3;
    pub const IOCTL: i64 = 16;
    pub const MMAP: i64 = 9;
    pub const MPROTECT: i64 = 10;
    pub const MUNMAP: i64 = 11;
    pub const SHMAT: i64 = 30;
    pub const BRK: i64 = 12;
    pub const RT_SIGACTION: i64 = 13;
    pub const MREMAP: i64 = 25;
    pub const MADVISE: i64 = 28;
    pub const MINCORE: i64 = 27;
    pub const MBIND: i64 = 237;
    pub const MLOCKALL: i64 = 151;
    pub const GETITIMER: i64 = 36;
    pub const SETITIMER: i64 = 38;
    pub const PREADV: i64 = 295;
    pub const CHDIR: i64 = 80;
    pub const FCHDIR: i64 = 81;
    pub const UMASK: i64 = 95;
    pub const SETRESUID: i64 = 117;
    pub const SETRESGID: i64 = 119;
    pub const SETGROUPS: i64 = 116;
    pub const CAPSET: i64 = 126;
    pub const SIGALTSTACK: i64 = 131;
    pub const PERSONALITY: i64 = 135;
    pub const PRCTL: i64 = 157;
    pub const GETPRIORITY: i64 = 140;
    pub const SETPRIORITY: i64 = 141;
    pub const RT_SIGTIMEDWAIT: i64 = 128;
    pub const CHROOT: i64 = 161;
    pub const SET_TID_ADDRESS: i64 = 218;
    pub const TIMER_CREATE: i64 = 222;
    pub const TIMER_SETTIME: i64 = 223;
    pub const TIMER_GETTIME: i64 = 224;
    pub const TIMER_GETOVERRUN: i64 = 225;
    pub const TIMER_DELETE: i64 = 226;
    pub const OPENAT: i64 = 257;
    pub const SET_ROBUST_LIST: i64 = 273;
    pub const RT_TGSIGQUEUEINFO: i64 = 297;
    pub const RT_SIGQUEUEINFO: i64 = 129;
    pub const SETPGID: i64 = 109;
    pub const RSEQ: i64 = 334;
    pub const CLONE3: i64 = 435;
    pub const PRLIMIT64: i64 = 302;
    pub const SETFSUID: i64 = 122;
    pub const SETFSGID: i64 = 123;
}

/// Size of the scratch data area.
pub const SCRATCH_DATA: u64 = 64 * 1024;

pub struct Remote {
    pub inj: Injector,
    /// The process (host PID: /proc, memory, ptrace).
    pub pid: Pid,
    /// The same process as it numbers itself (its PID namespace's PID), for
    /// syscall arguments inside it.
    pub vpid: Pid,
    /// Start of the scratch data area in the task.
    pub data: u64,
    /// Its length.
    pub data_len: u64,
}

impl Remote {
    pub fn new(inj: Injector, pid: Pid, vpid: Pid, data: u64, data_len: u64) -> Remote {
        Remote { inj, pid, vpid, data, data_len }
    }

    pub fn tid(&self) -> Pid {
        self.inj.tid
    }

    pub fn call(&mut self, what: &str, nr: i64, args: &[u64]) -> Result<u64> {
        tracing::trace!(tid = self.inj.tid, "inject {what} {args:x?}");
        if let Some(errno) = crate::fault::errno_for(what) {
            let e =
                cryopod_sys::SysError::new(format!("{what} in task"), self.inj.tid, cryopod_sys::error::Errno(errno));
            return Err(e.into());
        }
        Ok(self.inj.call(what, nr, args)?)
    }

    pub fn raw(&mut self, nr: i64, args: &[u64]) -> Result<i64> {
        Ok(self.inj.raw(nr, args)?)
    }

    /// Copy bytes into the scratch area at `off`; returns their address.
    pub fn put(&self, off: u64, bytes: &[u8]) -> Result<u64> {
        if off + bytes.len() as u64 > self.data_len {
            return Err(crate::EngineError::Other("scratch area overflow".into()));
        }
        mem::write(self.pid, self.data + off, bytes)?;
        Ok(self.data + off)
    }

    /// A NUL-terminated string in the scratch area.
    pub fn put_str(&self, off: u64, s: &str) -> Result<u64> {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(off, &b)
    }

    pub fn get(&self, off: u64, len: usize) -> Result<Vec<u8>> {
        let mut out = vec![0u8; len];
        mem::read(self.pid, self.data + off, &mut out)?;
        Ok(out)
    }

    pub fn get_u64s(&self, off: u64, n: usize) -> Result<Vec<u64>> {
        Ok(self
            .get(off, n * 8)?
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default()))
            .collect())
    }
}

pub fn words(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}
