//! Fault injection for tests: `CRYOPOD_FAULT=<point>` makes the engine fail
//! at that named point, so tests can prove that a failed checkpoint leaves the
//! tree running and that a failed restore cleans up after itself.
//! `CRYOPOD_FAULT=<point>:stall` stops there instead (until killed), so
//! tests can see what a killed checkpoint leaves.
//! `CRYOPOD_FAULT=errno:<call>:<n>` makes the syscall injected under the
//! name `<call>` fail with errno `<n>` instead of running (the whole error
//! chain a user would see can then be checked).

use crate::{EngineError, Result};

/// The faults asked for, read from the environment once (every injected
/// call looks).
fn asked() -> Option<&'static str> {
    static SPEC: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| std::env::var("CRYOPOD_FAULT").ok()).as_deref()
}

/// The errno an injected call named `call` must fail with, if asked.
pub fn errno_for(call: &str) -> Option<i32> {
    asked()?.split(',').find_map(|p| {
        let (name, n) = p.strip_prefix("errno:")?.rsplit_once(':')?;
        (name == call).then(|| n.parse().ok()).flatten()
    })
}

/// Fail (or stall) if the environment asks for a fault at `point`.
pub fn check(point: &str) -> Result<()> {
    let Some(v) = asked() else { return Ok(()) };
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
