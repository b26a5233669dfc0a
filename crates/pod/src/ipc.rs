//! The pod's IPC namespace in a checkpoint: SysV shared memory segments
//! (contents in files of the image, checked by hash, sealed under the
//! image's key if it has one), semaphore sets with
//! their values, message queues with their messages (copied with MSG_COPY,
//! not removed), and POSIX message queues (received and sent back in the
//! same order). Read by a helper that joins the pod's IPC namespace;
//! re-created by the holder in the new pod's, with the same SysV ids
//! (`kernel/*_next_id`), owners and modes.

use crate::{PodError, Result};
use cryopod_engine::outdir::OutDir;
use cryopod_image::pod::{MsgQueue, PodIpc, PosixMqueue, SemSet, ShmSegment};
use cryopod_image::{ImageDir, ImageKey};
use cryopod_sys::{ipc, ns};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

/// Rows of /proc/sysvipc/<what> (of the caller's IPC namespace).
fn rows(what: &str) -> Result<Vec<Vec<i64>>> {
    let p = format!("/proc/sysvipc/{what}");
    let text = std::fs::read_to_string(&p).map_err(PodError::io(&p))?;
    Ok(text
        .lines()
        .skip(1)
        .map(|l| {
            l.split_whitespace()
                .enumerate()
                // perms (column 2) is octal.
                .map(|(i, f)| if i == 2 { i64::from_str_radix(f, 8).unwrap_or(0) } else { f.parse().unwrap_or(0) })
                .collect()
        })
        .collect())
}

fn col(r: &[i64], i: usize) -> i64 {
    r.get(i).copied().unwrap_or(0)
}

/// In the helper: read everything, writing segment contents into new
/// files of the image (noted in its journal, so a failed checkpoint
/// removes them even though this runs in another process).
fn read_all(dir: &OutDir, image_key: Option<&ImageKey>) -> Result<PodIpc> {
    let mut out = PodIpc::default();
    // key shmid perms size cpid lpid nattch uid gid ...
    for r in rows("shm")? {
        let (key, id, mode, size) = (col(&r, 0) as i32, col(&r, 1) as i32, col(&r, 2) as u32, col(&r, 3) as u64);
        let mut data = ipc::shm_read(id, size as usize)?;
        let name = format!("ipc-shm-{id}");
        let path = dir.path().join(&name);
        if let Some(k) = image_key {
            data = k.seal_bytes(&name, &data).map_err(cryopod_image::ImageError::from)?;
        }
        dir.create(&name)?.write_all(&data).map_err(PodError::io(&path))?;
        let hash = *blake3::hash(&data).as_bytes();
        let perm = (col(&r, 7) as u32, col(&r, 8) as u32, mode & 0o777);
        let removed = mode & 0o1000 != 0;
        out.shm.push(ShmSegment { key, id, perm, size, data: (name, data.len() as u64, hash), removed });
    }
    // key semid perms nsems uid gid ...
    for r in rows("sem")? {
        let (key, id, mode, n) = (col(&r, 0) as i32, col(&r, 1) as i32, col(&r, 2) as u32, col(&r, 3) as usize);
        let values = ipc::sem_values(id, n)?;
        out.sem.push(SemSet { key, id, perm: (col(&r, 4) as u32, col(&r, 5) as u32, mode & 0o777), values });
    }
    // key msqid perms cbytes qnum lspid lrpid uid gid ...
    for r in rows("msg")? {
        let (key, id, mode) = (col(&r, 0) as i32, col(&r, 1) as i32, col(&r, 2) as u32);
        let (cbytes, qnum) = (col(&r, 3) as usize, col(&r, 4) as usize);
        let max = std::fs::read_to_string("/proc/sys/kernel/msgmax")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(8192usize)
            .max(cbytes);
        let msgs = ipc::msg_copy_all(id, qnum, max)?;
        let qbytes = ipc::msg_qbytes(id)?;
        out.msg.push(MsgQueue { key, id, perm: (col(&r, 7) as u32, col(&r, 8) as u32, mode & 0o777), qbytes, msgs });
    }
    // POSIX queues: list them through a private mqueue mount.
    ns::unshare(libc::CLONE_NEWNS)?;
    ns::mount("", "/", "", libc::MS_REC | libc::MS_PRIVATE, "")?;
    ns::mount("mqueue", "/tmp", "mqueue", 0, "")?;
    let rd = std::fs::read_dir("/tmp").map_err(PodError::io("mqueue"))?;
    let mut names: Vec<(String, std::fs::Metadata)> =
        rd.flatten().filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.metadata().ok()?))).collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, md) in names {
        use std::os::unix::fs::MetadataExt;
        let q = ipc::mq_read(&name)?;
        out.mqueue.push(PosixMqueue {
            name,
            perm: (md.uid(), md.gid(), md.mode() & 0o777),
            maxmsg: q.maxmsg,
            msgsize: q.msgsize,
            msgs: q.msgs,
        });
    }
    Ok(out)
}

/// Read the IPC namespace of the pod whose first process is `init`
/// (frozen), writing shared memory contents into the image directory
/// (sealed under `key` if there is one).
pub fn collect(init: i32, dir: &OutDir, key: Option<&ImageKey>) -> Result<PodIpc> {
    crate::join::read_inside(init, libc::CLONE_NEWIPC, "the pod's IPC namespace", || read_all(dir, key))
}

/// Owners of a `--userns` pod's objects as the pod sees them (they were
/// read from the host): `to_pod` maps a host id to the pod's.
pub fn to_pod_ids(ipc: &mut PodIpc, to_pod: impl Fn(u32) -> Result<u32>) -> Result<()> {
    let perms = ipc
        .shm
        .iter_mut()
        .map(|s| &mut s.perm)
        .chain(ipc.sem.iter_mut().map(|s| &mut s.perm))
        .chain(ipc.msg.iter_mut().map(|q| &mut q.perm))
        .chain(ipc.mqueue.iter_mut().map(|q| &mut q.perm));
    for p in perms {
        p.0 = to_pod(p.0)?;
        p.1 = to_pod(p.1)?;
    }
    Ok(())
}

/// Once a restored pod's processes are attached again: mark the segments
/// that were marked for removal (the pod of `init`).
pub fn remove_marked(ipc: &PodIpc, init: i32) -> Result<()> {
    let ids: Vec<i32> = ipc.shm.iter().filter(|s| s.removed).map(|s| s.id).collect();
    if ids.is_empty() {
        return Ok(());
    }
    crate::join::read_inside(init, libc::CLONE_NEWIPC, "marking SysV segments for removal", || {
        for id in ids {
            ipc::shm_remove(id)?;
        }
        Ok(())
    })
}

/// Check the image's shared memory files before anything is created;
/// returns their contents (opened, for a sealed image), in the order of
/// `ipc.shm`.
pub fn check_files(ipc: &PodIpc, img: &ImageDir) -> Result<Vec<File>> {
    let mut out = Vec::with_capacity(ipc.shm.len());
    for s in &ipc.shm {
        let f = crate::snapshot::checked_file(img, &s.data)?;
        if f.metadata().map_err(PodError::io(&s.data.0))?.len() > s.size {
            return Err(PodError::Invalid(format!("image: SysV segment {} has more contents than size", s.id)));
        }
        out.push(f);
    }
    Ok(out)
}

fn next_id(what: &str, id: i32) -> Result<()> {
    let p = format!("/proc/sys/kernel/{what}_next_id");
    std::fs::write(&p, id.to_string()).map_err(PodError::io(&p))
}

fn same_id(what: &str, want: i32, got: i32) -> Result<()> {
    if got != want {
        return Err(PodError::Invalid(format!("SysV {what} {want} came back with id {got}")));
    }
    Ok(())
}

/// In the holder, in the new IPC namespace (with the host's /proc still
/// mounted): create everything again, each SysV object at its id.
/// `files` are the segments' contents from [`check_files`].
pub fn restore(ipc: &PodIpc, files: &[File]) -> Result<()> {
    for (s, f) in ipc.shm.iter().zip(files) {
        // Checked: at most the segment's size.
        let len = f.metadata().map_err(PodError::io(&s.data.0))?.len();
        let len = usize::try_from(len).map_err(|_| PodError::Invalid(format!("SysV segment {}: size", s.id)))?;
        let mut data = vec![0u8; len];
        f.read_exact_at(&mut data, 0).map_err(PodError::io(&s.data.0))?;
        next_id("shm", s.id)?;
        same_id("segment", s.id, ipc::shm_create(s.key, s.size as usize, s.perm, &data)?)?;
    }
    for s in &ipc.sem {
        next_id("sem", s.id)?;
        same_id("semaphore set", s.id, ipc::sem_create(s.key, &s.values, s.perm)?)?;
    }
    for q in &ipc.msg {
        next_id("msg", q.id)?;
        same_id("message queue", q.id, ipc::msg_create(q.key, &q.msgs, q.qbytes, q.perm)?)?;
    }
    // (The kernel forgets each *_next_id once it has used it.)
    for q in &ipc.mqueue {
        let pq = ipc::PosixQueue { maxmsg: q.maxmsg, msgsize: q.msgsize, msgs: q.msgs.clone() };
        ipc::mq_create(&q.name, &pq, q.perm)?;
    }
    Ok(())
}
