//! cryopod-pod: what makes a process tree a pod. A pod is a tree in its own
//! PID, mount, UTS, IPC, network and cgroup namespaces, in a cgroup of its
//! own (limits, freezer), optionally on a root file system of its own and
//! with one IP address on a veth attached to a host bridge. Each pod has a
//! record in the state directory, so that separate `cryopod` invocations
//! see the same pods.
//!
//! Creating a pod happens in two steps, shared by `run` and `restore`: a
//! short-lived *holder* process builds every namespace but the PID one
//! (mounts, hostname, network), then the pod's first process is forked into
//! a new PID namespace and joins the holder's namespaces.
#![forbid(unsafe_code)]

pub mod cgroup;
pub mod create;
pub mod fs;
pub mod held;
pub mod ipc;
pub mod join;
pub mod lifecycle;
pub mod mounts;
pub mod net;
pub mod snapshot;
pub mod state;
pub mod sysctls;

pub use cgroup::Cgroup;
pub use state::{PodRecord, PodSpec, StateDir};

use cryopod_sys::SysError;

/// Everything that can go wrong with a pod, each naming its object.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error("{path}: {msg}")]
    Io { path: String, msg: String },
    #[error("no pod named {0:?} (see `cryopod ps`)")]
    Unknown(String),
    #[error("a pod named {0:?} already exists; choose another name or stop it first")]
    Exists(String),
    #[error("network: {0}")]
    Net(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Engine(#[from] cryopod_engine::EngineError),
    #[error(transparent)]
    Image(#[from] cryopod_image::ImageError),
    /// A pod checkpoint failed after the pod was frozen (it was thawed).
    #[error("the pod was left running")]
    LeftRunning(#[source] Box<PodError>),
}

impl PodError {
    pub fn io(path: impl AsRef<std::path::Path>) -> impl FnOnce(std::io::Error) -> PodError {
        let path = path.as_ref().display().to_string();
        move |e| PodError::Io { path, msg: e.to_string() }
    }
}

pub type Result<T> = std::result::Result<T, PodError>;
