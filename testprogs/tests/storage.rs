//! How images store memory: compressed where it pays, raw where it does
//! not, restored exactly either way (issue 9). Real processes, as root.

mod common;
use common::pod::PodEnv;
use common::*;

fn inspect(image: &std::path::Path) -> serde_json::Value {
    let o = cryopod(&["inspect", "--json", image.to_str().unwrap()], &[]);
    assert_eq!(o.0, 0, "{}", o.2);
    serde_json::from_str(&o.1).unwrap()
}

#[test]
fn memory_is_compressed_where_it_pays() {
    let mut run = Run::testprog("compress", env!("CARGO_BIN_EXE_tp-text"));
    let pid = run.pid.to_string();
    // `--compress none`: everything raw.
    let raw = run.dir.join("img-raw");
    let o = cryopod(
        &["checkpoint", "--pid", &pid, "-o", raw.to_str().unwrap(), "--leave-running"],
        &["--compress", "none"],
    );
    assert_eq!(o.0, 0, "{}", o.2);
    let r = inspect(&raw);
    assert_eq!(r["memory_packed_bytes"], r["memory_stored_bytes"]);
    assert_eq!(r["chunks_compressed"], 0);
    // A level out of range is refused before anything is done.
    let bad = run.dir.join("img-bad");
    let o = cryopod(&["checkpoint", "--pid", &pid, "-o", bad.to_str().unwrap()], &["--compress", "99"]);
    assert_ne!(o.0, 0);
    assert!(o.2.contains("zstd level"), "{}", o.2);
    assert!(!bad.exists());
    // Default: zstd where a chunk shrinks. 48 MiB of text come down to a
    // fraction; the 16 MiB of noise stay as they are.
    run.checkpoint(&[]);
    let v = inspect(&run.image);
    let (stored, packed) = (v["memory_stored_bytes"].as_u64().unwrap(), v["memory_packed_bytes"].as_u64().unwrap());
    assert!(stored >= 64 << 20, "{stored}");
    assert!(packed < 32 << 20, "64 MiB of which 48 of text packed in {packed} bytes");
    assert!(packed > 16 << 20, "the noise cannot shrink: {packed}");
    assert!(v["chunks_compressed"].as_u64().unwrap() > 0);
    // The compressed image restores exactly (the program checks both).
    run.restore_and_verify();
}

/// `<dir>/areas` of tp-dontdump: name → (start, end); "passes" → address.
fn areas_of(dir: &std::path::Path) -> std::collections::HashMap<String, (u64, u64)> {
    let s = std::fs::read_to_string(dir.join("areas")).unwrap();
    s.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let n = |i: usize| f.get(i).map(|v| u64::from_str_radix(v, 16).unwrap()).unwrap_or(0);
            (f[0].to_string(), (n(1), n(2)))
        })
        .collect()
}

fn read_u64(pid: i32, addr: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, addr).unwrap();
    u64::from_ne_bytes(b)
}

/// Bytes saved for the area holding `addr` (adjacent mappings with the
/// same flags are one area).
fn saved_bytes(image: &std::path::Path, addr: u64) -> u64 {
    let v = inspect(image);
    let vmas = v["processes"][0]["vmas"].as_array().unwrap().clone();
    let within = |m: &&serde_json::Value| m["start"].as_u64().unwrap() <= addr && addr < m["end"].as_u64().unwrap();
    let a = vmas.iter().find(within).expect("area in the image");
    a["saved_bytes"].as_u64().unwrap()
}

/// Whether any pack of `image` holds `needle`.
fn packs_hold(image: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(image).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".pack")).any(
        |e| {
            let data = std::fs::read(e.path()).unwrap();
            data.windows(needle.len()).any(|w| w == needle)
        },
    )
}

#[test]
fn dontdump_pages_are_left_out_on_request() {
    let mut run = Run::testprog("dontdump", env!("CARGO_BIN_EXE_tp-dontdump"));
    let areas = areas_of(&run.dir);
    let pid = run.pid.to_string();
    let secret = b"cryopod secret!!";
    // By default a don't-dump area is saved like any other.
    let kept = run.dir.join("img-kept");
    let o = cryopod(
        &["checkpoint", "--pid", &pid, "-o", kept.to_str().unwrap(), "--leave-running"],
        &["--compress", "none"],
    );
    assert_eq!(o.0, 0, "{}", o.2);
    assert!(saved_bytes(&kept, areas["A"].0) > 0);
    assert!(packs_hold(&kept, secret), "the default image must hold area A");
    // Left out while running (armed: 160 MiB), with area B being rewritten
    // throughout: the writer must go on afterwards.
    let running = run.dir.join("img-running");
    let o = cryopod(
        &["checkpoint", "--pid", &pid, "-o", running.to_str().unwrap(), "--leave-running"],
        &["--exclude-dontdump", "--compress", "none"],
    );
    assert_eq!(o.0, 0, "{}", o.2);
    assert!(o.2.contains("of it arming"), "a 160 MiB tree is armed: {}", o.2);
    assert_eq!(saved_bytes(&running, areas["A"].0), 0);
    assert_eq!(saved_bytes(&running, areas["B"].0), 0);
    assert!(saved_bytes(&running, areas["C"].0) > 0);
    assert!(!packs_hold(&running, secret), "area A's data is in the image");
    let passes = read_u64(run.pid, areas["passes"].0);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(read_u64(run.pid, areas["passes"].0) > passes, "the writer of area B is stuck after the checkpoint");
    // Frozen, then restored: area A comes back zero-filled, still marked.
    run.checkpoint(&["--exclude-dontdump"]);
    assert_eq!(saved_bytes(&run.image, areas["A"].0), 0);
    std::fs::write(run.dir.join("expect"), "zero").unwrap();
    run.restore_and_verify();
}

#[test]
fn an_image_goes_through_stdout_and_stdin_and_files() {
    use std::process::{Command, Stdio};
    let mut run = Run::testprog("stream", env!("CARGO_BIN_EXE_tp-text"));
    let pid = run.pid.to_string();
    // `checkpoint -o -` to a file (stdout), then `restore -` from it (stdin).
    let stream = run.dir.join("image.stream");
    let out = std::fs::File::create(&stream).unwrap();
    let o = Command::new(cryopod_bin())
        .args(["checkpoint", "--pid", &pid, "-o", "-", "--leave-running"])
        .stdin(Stdio::null())
        .stdout(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::metadata(&stream).unwrap().len() > 16 << 20);
    // Nothing of the image stays behind in the temporary directory.
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("cryopod-stream-"))
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // `export` and `import` make the same image again.
    run.checkpoint(&[]);
    let file = run.dir.join("exported");
    let o = cryopod(&["export", run.image.to_str().unwrap(), "-o", file.to_str().unwrap()], &[]);
    assert_eq!(o.0, 0, "{}", o.2);
    let copy = run.dir.join("imported");
    let o = cryopod(&["import", file.to_str().unwrap(), "-o", copy.to_str().unwrap()], &[]);
    assert_eq!(o.0, 0, "{}", o.2);
    assert_eq!(inspect(&copy)["memory_packed_bytes"], inspect(&run.image)["memory_packed_bytes"]);
    // A flipped byte anywhere in the pages: refused, and nothing is left.
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() * 2 / 3;
    bytes[at] ^= 0x40;
    let bad = run.dir.join("damaged");
    std::fs::write(&bad, &bytes).unwrap();
    let target = run.dir.join("from-damaged");
    let o = cryopod(&["import", bad.to_str().unwrap(), "-o", target.to_str().unwrap()], &[]);
    assert_ne!(o.0, 0);
    assert!(o.2.contains("fails its checksum") || o.2.contains("corrupted"), "{}", o.2);
    assert!(!target.exists(), "a refused import left {}", target.display());
    // The first stream restores from stdin (the tree it came from is gone).
    let o = Command::new(cryopod_bin())
        .args(["restore", "-", "--detach"])
        .stdin(std::fs::File::open(&stream).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    run.go_and_expect_pass();
}

#[test]
fn a_pod_goes_through_a_pipe() {
    // `cryopod checkpoint POD -o - | cryopod restore -`: the pod leaves in
    // the stream and comes back from it (a fresh PID namespace: no PID of
    // the host has to be free first).
    let env = PodEnv::new("pipe");
    let rootfs = env.rootfs();
    let script = "i=0; while true; do i=$((i+1)); echo n=$i; sleep 0.1; done";
    let root = rootfs.to_str().unwrap();
    env.ok(&["run", "-d", "--name", "piped", "--rootfs", root, "--ip", "10.77.15.2/24", "--", "sh", "-c", script]);
    env.wait_log("piped", "third line", |l| l == "n=3");
    let bin = cryopod_bin();
    let pipeline = format!("{b} checkpoint piped -o - | {b} restore - --detach", b = bin.display());
    let o = std::process::Command::new("sh")
        .args(["-c", &pipeline])
        .env("CRYOPOD_STATE_DIR", &env.state)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    reap_all();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let before: u32 =
        env.cryopod(&["logs", "piped"]).1.lines().filter_map(|l| l.strip_prefix("n=")?.parse().ok()).max().unwrap();
    let log = env
        .wait_log("piped", "progress", |l| l.strip_prefix("n=").and_then(|n| n.parse::<u32>().ok()) > Some(before + 3));
    let n: Vec<u32> = log.lines().filter_map(|l| l.strip_prefix("n=")?.parse().ok()).collect();
    assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "count not continuous: {n:?}");
    env.ok(&["stop", "piped"]);
}
