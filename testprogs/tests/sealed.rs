//! Sealed images (`--key`, issue 9 point 5), with real processes, as
//! root: nothing of the memory or of a pod's files shows in any file of
//! the image; a missing or wrong key, or a changed byte, is refused before
//! any process exists; with its key the image restores, from a directory
//! and through a pipe.

mod common;
use common::pod::PodEnv;
use common::*;
use std::path::{Path, PathBuf};

/// Words tp-text's 48 MiB of text are made of.
const WORDS: [&str; 4] = ["checkpoint ", "restore ", "migrate ", "memory "];

/// Write a key file (64 hexadecimal characters and a newline) made of `seed`.
fn key_file(dir: &Path, name: &str, seed: u8) -> PathBuf {
    let p = dir.join(name);
    let hex: String = (0..32u8).map(|i| format!("{:02x}", i.wrapping_mul(31) ^ seed)).collect();
    std::fs::write(&p, format!("{hex}\n")).unwrap();
    p
}

/// Files of `dir` (not recursively) holding `needle`, by name.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| std::fs::read(e.path()).unwrap().windows(needle.len()).any(|w| w == needle))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// A copy of image `from` as `to`, with one byte of file `file` flipped.
fn copy_with_flip(from: &Path, to: &Path, file: &str) {
    std::fs::create_dir(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    let p = to.join(file);
    let mut b = std::fs::read(&p).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x10;
    std::fs::write(&p, b).unwrap();
}

fn exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_sealed_image_shows_nothing_and_opens_only_with_its_key() {
    let mut run = Run::testprog("sealed", env!("CARGO_BIN_EXE_tp-text"));
    let key = key_file(&run.dir, "key", 1);
    let wrong = key_file(&run.dir, "wrong", 2);
    let (key_s, wrong_s) = (key.to_str().unwrap(), wrong.to_str().unwrap());
    let pid = run.pid.to_string();
    // Uncompressed and without a key the text shows in the packs: what a
    // sealed image must hide is there to be found.
    let key_hex = std::fs::read_to_string(&key).unwrap().trim().to_string();
    let key_raw: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&key_hex[2 * i..2 * i + 2], 16).unwrap()).collect();
    let checkpoint = |name: &str, extra: &[&str]| {
        let dir = run.dir.join(name);
        let o = cryopod(&["checkpoint", "--pid", &pid, "-o", dir.to_str().unwrap(), "--leave-running"], extra);
        assert_eq!(o.0, 0, "{}", o.2);
        // Not in the log, even at -vv.
        assert!(!o.2.contains(&key_hex), "the key shows in the log");
        eprintln!("{extra:?}: {}", o.2.lines().last().unwrap_or_default());
        dir
    };
    let plain = checkpoint("img-plain", &["--compress", "none"]);
    assert!(!files_holding(&plain, WORDS[0].as_bytes()).is_empty(), "the plain image should show the text");
    let raw = checkpoint("img-raw", &["--compress", "none", "--key", key_s, "-vv"]);
    checkpoint("img-zstd", &[]);
    let out = run.checkpoint(&["--key", key_s]);
    eprintln!("[\"--key\"]: {}", out.trim());
    // No file of a sealed image holds any of the words, nor the key.
    for (dir, w) in [&raw, &run.image].into_iter().flat_map(|d| WORDS.map(|w| (d, w.as_bytes()))) {
        let found = files_holding(dir, w);
        assert!(found.is_empty(), "{w:?} shows in {found:?} of {}", dir.display());
    }
    for dir in [&raw, &run.image] {
        assert!(files_holding(dir, key_hex.as_bytes()).is_empty() && files_holding(dir, &key_raw).is_empty());
    }
    // inspect: without the key, what the header says and a refusal.
    let image = run.image.to_str().unwrap().to_string();
    let o = cryopod(&["inspect", &image], &[]);
    assert_ne!(o.0, 0);
    assert!(o.1.contains("encrypted") && o.2.contains("give its key with --key FILE"), "{}{}", o.1, o.2);
    let o = cryopod(&["inspect", "--json", &image, "--key", key_s], &[]);
    assert_eq!(o.0, 0, "{}", o.2);
    let v: serde_json::Value = serde_json::from_str(&o.1).unwrap();
    assert_eq!(v["sealed"], true);
    assert!(v["memory_stored_bytes"].as_u64().unwrap() >= 64 << 20);
    // Refused, each in its sentence, before any process exists.
    let flipped = run.dir.join("img-flipped");
    copy_with_flip(&run.image, &flipped, "pages-0.pack");
    let cases = [
        (vec!["restore", &image, "--detach"], "the image is encrypted: give its key with --key FILE"),
        (vec!["restore", &image, "--detach", "--key", wrong_s], "the key does not open this image"),
        (vec!["restore", flipped.to_str().unwrap(), "--detach", "--key", key_s], "fails authentication"),
    ];
    for (args, want) in cases {
        let o = cryopod(&args, &[]);
        assert_ne!(o.0, 0, "{args:?} was not refused");
        assert!(o.2.contains(want), "{args:?}: {}", o.2);
        assert_eq!(o.2.trim().lines().count(), 1, "{args:?}: not one sentence: {}", o.2);
        assert!(!exists(run.pid), "{args:?} left pid {} behind", run.pid);
    }
    // `check` says the same.
    let o = cryopod(&["check", "--image", flipped.to_str().unwrap(), "--key", key_s], &[]);
    assert!(o.0 != 0 && o.2.contains("fails authentication"), "{}", o.2);
    // With its key: restored, and the program finds its memory intact.
    let o = cryopod(&["restore", &image, "--detach", "--key", key_s], &[]);
    assert_eq!(o.0, 0, "{}", o.2);
    run.go_and_expect_pass();
}

#[test]
fn a_sealed_image_goes_through_a_pipe() {
    let mut run = Run::testprog("sealed-pipe", env!("CARGO_BIN_EXE_tp-text"));
    let key = key_file(&run.dir, "key", 3);
    let stream = run.dir.join("stream");
    // The tree dies in the checkpoint: reap it at once, so that its PID is
    // free for the restore at the other end of the pipe.
    let mut child = run.child.take().unwrap();
    let reaper = std::thread::spawn(move || child.wait());
    // Keyed (by descriptor, at the restoring end), with a copy of the
    // stream kept to look into.
    let pipeline = format!(
        "{b} checkpoint --pid {pid} -o - --key {k} | tee {s} | {b} restore - --detach --key /dev/fd/3 3<{k}",
        b = cryopod_bin().display(),
        pid = run.pid,
        k = key.display(),
        s = stream.display()
    );
    let o = std::process::Command::new("sh").args(["-c", &pipeline]).stdin(std::process::Stdio::null()).output();
    let o = o.unwrap();
    let _ = reaper.join();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let data = std::fs::read(&stream).unwrap();
    assert!(data.len() > 16 << 20, "a stream of {} bytes", data.len());
    for w in WORDS {
        assert!(!data.windows(w.len()).any(|x| x == w.as_bytes()), "{w:?} shows in the stream");
    }
    run.go_and_expect_pass();
}

#[test]
fn a_sealed_pod_hides_its_files_and_comes_back_with_its_key() {
    const SECRET: &str = "tmpfs-secret-4242-of-the-pod";
    let env = PodEnv::new("sealed-pod");
    let rootfs = env.rootfs();
    let key = key_file(&env.dir, "key", 5);
    let key_s = key.to_str().unwrap();
    // The secret is in the pod's /tmp (a tmpfs: the archive), its memory
    // and its log (the log copy) — written there by the pod itself, so
    // that no file of the image would show it unless sealing failed.
    let script = "printf 'tmpfs-secret-%s-of-the-pod\\n' 4242 > /tmp/secret; \
                  i=0; while true; do i=$((i+1)); echo \"n=$i $(cat /tmp/secret)\"; sleep 0.1; done";
    let root = rootfs.to_str().unwrap();
    env.ok(&["run", "-d", "--name", "sealed", "--rootfs", root, "--ip", "10.77.16.2/24", "--", "sh", "-c", script]);
    env.wait_log("sealed", "third line", |l| l.starts_with("n=3 "));
    assert!(env.logs("sealed").contains(SECRET));
    let counts = |log: &str| -> Vec<u64> {
        log.lines().filter_map(|l| l.strip_prefix("n=")?.split(' ').next()?.parse().ok()).collect()
    };
    let before = *counts(&env.logs("sealed")).last().unwrap();
    let image = env.dir.join("image");
    let image_s = image.to_str().unwrap();
    env.ok(&["checkpoint", "sealed", "-o", image_s, "--key", key_s]);
    assert!(image.join("tmpfs.tar").exists() && image.join("pod.log").exists());
    let found = files_holding(&image, SECRET.as_bytes());
    assert!(found.is_empty(), "the pod's secret shows in {found:?}");
    assert!(files_holding(&image, b"tmpfs/0").is_empty(), "the tmpfs archive shows its entries");
    // Refused without the key, and with a changed archive: no pod made.
    let e = env.fails(&["restore", image_s, "--detach"]);
    assert!(e.contains("give its key with --key FILE"), "{e}");
    let flipped = env.dir.join("image-flipped");
    copy_with_flip(&image, &flipped, "tmpfs.tar");
    let e = env.fails(&["restore", flipped.to_str().unwrap(), "--detach", "--key", key_s]);
    assert!(e.contains("tmpfs.tar fails authentication"), "{e}");
    assert!(env.pods().is_empty(), "a refused restore left {:?}", env.pods());
    assert_eq!(env.leftovers("sealed"), Vec::<String>::new());
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "--json", image_s, "--key", key_s])).unwrap();
    assert_eq!((&v["sealed"], &v["pod"]["name"]), (&serde_json::json!(true), &serde_json::json!("sealed")));
    // With the key: the pod goes on counting (its old log back before
    // it), its /tmp file with it.
    env.ok(&["restore", image_s, "--detach", "--key", key_s]);
    let log = env.wait_log("sealed", "progress", |l| {
        counts(l).first().is_some_and(|&n| n >= before + 10) && l.ends_with(SECRET)
    });
    let n = counts(&log);
    assert!(n.first() == Some(&1) && n.windows(2).all(|w| w[1] == w[0] + 1), "count not continuous: {n:?}");
    assert_eq!(env.exec("sealed", "cat /tmp/secret").trim(), SECRET);
    env.ok(&["stop", "sealed"]);
    assert_eq!(env.leftovers("sealed"), Vec::<String>::new());
}

#[test]
fn sealed_images_deduplicate_in_a_chain_and_a_store_under_one_key() {
    let mut run = Run::testprog("sealed-dedup", env!("CARGO_BIN_EXE_tp-text"));
    let (k, other) = (key_file(&run.dir, "key", 7), key_file(&run.dir, "other", 8));
    let (k, other) = (k.to_str().unwrap().to_string(), other.to_str().unwrap().to_string());
    let pid = run.pid.to_string();
    let checkpoint = |name: &str, extra: &[&str]| {
        let dir = run.dir.join(name);
        let o = cryopod(&["checkpoint", "--pid", &pid, "-o", dir.to_str().unwrap(), "--leave-running"], extra);
        (dir, o)
    };
    let ok = |name: &str, extra: &[&str]| {
        let (dir, o) = checkpoint(name, extra);
        assert_eq!(o.0, 0, "{name}: {}", o.2);
        dir
    };
    // (own chunks, shared chunks) of a sealed image.
    let chunks = |dir: &Path, key: &str| {
        let o = cryopod(&["inspect", "--json", dir.to_str().unwrap(), "--key", key], &[]);
        assert_eq!(o.0, 0, "{}", o.2);
        let v: serde_json::Value = serde_json::from_str(&o.1).unwrap();
        (v["own_chunks"].as_u64().unwrap(), v["shared_chunks"].as_u64().unwrap())
    };
    // A chain under one key: the child stores (almost) nothing again.
    let first = ok("first", &["--key", &k]);
    let parent = first.to_str().unwrap().to_string();
    let child = ok("child", &["--key", &k, "--parent", &parent]);
    let (own, shared) = chunks(&child, &k);
    assert!(shared > 500 && own * 20 < shared, "child: {own} own, {shared} shared chunks");
    // The parent opens only with the chain's key.
    let (_, o) = checkpoint("child-other", &["--key", &other, "--parent", &parent]);
    assert!(o.0 != 0 && o.2.contains("does not open"), "{}", o.2);
    let (_, o) = checkpoint("child-plain", &["--parent", &parent]);
    assert!(o.0 != 0 && o.2.contains("give its key"), "{}", o.2);
    // A store shared by images of two keys and none: each finds only its own.
    let store = run.dir.join("store");
    let store_s = store.to_str().unwrap().to_string();
    ok("store-a", &["--key", &k, "--store", &store_s]);
    let b = ok("store-b", &["--key", &k, "--store", &store_s]);
    let c = ok("store-c", &["--key", &other, "--store", &store_s]);
    let d = ok("store-d", &["--store", &store_s]);
    let (own_b, shared_b) = chunks(&b, &k);
    assert!(shared_b > 500 && own_b * 20 < shared_b, "same key: {own_b} own, {shared_b} shared");
    assert_eq!(chunks(&c, &other).1, 0, "another key found chunks of the first");
    let v: serde_json::Value =
        serde_json::from_str(&cryopod(&["inspect", "--json", d.to_str().unwrap()], &[]).1).unwrap();
    assert_eq!(v["shared_chunks"], 0, "a plain image found sealed chunks");
    // gc needs no key, and keeps what every image uses.
    let o = cryopod(&["gc", "--store", &store_s], &[]);
    assert!(o.0 == 0 && o.2.contains("freed 0 chunks"), "{}", o.2);
    // The child restores through its parent with the key.
    // SAFETY: kill by the pid of the program this test started.
    unsafe { libc::kill(run.pid, libc::SIGKILL) };
    if let Some(mut c) = run.child.take() {
        let _ = c.wait();
    }
    let o = cryopod(&["restore", child.to_str().unwrap(), "--detach", "--key", &k], &[]);
    assert_eq!(o.0, 0, "{}", o.2);
    run.go_and_expect_pass();
}
