//! Fault injection for tests: `CRYOPOD_FAULT=<point>` makes the engine fail
//! at that named point, so tests can prove that a failed checkpoint leaves the
//! tree running and that a failed restore cleans up after itself.

use crate::{EngineError, Result};

/// Fail if the environment asks for a fault at `point`.
pub fn check(point: &str) -> Result<()> {
    match std::env::var("CRYOPOD_FAULT") {
        Ok(v) if v.split(',').any(|p| p == point) => Err(EngineError::Fault(point.to_string())),
        _ => Ok(()),
    }
}
