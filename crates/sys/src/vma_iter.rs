//! Every memory area of a process with its kernel flags, read through the
//! kernel's `task_vma` BPF iterator. `/proc/<pid>/smaps` is the only other
//! place that shows an area's flags (VmFlags), and it walks every page-table
//! entry to count pages on the way: about 12 ms per GiB of resident memory,
//! the longest step of a frozen checkpoint of a large heap. The iterator
//! visits the areas alone, in microseconds.
//!
//! The program is sixteen instructions, built here rather than compiled: for
//! each area it writes `(start, end, flags)` to the iterator's output. The
//! offsets of those fields in `struct vm_area_struct` come from the running
//! kernel's BTF (`/sys/kernel/btf/vmlinux`), and the verifier checks every
//! load against it. The flag bits are the kernel's own `VM_*` values, not
//! an ABI: callers check them against smaps once (see `cryopod-engine`'s
//! `mm::flags`) before trusting them.

use crate::{Errno, Pid, SysError, SysResult};
use btf_rs::{Backend, Btf, Type};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The kernel's `VM_*` bits that cryopod restores (`include/linux/mm.h`).
pub mod vm {
    pub const GROWSDOWN: u64 = 0x0000_0100;
    pub const LOCKED: u64 = 0x0000_2000;
    pub const SEQ_READ: u64 = 0x0000_8000;
    pub const RAND_READ: u64 = 0x0001_0000;
    pub const LOCKONFAULT: u64 = 0x0008_0000;
    pub const DONTCOPY: u64 = 0x0002_0000;
    pub const WIPEONFORK: u64 = 0x0200_0000;
    pub const DONTDUMP: u64 = 0x0400_0000;
    pub const HUGEPAGE: u64 = 0x2000_0000;
    pub const NOHUGEPAGE: u64 = 0x4000_0000;
    pub const MERGEABLE: u64 = 0x8000_0000;
}

/// One area as the kernel holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    pub start: u64,
    pub end: u64,
    pub flags: u64,
}

/// A loaded iterator program, ready to list any process's areas. Its
/// descriptor is inherited by children forked while it lives: drop it
/// before forking a process that will be checkpointed.
pub struct VmaIter {
    prog: OwnedFd,
}

/// What the program needs from the running kernel's BTF (parsing it takes
/// tens of milliseconds: keep it).
#[derive(Clone, Copy)]
pub struct Layout {
    func_id: u32,
    offsets: Offsets,
}

impl Layout {
    pub fn of_kernel() -> SysResult<Layout> {
        // Mapped, it is parsed only where looked at (a sixth of the time
        // of parsing it all, which older kernels need: they cannot map it).
        let path = "/sys/kernel/btf/vmlinux";
        let btf = Btf::from_file_with_backend(path, Backend::Mmap)
            .or_else(|_| Btf::from_file(path))
            .map_err(|e| btf_err(format!("reading {path}: {e}")))?;
        let (func_id, offsets) = offsets(&btf)?;
        Ok(Layout { func_id, offsets })
    }
}

const BPF_PROG_LOAD: i64 = 5;
const BPF_LINK_CREATE: i64 = 28;
const BPF_ITER_CREATE: i64 = 33;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_ITER: u32 = 28;
const BPF_FUNC_SEQ_WRITE: i32 = 127;

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _pad: u32,
}

/// `union bpf_iter_link_info`, its task member: one thread's areas.
#[repr(C)]
#[derive(Default)]
struct IterTask {
    tid: u32,
    pid: u32,
    pid_fd: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct IterCreate {
    link_fd: u32,
    flags: u32,
}

/// One instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | (dst & 0xf), off, imm }
}

/// `dst = *(u64 *)(src + off)`
fn load(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x79, dst, src, off, 0)
}

/// `*(u64 *)(dst + off) = src`
fn store(dst: u8, off: i16, src: u8) -> Insn {
    insn(0x7b, dst, src, off, 0)
}

/// Where the three fields sit in `struct vm_area_struct`, in bytes.
#[derive(Clone, Copy)]
struct Offsets {
    start: i16,
    end: i16,
    flags: i16,
}

fn program(o: &Offsets) -> Vec<Insn> {
    vec![
        load(6, 1, 16),          // r6 = ctx->vma (NULL at the end)
        insn(0x15, 6, 0, 12, 0), // if r6 == 0 goto out
        load(7, 1, 0),           // r7 = ctx->meta
        load(2, 6, o.start),
        store(10, -24, 2),
        load(2, 6, o.end),
        store(10, -16, 2),
        load(2, 6, o.flags),
        store(10, -8, 2),
        load(1, 7, 0),            // r1 = meta->seq
        insn(0xbf, 2, 10, 0, 0),  // r2 = r10
        insn(0x07, 2, 0, 0, -24), // r2 -= 24
        insn(0xb7, 3, 0, 0, 24),  // r3 = 24
        insn(0x85, 0, 0, 0, BPF_FUNC_SEQ_WRITE),
        insn(0xb7, 0, 0, 0, 0), // out: r0 = 0
        insn(0x95, 0, 0, 0, 0), // exit
    ]
}

fn btf_err(what: String) -> SysError {
    SysError::new(what, 0, Errno(libc::ENOENT))
}

/// The byte offset of member `name` in the struct or union `ty`, looking
/// through anonymous members.
fn member_offset(btf: &Btf, ty: &Type, name: &str) -> Option<u32> {
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return None,
    };
    for m in members {
        let mname = btf.resolve_name(m).unwrap_or_default();
        if mname == name {
            return Some(m.bit_offset() / 8);
        }
        if mname.is_empty() {
            let inner = btf.resolve_chained_type(m).ok()?;
            if let Some(off) = member_offset(btf, &inner, name) {
                return Some(m.bit_offset() / 8 + off);
            }
        }
    }
    None
}

fn offsets(btf: &Btf) -> SysResult<(u32, Offsets)> {
    let func =
        btf.resolve_types_by_name("bpf_iter_task_vma").map_err(|e| btf_err(format!("BTF: bpf_iter_task_vma: {e}")))?;
    let func_id = btf
        .resolve_ids_by_name("bpf_iter_task_vma")
        .map_err(|e| btf_err(format!("BTF: bpf_iter_task_vma: {e}")))?
        .into_iter()
        .zip(func)
        .find(|(_, t)| matches!(t, Type::Func(_)))
        .map(|(id, _)| id)
        .ok_or_else(|| btf_err("BTF: no function bpf_iter_task_vma".into()))?;
    let vma = btf
        .resolve_types_by_name("vm_area_struct")
        .map_err(|e| btf_err(format!("BTF: vm_area_struct: {e}")))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(|| btf_err("BTF: no struct vm_area_struct".into()))?;
    let field = |name: &str| -> SysResult<i16> {
        member_offset(btf, &vma, name)
            .and_then(|o| i16::try_from(o).ok())
            .ok_or_else(|| btf_err(format!("BTF: vm_area_struct has no {name}")))
    };
    Ok((func_id, Offsets { start: field("vm_start")?, end: field("vm_end")?, flags: field("vm_flags")? }))
}

fn bpf<T>(cmd: i64, attr: &mut T, what: &str, pid: Pid) -> SysResult<OwnedFd> {
    // SAFETY: `attr` is the `union bpf_attr` member that `cmd` reads, zero
    // padded, passed with its size; the kernel reads no more than that.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        return Err(SysError::last(what.to_string(), pid));
    }
    // SAFETY: on success these commands return a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

impl VmaIter {
    /// Load the program (needs CAP_BPF and CAP_PERFMON, or root).
    pub fn load(layout: &Layout) -> SysResult<VmaIter> {
        let insns = program(&layout.offsets);
        let license = c"GPL";
        let attr = |log: &mut [u8]| {
            let mut a = ProgLoad {
                prog_type: BPF_PROG_TYPE_TRACING,
                insn_cnt: insns.len() as u32,
                insns: insns.as_ptr() as u64,
                license: license.as_ptr() as u64,
                expected_attach_type: BPF_TRACE_ITER,
                attach_btf_id: layout.func_id,
                ..Default::default()
            };
            if !log.is_empty() {
                (a.log_level, a.log_size, a.log_buf) = (1, log.len() as u32, log.as_mut_ptr() as u64);
            }
            a.prog_name[..9].copy_from_slice(b"cryopod_v");
            a
        };
        // Without a log first (a log too small for a successful load's
        // makes older kernels fail it); with one only to say why it failed.
        let prog = bpf(BPF_PROG_LOAD, &mut attr(&mut []), "loading the task_vma iterator", 0).or_else(|_| {
            let mut log = vec![0u8; 64 << 10];
            bpf(BPF_PROG_LOAD, &mut attr(&mut log), "loading the task_vma iterator", 0).map_err(|mut e| {
                let text = String::from_utf8_lossy(&log);
                let text = text.trim_end_matches('\0').trim();
                if let Some(last) = text.lines().last() {
                    e.op = format!("{} (verifier: {last})", e.op);
                }
                e
            })
        })?;
        Ok(VmaIter { prog })
    }

    /// The areas of process `pid` (its main thread's address space), in
    /// address order.
    pub fn areas(&self, pid: Pid) -> SysResult<Vec<Area>> {
        let task = IterTask { tid: pid as u32, ..Default::default() };
        let mut link = LinkCreate {
            prog_fd: self.prog.as_raw_fd() as u32,
            attach_type: BPF_TRACE_ITER,
            iter_info: &task as *const IterTask as u64,
            iter_info_len: std::mem::size_of::<IterTask>() as u32,
            ..Default::default()
        };
        let link = bpf(BPF_LINK_CREATE, &mut link, "attaching the task_vma iterator", pid)?;
        let mut create = IterCreate { link_fd: link.as_raw_fd() as u32, flags: 0 };
        let iter = bpf(BPF_ITER_CREATE, &mut create, "starting the task_vma iterator", pid)?;
        let mut file = std::fs::File::from(iter);
        let read_err = |e: std::io::Error| {
            SysError::new("reading the task_vma iterator", pid, Errno(e.raw_os_error().unwrap_or(0)))
        };
        let mut buf = vec![0u8; 64 << 10];
        let mut pending: Vec<u8> = Vec::new();
        let mut out: Vec<Area> = Vec::new();
        loop {
            let n = std::io::Read::read(&mut file, &mut buf).map_err(read_err)?;
            if n == 0 {
                return Ok(out);
            }
            pending.extend_from_slice(&buf[..n]);
            let whole = pending.len() / RECORD * RECORD;
            for c in pending[..whole].chunks_exact(RECORD) {
                let word = |i: usize| {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(&c[i * 8..i * 8 + 8]);
                    u64::from_ne_bytes(w)
                };
                let area = Area { start: word(0), end: word(1), flags: word(2) };
                // A thread-filtered iterator whose output took more than
                // one read starts over from its last break instead of
                // ending (kernel/bpf/task_iter.c, up to 6.18 at least):
                // areas come in address order, so going back means done.
                if out.last().is_some_and(|last| area.start <= last.start) {
                    return Ok(out);
                }
                if out.len() >= MAX_AREAS {
                    return Err(SysError::new(
                        "the task_vma iterator: more areas than a process may have",
                        pid,
                        Errno(libc::E2BIG),
                    ));
                }
                out.push(area);
            }
            pending.drain(..whole);
        }
    }
}

/// Areas of this process, one per flag that cryopod restores, each with
/// that flag set; unmapped when dropped. Made to check the iterator's flag
/// bits against smaps' names before they are trusted.
pub struct Probes {
    /// (start, length, the smaps name of the flag set on it).
    areas: Vec<(u64, usize, &'static str)>,
}

impl Probes {
    pub fn map() -> SysResult<Probes> {
        let mut p = Probes { areas: Vec::new() };
        let len = 2 * crate::PAGE_SIZE as usize;
        for name in ["hg", "nh", "dc", "wf", "dd", "lo", "gd", "mg"] {
            let grows = if name == "gd" { libc::MAP_GROWSDOWN } else { 0 };
            // SAFETY: a new private anonymous mapping at an address of the
            // kernel's choice: no existing memory is touched.
            let addr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | grows,
                    -1,
                    0,
                )
            };
            if addr == libc::MAP_FAILED {
                return Err(SysError::last("mapping a flag probe", 0));
            }
            p.areas.push((addr as u64, len, name));
            let advice = match name {
                "hg" => Some(libc::MADV_HUGEPAGE),
                "nh" => Some(libc::MADV_NOHUGEPAGE),
                "dc" => Some(libc::MADV_DONTFORK),
                "wf" => Some(libc::MADV_WIPEONFORK),
                "dd" => Some(libc::MADV_DONTDUMP),
                "mg" => Some(libc::MADV_MERGEABLE),
                _ => None,
            };
            // SAFETY: the calls change only the flags of the mapping made
            // just above, which nothing else uses.
            let r = unsafe {
                match (advice, name) {
                    (Some(a), _) => libc::madvise(addr, len, a),
                    (None, "lo") => libc::mlock(addr, len),
                    _ => 0,
                }
            };
            if r != 0 {
                // A kernel without the feature (no THP, no KSM): the flag is never
                // set there, so it needs no probe.
                p.areas.pop();
                // SAFETY: unmaps the mapping made above, used by nothing.
                unsafe { libc::munmap(addr, len) };
            }
        }
        Ok(p)
    }

    /// (start, the smaps name of the flag set on it).
    pub fn areas(&self) -> impl Iterator<Item = (u64, &'static str)> + '_ {
        self.areas.iter().map(|&(a, _, n)| (a, n))
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        for &(addr, len, _) in &self.areas {
            // SAFETY: each was mapped by `Probes::map` and is used by nothing.
            unsafe { libc::munmap(addr as *mut libc::c_void, len) };
        }
    }
}

/// Bytes the program writes per area.
const RECORD: usize = 24;
/// More than `vm.max_map_count` allows (65530 by default).
const MAX_AREAS: usize = 1 << 22;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_own_areas_like_maps_once_each() {
        let it = VmaIter::load(&Layout::of_kernel().expect("BTF")).expect("load the iterator");
        // Enough areas that the output takes several reads (the kernel's
        // buffer holds about 1300 records), where the kernel starts over.
        let many: Vec<_> = (0..3000).map(|_| Probes::map().expect("probes")).collect();
        let ranges = |maps: &str| -> Vec<(u64, u64)> {
            maps.lines()
                .filter(|l| !l.ends_with("[vsyscall]"))
                .filter_map(|l| {
                    let (s, e) = l.split(' ').next()?.split_once('-')?;
                    Some((u64::from_str_radix(s, 16).ok()?, u64::from_str_radix(e, 16).ok()?))
                })
                .collect()
        };
        // Other tests of this process map and unmap memory meanwhile: keep
        // a try whose maps did not change around the iterator's read.
        let (maps, areas) = (0..50)
            .find_map(|_| {
                let before = std::fs::read_to_string("/proc/self/maps").ok()?;
                let areas = it.areas(std::process::id() as i32).expect("areas");
                let after = std::fs::read_to_string("/proc/self/maps").ok()?;
                (before == after).then_some((after, areas))
            })
            .expect("maps that stay still for a moment");
        let got: Vec<(u64, u64)> = areas.iter().map(|a| (a.start, a.end)).collect();
        assert!(got.len() > 3000, "{} areas", got.len());
        assert_eq!(got, ranges(&maps));
        drop(many);
        let main_stack = maps.lines().find(|l| l.ends_with("[stack]")).and_then(|l| l.split('-').next());
        let main_stack = main_stack.and_then(|s| u64::from_str_radix(s, 16).ok()).expect("[stack] in maps");
        let stack = areas.iter().find(|a| a.start == main_stack);
        assert!(stack.is_some_and(|a| a.flags & vm::GROWSDOWN != 0), "{stack:x?}");
    }
}
