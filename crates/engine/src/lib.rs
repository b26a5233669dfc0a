//! cryopod-engine: checkpoint and restore of unmodified process trees.
//!
//! A checkpoint freezes every thread of the tree with ptrace, collects each
//! kind of state in its own module (tree, memory, threads, signals, files,
//! identity), writes page packs and then the manifest, and finally kills or
//! resumes the tree. A restore validates the image, forks stubs with the
//! original PIDs, and turns each stub into its task by syscalls injected from
//! outside. Each state module keeps its collect and restore side together.
#![forbid(unsafe_code)]

pub mod arm;
pub mod bpfmap;
pub mod cgroups;
pub mod checkpoint;
pub mod cow;
pub mod cpu;
pub mod events;
pub mod fanotify;
pub mod fault;
pub mod files;
pub mod forked_memory;
pub mod freeze;
pub mod gone;
pub mod guard;
pub mod ident;
pub mod incremental;
pub mod inet;
pub mod injection;
pub mod inotify;
pub mod lazy;
pub mod locks;
pub mod mm;
pub mod nsjoin;
pub mod outdir;
pub mod pages;
pub mod pidns;
pub mod privilege;
pub mod procfs;
pub mod remote;
pub mod restore;
pub mod signals;
pub mod sockdiag;
pub mod target;
pub mod threads;
pub mod track;
pub mod tree;
pub mod trust;
pub mod tty;
pub mod unix;
pub mod vmflags;

pub use checkpoint::{checkpoint, CheckpointOptions, CheckpointSummary};
pub use restore::{restore, RestoreOptions, RestoreOutcome};
pub use trust::CheckedImage;

use cryopod_image::ImageError;
use cryopod_sys::SysError;

/// Everything that can go wrong in the engine, each naming its object.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{path}: {msg}")]
    Proc { path: String, msg: String },
    /// A file operation (the io error is the source, printed once).
    #[error("{path}")]
    Io { path: String, source: std::io::Error },
    #[error("no process {0}")]
    NoProcess(i32),
    #[error("pid {pid} cannot be checkpointed: {why}")]
    NotCheckpointable { pid: i32, why: String },
    /// A checkpoint failed after the tree was frozen (it was resumed).
    #[error("the tree was left running")]
    LeftRunning(#[source] Box<EngineError>),
    #[error("pid {pid}: {what} is not supported yet")]
    Unsupported { pid: i32, what: String },
    #[error("pid {0} is already in use on this system (by {1}); free it or restore elsewhere")]
    PidTaken(i32, String),
    #[error("this CPU lacks {what} that the image's CPU had (image taken on {image}; this is {here})")]
    CpuLacks { what: String, image: String, here: String },
    #[error("restoring {object}")]
    Restore { object: String, source: Box<EngineError> },
    /// What we were doing when `source` failed.
    #[error("{what}")]
    In { what: String, source: Box<EngineError> },
    /// An error of the caller's (a pod's callbacks), with its own chain.
    #[error(transparent)]
    Caller(Box<dyn std::error::Error + Send + Sync>),
    #[error(
        "pid {0} did not stop (a process waiting for its vfork child cannot), or was caught between two programs (in \
         an exec or an exit); tried again and gave up"
    )]
    Busy(i32),
    /// A running checkpoint's image would not be exact (the tree changed
    /// its memory in a way write-protection cannot follow).
    #[error("the memory of the freeze could not be kept: {0}")]
    CowInexact(String),
    #[error("fault injected at '{0}' (CRYOPOD_FAULT)")]
    Fault(String),
    #[error("{0}")]
    Other(String),
}

impl EngineError {
    /// Wrap an error with the object being restored when it failed.
    pub fn during(object: impl Into<String>) -> impl FnOnce(EngineError) -> EngineError {
        let object = object.into();
        move |e| EngineError::Restore { object, source: Box::new(e) }
    }
}

impl EngineError {
    /// Wrap an error with what was being done when it failed.
    pub fn context(what: impl Into<String>) -> impl FnOnce(EngineError) -> EngineError {
        let what = what.into();
        move |e| EngineError::In { what, source: Box::new(e) }
    }
}

/// An error and every cause under it, as one line ("a: b: c"), for errors
/// that must cross a process boundary as text.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        // A transparent wrapper repeats its source's text: print it once.
        if !out.ends_with(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// Progress reports: (phase, bytes done, bytes total).
pub type Progress<'a> = &'a (dyn Fn(&str, u64, u64) + Sync);
