//! BPF maps a program holds (issue 11, class 9): hash, array, and their
//! per-CPU and LRU kinds, whose entries user space can read and write.
//! Checkpoint reads what the map was made with and every entry through a
//! copy of the fd; restore makes a map like it, fills it, freezes it if it
//! was frozen, and opens it with the program's access (read-only or
//! write-only) last. Other kinds (program arrays, maps of maps, ring
//! buffers, ...) are refused: their contents name kernel objects.

use crate::{procfs, EngineError, Result};
use cryopod_image::{BpfMapRec, FileKind, BPF_MAP_TYPES};
use cryopod_sys::{bpf_map, pidfd, TargetFd};
use std::os::fd::{AsFd, OwnedFd};

/// The most bytes of entries a map may hold in an image.
const CONTENTS_MAX: usize = 256 << 20;

/// The map behind fd `fd` of `pid`.
pub fn collect(pid: i32, fd: i32) -> Result<FileKind> {
    let refuse = |why: String| EngineError::Other(why);
    let pfd = pidfd::pidfd_open(pid)?;
    let copy = pidfd::pidfd_getfd(&pfd, pid, TargetFd(fd))?;
    let i = bpf_map::info(&copy)?;
    if !BPF_MAP_TYPES.contains(&i.map_type) {
        return Err(refuse(format!(
            "a BPF map of type {} (only hash and array maps and their per-CPU and LRU kinds are carried: the others hold kernel objects)",
            i.map_type
        )));
    }
    let info = procfs::read(pid, &format!("fdinfo/{fd}"))?;
    let frozen = info.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["frozen:", "1"]);
    let percpu = matches!(i.map_type, 5 | 6 | 10);
    let mut rec = BpfMapRec {
        id: i.id,
        map_type: i.map_type,
        key_size: i.key_size,
        value_size: i.value_size,
        max_entries: i.max_entries,
        map_flags: i.map_flags,
        map_extra: i.map_extra,
        name: i.name,
        frozen,
        cpus: if percpu { bpf_map::possible_cpus()? } else { 0 },
        entries: Vec::new(),
    };
    let (ksize, vsize) = (rec.key_size as usize, rec.value_bytes());
    let mut total = 0usize;
    let mut key: Option<Vec<u8>> = None;
    // An array's keys are its indices; a hash's are walked (at most its
    // size, should a BPF program change it meanwhile).
    for n in 0..rec.max_entries {
        let k = if matches!(rec.map_type, 2 | 6) {
            let mut k = vec![0u8; ksize];
            k[..4.min(ksize)].copy_from_slice(&n.to_ne_bytes()[..4.min(ksize)]);
            k
        } else {
            match bpf_map::next_key(copy.as_fd(), key.as_deref(), ksize)? {
                Some(k) => k,
                None => break,
            }
        };
        if let Some(v) = bpf_map::lookup(copy.as_fd(), &k, vsize)? {
            total += k.len() + v.len();
            if total > CONTENTS_MAX {
                return Err(refuse(format!("a BPF map holding more than {} MiB", CONTENTS_MAX >> 20)));
            }
            rec.entries.push((k.clone(), v));
        }
        key = Some(k);
    }
    Ok(FileKind::BpfMap(Box::new(rec)))
}

/// Make map `m` again, filled, frozen if it was, opened with the access
/// of its description (`accmode`: O_RDONLY, O_WRONLY, O_RDWR). `made`:
/// the maps made so far, by their ids at checkpoint then now: another
/// description of one of them opens that map again.
pub fn restore(m: &BpfMapRec, accmode: u32, made: &mut std::collections::HashMap<u32, u32>) -> Result<OwnedFd> {
    const BPF_F_RDONLY: u32 = 1 << 3;
    const BPF_F_WRONLY: u32 = 1 << 4;
    let access = match accmode & libc::O_ACCMODE as u32 {
        0 => BPF_F_RDONLY,
        1 => BPF_F_WRONLY,
        _ => 0,
    };
    if let Some(&now) = made.get(&m.id) {
        return Ok(bpf_map::fd_by_id(now, access)?);
    }
    if m.cpus > 0 && m.cpus != bpf_map::possible_cpus()? {
        return Err(EngineError::Other(format!(
            "a per-CPU BPF map of {} CPUs, on a machine of {}",
            m.cpus,
            bpf_map::possible_cpus()?
        )));
    }
    let i = bpf_map::MapInfo {
        map_type: m.map_type,
        key_size: m.key_size,
        value_size: m.value_size,
        max_entries: m.max_entries,
        map_flags: m.map_flags,
        name: m.name.clone(),
        map_extra: m.map_extra,
        id: 0,
    };
    let fd = bpf_map::create(&i)?;
    for (k, v) in &m.entries {
        bpf_map::update(fd.as_fd(), k, v)?;
    }
    if m.frozen {
        bpf_map::freeze(fd.as_fd())?;
    }
    let now = bpf_map::info(&fd)?.id;
    made.insert(m.id, now);
    match access {
        0 => Ok(fd),
        access => Ok(bpf_map::fd_by_id(now, access)?),
    }
}
