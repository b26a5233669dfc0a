//! cryopod-migrate: what two cryopod hosts say to each other, and how.
//!
//! A migration (`cryopod migrate`, received by `cryopod serve`) moves a
//! pod's state over one TCP connection. Everything on it goes through a
//! [`link::Link`]: a Noise handshake in which both hosts prove they hold
//! the same key file (nothing else is read from a peer that has not), then
//! encrypted, authenticated messages. On the link, [`frame`] carries
//! typed, versioned frames whose lengths are bounded per kind before a
//! byte of their body is allocated. The sequence of frames a migration
//! exchanges is in `docs/MIGRATION.md`; [`send`] is the source's side
//! (`cryopod migrate`), [`receive`] the destination's (`cryopod serve`).
#![forbid(unsafe_code)]

pub mod files;
pub mod frame;
pub mod holds;
pub mod link;
pub mod offer;
pub mod pipe;
pub mod postcopy;
pub mod receive;
pub mod send;

/// Anything that went wrong on a link, with what it concerned.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The io error is the source (not repeated in the message).
    #[error("{what}")]
    Io { what: String, source: std::io::Error },
    /// The peer does not hold our key (or is not a cryopod host).
    #[error("the peer at {0} did not prove it holds the same key file: refused before reading anything from it")]
    Unauthenticated(String),
    #[error("the peer speaks migration protocol version {found}; this cryopod speaks version {supported}")]
    Version { found: u16, supported: u16 },
    /// A frame or message that breaks the protocol (what and why).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The peer closed the connection (when, in words).
    #[error("the peer closed the connection {0}")]
    Closed(String),
    #[error("the link's encryption failed: {0}")]
    Crypto(String),
    /// The destination would not take the pod (host, its sentence).
    #[error("{0} refused the pod: {1}")]
    Refused(String, String),
    /// A side gave up during the move (who, its sentence).
    #[error("{0} gave up: {1}")]
    Aborted(String, String),
    /// A move that failed once the pod was handed over (it runs, or may
    /// run, at the destination), so that it could not be undone (what
    /// became of the pod, in words).
    #[error("{0}")]
    Unfinished(String),
    #[error(transparent)]
    Pod(#[from] cryopod_pod::PodError),
    #[error(transparent)]
    Engine(#[from] cryopod_engine::EngineError),
    #[error(transparent)]
    Image(#[from] cryopod_image::ImageError),
}

impl MigrateError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        MigrateError::Io { what: what.into(), source }
    }
}

pub type Result<T> = std::result::Result<T, MigrateError>;

/// A failure injected at `point` (`CRYOPOD_FAULT`, see
/// `cryopod_engine::fault`): the tests of every step of a move, on both
/// sides.
pub(crate) fn fault(point: &str) -> Result<()> {
    Ok(cryopod_engine::fault::check(point)?)
}
