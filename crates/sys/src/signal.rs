//! Signal masks and dispositions of the calling process: masks a stub or
//! the guardian sets, signals a pod's init takes synchronously, forwarding
//! a terminal's signals to a restored tree, SIGPIPE for a command-line
//! tool, raising a signal with its default action. rustix has signal masks
//! and actions only in its unstable `runtime` API, so these stay on libc.

use crate::process::kill;
use crate::{Errno, Pid, SysError, SysResult};

/// A signal set holding `sigs`.
pub(crate) fn sigset(sigs: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, built by sigemptyset/sigaddset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Set the calling thread's signal mask from a bit set (bit n-1 = signal n).
pub fn set_signal_mask(bits: u64) {
    // SAFETY: sigset_t is built by sigemptyset/sigaddset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in 1..=64 {
            if bits & (1 << (s - 1)) != 0 {
                libc::sigaddset(&mut set, s);
            }
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Block `sigs` in the calling thread (to take them with [`wait_signal`]).
pub fn block_signals(sigs: &[i32]) {
    let set = sigset(sigs);
    // SAFETY: `set` is a valid signal set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Wait for one of `sigs` (blocked beforehand) and return its number.
pub fn wait_signal(sigs: &[i32]) -> i32 {
    let set = sigset(sigs);
    loop {
        // SAFETY: `set` is a valid signal set; no siginfo requested.
        let r = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if r > 0 {
            return r;
        }
    }
}

/// Let SIGPIPE end the process quietly (a command-line tool whose output
/// is piped into `head`), as C programs do, instead of failing on EPIPE.
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL touches no memory.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Raise `sig` in the calling process with its default action (unblocked
/// first); returns only if that action does not end the process.
pub(crate) fn raise_default(sig: i32) {
    // SAFETY: resetting a disposition to default and raising the signal
    // in the calling process; no memory is shared with anyone.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
}

/// Run `f` with SIGTTOU ignored (as a shell does when it changes the
/// terminal's foreground group while in the background itself).
pub(crate) fn with_sigttou_ignored<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: signal() swaps a disposition of our own process and is
    // undone right after `f`.
    let old = unsafe { libc::signal(libc::SIGTTOU, libc::SIG_IGN) };
    let r = f();
    // SAFETY: as above: the disposition saved before.
    unsafe { libc::signal(libc::SIGTTOU, old) };
    r
}

/// Forward `sigs`, when they are sent to this process, to process `target`:
/// they are blocked in the calling thread (and so in threads it creates
/// later), and a new thread takes them with sigwait and passes them on.
pub fn forward_signals(target: Pid, sigs: &[i32]) -> SysResult<()> {
    let set = sigset(sigs);
    block_signals(sigs);
    std::thread::Builder::new()
        .name("signal-forwarder".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: `set` is a valid signal set; `sig` a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                let _ = kill(target, sig);
            }
        })
        .map_err(|e| SysError::new(format!("spawn signal forwarder: {e}"), target, Errno(libc::EAGAIN)))?;
    Ok(())
}
