//! Dirty tracking from outside (issue 9 point 1), through the library API
//! the migration rounds call: on a real program (tp-dirty) that writes,
//! reads, lets the kernel write, maps, moves, re-maps and forks, every
//! round must report exactly the pages of its area A it wrote, and count
//! what tracking could not see as written. As root.

mod common;
use common::*;
use cryopod_engine::track::{ProcDirty, Range, Tracker};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;

/// `<dir>/areas`: name → range.
fn areas(run: &Run) -> HashMap<String, Range> {
    let s = std::fs::read_to_string(run.dir.join("areas")).unwrap();
    s.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let n = |i: usize| u64::from_str_radix(f[i], 16).unwrap();
            (f[0].to_string(), (n(1), n(2)))
        })
        .collect()
}

/// Run command `verb` in the program and wait until it is done.
fn command(run: &Run, n: u32, verb: &str) {
    std::fs::write(run.dir.join("cmd"), format!("{n} {verb}\n")).unwrap();
    let t = Instant::now();
    while std::fs::read_to_string(run.dir.join("done")).unwrap_or_default().trim() != n.to_string() {
        assert!(t.elapsed() < Duration::from_secs(10), "command {verb} not done");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Pages (indexes from `area.0`) of `area` among the written ranges.
fn written_in(d: &ProcDirty, area: Range) -> Vec<u64> {
    let mut out = Vec::new();
    for &(s, e) in &d.written {
        let (s, e) = (s.max(area.0), e.min(area.1));
        let mut p = s;
        while p < e {
            out.push((p - area.0) / PAGE);
            p += PAGE;
        }
    }
    out
}

fn inside(ranges: &[Range], r: Range) -> bool {
    ranges.iter().any(|&(s, e)| s <= r.0 && r.1 <= e)
}

/// The program's descriptors and areas as it sees them.
fn seen(pid: i32) -> (Vec<String>, String) {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| format!("{:?} {:?}", e.file_name(), std::fs::read_link(e.path()).ok()))
        .collect();
    fds.sort();
    (fds, std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap())
}

#[test]
fn tracking_reports_exactly_what_was_written() {
    let mut run = Run::testprog("track", env!("CARGO_BIN_EXE_tp-dirty"));
    let pid = run.pid;
    let a = areas(&run)["A"];
    let before = seen(pid);
    let mut t = Tracker::arm(pid).expect("arm tracking");
    assert_eq!(t.tracked(), vec![pid]);
    // The program sees nothing of it.
    assert_eq!(seen(pid), before, "tracking left a descriptor or an area in the program");
    let r = t.round().unwrap();
    assert!(!r.procs[&pid].whole);
    assert_eq!(written_in(&r.procs[&pid], a), Vec::<u64>::new(), "nothing written yet");

    // Writes, exactly; reads never; the kernel's writes too.
    command(&run, 1, "write 3 7 1000 8191");
    let d = t.round().unwrap().procs[&pid].clone();
    assert_eq!(written_in(&d, a), vec![3, 7, 1000, 8191]);
    assert!(!inside(&d.untracked, a));
    command(&run, 2, "read 3 5 6");
    assert_eq!(written_in(&t.round().unwrap().procs[&pid], a), Vec::<u64>::new());
    command(&run, 3, "pipe 9");
    assert_eq!(written_in(&t.round().unwrap().procs[&pid], a), vec![9]);
    command(&run, 4, "write 9 10");
    command(&run, 5, "write 10 11");
    assert_eq!(written_in(&t.round().unwrap().procs[&pid], a), vec![9, 10, 11], "two writes between rounds");
    // A dropped page changed (it reads as zero now): reported.
    command(&run, 6, "dontneed 3");
    assert_eq!(written_in(&t.round().unwrap().procs[&pid], a), vec![3]);
    assert_eq!(written_in(&t.round().unwrap().procs[&pid], a), Vec::<u64>::new(), "once");
    command(&run, 7, "write 3");
    assert_eq!(written_in(&t.round().unwrap().procs[&pid], a), vec![3], "a write after the drop");

    // A new mapping: all of it, once; then tracked like the rest.
    command(&run, 8, "mmap");
    let b = areas(&run)["B"];
    let d = t.round().unwrap().procs[&pid].clone();
    assert!(inside(&d.untracked, b), "a new area counts as written: {d:?}");
    let d = t.round().unwrap().procs[&pid].clone();
    assert!(!inside(&d.untracked, b) && written_in(&d, b).is_empty(), "{d:?}");
    command(&run, 9, "writeb");
    assert_eq!(written_in(&t.round().unwrap().procs[&pid], b), vec![0]);
    // Moved by mremap: all of it at its new place.
    command(&run, 10, "mremap");
    let c = areas(&run)["C"];
    assert!(inside(&t.round().unwrap().procs[&pid].untracked, c));
    // Mapped anew over a tracked range: all of it.
    command(&run, 11, "remap");
    let dd = areas(&run)["D"];
    assert!(inside(&t.round().unwrap().procs[&pid].untracked, dd));
    command(&run, 12, "write 4");
    let d = t.round().unwrap().procs[&pid].clone();
    assert_eq!(written_in(&d, a), vec![4]);
    assert!(!inside(&d.untracked, c) && !inside(&d.untracked, dd), "{d:?}");

    // A forked child: whole at first, tracked from the next round.
    command(&run, 13, "fork");
    let child: i32 = std::fs::read_to_string(run.dir.join("child")).unwrap().trim().parse().unwrap();
    run.owned.push(child);
    let r = t.round().unwrap();
    assert!(r.procs[&child].whole, "{r:?}");
    assert!(!r.procs[&pid].whole);
    let r = t.round().unwrap();
    assert!(!r.procs[&child].whole && written_in(&r.procs[&child], a).is_empty(), "{r:?}");
    assert_eq!(t.tracked(), vec![pid, child]);
    command(&run, 14, "write 5");
    let r = t.round().unwrap();
    assert_eq!(written_in(&r.procs[&pid], a), vec![5]);
    assert!(written_in(&r.procs[&child], a).is_empty(), "the parent's write is not the child's");
    // The child gone: reported once.
    // SAFETY: kill by the pid of the child of our program.
    unsafe { libc::kill(child, libc::SIGKILL) };
    let t0 = Instant::now();
    while std::path::Path::new(&format!("/proc/{child}/stat")).exists()
        && !std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default().contains(") Z")
    {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(2));
    }
    reap_all();

    // Dropping the tracker leaves the program as it was; it checks its memory.
    drop(t);
    let after = seen(pid);
    assert_eq!(after.0, before.0, "descriptors changed");
    run.go_and_expect_pass();
}
