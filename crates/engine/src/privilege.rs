//! What a restore needs from the process that runs it, so that `cryopod
//! check` can say beforehand what is missing instead of a restore failing
//! half-way: giving processes their PIDs (clone3 with set_tid), making a
//! pod's namespaces and network, setting other users' ids, capabilities
//! and resource limits above our own.

use crate::{procfs, trust};
use cryopod_image::Manifest;

const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_CHECKPOINT_RESTORE: u32 = 40;

/// What this process lacks to restore `m`, one sentence each (empty: nothing).
pub fn missing(m: &Manifest) -> Vec<String> {
    let status = procfs::read(std::process::id() as i32, "status").unwrap_or_default();
    let eff = procfs::status_hex(&status, "CapEff");
    let prm = procfs::status_hex(&status, "CapPrm");
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    let uid = procfs::status_ids(&status, "Uid")[1];
    let gid = procfs::status_ids(&status, "Gid")[1];
    let mut out = Vec::new();
    if m.pod.is_some() {
        if !has(CAP_SYS_ADMIN) || !has(CAP_NET_ADMIN) {
            out.push(
                "restoring a pod needs CAP_SYS_ADMIN and CAP_NET_ADMIN (namespaces, mounts, network); this process \
                 lacks them"
                    .to_string(),
            );
        }
    } else if !has(CAP_CHECKPOINT_RESTORE) && !has(CAP_SYS_ADMIN) {
        out.push(
            "restoring needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN to give processes their original PIDs; this \
             process has neither"
                .to_string(),
        );
    }
    let live = || m.processes.iter().filter(|p| p.zombie_status.is_none());
    if !has(CAP_SETUID) {
        if let Some(p) = live().find(|p| p.creds.uids.iter().any(|&u| u != uid)) {
            out.push(format!("pid {} runs as uids {:?}: setting them needs CAP_SETUID", p.pid, p.creds.uids));
        }
    }
    if !has(CAP_SETGID) {
        if let Some(p) = live().find(|p| p.creds.gids.iter().chain(&p.creds.groups).any(|&g| g != gid)) {
            out.push(format!("pid {} has other groups than ours: setting them needs CAP_SETGID", p.pid));
        }
    }
    if let Some(p) = live().find(|p| p.creds.cap_prm & !prm != 0) {
        out.push(format!(
            "pid {} has capabilities {:#x} that this process does not have",
            p.pid,
            p.creds.cap_prm & !prm
        ));
    }
    if !has(CAP_SYS_RESOURCE) {
        let above = live().find_map(|p| {
            p.rlimits.iter().enumerate().find_map(|(res, &(_, hard))| {
                (hard > trust::own_hard_limit(res).unwrap_or(0)).then(|| (p.pid, trust::rlimit_name(res)))
            })
        });
        if let Some((pid, name)) = above {
            out.push(format!("pid {pid} has a hard {name} above ours: raising it needs CAP_SYS_RESOURCE"));
        }
    }
    out
}
