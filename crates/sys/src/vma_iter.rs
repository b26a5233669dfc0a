//! Every memory area of a process with its kernel flags, read through the
//! kernel's `task_vma` BPF iterator. `/proc/<pid>/smaps` is the only other
//! place that shows an area's flags (VmFlags), and it walks every page-table
//! entry to count pages on the way: about 12 ms per GiB of resident memory,
//! the longest step of a frozen checkpoint of a large heap. The iterator
//! visits the areas alone, in microseconds.
//!
//! The program is eighteen instructions, built here rather than compiled
//! (see `bpf_iter`): for each area it writes `(start, end, flags, memory
//! policy)` (the policy's address: whether it has one) to the
//! iterator's output. The offsets of those fields in `struct
//! vm_area_struct` come from the running kernel's BTF, and the verifier
//! checks every load against it. The flag bits are the kernel's own `VM_*` values, not
//! an ABI: callers check them against smaps once (see `cryopod-engine`'s
//! `mm::flags`) before trusting them.

use crate::bpf_iter::*;
use crate::{Pid, SysError, SysResult};
use btf_rs::Btf;
use std::os::fd::OwnedFd;

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
    /// Whether the area has a memory policy of its own (mbind); always
    /// false on a kernel without NUMA.
    pub policy: bool,
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
        let (func_id, offsets) = offsets(&kernel_btf()?)?;
        Ok(Layout { func_id, offsets })
    }
}

/// Where the fields sit in `struct vm_area_struct`, in bytes (no
/// `vm_policy` without NUMA).
#[derive(Clone, Copy)]
struct Offsets {
    start: i16,
    end: i16,
    flags: i16,
    policy: Option<i16>,
}

fn program(o: &Offsets) -> Vec<Insn> {
    let mut p = vec![
        load(6, 1, 16), // r6 = ctx->vma (NULL at the end)
        if_zero(6, 14), // if r6 == 0 goto out
        load(7, 1, 0),  // r7 = ctx->meta
        load(2, 6, o.start),
        store(10, -32, 2),
        load(2, 6, o.end),
        store(10, -24, 2),
        load(2, 6, o.flags),
        store(10, -16, 2),
        match o.policy {
            Some(off) => load(2, 6, off),
            None => mov_imm(2, 0),
        },
        store(10, -8, 2),
        load(1, 7, 0),   // r1 = meta->seq
        mov(2, 10),      // r2 = r10
        add_imm(2, -32), // r2 -= 32
        mov_imm(3, 32),  // r3 = 32
        call(FUNC_SEQ_WRITE),
    ];
    p.extend(exit_zero()); // out:
    p
}

fn offsets(btf: &Btf) -> SysResult<(u32, Offsets)> {
    let func_id = func_id(btf, "bpf_iter_task_vma")?;
    let vma = struct_type(btf, "vm_area_struct")?;
    let f = |name| field(btf, &vma, "vm_area_struct", name);
    let policy = f("vm_policy").ok();
    Ok((func_id, Offsets { start: f("vm_start")?, end: f("vm_end")?, flags: f("vm_flags")?, policy }))
}

impl VmaIter {
    /// Load the program (needs CAP_BPF and CAP_PERFMON, or root).
    pub fn load(layout: &Layout) -> SysResult<VmaIter> {
        let prog = load_iter(&program(&layout.offsets), layout.func_id, "cryopod_v", "the task_vma iterator")?;
        Ok(VmaIter { prog })
    }

    /// The areas of process `pid` (its main thread's address space), in
    /// address order.
    pub fn areas(&self, pid: Pid) -> SysResult<Vec<Area>> {
        let task = IterTask { tid: pid as u32, ..Default::default() };
        let what = "the task_vma iterator";
        let file = start(&self.prog, Some(&task), what, pid)?;
        let records = ordered_records(file, RECORD, MAX_AREAS, what, pid)?;
        Ok(records
            .chunks_exact(RECORD)
            .map(|c| Area { start: word(c, 0), end: word(c, 1), flags: word(c, 2), policy: word(c, 3) != 0 })
            .collect())
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
const RECORD: usize = 32;
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
        // Read in a child that inherited them and only waits: this
        // process's own maps move with every allocation (the iterator's
        // output among them) and other tests' mappings.
        // SAFETY: the child calls only pause() until it is killed.
        let child = unsafe { libc::fork() };
        if child == 0 {
            loop {
                // SAFETY: waits for a signal.
                unsafe { libc::pause() };
            }
        }
        assert!(child > 0, "fork");
        let maps = std::fs::read_to_string(format!("/proc/{child}/maps")).expect("maps");
        let areas = it.areas(child);
        // SAFETY: ends and collects the child forked above.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        let areas = areas.expect("areas");
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
