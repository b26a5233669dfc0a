//! The pod's file system view, set up in its private mount namespace. With
//! a root file system: the rootfs bind-mounted onto itself, a minimal /dev
//! (a tmpfs with the harmless device nodes bound from the host, its own
//! devpts and /dev/shm), a tmpfs /tmp, a read-only /sys, then pivot_root
//! into it and the old root detached. Without one, the host tree stays
//! visible through the private mount namespace, with a /sys of the pod's
//! own. Either way the pod's PID 1 mounts its own /proc.

use crate::{PodError, Result};
use cryopod_sys::ns;
use std::path::Path;

const MS_NOSUID: u64 = libc::MS_NOSUID;
const MS_NODEV: u64 = libc::MS_NODEV;
const MS_NOEXEC: u64 = libc::MS_NOEXEC;

/// Device nodes a pod gets, bound from the host's.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| PodError::Invalid(format!("{} is not valid UTF-8", p.display())))
}

/// Check a rootfs before anything is created for the pod.
pub fn check_rootfs(root: &Path) -> Result<()> {
    if !root.is_dir() {
        return Err(PodError::Invalid(format!("rootfs {} does not exist or is not a directory", root.display())));
    }
    if !root.join("proc").is_dir() {
        return Err(PodError::Invalid(format!(
            "rootfs {} has no /proc directory to mount the pod's /proc on",
            root.display()
        )));
    }
    path_str(root).map(|_| ())
}

/// In the holder, right after unsharing the mount namespace. With `pivot`
/// false the root change is left to the pod's PID 1 (a pod in its own user
/// namespace may mount its /proc only while the host's is still in view).
pub fn setup(rootfs: Option<&Path>, pivot: bool) -> Result<()> {
    // Nothing we mount propagates back to the host.
    ns::mount("", "/", "", libc::MS_REC | libc::MS_PRIVATE, "")?;
    let Some(root) = rootfs else {
        // The host tree, but the pod's own /sys (its network devices) and
        // /dev/shm (POSIX shared memory belongs with the pod's IPC, and is
        // saved with it).
        ns::mount("sysfs", "/sys", "sysfs", libc::MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "")?;
        if Path::new("/dev/shm").is_dir() {
            ns::mount("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")?;
        }
        return Ok(());
    };
    let r = path_str(root)?;
    ns::mount(r, r, "", libc::MS_BIND | libc::MS_REC, "")?;
    if root.join("dev").is_dir() {
        setup_dev(&format!("{r}/dev"))?;
    }
    if root.join("tmp").is_dir() {
        ns::mount("tmpfs", &format!("{r}/tmp"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")?;
    }
    if root.join("sys").is_dir() {
        ns::mount("sysfs", &format!("{r}/sys"), "sysfs", libc::MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "")?;
    }
    if pivot {
        pivot_into(root)?;
    }
    Ok(())
}

/// Make `root` the root of the calling process's mount namespace.
pub fn pivot_into(root: &Path) -> Result<()> {
    let r = path_str(root)?;
    ns::chdir(r)?;
    ns::pivot_root(".", ".")?;
    ns::umount(".", libc::MNT_DETACH)?;
    Ok(ns::chdir("/")?)
}

fn setup_dev(dev: &str) -> Result<()> {
    ns::mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536k")?;
    for d in DEVICES {
        let target = format!("{dev}/{d}");
        std::fs::File::create(&target).map_err(PodError::io(&target))?;
        ns::mount(&format!("/dev/{d}"), &target, "", libc::MS_BIND, "")?;
    }
    let pts = format!("{dev}/pts");
    std::fs::create_dir(&pts).map_err(PodError::io(&pts))?;
    ns::mount("devpts", &pts, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")?;
    let shm = format!("{dev}/shm");
    std::fs::create_dir(&shm).map_err(PodError::io(&shm))?;
    ns::mount("shm", &shm, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let l = format!("{dev}/{link}");
        std::os::unix::fs::symlink(to, &l).map_err(PodError::io(&l))?;
    }
    Ok(())
}

/// In the pod's PID 1, once it is in the pod's namespaces: its /proc
/// (under `root`, the rootfs not pivoted into yet, or "").
pub fn mount_proc(root: &str) -> Result<()> {
    ns::mount("proc", &format!("{root}/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "")?;
    Ok(())
}
