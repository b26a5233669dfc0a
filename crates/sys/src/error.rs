//! Errors that carry the operation and the pid they failed on.

use std::fmt;

/// An errno value with its text.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub fn last() -> Errno {
        Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

impl From<rustix::io::Errno> for Errno {
    fn from(e: rustix::io::Errno) -> Errno {
        Errno(e.raw_os_error())
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = std::io::Error::from_raw_os_error(self.0).to_string();
        write!(f, "{}", text.split(" (os error").next().unwrap_or(&text))?;
        write!(f, " (errno {})", self.0)
    }
}

/// A failed kernel call: what was attempted, on which task, and why it failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} on pid {pid}: {errno}")]
pub struct SysError {
    pub op: String,
    pub pid: i32,
    pub errno: Errno,
}

impl SysError {
    pub fn new(op: impl Into<String>, pid: i32, errno: Errno) -> Self {
        SysError { op: op.into(), pid, errno }
    }
    pub fn last(op: impl Into<String>, pid: i32) -> Self {
        Self::new(op, pid, Errno::last())
    }
}

/// The conversion of a rustix call's failure: `.map_err(fail("setsid", 0))`.
/// The operation's text is made only on failure; where it needs
/// formatting, map with a closure instead so that success allocates nothing.
pub(crate) fn fail(op: &'static str, pid: i32) -> impl FnOnce(rustix::io::Errno) -> SysError {
    move |e| SysError::new(op, pid, e.into())
}

pub type SysResult<T> = Result<T, SysError>;
