//! Another process's memory: bulk reads and writes with process_vm_readv /
//! process_vm_writev (iovec batches, straight into our buffers), and
//! `/proc/<pid>/mem` for pages mapped without write permission.

use crate::{Errno, Pid, SysError, SysResult};
use std::os::unix::fs::FileExt;

/// Most iovecs per process_vm_* call (IOV_MAX).
pub const IOV_MAX: usize = 1024;

/// Read remote ranges `(addr, len)` into consecutive slices of `out`.
/// Returns the bytes read; a short read means a range became unreadable.
pub fn read_ranges(pid: Pid, ranges: &[(u64, usize)], out: &mut [u8]) -> SysResult<usize> {
    let mut done = 0usize;
    let mut off = 0usize;
    for batch in ranges.chunks(IOV_MAX) {
        let total: usize = batch.iter().map(|r| r.1).sum();
        if off + total > out.len() {
            return Err(SysError::new("process_vm_readv (buffer too small)", pid, Errno(libc::EINVAL)));
        }
        let remote: Vec<libc::iovec> =
            batch.iter().map(|&(a, l)| libc::iovec { iov_base: a as *mut libc::c_void, iov_len: l }).collect();
        let local = libc::iovec { iov_base: out[off..].as_mut_ptr().cast(), iov_len: total };
        // SAFETY: the local iovec covers a live, exclusively borrowed slice of
        // `out`; remote iovecs are only addresses in the other process.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, remote.as_ptr(), remote.len() as u64, 0) };
        if n < 0 {
            let e = SysError::last("process_vm_readv", pid);
            // The first range of this batch cannot be read this way (a
            // PROT_NONE page, say): what was read so far, for the caller
            // to read the rest another way.
            if e.errno.0 == libc::EFAULT {
                break;
            }
            return Err(e);
        }
        done += n as usize;
        off += total;
        if (n as usize) < total {
            break;
        }
    }
    Ok(done)
}

/// Write `data` at `addr` in another process (needs write permission there).
pub fn write(pid: Pid, addr: u64, data: &[u8]) -> SysResult<()> {
    let mut off = 0usize;
    while off < data.len() {
        let local = libc::iovec { iov_base: data[off..].as_ptr() as *mut libc::c_void, iov_len: data.len() - off };
        let remote = libc::iovec { iov_base: (addr + off as u64) as *mut libc::c_void, iov_len: data.len() - off };
        // SAFETY: the local iovec points into a live slice that the kernel only reads.
        let n = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            return Err(SysError::last(format!("process_vm_writev at {addr:#x}"), pid));
        }
        off += n as usize;
    }
    Ok(())
}

/// Read from another process's memory through `/proc/<pid>/mem`.
pub fn read(pid: Pid, addr: u64, out: &mut [u8]) -> SysResult<()> {
    let f = std::fs::File::open(format!("/proc/{pid}/mem"))
        .map_err(|e| SysError::new("open /proc/pid/mem", pid, Errno(e.raw_os_error().unwrap_or(0))))?;
    f.read_exact_at(out, addr)
        .map_err(|e| SysError::new(format!("read mem at {addr:#x}"), pid, Errno(e.raw_os_error().unwrap_or(libc::EIO))))
}

/// Write slices of `data` to several places of another process in one
/// process_vm_writev per IOV_MAX ranges: `ranges` are (remote address,
/// offset in data, length).
pub fn write_ranges(pid: Pid, ranges: &[(u64, usize, usize)], data: &[u8]) -> SysResult<()> {
    for batch in ranges.chunks(IOV_MAX) {
        let (lo, hi) = match (batch.first(), batch.last()) {
            (Some(a), Some(b)) => (a.1, b.1 + b.2),
            _ => continue,
        };
        if hi > data.len() || batch.windows(2).any(|w| w[0].1 + w[0].2 != w[1].1) {
            return Err(SysError::new("process_vm_writev (ranges not contiguous in data)", pid, Errno(libc::EINVAL)));
        }
        let remote: Vec<libc::iovec> =
            batch.iter().map(|&(a, _, l)| libc::iovec { iov_base: a as *mut libc::c_void, iov_len: l }).collect();
        let local = libc::iovec { iov_base: data[lo..].as_ptr() as *mut libc::c_void, iov_len: hi - lo };
        // SAFETY: the local iovec covers a live slice of `data` that the
        // kernel only reads; remote iovecs are addresses in the other process.
        let n = unsafe { libc::process_vm_writev(pid, &local, 1, remote.as_ptr(), remote.len() as u64, 0) };
        if n < 0 {
            return Err(SysError::last(format!("process_vm_writev at {:#x}", batch[0].0), pid));
        }
        if (n as usize) < hi - lo {
            return Err(SysError::new(
                format!("process_vm_writev at {:#x}: short write ({n} of {} bytes)", batch[0].0, hi - lo),
                pid,
                Errno(libc::EFAULT),
            ));
        }
    }
    Ok(())
}

/// `/proc/<pid>/mem` kept open for many forced writes into one process.
pub struct ProcMem {
    file: std::fs::File,
    pid: Pid,
}

impl ProcMem {
    pub fn open(pid: Pid) -> SysResult<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|e| SysError::new("open /proc/pid/mem", pid, Errno(e.raw_os_error().unwrap_or(0))))?;
        Ok(ProcMem { file, pid })
    }

    /// Open for reading only. The file keeps the address space it was
    /// opened on: after the process execs or exits, reads fail rather than
    /// reading another address space.
    pub fn open_read(pid: Pid) -> SysResult<Self> {
        let file = std::fs::File::open(format!("/proc/{pid}/mem"))
            .map_err(|e| SysError::new("open /proc/pid/mem", pid, Errno(e.raw_os_error().unwrap_or(0))))?;
        Ok(ProcMem { file, pid })
    }

    /// Read `out.len()` bytes at `addr` (an error if any is unreadable).
    pub fn read_exact(&self, addr: u64, out: &mut [u8]) -> SysResult<()> {
        self.file.read_exact_at(out, addr).map_err(|e| {
            SysError::new(format!("read mem at {addr:#x}"), self.pid, Errno(e.raw_os_error().unwrap_or(libc::EIO)))
        })
    }

    /// Write even into read-only or executable mappings (forced).
    pub fn write_forced(&self, addr: u64, data: &[u8]) -> SysResult<()> {
        self.file.write_all_at(data, addr).map_err(|e| {
            SysError::new(format!("write mem at {addr:#x}"), self.pid, Errno(e.raw_os_error().unwrap_or(libc::EIO)))
        })
    }
}

/// A private anonymous read-write area of this process, mapped at a
/// chosen address (never over an existing mapping) and unmapped when
/// dropped. Children forked while it lives inherit it, copy-on-write.
pub struct FixedArea {
    addr: u64,
    len: usize,
}

impl FixedArea {
    /// Map `len` bytes at `addr` (MAP_FIXED_NOREPLACE: EEXIST if anything
    /// is mapped there).
    pub fn map(addr: u64, len: usize) -> SysResult<FixedArea> {
        // SAFETY: a new private anonymous mapping at an address nothing
        // of ours uses (the kernel refuses if something does): no memory
        // of ours is touched.
        let got = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if got == libc::MAP_FAILED {
            return Err(SysError::last(format!("mmap at {addr:#x}"), 0));
        }
        let area = FixedArea { addr: got as u64, len };
        if area.addr != addr {
            // An old kernel without MAP_FIXED_NOREPLACE took it as a hint.
            return Err(SysError::new(format!("mmap at {addr:#x}"), 0, Errno(libc::EEXIST)));
        }
        Ok(area)
    }

    pub fn addr(&self) -> u64 {
        self.addr
    }
}

impl Drop for FixedArea {
    fn drop(&mut self) {
        // SAFETY: the mapping made by `map`, which nothing refers to by
        // reference (it is written only through process_vm_writev).
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}
