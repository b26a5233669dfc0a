//! What an image may ask for. An image is untrusted input: if it is owned by
//! a user other than root, restoring it (as root) must not give that user
//! anything: every process must run as the owner, with no capabilities,
//! only the owner's groups and at most the restorer's resource limits
//! (applied by the task itself once it has the owner's credentials), and
//! every file the restored tree gets is opened with the owner's filesystem
//! identity. A pod image must be root's: its record asks for mounts, a
//! root file system and addresses that only root may set up.
//!
//! The owner comes from the descriptors of the opened image
//! ([`ImageDir::owner`]), known before a byte of the manifest is parsed;
//! [`CheckedImage`] is the only way to an image a restore accepts, so the
//! order (owner, then parse, then what the manifest asks) cannot be skipped;
//! parsing a sealed image's manifest opens it with the key, so a missing
//! or wrong key, or a changed byte, stops a restore here, before anything
//! is made.

use crate::{EngineError, Result};
use cryopod_image::{FileKind, ImageDir, ImageOwner, Manifest};
use std::path::Path;

/// Who may be restored from a user's image: the owner's uid, primary gid
/// and groups.
#[derive(Debug, Clone)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// An image opened, its owner established, its manifest parsed and what it
/// asks for checked against that owner.
#[derive(Debug)]
pub struct CheckedImage {
    dir: ImageDir,
    manifest: Manifest,
    owner: Option<Owner>,
}

impl CheckedImage {
    /// Open the image in `path` with `key` (a sealed image needs it) and
    /// check it (see [`CheckedImage::check`]).
    pub fn open(path: &Path, key: Option<std::sync::Arc<cryopod_image::ImageKey>>) -> Result<CheckedImage> {
        Self::check(ImageDir::open(path)?.with_key(key))
    }

    /// The owner first (from the descriptors), then the manifest, then
    /// what the manifest asks for against the owner.
    pub fn check(dir: ImageDir) -> Result<CheckedImage> {
        let owner = owner_of(dir.owner());
        let manifest = dir.manifest()?;
        if let Some(o) = &owner {
            check(&manifest, o)?;
        }
        Ok(CheckedImage { dir, manifest, owner })
    }

    pub fn dir(&self) -> &ImageDir {
        &self.dir
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// `None` for a root-owned image.
    pub fn owner(&self) -> Option<&Owner> {
        self.owner.as_ref()
    }
}

/// The owner of a user's image with their groups; `None` for root's.
pub fn owner_of(o: ImageOwner) -> Option<Owner> {
    match o {
        ImageOwner::Root => None,
        ImageOwner::User { uid, gid } => {
            // The user's own groups; the group of their file only when the
            // system does not know them (a file's group may come from a
            // set-group-id directory, not from the user).
            let (gid, groups) = match groups_of(uid) {
                Some((primary, groups)) => (primary, groups),
                None => (gid, vec![gid]),
            };
            Some(Owner { uid, gid, groups })
        }
    }
}

/// Primary group and all groups of `uid` from /etc/passwd and /etc/group.
fn groups_of(uid: u32) -> Option<(u32, Vec<u32>)> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let (name, primary) = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() > 3 && f[2].parse::<u32>().ok() == Some(uid) {
            Some((f[0].to_string(), f[3].parse::<u32>().ok()?))
        } else {
            None
        }
    })?;
    let mut out = vec![primary];
    for l in std::fs::read_to_string("/etc/group").unwrap_or_default().lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() > 3 && f[3].split(',').any(|m| m == name) {
            if let Ok(g) = f[2].parse() {
                out.push(g);
            }
        }
    }
    Some((primary, out))
}

/// Names of the resource limits, by number.
pub const RLIMIT_NAMES: [&str; 16] = [
    "RLIMIT_CPU",
    "RLIMIT_FSIZE",
    "RLIMIT_DATA",
    "RLIMIT_STACK",
    "RLIMIT_CORE",
    "RLIMIT_RSS",
    "RLIMIT_NPROC",
    "RLIMIT_NOFILE",
    "RLIMIT_MEMLOCK",
    "RLIMIT_AS",
    "RLIMIT_LOCKS",
    "RLIMIT_SIGPENDING",
    "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE",
    "RLIMIT_RTPRIO",
    "RLIMIT_RTTIME",
];

pub fn rlimit_name(res: usize) -> String {
    RLIMIT_NAMES.get(res).map(|n| n.to_string()).unwrap_or_else(|| format!("resource limit {res}"))
}

/// This process's hard limit of resource `res` (`u64::MAX`: unlimited).
pub fn own_hard_limit(res: usize) -> Option<u64> {
    use rustix::process::Resource as R;
    let r = [
        R::Cpu,
        R::Fsize,
        R::Data,
        R::Stack,
        R::Core,
        R::Rss,
        R::Nproc,
        R::Nofile,
        R::Memlock,
        R::As,
        R::Locks,
        R::Sigpending,
        R::Msgqueue,
        R::Nice,
        R::Rtprio,
        R::Rttime,
    ];
    Some(rustix::process::getrlimit(*r.get(res)?).maximum.unwrap_or(u64::MAX))
}

/// Refuse a user's image that asks for more than its owner has: other
/// ids, groups or capabilities, hard resource limits above the
/// restorer's, real-time scheduling or I/O, another login uid, an OOM
/// score adjustment below the restorer's, cgroups of its own, or a pod.
pub fn check(m: &Manifest, owner: &Owner) -> Result<()> {
    let own_loginuid = crate::procfs::own_number("loginuid").map_or(u32::MAX, |v| v as u32);
    let own_oom = crate::procfs::own_number("oom_score_adj").unwrap_or(0) as i32;
    if let Some(p) = &m.pod {
        return Err(EngineError::Other(format!(
            "the image of pod {} is owned by uid {}: a pod image must be owned by root to be restored",
            p.name, owner.uid
        )));
    }
    // Socket files of other owners, and socket options only privilege may
    // set (the restorer makes the sockets).
    for f in &m.files {
        if let FileKind::Unix(u) = &f.kind {
            if let Some(&(_, uid, gid)) =
                u.queued_creds.iter().find(|&&(_, uid, gid)| uid != owner.uid || !owner.groups.contains(&gid))
            {
                return Err(EngineError::Other(format!(
                    "image owned by uid {} asks for a queued message from uid {uid}, gid {gid}; only root-owned images may do that",
                    owner.uid
                )));
            }
            if let Some((_, uid, _)) = u.file.filter(|&(_, uid, gid)| uid != owner.uid || !owner.groups.contains(&gid))
            {
                return Err(EngineError::Other(format!(
                    "image owned by uid {} asks for a socket file {} owned by uid {uid}; only root-owned images may do that",
                    owner.uid,
                    String::from_utf8_lossy(&u.name)
                )));
            }
        }
        if matches!(f.kind, FileKind::Ping { .. }) {
            return Err(EngineError::Other(format!(
                "image owned by uid {} asks for an {}, which the restore may make only as a group of net.ipv4.ping_group_range; only root-owned images may do that",
                owner.uid,
                crate::files::describe(m, f)
            )));
        }
        if matches!(
            f.kind,
            FileKind::RawIp { .. } | FileKind::Packet { .. } | FileKind::Fanotify { .. } | FileKind::BpfMap(_)
        ) {
            return Err(EngineError::Other(format!(
                "image owned by uid {} asks for a {}, which needs privilege (CAP_NET_RAW, CAP_SYS_ADMIN, CAP_BPF); only root-owned images may do that",
                owner.uid,
                crate::files::describe(m, f)
            )));
        }
        if let FileKind::Netlink(n) = &f.kind {
            if n.groups.iter().any(|&w| w != 0) {
                return Err(EngineError::Other(format!(
                    "image owned by uid {} asks for a netlink socket in multicast groups (protocol {}); only root-owned images may do that",
                    owner.uid, n.protocol
                )));
            }
        }
        let opts = f.kind.sock_opts();
        let int = |o: &cryopod_image::SockOpt| {
            i32::from_ne_bytes(o.value.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]))
        };
        // Buffer sizes beyond the system's maximum (read back doubled).
        let max = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap_or(0)
        };
        let beyond = |o: &cryopod_image::SockOpt, sysctl: &str| i64::from(int(o)) > 2 * max(sysctl);
        let privileged = opts.iter().find(|o| {
            (o.level, o.name) == (libc::SOL_SOCKET, libc::SO_MARK)
                || ((o.level, o.name) == (libc::SOL_SOCKET, libc::SO_PRIORITY) && !(0..=6).contains(&int(o)))
                || ((o.level, o.name) == (libc::SOL_SOCKET, libc::SO_SNDBUF) && beyond(o, "wmem_max"))
                || ((o.level, o.name) == (libc::SOL_SOCKET, libc::SO_RCVBUF) && beyond(o, "rmem_max"))
        });
        if let Some(o) = privileged {
            return Err(EngineError::Other(format!(
                "image owned by uid {} asks for a socket with option {} set to {}; only root-owned images may do that",
                owner.uid,
                match o.name {
                    libc::SO_MARK => "SO_MARK",
                    libc::SO_SNDBUF => "SO_SNDBUF (beyond net.core.wmem_max)",
                    libc::SO_RCVBUF => "SO_RCVBUF (beyond net.core.rmem_max)",
                    _ => "SO_PRIORITY",
                },
                int(o)
            )));
        }
    }
    for p in m.processes.iter().filter(|p| p.zombie_status.is_none()) {
        let c = &p.creds;
        let refuse = |what: String| {
            Err(EngineError::Other(format!(
                "image owned by uid {} asks for pid {} to run {what}; only root-owned images may do that",
                owner.uid, p.pid
            )))
        };
        if c.uids.iter().any(|&u| u != owner.uid) {
            return refuse(format!("as uids {:?}", c.uids));
        }
        if let Some(g) = c.gids.iter().chain(c.groups.iter()).find(|g| !owner.groups.contains(g)) {
            return refuse(format!("with group {g}"));
        }
        if c.cap_eff | c.cap_prm | c.cap_inh | c.cap_amb != 0 {
            return refuse("with capabilities".into());
        }
        // Locked at restore by us, before its limits apply: no more than
        // they let it lock.
        let locked: u64 =
            p.vmas.iter().filter(|v| v.madv & cryopod_image::vma_flags::LOCKED != 0).map(|v| v.end - v.start).sum();
        let memlock = p.rlimits.get(libc::RLIMIT_MEMLOCK as usize).map_or(0, |l| l.0);
        if locked > memlock {
            return refuse(format!("with {locked} bytes locked in memory, above its RLIMIT_MEMLOCK of {memlock}"));
        }
        if let Some((c, d)) = p.cgroups.first() {
            return refuse(format!("in a {c} cgroup of its own ({d}), with its settings"));
        }
        if p.attrs.loginuid != own_loginuid {
            return refuse(format!("with login uid {} (the restorer's is {own_loginuid})", p.attrs.loginuid));
        }
        if p.attrs.oom_score_adj < own_oom {
            return refuse(format!(
                "with an OOM score adjustment of {}, below the restorer's {own_oom}",
                p.attrs.oom_score_adj
            ));
        }
        for t in &p.threads {
            // SCHED_FIFO, SCHED_RR, SCHED_DEADLINE; IOPRIO_CLASS_RT.
            if matches!(t.attrs.sched.policy, 1 | 2 | 6) {
                return refuse(format!("thread {} with real-time scheduling (policy {})", t.tid, t.attrs.sched.policy));
            }
            if t.attrs.ioprio >> 13 == 1 {
                return refuse(format!("thread {} with real-time I/O priority", t.tid));
            }
        }
        for (res, &(_, hard)) in p.rlimits.iter().enumerate() {
            let ours = own_hard_limit(res).unwrap_or(0);
            if hard > ours {
                let show = |v: u64| if v == u64::MAX { "unlimited".to_string() } else { v.to_string() };
                return refuse(format!(
                    "with a hard {} of {}, above the restorer's {}",
                    rlimit_name(res),
                    show(hard),
                    show(ours)
                ));
            }
        }
    }
    Ok(())
}
