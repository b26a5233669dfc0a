//! How images store memory: compressed where it pays, raw where it does
//! not, restored exactly either way (issue 9). Real processes, as root.

mod common;
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
