//! The kill tests in bench mode: cryopod killed with SIGKILL at random
//! instants of 1,000 checkpoints and 1,000 restores each (plain trees and
//! pods; CRYOPOD_KILL_TRIALS changes the count), and the counts printed:
//! trials, programs harmed or trees left behind, restores that finished
//! before the kill, guardians still there afterwards. CRYOPOD_KILL_ONLY
//! (checkpoint, restore, pod-checkpoint, pod-restore; comma-separated)
//! runs some of them.
//!
//!     cargo build --release --workspace    # the cryopod it kills
//!     cargo bench -p cryopod-testprogs --bench kill

#[path = "../tests/common/mod.rs"]
mod common;
use common::kill::{self, Counts};
use common::pod::PodEnv;

fn line(what: &str, c: &Counts) -> bool {
    println!(
        "{what:<44} {:>6} trials {:>4} bad {:>5} completed {:>3} lingering",
        c.trials, c.bad, c.completed, c.lingering
    );
    for n in &c.notes {
        println!("    {n}");
    }
    c.bad == 0 && c.lingering == 0
}

fn main() {
    // `cargo bench` passes --bench; no other option is taken.
    let n = kill::trials(1000);
    let victim = env!("CARGO_BIN_EXE_tp-victim");
    let only = std::env::var("CRYOPOD_KILL_ONLY").unwrap_or_default();
    let run = |what: &str| only.is_empty() || only.split(',').any(|w| w == what);
    let mut ok = true;
    if run("checkpoint") {
        ok &= line("checkpoint --leave-running (harmed)", &kill::checkpoint_trials(victim, n));
    }
    if run("restore") {
        ok &= line("restore (left behind)", &kill::restore_trials(victim, n));
    }
    if run("pod-checkpoint") {
        let env = PodEnv::new("benchkillck");
        ok &= line("pod checkpoint --leave-running (harmed)", &kill::pod_checkpoint_trials(&env, n));
    }
    if run("pod-restore") {
        let env = PodEnv::new("benchkillrs");
        ok &= line("pod restore (left behind)", &kill::pod_restore_trials(&env, n));
    }
    std::process::exit(if ok { 0 } else { 1 });
}
