//! BPF iterator programs built here rather than compiled: a few
//! instructions each, with the field offsets they load taken from the
//! running kernel's BTF (`/sys/kernel/btf/vmlinux`), so that the verifier
//! checks every load against the kernel's own types. This module holds
//! what every such program needs: the instructions' encoding, reading the
//! BTF, loading a program, and starting an iteration whose output is read
//! like a file. The programs themselves are in `vma_iter` (a process's
//! memory areas) and `sock_errors` (the errors pending on a process's sockets).

use crate::{Errno, Pid, SysError, SysResult};
use btf_rs::{Backend, Btf, Type};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_PROG_LOAD: i64 = 5;
const BPF_LINK_CREATE: i64 = 28;
const BPF_ITER_CREATE: i64 = 33;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_ITER: u32 = 28;
/// Helper numbers (`enum bpf_func_id`).
pub const FUNC_SEQ_WRITE: i32 = 127;
pub const FUNC_SKC_TO_TCP_SOCK: i32 = 137;

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

/// `union bpf_iter_link_info`, its task member: one thread's objects.
#[repr(C)]
#[derive(Default)]
pub struct IterTask {
    pub tid: u32,
    pub pid: u32,
    pub pid_fd: u32,
    pub _pad: u32,
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
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

pub fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | (dst & 0xf), off, imm }
}

/// `dst = *(u64 *)(src + off)`
pub fn load(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x79, dst, src, off, 0)
}

/// `dst = *(u32 *)(src + off)`
pub fn load32(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x61, dst, src, off, 0)
}

/// `*(u64 *)(dst + off) = src`
pub fn store(dst: u8, off: i16, src: u8) -> Insn {
    insn(0x7b, dst, src, off, 0)
}

/// `if reg == 0 goto +skip`
pub fn if_zero(reg: u8, skip: i16) -> Insn {
    insn(0x15, reg, 0, skip, 0)
}

/// `call helper`
pub fn call(helper: i32) -> Insn {
    insn(0x85, 0, 0, 0, helper)
}

/// `dst = src`
pub fn mov(dst: u8, src: u8) -> Insn {
    insn(0xbf, dst, src, 0, 0)
}

/// `dst = imm`
pub fn mov_imm(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm)
}

/// `dst += imm`
pub fn add_imm(dst: u8, imm: i32) -> Insn {
    insn(0x07, dst, 0, 0, imm)
}

/// `r0 = 0; exit`
pub fn exit_zero() -> [Insn; 2] {
    [mov_imm(0, 0), insn(0x95, 0, 0, 0, 0)]
}

pub fn btf_err(what: String) -> SysError {
    SysError::new(what, 0, Errno(libc::ENOENT))
}

/// The running kernel's BTF. Mapped, it is parsed only where looked at (a
/// sixth of the time of parsing it all, which older kernels need: they
/// cannot map it). Reading it takes milliseconds: keep what is found.
pub fn kernel_btf() -> SysResult<Btf> {
    let path = "/sys/kernel/btf/vmlinux";
    Btf::from_file_with_backend(path, Backend::Mmap)
        .or_else(|_| Btf::from_file(path))
        .map_err(|e| btf_err(format!("reading {path}: {e}")))
}

/// The BTF id of function `name` (an iterator's attach point, such as
/// `bpf_iter_task_vma`).
pub fn func_id(btf: &Btf, name: &str) -> SysResult<u32> {
    let types = btf.resolve_types_by_name(name).map_err(|e| btf_err(format!("BTF: {name}: {e}")))?;
    btf.resolve_ids_by_name(name)
        .map_err(|e| btf_err(format!("BTF: {name}: {e}")))?
        .into_iter()
        .zip(types)
        .find(|(_, t)| matches!(t, Type::Func(_)))
        .map(|(id, _)| id)
        .ok_or_else(|| btf_err(format!("BTF: no function {name}")))
}

/// The struct named `name`.
pub fn struct_type(btf: &Btf, name: &str) -> SysResult<Type> {
    btf.resolve_types_by_name(name)
        .map_err(|e| btf_err(format!("BTF: {name}: {e}")))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(|| btf_err(format!("BTF: no struct {name}")))
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

/// The offset of `member` in struct `ty` (named `ty_name`), as a load's
/// offset.
pub fn field(btf: &Btf, ty: &Type, ty_name: &str, member: &str) -> SysResult<i16> {
    member_offset(btf, ty, member)
        .and_then(|o| i16::try_from(o).ok())
        .ok_or_else(|| btf_err(format!("BTF: {ty_name} has no {member}")))
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

/// Load iterator program `insns` for the iterator whose attach function has
/// BTF id `func_id` (needs CAP_BPF and CAP_PERFMON, or root). `name`: the
/// program's name (up to 15 bytes); `what`: what it is, for errors.
pub fn load_iter(insns: &[Insn], func_id: u32, name: &str, what: &str) -> SysResult<OwnedFd> {
    let license = c"GPL";
    let attr = |log: &mut [u8]| {
        let mut a = ProgLoad {
            prog_type: BPF_PROG_TYPE_TRACING,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            expected_attach_type: BPF_TRACE_ITER,
            attach_btf_id: func_id,
            ..Default::default()
        };
        if !log.is_empty() {
            (a.log_level, a.log_size, a.log_buf) = (1, log.len() as u32, log.as_mut_ptr() as u64);
        }
        let n = name.len().min(15);
        a.prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
        a
    };
    let op = format!("loading {what}");
    // Without a log first (a log too small for a successful load's makes
    // older kernels fail it); with one only to say why it failed.
    bpf(BPF_PROG_LOAD, &mut attr(&mut []), &op, 0).or_else(|_| {
        let mut log = vec![0u8; 64 << 10];
        bpf(BPF_PROG_LOAD, &mut attr(&mut log), &op, 0).map_err(|mut e| {
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            if let Some(last) = text.lines().last() {
                e.op = format!("{} (verifier: {last})", e.op);
            }
            e
        })
    })
}

/// Start one iteration of program `prog` (limited to one task's objects
/// with `task`): its output, read as a file. An iterator over a network
/// namespace's sockets visits the namespace of the thread that calls this.
pub fn start(prog: &OwnedFd, task: Option<&IterTask>, what: &str, pid: Pid) -> SysResult<std::fs::File> {
    let mut link = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_TRACE_ITER,
        iter_info: task.map_or(0, |t| t as *const IterTask as u64),
        iter_info_len: task.map_or(0, |_| std::mem::size_of::<IterTask>() as u32),
        ..Default::default()
    };
    let link = bpf(BPF_LINK_CREATE, &mut link, &format!("attaching {what}"), pid)?;
    let mut create = IterCreate { link_fd: link.as_raw_fd() as u32, flags: 0 };
    let iter = bpf(BPF_ITER_CREATE, &mut create, &format!("starting {what}"), pid)?;
    Ok(std::fs::File::from(iter))
}

/// Read an iteration's output whole: records of `len` bytes whose first
/// word increases (an address, a descriptor number), laid end to end. A
/// thread-filtered iterator whose output took more than one read starts
/// over from its last break instead of ending (kernel/bpf/task_iter.c, up
/// to 6.18 at least): a record whose first word does not increase means
/// done. More than `max` records is an error (E2BIG).
pub fn ordered_records(mut file: std::fs::File, len: usize, max: usize, what: &str, pid: Pid) -> SysResult<Vec<u8>> {
    let read_err =
        |e: std::io::Error| SysError::new(format!("reading {what}"), pid, Errno(e.raw_os_error().unwrap_or(0)));
    let mut buf = vec![0u8; 64 << 10];
    let mut pending: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    let mut last: Option<u64> = None;
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).map_err(read_err)?;
        if n == 0 {
            return Ok(out);
        }
        pending.extend_from_slice(&buf[..n]);
        let whole = pending.len() / len * len;
        for c in pending[..whole].chunks_exact(len) {
            let key = word(c, 0);
            if last.is_some_and(|l| key <= l) {
                return Ok(out);
            }
            if out.len() / len >= max {
                return Err(SysError::new(format!("{what}: more records than there can be"), pid, Errno(libc::E2BIG)));
            }
            last = Some(key);
            out.extend_from_slice(c);
        }
        pending.drain(..whole);
    }
}

/// The `i`th native-endian u64 of `record`.
pub fn word(record: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(b) = record.get(i * 8..i * 8 + 8) {
        w.copy_from_slice(b);
    }
    u64::from_ne_bytes(w)
}
