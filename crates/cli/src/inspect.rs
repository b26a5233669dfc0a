//! `cryopod inspect`: the tree, memory maps, fds and threads of an image,
//! its owner, and whatever is damaged in it (verified as a restore would).

use anyhow::{Context, Result};
use cryopod_image::{cpu, ImageDir, ImageKey, Manifest, ObjectOrigin, PackHome, Process, Vma, VmaKind, PAGE};
use serde_json::{json, Value};
use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

/// Print what the image holds; fail (after printing) if it is damaged. A
/// sealed image without its key: what its header says, then the refusal.
pub fn run(dir: &Path, as_json: bool, key: Option<Arc<ImageKey>>) -> Result<i32> {
    let sealed = |img: ImageDir| img.header().ok().filter(|h| h.sealed).map(|h| (img, h));
    if let Some((img, h)) = ImageDir::open(dir).ok().filter(|_| key.is_none()).and_then(sealed) {
        if as_json {
            let v = json!({"format_version": h.version, "sealed": true, "owner": img.owner().to_string()});
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!("image {} (format {}, encrypted, owner {})", dir.display(), h.version, img.owner());
        }
        return Err(anyhow::Error::from(cryopod_image::SealError::NeedKey))
            .with_context(|| format!("cannot read image {}", dir.display()));
    }
    let (img, m) = crate::check::open(dir, key)?;
    let damage = crate::check::damage(&img, &m);
    if as_json {
        let mut v = json(&m, &img);
        v["damage"] = json!(damage);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", text(&m, &img));
        if !damage.is_empty() {
            println!("\ndamaged:");
            for d in &damage {
                println!("  {d}");
            }
        }
    }
    if !damage.is_empty() {
        anyhow::bail!("image {} is damaged: {}", dir.display(), damage.join("; "));
    }
    Ok(0)
}

fn prot(v: &Vma) -> String {
    let p = v.prot as i32;
    format!(
        "{}{}{}{}",
        if p & libc_prot::READ != 0 { 'r' } else { '-' },
        if p & libc_prot::WRITE != 0 { 'w' } else { '-' },
        if p & libc_prot::EXEC != 0 { 'x' } else { '-' },
        if v.shared { 's' } else { 'p' }
    )
}

mod libc_prot {
    pub const READ: i32 = 1;
    pub const WRITE: i32 = 2;
    pub const EXEC: i32 = 4;
}

fn kind(m: &Manifest, v: &Vma) -> &'static str {
    match v.kind {
        VmaKind::Anon => "anon",
        VmaKind::Object { object, .. } => match m.objects.get(object as usize).map(|o| &o.origin) {
            Some(ObjectOrigin::Memfd { .. }) => "memfd",
            Some(ObjectOrigin::Deleted { .. }) => "deleted",
            _ => "shared-anon",
        },
        VmaKind::File { .. } => "file",
        VmaKind::Vvar => "vvar",
        VmaKind::VvarVclock => "vvar_vclock",
        VmaKind::Vdso => "vdso",
        VmaKind::Vsyscall => "vsyscall",
        VmaKind::SysvShm { .. } => "sysv-shm",
    }
}

fn saved(v: &Vma) -> u64 {
    v.runs.iter().filter(|r| r.chunk.is_some()).map(|r| u64::from(r.pages) * PAGE).sum()
}

fn zero(v: &Vma) -> u64 {
    v.runs.iter().filter(|r| r.chunk.is_none()).map(|r| u64::from(r.pages) * PAGE).sum()
}

fn file_desc(m: &Manifest, i: u32) -> String {
    m.files.get(i as usize).map(|f| cryopod_engine::files::describe(m, f)).unwrap_or_else(|| "?".into())
}

/// Total size of the image's own files: manifest, packs, a pod's files (as
/// the manifest says; saturating, since the numbers are the image's).
fn image_size(m: &Manifest, img: &ImageDir) -> u64 {
    let pod = m.pod.iter().flat_map(|p| p.tmpfs_archive.iter().map(|a| a.1).chain(p.ipc.shm.iter().map(|s| s.data.1)));
    let own = m.packs.iter().filter(|p| p.home == PackHome::Own).map(|p| p.size);
    own.chain(pod).fold(img.manifest_len(), u64::saturating_add)
}

/// Chunks this image wrote (in its own packs or its own packs in a store)
/// and chunks it shares (in its parents' packs or other images' in the
/// store): (own chunks, own stored bytes, shared chunks, shared stored bytes).
fn own_and_shared(m: &Manifest) -> (u64, u64, u64, u64) {
    let mine = m.store.as_ref().map(|s| cryopod_image::shared::hex(&s.image_id));
    let mut t = (0, 0, 0, 0);
    for c in &m.chunks {
        let Some(p) = m.packs.get(c.pack as usize) else { continue };
        let own = match p.home {
            PackHome::Own => true,
            PackHome::Parent(_) => false,
            PackHome::Store => mine.as_ref().is_some_and(|id| p.name.starts_with(id.as_str())),
        };
        match own {
            true => (t.0 += 1, t.1 += u64::from(c.stored)),
            false => (t.2 += 1, t.3 += u64::from(c.stored)),
        };
    }
    t
}

/// Where the image's shared chunks are, in words.
fn base_text(m: &Manifest) -> String {
    let (oc, ob, sc, sb) = own_and_shared(m);
    let mut s = format!("chunks: {oc} own ({ob} bytes stored), {sc} shared ({sb} bytes)");
    if let Some(p) = &m.parent {
        let _ = write!(s, "; incremental on {} (reads through {} parent images)", p.path, m.chain_depth());
    }
    if let Some(st) = &m.store {
        let _ = write!(s, "; in store {}", st.path);
    }
    s
}

fn children(m: &Manifest, pid: i32) -> Vec<&Process> {
    m.processes.iter().filter(|p| p.ppid == pid && p.pid != m.root_pid).collect()
}

pub fn text(m: &Manifest, img: &ImageDir) -> String {
    let mut s = String::new();
    let (refd, stored) = m.memory_bytes();
    let _ = writeln!(
        s,
        "image {} (format {}{}, cryopod {}, kernel {}, owner {}), {} processes, memory {} bytes referenced, {} \
         stored in {} bytes ({} of {} chunks compressed), image {} bytes",
        img.path().display(),
        cryopod_image::manifest::FORMAT_VERSION,
        if img.key().is_some() { ", encrypted" } else { "" },
        m.tool_version,
        m.kernel,
        img.owner(),
        m.processes.len(),
        refd,
        stored,
        m.packed_bytes(),
        m.compressed_chunks(),
        m.chunks.len(),
        image_size(m, img)
    );
    let _ = writeln!(s, "{}", base_text(m));
    let _ = writeln!(
        s,
        "cpu: {}; extended state {} (XCR0 {:#x}, XSAVE area {} bytes); instruction sets: {}",
        m.cpu.model,
        cpu::component_names(m.cpu.xcr0).join(", "),
        m.cpu.xcr0,
        m.cpu.xsave_size,
        m.cpu.features.names().join(" ")
    );
    if let Some(pod) = &m.pod {
        let _ = writeln!(s, "\n{}", pod_text(pod));
    }
    let _ = writeln!(s, "\ntree:");
    fn walk(m: &Manifest, p: &Process, depth: usize, s: &mut String) {
        let comm = p.threads.first().map(|t| t.comm.as_str()).unwrap_or("");
        let state = if p.zombie_status.is_some() { " zombie" } else { "" };
        let _ = writeln!(
            s,
            "{:indent$}{} {comm} (pgid {}, sid {}, {} threads){state}",
            "",
            p.pid,
            p.pgid,
            p.sid,
            p.threads.len(),
            indent = depth * 2 + 2
        );
        for c in children(m, p.pid) {
            walk(m, c, depth + 1, s);
        }
    }
    if let Some(root) = m.processes.iter().find(|p| p.pid == m.root_pid) {
        walk(m, root, 0, &mut s);
    }
    for p in &m.processes {
        if p.zombie_status.is_some() {
            continue;
        }
        let _ = writeln!(s, "\nprocess {} ({}):", p.pid, p.mm.exe);
        let tids: Vec<String> = p.threads.iter().map(|t| format!("{} {}", t.tid, t.comm)).collect();
        let _ = writeln!(s, "  threads: {}", tids.join(", "));
        let _ = writeln!(s, "  memory:");
        for v in &p.vmas {
            let _ = writeln!(
                s,
                "    {:012x}-{:012x} {} {:11} saved {:>10} zero {:>9}  {}",
                v.start,
                v.end,
                prot(v),
                kind(m, v),
                saved(v),
                zero(v),
                v.name
            );
        }
        let _ = writeln!(s, "  fds:");
        for f in &p.fds {
            let what = match (p.carried.contains(&f.fd), f.cloexec) {
                (true, _) => " (only in a queued message: carried for it)",
                (false, true) => " (cloexec)",
                (false, false) => "",
            };
            let _ = writeln!(s, "    {:>4}{what} {}", f.fd, file_desc(m, f.file));
        }
    }
    s
}

fn ip(p: &cryopod_image::PodImage) -> Option<String> {
    p.ip.map(|(a, n)| format!("{}/{n}", std::net::Ipv4Addr::from(a)))
}

fn pod_text(p: &cryopod_image::PodImage) -> String {
    let mounts: Vec<&str> = p.mounts.iter().map(|m| m.target.as_str()).collect();
    format!(
        "pod {} (hostname {}, ip {}, memory {:?}, pids {:?}, cpus {:?}), rootfs {}, command {:?}\n  \
         mounts saved: {mounts:?}; SysV: {} segments, {} semaphore sets, {} message queues; POSIX queues: {}",
        p.name,
        p.hostname,
        ip(p).unwrap_or_else(|| "-".into()),
        p.memory,
        p.pids,
        p.cpus,
        p.rootfs.as_deref().unwrap_or("(host tree)"),
        p.cmd,
        p.ipc.shm.len(),
        p.ipc.sem.len(),
        p.ipc.msg.len(),
        p.ipc.mqueue.len()
    )
}

fn pod_json(p: &cryopod_image::PodImage) -> Value {
    json!({
        "name": p.name, "hostname": p.hostname, "domainname": p.domainname, "ip": ip(p),
        "rootfs": p.rootfs, "memory": p.memory, "pids": p.pids, "cpus": p.cpus, "cmd": p.cmd,
        "detached": p.detached,
        "mounts": p.mounts.iter().map(|m| json!({"target": m.target, "kind": format!("{:?}", m.kind)})).collect::<Vec<_>>(),
        "links": p.links.iter().map(|l| json!({"name": l.name, "up": l.up})).collect::<Vec<_>>(),
        "sysv_shm": p.ipc.shm.iter().map(|s| s.id).collect::<Vec<_>>(),
        "sysv_sem": p.ipc.sem.iter().map(|s| s.id).collect::<Vec<_>>(),
        "sysv_msg": p.ipc.msg.iter().map(|q| q.id).collect::<Vec<_>>(),
        "posix_mqueues": p.ipc.mqueue.iter().map(|q| q.name.clone()).collect::<Vec<_>>(),
    })
}

pub fn json(m: &Manifest, img: &ImageDir) -> Value {
    let (refd, stored) = m.memory_bytes();
    let procs: Vec<Value> = m
        .processes
        .iter()
        .map(|p| {
            json!({
                "pid": p.pid, "ppid": p.ppid, "pgid": p.pgid, "sid": p.sid,
                "zombie_status": p.zombie_status,
                "exe": p.mm.exe,
                "threads": p.threads.iter().map(|t| json!({"tid": t.tid, "comm": t.comm})).collect::<Vec<_>>(),
                "vmas": p.vmas.iter().map(|v| json!({
                    "start": v.start, "end": v.end, "prot": prot(v), "kind": kind(m, v), "name": v.name,
                    "saved_bytes": saved(v), "zero_bytes": zero(v),
                })).collect::<Vec<_>>(),
                "fds": p.fds.iter().map(|f| json!({"fd": f.fd, "cloexec": f.cloexec, "file": file_desc(m, f.file)})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "format_version": cryopod_image::manifest::FORMAT_VERSION,
        "sealed": img.key().is_some(),
        "pod": m.pod.as_ref().map(pod_json),
        "tool_version": m.tool_version,
        "kernel": m.kernel,
        "cpu": json!({
            "model": m.cpu.model, "xcr0": m.cpu.xcr0, "xsave_size": m.cpu.xsave_size,
            "state": cpu::component_names(m.cpu.xcr0), "features": m.cpu.features.names(),
        }),
        "root_pid": m.root_pid,
        "memory_referenced_bytes": refd,
        "memory_stored_bytes": stored,
        "memory_packed_bytes": m.packed_bytes(),
        "chunks": m.chunks.len(),
        "chunks_compressed": m.compressed_chunks(),
        "image_bytes": image_size(m, img),
        "own_chunks": own_and_shared(m).0,
        "own_bytes": own_and_shared(m).1,
        "shared_chunks": own_and_shared(m).2,
        "shared_bytes": own_and_shared(m).3,
        "parent": m.parent.as_ref().map(|p| p.path.clone()),
        "chain_depth": m.chain_depth(),
        "store": m.store.as_ref().map(|s| s.path.clone()),
        "owner": img.owner().to_string(),
        "processes": procs,
    })
}
