//! Checkpoint and restore of each self-checking test program, for real.

mod common;
use common::*;

fn roundtrip(name: &str, bin: &str) -> String {
    let mut run = Run::testprog(name, bin);
    let before = outside_view(run.pid);
    run.checkpoint(&[]);
    let out = run.restore_and_verify_keep(|pid| {
        let after = outside_view(pid);
        assert_eq!(before.2, after.2, "thread count differs");
        assert_eq!(before.1, after.1, "fd list differs");
        let missing: Vec<&String> = before.0.iter().filter(|l| !after.0.contains(l)).collect();
        assert!(missing.is_empty(), "areas missing after restore: {missing:#?}");
    });
    out
}

#[test]
fn memory() {
    roundtrip("memory", env!("CARGO_BIN_EXE_tp-memory"));
}

#[test]
fn cpu() {
    roundtrip("cpu", env!("CARGO_BIN_EXE_tp-cpu"));
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
