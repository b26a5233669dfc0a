//! `cryopod-init`: the first process of every pod (PID 1 of its PID
//! namespace). It starts the pod's command, reaps every zombie in the pod
//! (orphans are re-parented to it), passes termination and user signals on
//! to the command, and exits with the command's status, which ends the pod.
//!
//! It is a separate program, linked statically and run from a memfd, so
//! that it needs no file from the pod's root file system, and so that a
//! checkpoint saves it with the pod (a memfd mapping is part of the image).
#![forbid(unsafe_code)]

use cryopod_sys::process;
use cryopod_sys::signal::{block_signals, wait_signal};

const PASSED_ON: [i32; 7] =
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGCONT];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprintln!("cryopod-init: usage: cryopod-init CMD [ARGS...]");
        std::process::exit(2);
    };
    // Run from a memfd, the kernel names us after it.
    let _ = std::fs::write("/proc/self/comm", "cryopod-init");
    // The pod is a session of its own; every process in it belongs to it.
    let _ = process::new_session();
    let mut all = PASSED_ON.to_vec();
    all.push(libc::SIGCHLD);
    block_signals(&all);
    // The command starts with nothing blocked.
    let child = match cryopod_sys::exec::spawn_clean(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cryopod-init: cannot start {cmd}: {e}");
            std::process::exit(127);
        }
    };
    loop {
        let sig = wait_signal(&all);
        if sig != libc::SIGCHLD {
            let _ = process::kill(child, sig);
            continue;
        }
        // Reap every zombie; the command's own end ends the pod.
        while let Ok((pid, status)) = process::waitpid(-1, libc::WNOHANG) {
            if pid <= 0 {
                break;
            }
            if pid == child {
                std::process::exit(process::exit_code(status));
            }
        }
    }
}
