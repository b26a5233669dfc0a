//! The output directory is the user's: a checkpoint writes only into a new
//! or empty directory, never removes what it did not write, removes what
//! it wrote when it fails (and the directory if it made it), and what a
//! killed checkpoint leaves is recognised and cleaned by the next one.
//! Targets that cannot be checkpointed and missing images are named in one
//! sentence before anything is touched.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn tracer_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:").map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

#[test]
fn output_directory_must_be_new_or_empty() {
    let mut run = Run::testprog("outdir", env!("CARGO_BIN_EXE_tp-memory"));
    let pid = run.pid.to_string();
    // The user's files, one of them named like a pack: refused, untouched.
    let dir = run.dir.join("mine");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    std::fs::write(dir.join("pages-0.pack"), "mine too").unwrap();
    let (code, _, err) = cryopod_within(&["checkpoint", "--pid", &pid, "-o", dir.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    assert!(err.contains("is not empty") && err.contains("only into a new or empty directory"), "{err}");
    assert!(!err.contains("left running"), "nothing was frozen: {err}");
    assert_eq!(listing(&dir), ["notes.txt", "pages-0.pack"]);
    assert_eq!(std::fs::read_to_string(dir.join("pages-0.pack")).unwrap(), "mine too");
    assert_eq!(tracer_of(run.pid), "0");
    // A failed checkpoint removes the directories it made...
    let fresh = run.dir.join("fresh");
    let deeper = fresh.join("deeper");
    let (ok, err) = cryopod_with_fault(&["checkpoint", "--pid", &pid, "-o", deeper.to_str().unwrap()], "after-pages");
    assert!(!ok && err.contains("after-pages") && err.contains("left running"), "{err}");
    assert!(!fresh.exists(), "a directory it made was left: {:?}", listing(&fresh));
    // ... and leaves an empty one it was given empty.
    let empty = run.dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (ok, err) =
        cryopod_with_fault(&["checkpoint", "--pid", &pid, "-o", empty.to_str().unwrap()], "before-manifest");
    assert!(!ok, "{err}");
    assert!(empty.is_dir() && listing(&empty).is_empty(), "{:?}", listing(&empty));
    // An image already there.
    run.checkpoint(&["--leave-running"]);
    let (code, _, err) = cryopod_within(&["checkpoint", "--pid", &pid, "-o", run.image.to_str().unwrap()]);
    assert!(code != 0 && err.contains("already holds an image"), "{err}");
    // What it writes is not for others to read (process memory).
    let mode = |p: &Path| std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions());
    assert_eq!(mode(&run.image) & 0o077, 0, "image directory readable by others");
    assert_eq!(mode(&run.image.join("manifest")) & 0o077, 0, "manifest readable by others");
    run.go_and_expect_pass();
}

/// Start a checkpoint that stops at `point` and kill it there.
fn killed_checkpoint(pid: i32, dir: &Path, point: &str) {
    kill::kill_at(&["checkpoint", "--pid", &pid.to_string(), "-o", dir.to_str().unwrap()], &[], point, false);
}

#[test]
fn a_killed_checkpoint_is_recognised_and_cleaned_by_the_next() {
    let mut run = Run::testprog("killed", env!("CARGO_BIN_EXE_tp-memory"));
    let img = run.image.clone();
    killed_checkpoint(run.pid, &img, "after-pages");
    let left = listing(&img);
    assert!(left.contains(&".cryopod-incomplete".to_string()), "{left:?}");
    assert!(left.iter().any(|n| n.starts_with("pages-")), "{left:?}");
    // Its tracer died: the tree goes on by itself.
    let t = Instant::now();
    while tracer_of(run.pid) != "0" {
        assert!(t.elapsed() < Duration::from_secs(10), "still traced");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Recognisably incomplete.
    for args in [&["restore", img.to_str().unwrap(), "--detach"][..], &["inspect", img.to_str().unwrap()]] {
        let (code, _, err) = cryopod_within(args);
        assert!(code != 0 && err.contains("interrupted checkpoint"), "{args:?}: {err}");
    }
    // Something of the user's beside it: refused, nothing removed.
    std::fs::write(img.join("notes.txt"), "mine").unwrap();
    let (code, _, err) = cryopod_within(&["checkpoint", "--pid", &run.pid.to_string(), "-o", img.to_str().unwrap()]);
    assert!(code != 0 && err.contains("it holds notes.txt"), "{err}");
    let mut with_notes = left.clone();
    with_notes.push("notes.txt".into());
    with_notes.sort();
    assert_eq!(listing(&img), with_notes);
    std::fs::remove_file(img.join("notes.txt")).unwrap();
    // The next checkpoint cleans up and writes a complete image.
    run.checkpoint(&[]);
    let now = listing(&img);
    assert!(now.contains(&"manifest".to_string()) && !now.contains(&".cryopod-incomplete".to_string()), "{now:?}");
    run.restore_and_verify();
}

#[test]
fn refused_targets_and_missing_images_get_one_sentence() {
    let _lock = serial();
    let base = PathBuf::from(format!("/tmp/cryopod-test-sentences-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let me = std::process::id().to_string();
    let cases = [
        ("999999", "no process 999999"),
        ("2", "is a kernel thread"),
        ("1", "is the system's init"),
        (me.as_str(), "is an ancestor of cryopod"),
    ];
    for (pid, want) in cases {
        let out = base.join(format!("img-{pid}"));
        let (code, _, err) = cryopod_within(&["checkpoint", "--pid", pid, "-o", out.to_str().unwrap()]);
        assert_ne!(code, 0, "pid {pid}");
        assert_eq!(err.trim().lines().count(), 1, "pid {pid}: one sentence: {err}");
        assert!(err.contains(want) && !err.contains("left running"), "pid {pid}: {err}");
        assert!(!out.exists(), "pid {pid}: the output directory was made");
    }
    let missing = base.join("no-such-image");
    let m = missing.to_str().unwrap();
    for args in [&["restore", m][..], &["inspect", m], &["check", "--image", m]] {
        let (code, _, err) = cryopod_within(args);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(code != 0 && err.contains("is missing") && !err.contains("manifest"), "{args:?}: {err}");
    }
    // A system error is named once, not twice.
    std::fs::write(base.join("file"), "").unwrap();
    let mut sleeper = Command::new("sleep").arg("100").spawn().unwrap();
    let out = base.join("file/img");
    let (code, _, err) =
        cryopod_within(&["checkpoint", "--pid", &sleeper.id().to_string(), "-o", out.to_str().unwrap()]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(code != 0 && err.matches("(os error 20)").count() == 1, "{err}");
    let _ = std::fs::remove_dir_all(&base);
}
