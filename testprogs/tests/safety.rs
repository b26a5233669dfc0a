//! Safety: a checkpoint that fails at any step leaves the tree running and
//! unharmed; a restore that fails kills everything it created and names the
//! object; damaged images and taken PIDs are refused before anything is
//! created.

mod common;
use common::*;
use std::path::Path;

fn status_field(pid: i32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

#[test]
fn failed_checkpoints_leave_the_tree_unharmed() {
    // tp-threads has threads blocked in futex, nanosleep and read, and one
    // spinning: the most fragile state to resume after injection.
    let run = Run::testprog("fault-ckpt", env!("CARGO_BIN_EXE_tp-threads"));
    let before = outside_view(run.pid);
    let points = ["after-freeze", "during-injection", "after-collect", "after-pages", "before-manifest"];
    for point in points {
        let image = run.dir.join(format!("img-{point}"));
        let (ok, err) =
            cryopod_with_fault(&["checkpoint", "--pid", &run.pid.to_string(), "-o", image.to_str().unwrap()], point);
        assert!(!ok, "{point}: checkpoint should fail");
        assert!(err.contains("left running") && err.contains(point), "{point}: {err}");
        assert!(!image.join("manifest").exists(), "{point}: a manifest was written");
        let leftovers: Vec<_> =
            std::fs::read_dir(&image).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        assert!(leftovers.is_empty(), "{point}: files left behind: {leftovers:?}");
        for t in std::fs::read_dir(format!("/proc/{}/task", run.pid)).unwrap().flatten() {
            let tid = t.file_name().to_string_lossy().into_owned();
            let st = std::fs::read_to_string(format!("/proc/{}/task/{tid}/status", run.pid)).unwrap();
            assert!(st.contains("TracerPid:\t0"), "{point}: thread {tid} still traced");
            assert!(!st.contains("State:\tt"), "{point}: thread {tid} still stopped");
        }
        let now = outside_view(run.pid);
        assert_eq!(before.2, now.2, "{point}: thread count changed");
        assert_eq!(before.1, now.1, "{point}: fds changed");
        assert_eq!(before.0, now.0, "{point}: memory map changed");
    }
    assert_eq!(status_field(run.pid, "TracerPid"), "0");
    // Unharmed: the program verifies all of its state and passes.
    let mut run = run;
    run.go_and_expect_pass();
}

#[test]
fn failed_restore_kills_what_it_created() {
    let mut run = Run::testprog("fault-restore", env!("CARGO_BIN_EXE_tp-tree"));
    run.checkpoint(&[]);
    let pids = run.image_pids();
    for point in ["restore-after-memory", "restore-before-resume"] {
        let (ok, err) = cryopod_with_fault(&["restore", run.image.to_str().unwrap(), "--detach"], point);
        assert!(!ok, "{point}: restore should fail");
        assert!(err.contains("nothing was left running") && err.contains(point), "{point}: {err}");
        let t = std::time::Instant::now();
        while let Some(p) = pids.iter().find(|p| Path::new(&format!("/proc/{p}")).exists()) {
            reap_all();
            assert!(t.elapsed().as_secs() < 10, "{point}: pid {p} left behind");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    // And the image still restores properly afterwards.
    run.restore_and_verify();
}

#[test]
fn damaged_images_are_refused_before_anything_runs() {
    let mut run = Run::testprog("damaged", env!("CARGO_BIN_EXE_tp-memory"));
    run.checkpoint(&[]);
    let pids = run.image_pids();
    let img = run.image.clone();
    let pack = img.join("pages-0.pack");
    let good = std::fs::read(&pack).unwrap();
    let restore = || cryopod(&["restore", img.to_str().unwrap(), "--detach"], &[]);
    let none_created = || pids.iter().all(|p| !Path::new(&format!("/proc/{p}")).exists());
    // Flipped byte in the page data.
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 1;
    std::fs::write(&pack, &bad).unwrap();
    let o = restore();
    assert_ne!(o.0, 0);
    assert!(o.2.contains("checksum"), "{}", o.2);
    assert!(none_created());
    // Truncated pack.
    std::fs::write(&pack, &good[..good.len() - 4096]).unwrap();
    let o = restore();
    assert_ne!(o.0, 0);
    assert!(o.2.contains("truncated"), "{}", o.2);
    assert!(none_created());
    // Corrupted manifest.
    std::fs::write(&pack, &good).unwrap();
    let man = img.join("manifest");
    let m = std::fs::read(&man).unwrap();
    let mut bad = m.clone();
    bad[m.len() - 10] ^= 0xff;
    std::fs::write(&man, &bad).unwrap();
    let o = restore();
    assert_ne!(o.0, 0);
    assert!(o.2.contains("checksum"), "{}", o.2);
    std::fs::write(&man, &m[..100]).unwrap();
    let o = restore();
    assert!(o.0 != 0 && o.2.contains("truncated"), "{}", o.2);
    let o = cryopod(&["inspect", img.to_str().unwrap()], &[]);
    assert!(o.0 != 0 && o.2.contains("truncated"), "{}", o.2);
    assert!(none_created());
    // Intact again: it restores.
    std::fs::write(&man, &m).unwrap();
    run.restore_and_verify();
}

#[test]
fn taken_pid_is_named_and_nothing_is_created() {
    let mut run = Run::testprog("pid-taken", env!("CARGO_BIN_EXE_tp-tree"));
    run.checkpoint(&["--leave-running"]);
    let o = cryopod(&["restore", run.image.to_str().unwrap(), "--detach"], &[]);
    assert_ne!(o.0, 0);
    assert!(o.2.contains(&format!("pid {} is already in use", run.pid)), "{}", o.2);
    assert!(o.2.contains("tp-tree"), "should name who holds it: {}", o.2);
    let c = cryopod(&["check", "--image", run.image.to_str().unwrap()], &[]);
    assert_ne!(c.0, 0);
    assert!(c.2.contains("already in use"), "{}", c.2);
    run.go_and_expect_pass();
}

#[test]
fn seccomp_filters_come_back() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/seccomp_filter.py");
    let d = format!("/tmp/cryopod-test-seccomp-{}", std::process::id());
    let mut run = Run::start("seccomp", "python3", &[script, &d, "nnp"]);
    run.checkpoint(&[]);
    // The program checks that getppid() is still denied by its filter.
    run.restore_and_verify();
}

#[test]
fn seccomp_filters_that_cannot_come_back_are_refused() {
    // Installed by root without no_new_privs, then every capability dropped:
    // the filter could not be installed again, and losing it would grant
    // privilege. Refused, and the program is left running with its filter.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/seccomp_filter.py");
    let d = format!("/tmp/cryopod-test-seccomp-dropped-{}", std::process::id());
    let mut run = Run::start("seccomp-dropped", "python3", &[script, &d, "dropped"]);
    let (code, _, err) =
        cryopod(&["checkpoint", "--pid", &run.pid.to_string(), "-o", run.image.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("seccomp") && err.contains("could not be installed again"), "{err}");
    run.go_and_expect_pass();
}

/// seccomp across a checkpoint (`tp-seccomp`): a filter that kills the
/// process on prctl and rt_sigaction (which a checkpoint injects) leaves
/// it alive, since the checkpoint suspends seccomp while it traces; the
/// filter its two threads shared is shared again (a TSYNC install after
/// the restore succeeds); a thread in strict mode is in strict mode again,
/// and answers.
#[test]
fn seccomp_tsync_and_strict_mode_come_back() {
    for mode in ["tsync", "strict"] {
        let mut run = Run::testprog_with(&format!("seccomp-{mode}"), env!("CARGO_BIN_EXE_tp-seccomp"), &[mode]);
        run.checkpoint(&[]);
        run.restore_and_verify();
    }
}

/// A cryopod without CAP_SYS_ADMIN can neither read a thread's seccomp
/// filters nor suspend them while it injects: it refuses the tree in one
/// sentence naming the capability, before anything is changed, and the
/// program goes on unharmed (its filter would kill it for the syscalls a
/// checkpoint injects).
#[test]
fn seccomp_without_cap_sys_admin_is_refused_first() {
    let mut run = Run::testprog_with("seccomp-nocap", env!("CARGO_BIN_EXE_tp-seccomp"), &["tsync"]);
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--inh-caps=-sys_admin", "--bounding-set=-sys_admin", cryopod_bin().to_str().unwrap()]);
    cmd.args(["checkpoint", "--pid", &run.pid.to_string(), "-o", run.image.to_str().unwrap()]);
    let (code, _, err) = run_within(cmd, 30);
    assert!(code != 0 && err.contains("under seccomp") && err.contains("CAP_SYS_ADMIN"), "{err}");
    assert!(!run.image.join("manifest").exists(), "an image was written");
    run.go_and_expect_pass();
}

#[test]
fn user_owned_images_grant_nothing_more() {
    // A process that opened a root-only file, then dropped to uid 1000.
    let d = format!("/tmp/cryopod-test-owned-{}", std::process::id());
    let secret = format!("{d}/secret");
    let mut run = Run::start(
        "owned",
        "python3",
        &[
            "-c",
            &format!(
                "import os, time; open('{secret}', 'w').write('s3cret'); os.chmod('{secret}', 0o600); \
                 f = open('{secret}'); os.setgroups([]); os.setresgid(1000, 1000, 1000); os.setresuid(1000, 1000, 1000); \
                 print('READY', flush=True); \
                 [time.sleep(0.02) for _ in iter(lambda: os.path.exists('{d}/go'), True)]; \
                 print('PASS' if f.read() == 's3cret' else 'FAIL (read)', flush=True)"
            ),
        ],
    );
    // Its output files are the user's own; only the secret is root's.
    for f in ["out", "err"] {
        std::os::unix::fs::chown(run.dir.join(f), Some(1000), Some(1000)).unwrap();
    }
    run.checkpoint(&[]);
    let img = run.image.clone();
    // Owned by uid 1000, the image cannot hand that user a root-only file.
    chown_tree(&img, 1000, 1000);
    let o = cryopod(&["restore", img.to_str().unwrap(), "--detach"], &[]);
    assert_ne!(o.0, 0, "a user-owned image must not open root-only files");
    assert!(o.2.contains("secret") && o.2.contains("ermission denied"), "{}", o.2);
    // Root's own image: restored, and the program reads its file.
    chown_tree(&img, 0, 0);
    run.restore_and_verify();
}

#[test]
fn user_owned_images_cannot_ask_for_privilege() {
    // tp-ident runs as uid 1000 but keeps capabilities and groups 10,20,30.
    let mut run = Run::testprog("owned-caps", env!("CARGO_BIN_EXE_tp-ident"));
    run.checkpoint(&[]);
    let img = run.image.clone();
    chown_tree(&img, 1000, 1000);
    let o = cryopod(&["restore", img.to_str().unwrap(), "--detach"], &[]);
    assert_ne!(o.0, 0);
    assert!(o.2.contains("owned by uid 1000") && o.2.contains("only root-owned images"), "{}", o.2);
    chown_tree(&img, 0, 0);
    run.restore_and_verify();
}

#[test]
fn signals_arriving_during_a_checkpoint_are_not_lost() {
    let mut run = Run::testprog("sigflood", env!("CARGO_BIN_EXE_tp-sigflood"));
    let pid = run.pid;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let sender = std::thread::spawn(move || {
        let (mut n, mut sum) = (0u64, 0u64);
        while !s2.load(std::sync::atomic::Ordering::SeqCst) {
            for _ in 0..5 {
                n += 1;
                sum += n;
                // SAFETY: sigqueue to the test program this test started.
                let r = unsafe { libc::sigqueue(pid, libc::SIGRTMIN() + 5, libc::sigval { sival_ptr: n as *mut _ }) };
                assert_eq!(r, 0, "sigqueue: {}", std::io::Error::last_os_error());
            }
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
        (n, sum)
    });
    for i in 0..8 {
        let img = run.dir.join(format!("img-{i}"));
        let o = cryopod(
            &["checkpoint", "-v", "--pid", &pid.to_string(), "-o", img.to_str().unwrap(), "--leave-running"],
            &[],
        );
        let sigq = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("SigQ") || l.starts_with("ShdPnd"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(o.0, 0, "checkpoint {i} failed: {} ({sigq})", o.2);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (n, sum) = sender.join().unwrap();
    std::fs::write(run.dir.join("sent"), format!("{n} {sum}")).unwrap();
    run.go_and_expect_pass();
}
