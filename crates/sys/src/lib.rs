//! cryopod-sys: the one crate of cryopod that talks to the kernel through raw
//! syscalls. Every `unsafe` block of the project lives here, each with a
//! `// SAFETY:` comment, behind wrappers named for their intent (seize a task,
//! inject a syscall, read another process's memory, fork with a chosen PID).
//! The other crates are `#![forbid(unsafe_code)]`.

pub mod clone;
pub mod cpu;
pub mod error;
pub mod fdpass;
pub mod inject;
pub mod ipc;
pub mod mem;
pub mod ns;
pub mod pagemap;
pub mod pidfd;
pub mod ptrace;
pub mod sigframe;
pub mod sock;
pub mod tcp;
pub mod util;

pub use error::{Errno, SysError, SysResult};

/// A process or thread id as the kernel numbers it in our PID namespace.
pub type Pid = i32;

/// Size of a page on x86_64.
pub const PAGE_SIZE: u64 = 4096;
