//! Checkpoint and restore of each self-checking test program, for real.

mod common;
use common::*;

fn roundtrip(name: &str, bin: &str) -> String {
    roundtrip_with(name, bin, &[])
}

fn roundtrip_with(name: &str, bin: &str, args: &[&str]) -> String {
    let mut run = Run::testprog_with(name, bin, args);
    let before = outside_view(run.pid);
    run.checkpoint(&[]);
    run.restore_and_verify_keep(|pid| assert_same_outside(&before, pid))
}

#[test]
fn memory() {
    let mut run = Run::testprog("memory", env!("CARGO_BIN_EXE_tp-memory"));
    let before = outside_view(run.pid);
    run.checkpoint(&[]);
    // What the image holds: only what matters.
    let o = cryopod(&["inspect", "--json", run.image.to_str().unwrap()], &[]);
    assert_eq!(o.0, 0, "{}", o.2);
    let v: serde_json::Value = serde_json::from_str(&o.1).unwrap();
    let root = &v["processes"][0];
    let vmas = root["vmas"].as_array().unwrap();
    let by_name = |suffix: &str| vmas.iter().find(|m| m["name"].as_str().unwrap_or("").ends_with(suffix)).unwrap();
    assert_eq!(by_name("private.dat")["saved_bytes"], 4096, "only the CoW'd page of a private file mapping is saved");
    assert_eq!(by_name("shared.dat")["saved_bytes"], 0, "a shared file mapping's pages live in the file");
    let zero: u64 = vmas.iter().map(|m| m["zero_bytes"].as_u64().unwrap()).sum();
    assert!(zero >= 2 << 20, "zero pages (read-only touched, written zeros) must be recorded, not stored: {zero}");
    let refd = v["memory_referenced_bytes"].as_u64().unwrap();
    let stored = v["memory_stored_bytes"].as_u64().unwrap();
    assert!(stored + (1 << 20) < refd, "parent and child pages must be stored once: {stored} of {refd}");
    assert!(v["image_bytes"].as_u64().unwrap() < stored + (1 << 20));
    run.restore_and_verify_keep(|pid| assert_same_outside(&before, pid));
}

/// Every vector register this CPU has (zmm and opmask with AVX-512).
#[test]
fn cpu() {
    let out = roundtrip("cpu", env!("CARGO_BIN_EXE_tp-cpu"));
    assert!(!out.contains("SKIP"), "{out}");
}

/// The AVX2 hosts' register set (ymm0-15), on any CPU that has it.
#[test]
fn cpu_ymm() {
    let out = roundtrip_with("cpu-ymm", env!("CARGO_BIN_EXE_tp-cpu"), &["ymm"]);
    assert!(out.contains("ok ymm0-15 survive"), "{out}");
}

/// The SSE register set every x86_64 CPU has.
#[test]
fn cpu_xmm() {
    let out = roundtrip_with("cpu-xmm", env!("CARGO_BIN_EXE_tp-cpu"), &["xmm"]);
    assert!(out.contains("ok xmm0-15 survive"), "{out}");
}

#[test]
fn threads() {
    roundtrip("threads", env!("CARGO_BIN_EXE_tp-threads"));
}

#[test]
fn tree() {
    roundtrip("tree", env!("CARGO_BIN_EXE_tp-tree"));
}

#[test]
fn signals() {
    roundtrip("signals", env!("CARGO_BIN_EXE_tp-signals"));
}

#[test]
fn ident() {
    roundtrip("ident", env!("CARGO_BIN_EXE_tp-ident"));
}

#[test]
fn timers() {
    roundtrip("timers", env!("CARGO_BIN_EXE_tp-timers"));
}

#[test]
fn files() {
    roundtrip("files", env!("CARGO_BIN_EXE_tp-files"));
}

#[test]
fn objects() {
    roundtrip("objects", env!("CARGO_BIN_EXE_tp-objects"));
}

#[test]
fn events() {
    roundtrip("events", env!("CARGO_BIN_EXE_tp-events"));
}

#[test]
fn unix_sockets() {
    let out = roundtrip("unix", env!("CARGO_BIN_EXE_tp-unix"));
    assert!(out.contains("ok pending connection accepted"), "{out}");
    assert!(out.contains("ok a2 answer") && out.contains("ok orphan then EOF"), "{out}");
}

#[test]
fn inotify() {
    roundtrip("inotify", env!("CARGO_BIN_EXE_tp-inotify"));
}

#[test]
fn pidfd() {
    roundtrip("pidfd", env!("CARGO_BIN_EXE_tp-pidfd"));
}

#[test]
fn rseq() {
    roundtrip("rseq", env!("CARGO_BIN_EXE_tp-rseq"));
}

#[test]
fn rseq_left_running() {
    let mut run = Run::testprog("rseq-running", env!("CARGO_BIN_EXE_tp-rseq"));
    run.checkpoint(&["--leave-running"]);
    run.go_and_expect_pass();
}

/// Shared anonymous memory inherited by a child, and a shm_open file under
/// /dev/shm mapped by both: a file there is a file, not a device.
#[test]
fn shared_memory_and_dev_shm_files() {
    let mut run = Run::testprog("shm", env!("CARGO_BIN_EXE_tp-shm"));
    run.checkpoint(&[]);
    let out = run.restore_and_verify();
    assert!(out.contains("PASS"), "{out}");
}
