//! Images are untrusted input, opened safely: a FIFO, a device or a link
//! where a file belongs is refused at once by restore, inspect and check
//! (nothing hangs); a user cannot swap files under a restore to get their
//! program run as root; a user's image gets at most the restorer's
//! resource limits; inspect and check verify every pack and name what is
//! damaged; check names a privilege the caller lacks. All as root, with
//! real processes.

mod common;
use common::*;
use cryopod_image::{Manifest, Pack};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The system's python (pyenv's lives under /root, out of reach of the
/// unprivileged user a restored program runs as).
const PY: &str = "/usr/bin/python3";

/// Sets its open-files soft limit to 1000 (and, asked, as root still, a
/// login uid or real-time scheduling), drops to uid/gid 65534, and after
/// the restore checks it still has those ids and limits.
const USER_PROGRAM: &str = r#"
import os, resource, sys, time
d = sys.argv[1]
extra = sys.argv[2] if len(sys.argv) > 2 else ''
if extra == 'loginuid':
    open('/proc/self/loginuid', 'w').write('4242')
if extra == 'fifo':
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (1000, hard))
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
want = (os.getresuid(), os.getresgid(), resource.getrlimit(resource.RLIMIT_NOFILE))
print('READY', flush=True)
while not os.path.exists(d + '/go'):
    time.sleep(0.02)
got = (os.getresuid(), os.getresgid(), resource.getrlimit(resource.RLIMIT_NOFILE))
print('PASS' if got == want else 'FAIL (%r, want %r)' % (got, want), flush=True)
"#;

/// Start the user program (its output files are the user's, since a
/// restore opens them as the image's owner).
fn start_user_program(name: &str) -> Run {
    start_user_program_with(name, "")
}

/// [`start_user_program`], set up first as `extra` asks (see
/// `USER_PROGRAM`).
fn start_user_program_with(name: &str, extra: &str) -> Run {
    let d = format!("/tmp/cryopod-test-{name}-{}", std::process::id());
    let run = Run::start(name, PY, &["-c", USER_PROGRAM, &d, extra]);
    for f in ["out", "err"] {
        std::os::unix::fs::chown(run.dir.join(f), Some(65534), Some(65534)).unwrap();
    }
    run
}

fn gone(pids: &[i32]) -> bool {
    pids.iter().all(|p| !Path::new(&format!("/proc/{p}")).exists())
}

fn run_cmd(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).status().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(st.success(), "{cmd} {args:?} failed");
}

/// Start a restore of `img` (a user's image whose pack `pages-9.pack` is a
/// FIFO), then swap its manifest for a link to a root-owned file and open
/// the FIFO for writing, as an attacker would to release a restore blocked
/// on it. Returns what the restore said.
fn restore_while_swapping(img: &Path) -> (i32, String) {
    let mut cmd = Command::new(cryopod_bin());
    cmd.args(["restore", img.to_str().unwrap(), "--detach"]);
    let restore = std::thread::spawn(move || run_within(cmd, 20));
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_file(img.join("manifest")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", img.join("manifest")).unwrap();
    let _ = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(img.join("pages-9.pack"));
    let (code, _, err) = restore.join().expect("restore thread");
    (code, err)
}

/// Make `img` the user's, with manifest `m` plus a pack that is a FIFO
/// (size 0: no length check stands in its way).
fn user_image_with_fifo(img: &Path, m: &Manifest) {
    let _ = std::fs::remove_file(img.join("manifest"));
    let _ = std::fs::remove_file(img.join("pages-9.pack"));
    let mut m = m.clone();
    m.packs.push(Pack { name: "pages-9.pack".into(), size: 0, home: cryopod_image::PackHome::Own });
    write_manifest(img, &m);
    run_cmd("mkfifo", &[img.join("pages-9.pack").to_str().unwrap()]);
    chown_tree(img, 65534, 65534);
}

/// The attack of issue 7: a user's manifest asks for root, one of its packs
/// is a FIFO that would hold the restore, and meanwhile the user swaps the
/// manifest for a link to a root-owned file so that an owner check by path
/// would see root. The restore must refuse at once and run nothing.
#[test]
fn fifo_pack_and_manifest_swap_cannot_run_anything_as_root() {
    let mut run = start_user_program("swap");
    run.checkpoint(&[]);
    let pids = run.image_pids();
    let img = run.image.clone();
    let honest = read_manifest(&img);
    // The user's own ids: the FIFO is refused (never waited for).
    user_image_with_fifo(&img, &honest);
    let (code, err) = restore_while_swapping(&img);
    assert!(code != 0 && (err.contains("is a FIFO") || err.contains("is a symbolic link")), "{err}");
    reap_all();
    assert!(gone(&pids), "a process of the image runs");
    // Asking for root: refused too, whatever is swapped meanwhile.
    let mut root = honest.clone();
    for p in &mut root.processes {
        p.creds.uids = [0; 4];
        p.creds.gids = [0; 4];
        p.creds.cap_prm = (1 << 41) - 1;
        p.creds.cap_eff = (1 << 41) - 1;
    }
    user_image_with_fifo(&img, &root);
    let (code, err) = restore_while_swapping(&img);
    assert_ne!(code, 0, "the restore must be refused: {err}");
    assert!(err.contains("owned by uid 65534") && err.contains("uids [0, 0, 0, 0]"), "{err}");
    std::thread::sleep(Duration::from_millis(200));
    reap_all();
    assert!(gone(&pids), "a process of the image runs");
    // The user's FIFO and link are left as they were.
    assert!(std::fs::symlink_metadata(img.join("manifest")).unwrap().file_type().is_symlink());
    assert!(std::fs::symlink_metadata(img.join("pages-9.pack")).is_ok());
    // The honest image still restores, as the user.
    std::fs::remove_file(img.join("manifest")).unwrap();
    std::fs::remove_file(img.join("pages-9.pack")).unwrap();
    write_manifest(&img, &honest);
    chown_tree(&img, 65534, 65534);
    run.restore_and_verify();
}

type Make = fn(&Path);

fn make_fifo(p: &Path) {
    run_cmd("mkfifo", &[p.to_str().unwrap()]);
}

fn make_zero_device(p: &Path) {
    run_cmd("mknod", &[p.to_str().unwrap(), "c", "1", "5"]);
}

fn make_link_to_zero(p: &Path) {
    std::os::unix::fs::symlink("/dev/zero", p).unwrap();
}

#[test]
fn fifo_device_and_link_manifests_and_packs_are_refused_at_once() {
    let mut run = Run::testprog("kinds", env!("CARGO_BIN_EXE_tp-memory"));
    run.checkpoint(&[]);
    let pids = run.image_pids();
    let img = run.image.clone();
    let kinds: [(&str, Make); 3] =
        [("a FIFO", make_fifo), ("a character device", make_zero_device), ("a symbolic link", make_link_to_zero)];
    for file in ["manifest", "pages-0.pack"] {
        let path = img.join(file);
        let good = std::fs::read(&path).unwrap();
        for (what, make) in kinds {
            std::fs::remove_file(&path).unwrap();
            make(&path);
            let s = img.to_str().unwrap();
            for args in [&["restore", s, "--detach"][..], &["inspect", s], &["check", "--image", s]] {
                let (code, out, err) = cryopod_within(args);
                let said = format!("{out}{err}");
                assert_ne!(code, 0, "{file} as {what}: {args:?} succeeded");
                assert!(said.contains(&format!("is {what}, not a regular file")), "{file} as {what}, {args:?}: {said}");
                assert!(std::fs::symlink_metadata(&path).is_ok(), "{file} as {what}: it was removed");
            }
            assert!(gone(&pids), "{file} as {what}: a process was created");
            std::fs::remove_file(&path).unwrap();
            std::fs::write(&path, &good).unwrap();
        }
    }
    run.restore_and_verify();
}

#[test]
fn inspect_and_check_say_what_is_damaged() {
    let mut run = Run::testprog("inspect-damage", env!("CARGO_BIN_EXE_tp-memory"));
    run.checkpoint(&[]);
    let pids = run.image_pids();
    let img = run.image.clone();
    let s = img.to_str().unwrap();
    let pack = img.join("pages-0.pack");
    let good = std::fs::read(&pack).unwrap();
    let (code, out, _) = cryopod_within(&["inspect", s]);
    assert!(code == 0 && !out.contains("damaged"), "{out}");
    // A flipped byte: the chunk, its pack and offset, and who uses it.
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 1;
    std::fs::write(&pack, &bad).unwrap();
    let (code, out, err) = cryopod_within(&["inspect", s]);
    assert_ne!(code, 0, "inspect must fail on a damaged image");
    assert!(out.contains("damaged:") && err.contains("is damaged"), "{out}\n{err}");
    for text in [&out, &err] {
        assert!(text.contains("page chunk") && text.contains("/pages-0.pack at offset"), "{text}");
        assert!(text.contains("fails its checksum"), "{text}");
        assert!(text.contains("used by process") || text.contains("used by memory object"), "{text}");
    }
    let (code, _, err) = cryopod_within(&["inspect", "--json", s]);
    assert!(code != 0 && err.contains("fails its checksum"), "{err}");
    let (code, _, err) = cryopod_within(&["check", "--image", s]);
    assert!(code != 0 && err.contains("fails its checksum") && err.contains("cannot be restored here"), "{err}");
    // Truncated, then missing.
    std::fs::write(&pack, &good[..good.len() - 4096]).unwrap();
    for args in [&["inspect", s][..], &["check", "--image", s]] {
        let (code, _, err) = cryopod_within(args);
        assert!(code != 0 && err.contains("pages-0.pack is truncated"), "{args:?}: {err}");
    }
    std::fs::remove_file(&pack).unwrap();
    for args in [&["inspect", s][..], &["check", "--image", s]] {
        let (code, _, err) = cryopod_within(args);
        assert!(code != 0 && err.contains("pages-0.pack is missing"), "{args:?}: {err}");
    }
    std::fs::write(&pack, &good).unwrap();
    // An errno is said once, not twice (a pack name too long to open).
    let m = read_manifest(&img);
    let mut long = m.clone();
    long.packs[0].name = "p".repeat(300);
    write_manifest(&img, &long);
    for args in [&["restore", s, "--detach"][..], &["inspect", s], &["check", "--image", s]] {
        let (code, _, err) = cryopod_within(args);
        assert!(code != 0 && err.matches("(os error 36)").count() == 1, "{args:?}: {err}");
    }
    write_manifest(&img, &m);
    assert!(gone(&pids));
    let (code, out, _) = cryopod_within(&["check", "--image", s]);
    assert!(code == 0 && out.starts_with("ok:"), "{out}");
    run.restore_and_verify();
}

#[test]
fn check_names_missing_privileges_and_what_a_user_image_may_not_ask() {
    let mut run = start_user_program("check-priv");
    run.checkpoint(&[]);
    run.image_pids();
    let img = run.image.clone();
    let s = img.to_str().unwrap();
    chown_tree(&img, 65534, 65534);
    let (code, out, err) = cryopod_within(&["check", "--image", s]);
    assert!(code == 0 && out.starts_with("ok:"), "{out}{err}");
    // The user may read their image, but cannot give processes their PIDs.
    let mut cmd = Command::new(cryopod_bin());
    std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
    std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
    cmd.args(["check", "--image", s]);
    let (code, _, err) = run_within(cmd, 20);
    assert!(code != 0 && err.contains("CAP_CHECKPOINT_RESTORE"), "{err}");
    // Owned by another user: the image asks for ids that are not theirs.
    chown_tree(&img, 1000, 1000);
    let (code, _, err) = cryopod_within(&["check", "--image", s]);
    assert!(code != 0 && err.contains("owned by uid 1000 asks for pid"), "{err}");
    chown_tree(&img, 65534, 65534);
    run.restore_and_verify();
}

/// A user's image may not ask for what its user could not set: another
/// login uid, real-time scheduling (the restorer would set them with its
/// own privilege); refused naming the process and what it asks. Root's
/// own image of the same program is restored with them.
#[test]
fn a_user_image_may_not_ask_for_a_login_uid_or_real_time() {
    for (extra, want) in [("loginuid", "with login uid 4242"), ("fifo", "with real-time scheduling (policy 1)")] {
        let mut run = start_user_program_with(&format!("ask-{extra}"), extra);
        run.checkpoint(&[]);
        let img = run.image.clone();
        let s = img.to_str().unwrap();
        chown_tree(&img, 65534, 65534);
        let (code, _, err) = cryopod_within(&["check", "--image", s]);
        assert!(code != 0 && err.contains("owned by uid 65534 asks for pid") && err.contains(want), "{extra}: {err}");
        chown_tree(&img, 0, 0);
        run.restore_and_verify();
    }
}

/// A user's image gets at most the restorer's hard limits (refused naming
/// the resource otherwise), and gets its own limits set by itself once it
/// runs as the user.
#[test]
fn user_image_limits_stay_within_the_restorer() {
    let ours = {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit into a local struct.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
        r.rlim_max
    };
    assert!(ours > 1024, "this test needs a hard open-files limit above 1024 (it is {ours})");
    let mut run = start_user_program("rlimits");
    run.checkpoint(&[]);
    let pids = run.image_pids();
    let img = run.image.clone();
    chown_tree(&img, 65534, 65534);
    let mut cmd = Command::new(cryopod_bin());
    cmd.args(["restore", img.to_str().unwrap(), "--detach"]);
    // SAFETY: only setrlimit (async-signal-safe) between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let r = libc::rlimit { rlim_cur: 1024, rlim_max: 1024 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (code, _, err) = run_within(cmd, 20);
    assert!(code != 0 && err.contains("RLIMIT_NOFILE") && err.contains("above the restorer's 1024"), "{err}");
    assert!(gone(&pids));
    // Within the restorer's limits: restored, with its own soft limit.
    run.restore_and_verify();
}
