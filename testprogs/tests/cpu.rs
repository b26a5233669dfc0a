//! CPU portability. The hosts of this machine kind differ (an Intel with
//! AVX-512, an AMD EPYC with AVX2 only): an image from a CPU with a smaller
//! XSAVE area restores here, and an image from a CPU with instruction sets
//! or state components this one lacks is refused by `check` and `restore`,
//! naming them, before anything runs.

mod common;
use common::*;
use std::path::Path;

/// Rewrite the image as an AVX2-only CPU (XCR0 = x87 | SSE | AVX) would
/// have saved it: each thread's XSAVE area cut after the AVX component,
/// XSTATE_BV and the kernel's copy of XCR0 (software bytes at 464) limited
/// to those three. Returns the new area size.
fn as_saved_on_avx2_host(dir: &Path) -> u32 {
    let mut m = read_manifest(dir);
    let avx = *m.cpu.component(2).expect("this CPU has AVX");
    let size = avx.offset + avx.size;
    m.cpu.model = "an AVX2-only CPU".into();
    m.cpu.xcr0 &= 0x7;
    m.cpu.xsave_size = size;
    m.cpu.components.retain(|c| c.index == 2);
    for t in m.processes.iter_mut().flat_map(|p| p.threads.iter_mut()) {
        t.xstate.truncate(size as usize);
        let bv = u64::from_le_bytes(t.xstate[512..520].try_into().unwrap());
        t.xstate[512..520].copy_from_slice(&(bv & 0x7).to_le_bytes());
        t.xstate[464..472].copy_from_slice(&0x7u64.to_le_bytes());
    }
    write_manifest(dir, &m);
    size
}

#[test]
fn image_from_an_avx2_host_restores_here() {
    let mut run = Run::testprog_with("cpu-avx2-image", env!("CARGO_BIN_EXE_tp-cpu"), &["ymm"]);
    run.checkpoint(&[]);
    assert_eq!(as_saved_on_avx2_host(&run.image), 832);
    let o = cryopod(&["check", "--image", run.image.to_str().unwrap()], &[]);
    assert_eq!(o.0, 0, "{}", o.2);
    let o = cryopod(&["inspect", "--json", run.image.to_str().unwrap()], &[]);
    let v: serde_json::Value = serde_json::from_str(&o.1).unwrap();
    assert_eq!(v["cpu"]["xsave_size"], 832);
    assert_eq!(v["cpu"]["state"], serde_json::json!(["x87", "SSE", "AVX"]));
    // The program checks its ymm0-15, MXCSR and general registers.
    let out = run.restore_and_verify();
    assert!(out.contains("ok ymm0-15 survive"), "{out}");
}

#[test]
fn image_from_a_richer_cpu_is_refused_before_anything_runs() {
    let mut run = Run::testprog("cpu-richer", env!("CARGO_BIN_EXE_tp-cpu"));
    run.checkpoint(&[]);
    let pids = run.image_pids();
    let img = run.image.to_str().unwrap().to_string();
    let manifest = run.image.join("manifest");
    let genuine = std::fs::read(&manifest).unwrap();
    let (feature, state) = forge_richer_cpu(&run.image);
    let sentence = format!("this CPU lacks {feature} (extended state: {state}) that the image's CPU had");
    let c = cryopod(&["check", "--image", &img], &[]);
    assert_ne!(c.0, 0);
    assert!(c.2.contains(&sentence), "{}", c.2);
    let r = cryopod(&["restore", &img, "--detach"], &[]);
    assert_ne!(r.0, 0);
    assert!(r.2.contains(&sentence) && r.2.contains("nothing was left running"), "{}", r.2);
    let alive: Vec<&i32> = pids.iter().filter(|p| Path::new(&format!("/proc/{p}")).exists()).collect();
    assert!(alive.is_empty(), "processes were created: {alive:?}");
    // The genuine image restores.
    std::fs::write(&manifest, genuine).unwrap();
    run.restore_and_verify();
}
