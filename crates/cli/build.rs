//! Builds `cryopod-init` as a static program and hands its path to the
//! cryopod binary, which embeds it: a pod's PID 1 then needs no file from
//! the pod's root file system (it runs from a memfd). A nested cargo with
//! its own target directory builds it, because only the final link of that
//! one program must be static.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.join("../..");
    let target_dir = out.join("init-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args(["rustc", "--quiet", "-p", "cryopod-init", "--bin", "cryopod-init", "--release", "--target-dir"])
        .arg(&target_dir)
        .args(["--", "-C", "target-feature=+crt-static", "-C", "strip=symbols"])
        // Whatever wraps this build (clippy, a coverage tool) is not for the
        // embedded program.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("run cargo to build cryopod-init");
    assert!(status.success(), "building the static cryopod-init failed");
    let bin = target_dir.join("release/cryopod-init");
    println!("cargo:rustc-env=CRYOPOD_INIT_BIN={}", bin.display());
    for dir in ["../init/src", "../init/Cargo.toml", "../sys/src", "../sys/Cargo.toml"] {
        println!("cargo:rerun-if-changed={dir}");
    }
}
