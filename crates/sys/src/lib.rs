//! cryopod-sys: the one crate of cryopod that talks to the kernel. Typed,
//! safe calls come from rustix: descriptors are `OwnedFd`/`BorrowedFd`,
//! and a descriptor *number* that is the subject itself (a slot of some
//! task's table) is a [`fd::TargetFd`]. Every `unsafe` block of the
//! project lives here, each with a `// SAFETY:` comment, for what no
//! well-kept crate offers (ptrace and injection, process_vm_*, clone3 with
//! set_tid, PAGEMAP_SCAN, TCP_REPAIR, SysV IPC, signal masks, ...), behind
//! wrappers named for their intent. The other crates are
//! `#![forbid(unsafe_code)]`.

pub mod arp;
pub mod bpf_iter;
pub mod bpf_map;
pub mod clone;
pub mod cpu;
pub mod creds;
pub mod error;
pub mod events;
pub mod exec;
pub mod fd;
pub mod fdpass;
pub mod fs;
pub mod inject;
pub mod io;
pub mod ipc;
pub mod mem;
pub mod netlink;
pub mod ns;
pub mod packet;
pub mod pagemap;
pub mod pidfd;
pub mod pipe;
pub mod process;
pub mod ptrace;
pub mod sched;
pub mod sigframe;
pub mod signal;
pub mod sock;
pub mod sock_errors;
pub mod tcp;
pub mod tcp_fin;
pub mod tty;
pub mod uffd;
pub mod unix_queue;
pub mod vma_iter;

pub use error::{Errno, SysError, SysResult};
pub use fd::TargetFd;

/// A process or thread id as the kernel numbers it in our PID namespace.
pub type Pid = i32;

/// Size of a page on x86_64.
pub const PAGE_SIZE: u64 = 4096;
