//! Fault injection for tests: `CRYOPOD_FAULT=<point>` makes the engine fail
//! at that named point, so tests can prove that a failed checkpoint leaves the
//! tree running and that a failed restore cleans up after itself.
//! `CRYOPOD_FAULT=<point>:stall` stops there instead (until killed), so
//! tests can see what a killed checkpoint leaves.

use crate::{EngineError, Result};

/// Fail (or stall) if the environment asks for a fault at `point`.
pub fn check(point: &str) -> Result<()> {
    let Ok(v) = std::env::var("CRYOPOD_FAULT") else { return Ok(()) };
    for p in v.split(',') {
        if p == point {
            return Err(EngineError::Fault(point.to_string()));
        }
        if p.strip_suffix(":stall") == Some(point) {
            eprintln!("cryopod: stalled at '{point}' (CRYOPOD_FAULT)");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    }
    Ok(())
}
