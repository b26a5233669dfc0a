//! The pod's mount table in a checkpoint. The mounts every pod gets (see
//! [`crate::fs`]) are made again by the holder at restore; what the pod
//! mounted itself is recorded: tmpfs mounts (their files go to an archive,
//! as do those of the standard /tmp and /dev/shm), fresh proc, sysfs,
//! devpts and mqueue instances, and bind mounts of paths inside the pod.
//! Anything else is refused with the mount named.

use crate::{PodError, Result};
use cryopod_engine::procfs::MountInfo;
use cryopod_image::pod::{PodMount, PodMountKind};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Mount points every pod gets from the holder (and its /proc).
pub fn standard(rootfs: bool) -> Vec<&'static str> {
    if rootfs {
        vec![
            "/",
            "/dev",
            "/dev/null",
            "/dev/zero",
            "/dev/full",
            "/dev/random",
            "/dev/urandom",
            "/dev/tty",
            "/dev/pts",
            "/dev/shm",
            "/tmp",
            "/sys",
            "/proc",
        ]
    } else {
        vec!["/proc", "/sys", "/dev/shm"]
    }
}

fn flags_of(options: &str) -> u64 {
    let mut f = 0;
    for o in options.split(',') {
        f |= match o {
            "ro" => libc::MS_RDONLY,
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            _ => 0,
        };
    }
    f
}

/// tmpfs options worth keeping (size, inodes, mode, owner).
/// For a `--userns` pod, owners as it sees them.
fn tmpfs_data(super_options: &str, userns: bool) -> String {
    super_options
        .split(',')
        .filter(|o| ["size=", "nr_inodes=", "mode=", "uid=", "gid="].iter().any(|k| o.starts_with(k)))
        .map(|o| match o.split_once('=') {
            Some((k @ ("uid" | "gid"), v)) if userns => {
                let id = v.parse::<u64>().ok().and_then(crate::create::pod_id);
                format!("{k}={}", id.unwrap_or(0))
            }
            _ => o.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// What to record of the pod's mount table: its own mounts, and every
/// tmpfs whose files must be saved (standard ones included). `host` is the
/// host's own mount table: without a rootfs, mounts the pod shares with
/// the host (same place, same file system) are not the pod's.
pub fn classify(pod: &[MountInfo], rootfs: bool, host: &[MountInfo], userns: bool) -> Result<Vec<PodMount>> {
    let std_targets = standard(rootfs);
    let root_mount = pod.iter().find(|m| m.target == "/");
    let mut out = Vec::new();
    let mut tmpfs = 0u32;
    // Of mounts stacked on one place only the topmost (the last listed) is
    // seen, saved and made again.
    let topmost = |i: usize, m: &MountInfo| !pod[i + 1..].iter().any(|n| n.target == m.target);
    for (i, m) in pod.iter().enumerate() {
        if !topmost(i, m) {
            continue;
        }
        let is_std = std_targets.contains(&m.target.as_str());
        let from_host = !rootfs && host.iter().any(|h| h.target == m.target && h.fstype == m.fstype);
        if from_host && !is_std {
            continue;
        }
        let flags = flags_of(&m.options);
        let kind = match m.fstype.as_str() {
            "tmpfs" => {
                // Only the standard tmpfs mounts with files in them matter.
                if is_std && !matches!(m.target.as_str(), "/tmp" | "/dev/shm") {
                    continue;
                }
                tmpfs += 1;
                PodMountKind::Tmpfs { index: tmpfs - 1 }
            }
            _ if is_std => continue,
            "proc" | "sysfs" | "devpts" | "mqueue" => PodMountKind::Fresh { fstype: m.fstype.clone() },
            _ => match root_mount {
                // A bind mount of a directory of the pod's own root fs.
                Some(r) if r.source == m.source && r.fstype == m.fstype && m.root.starts_with(&r.root) => {
                    let rel = m.root[r.root.len()..].trim_start_matches('/');
                    PodMountKind::Bind { source: format!("/{rel}") }
                }
                _ => {
                    return Err(PodError::Invalid(format!(
                        "the pod's mount of {} ({} from {}) cannot be checkpointed yet",
                        m.target, m.fstype, m.source
                    )))
                }
            },
        };
        let data = if m.fstype == "tmpfs" { tmpfs_data(&m.super_options, userns) } else { String::new() };
        out.push(PodMount { target: m.target.clone(), source: m.source.clone(), kind, flags, data });
    }
    Ok(out)
}

/// An image's path inside the pod: absolute, no `..` (it must not lead
/// out of the pod's root while that is not the root yet).
fn plain_path(p: &str) -> Result<()> {
    let ok = p.starts_with('/') && !Path::new(p).components().any(|c| c == std::path::Component::ParentDir);
    if !ok {
        return Err(PodError::Invalid(format!("image: mount path {p:?} is not a plain absolute path")));
    }
    Ok(())
}

/// Make one recorded mount again (in the pod's mount namespace). `root`
/// is where the pod's root is seen from the caller ("" once pivoted). A
/// missing mount point is created only inside a pod's own root file system
/// (`in_rootfs`): an image never makes directories in the host's tree.
pub fn apply(m: &PodMount, root: &str, in_rootfs: bool) -> Result<()> {
    use cryopod_sys::ns::mount;
    plain_path(&m.target)?;
    if let PodMountKind::Bind { source } = &m.kind {
        plain_path(source)?;
    }
    let target = format!("{root}{}", m.target);
    if !Path::new(&target).is_dir() {
        if !in_rootfs {
            return Err(PodError::Invalid(format!("mount point {} of the pod is missing", m.target)));
        }
        std::fs::create_dir_all(&target).map_err(PodError::io(&target))?;
    }
    match &m.kind {
        PodMountKind::Tmpfs { .. } => mount(&m.source, &target, "tmpfs", m.flags, &m.data)?,
        PodMountKind::Fresh { fstype } => mount(&m.source, &target, fstype, m.flags, "")?,
        PodMountKind::Bind { source } => {
            mount(&format!("{root}{source}"), &target, "", libc::MS_BIND | libc::MS_REC, "")?;
            if m.flags != 0 {
                mount("", &target, "", libc::MS_BIND | libc::MS_REMOUNT | m.flags, "")?;
            }
        }
    }
    Ok(())
}

/// Archive the files of every tmpfs mount of `mounts` (read under
/// `root`, the pod's root seen from here) into `out` (a new file at
/// `path`), as `tmpfs/<index>/`, sealed under `key` if there is one;
/// returns the size and BLAKE3 of the file as stored.
pub fn archive(
    root: &str,
    mounts: &[PodMount],
    (out, path): (std::fs::File, &Path),
    key: Option<&cryopod_image::ImageKey>,
) -> Result<(u64, [u8; 32])> {
    let w = Hashing { inner: std::io::BufWriter::new(out), hash: blake3::Hasher::new(), len: 0 };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let w = cryopod_image::seal::FileWriter::new(key, &name, w).map_err(PodError::io(path))?;
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    for m in mounts {
        if let PodMountKind::Tmpfs { index } = m.kind {
            let src = format!("{root}{}", m.target);
            append_tree(&mut b, Path::new(&src), Path::new(&format!("tmpfs/{index}"))).map_err(PodError::io(&src))?;
        }
    }
    let mut w = b.into_inner().and_then(|w| w.finish()).map_err(PodError::io(path))?;
    w.inner.flush().map_err(PodError::io(path))?;
    Ok((w.len, *w.hash.finalize().as_bytes()))
}

/// Append directory `dir` as `name`, and all under it. A regular file's
/// modification time goes with nanoseconds (a PAX record): a file mapped by
/// a process must look unchanged to the restore's check.
fn append_tree<W: Write>(b: &mut tar::Builder<W>, dir: &Path, name: &Path) -> std::io::Result<()> {
    b.append_dir(name, dir)?;
    let mut entries = std::fs::read_dir(dir)?.collect::<std::io::Result<Vec<_>>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let (path, to) = (e.path(), name.join(e.file_name()));
        let md = std::fs::symlink_metadata(&path)?;
        if md.is_dir() {
            append_tree(b, &path, &to)?;
            continue;
        }
        if md.is_file() && md.mtime() >= 0 {
            let t = format!("{}.{:09}", md.mtime(), md.mtime_nsec());
            b.append_pax_extensions([(PAX_MTIME, t.as_bytes())])?;
        }
        b.append_path_with_name(&path, &to)?;
    }
    Ok(())
}

const PAX_MTIME: &str = "mtime";

/// A PAX modification time "seconds.nanoseconds" (as [`append_tree`]
/// writes it), if well formed.
fn pax_mtime(v: &[u8]) -> Option<(i64, i64)> {
    let (s, ns) = std::str::from_utf8(v).ok()?.split_once('.')?;
    let ns: i64 = ns.parse().ok().filter(|n| (0..1_000_000_000).contains(n))?;
    Some((s.parse().ok()?, ns))
}

/// A writer that hashes and counts what goes through it (the archive's
/// size and BLAKE3 without reading it back).
struct Hashing<W> {
    inner: W,
    hash: blake3::Hasher,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// In the pod's mount namespace: unpack the archive's `tmpfs/<index>/`
/// entries into the matching mount points. Entry paths cannot leave their
/// mount point (`..` and absolute paths are refused by `unpack_in`).
/// With `pod_ids`, owners in the archive are host ids of a `--userns` pod:
/// set as the pod's own ids (we run inside its user namespace).
/// `root` is where the pod's root is seen from the caller.
pub fn unpack(archive: std::fs::File, mounts: &[PodMount], root: &str, pod_ids: bool) -> Result<()> {
    let mut a = tar::Archive::new(std::io::BufReader::new(archive));
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(!pod_ids);
    a.set_preserve_mtime(true);
    let entries = a.entries().map_err(PodError::io("tmpfs archive"))?;
    for e in entries {
        let mut e = e.map_err(PodError::io("tmpfs archive"))?;
        let path = e.path().map_err(PodError::io("tmpfs archive"))?.into_owned();
        let mut parts = path.components();
        let (Some(top), Some(idx)) = (parts.next(), parts.next()) else { continue };
        if top.as_os_str() != "tmpfs" {
            continue;
        }
        let idx: u32 = idx.as_os_str().to_str().and_then(|s| s.parse().ok()).unwrap_or(u32::MAX);
        let Some(m) = mounts.iter().find(|m| m.kind == PodMountKind::Tmpfs { index: idx }) else {
            return Err(PodError::Invalid(format!("tmpfs archive entry {} names no mount", path.display())));
        };
        plain_path(&m.target)?;
        let rest = parts.as_path();
        if rest.as_os_str().is_empty() {
            continue;
        }
        // Untrusted input: plain names only, nothing that climbs out.
        if !rest.components().all(|c| matches!(c, std::path::Component::Normal(_))) {
            return Err(PodError::Invalid(format!("tmpfs archive entry {} leaves its mount", path.display())));
        }
        let target = format!("{root}{}", m.target);
        let dest = Path::new(&target).join(rest);
        // Nor through a symbolic link unpacked before.
        let mut at = std::path::PathBuf::from(&target);
        for c in rest.parent().map(|p| p.components().collect::<Vec<_>>()).unwrap_or_default() {
            at.push(c);
            if std::fs::symlink_metadata(&at).map(|md| md.file_type().is_symlink()).unwrap_or(false) {
                return Err(PodError::Invalid(format!("tmpfs archive entry {} goes through a link", path.display())));
            }
        }
        let owner = (e.header().uid().unwrap_or(0), e.header().gid().unwrap_or(0));
        let mtime = match e.pax_extensions().map_err(PodError::io("tmpfs archive"))? {
            Some(exts) => exts.flatten().find(|x| x.key() == Ok(PAX_MTIME)).and_then(|x| pax_mtime(x.value_bytes())),
            None => None,
        };
        // (A file with holes, or space only reserved (fallocate), comes as
        // a GNU sparse entry.)
        let kind = e.header().entry_type();
        let regular = kind.is_file() || kind.is_gnu_sparse();
        e.unpack(&dest).map_err(PodError::io(&dest))?;
        if let (Some((sec, nsec)), true) = (mtime, regular) {
            let t = rustix::fs::Timespec { tv_sec: sec, tv_nsec: nsec };
            let times = rustix::fs::Timestamps { last_access: t, last_modification: t };
            rustix::fs::utimensat(rustix::fs::CWD, &dest, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| PodError::io(&dest)(e.into()))?;
        }
        if pod_ids {
            let (uid, gid) = (crate::create::pod_id(owner.0), crate::create::pod_id(owner.1));
            std::os::unix::fs::lchown(&dest, uid, gid).map_err(PodError::io(&dest))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_mount_paths_must_stay_inside() {
        assert!(plain_path("/data").is_ok());
        assert!(plain_path("/data/../../etc").is_err());
        assert!(plain_path("data").is_err());
    }

    #[test]
    fn mountinfo_lines_parse_with_escapes() {
        let mi = "36 35 0:33 / /my\\040dir rw,nosuid - tmpfs none rw,size=1024k,mode=750\n";
        let m = &cryopod_engine::procfs::parse_mountinfo(mi)[0];
        assert_eq!((m.target.as_str(), m.fstype.as_str(), m.source.as_str()), ("/my dir", "tmpfs", "none"));
        assert_eq!(flags_of(&m.options), libc::MS_NOSUID);
        assert_eq!(tmpfs_data("rw,size=1024k,mode=750,uid=100007", true), "size=1024k,mode=750,uid=7");
    }
}
