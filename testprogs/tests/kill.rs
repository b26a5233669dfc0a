//! cryopod killed with SIGKILL at random instants: a checkpoint cut short
//! harms nothing, a restore cut short leaves nothing (issue 7). The counts
//! can be raised with CRYOPOD_KILL_TRIALS; `cargo bench -p
//! cryopod-testprogs --bench kill` runs 1,000 of each.

mod common;
use common::kill::{self, Counts};
use common::pod::PodEnv;

fn report(what: &str, c: &Counts) {
    println!(
        "{what}: {} trials, {} bad, {} completed before the kill, {} guardians lingering",
        c.trials, c.bad, c.completed, c.lingering
    );
    assert!(c.bad == 0 && c.lingering == 0, "{what}:\n{}", c.notes.join("\n"));
}

#[test]
fn checkpoint_killed_at_random_instants_harms_nothing() {
    let c = kill::checkpoint_trials(env!("CARGO_BIN_EXE_tp-victim"), kill::trials(120));
    report("checkpoint --leave-running killed (programs harmed)", &c);
}

#[test]
fn restore_killed_at_random_instants_leaves_nothing() {
    let c = kill::restore_trials(env!("CARGO_BIN_EXE_tp-victim"), kill::trials(60));
    report("restore killed (trees left half made)", &c);
}

#[test]
fn pod_checkpoint_killed_at_random_instants_harms_nothing() {
    let env = PodEnv::new("killpodck");
    let c = kill::pod_checkpoint_trials(&env, kill::trials(30));
    report("pod checkpoint --leave-running killed (pods harmed)", &c);
}

#[test]
fn pod_restore_killed_at_random_instants_leaves_nothing() {
    let env = PodEnv::new("killpodrs");
    let c = kill::pod_restore_trials(&env, kill::trials(30));
    report("pod restore killed (pods left half made)", &c);
}
