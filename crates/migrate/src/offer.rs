//! The body of an `Offer` frame: what the source proposes to move, for the
//! destination's checks before any state moves.

use crate::{MigrateError, Result};
use bincode::Options;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Freeze, send everything, restore.
    Stop,
    /// Pre-copy rounds while the pod runs, then a short stop.
    Live,
    /// Restore at once; pages follow on demand.
    Lazy,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Stop => "stop",
            Mode::Live => "live",
            Mode::Lazy => "lazy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The pod's name (kept at the destination).
    pub pod: String,
    pub mode: Mode,
    /// Its address ("A.B.C.D/P"), if it has one (kept too).
    pub ip: Option<String>,
    /// Its root file system's path, if it has one (the same path must
    /// hold the same files at the destination).
    pub rootfs: Option<String>,
    /// The source's CPU (what the pod may be using of it) and kernel.
    pub cpu: cryopod_image::cpu::CpuImage,
    pub kernel: String,
    /// The files its processes map (see [`crate::files`]).
    pub files: Vec<crate::files::FileCheck>,
}

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(u64::from(crate::frame::MAX_OFFER))
        .reject_trailing_bytes()
}

impl Offer {
    pub fn encode(&self) -> Result<Vec<u8>> {
        options().serialize(self).map_err(|e| MigrateError::Protocol(format!("encoding an offer: {e}")))
    }

    /// Decoded within the control frame's bound, or refused.
    pub fn decode(body: &[u8]) -> Result<Offer> {
        options().deserialize(body).map_err(|e| MigrateError::Protocol(format!("an offer that does not decode: {e}")))
    }
}
