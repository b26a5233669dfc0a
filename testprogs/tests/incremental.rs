//! Images that build on others (issue 9): incremental chains (`--parent`)
//! and a shared chunk store (`--store`, `cryopod gc`). Real processes, as
//! root; tp-incremental rewrites 1% of its pages between checkpoints and
//! checks every page after a restore.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn inspect(image: &Path) -> serde_json::Value {
    let o = cryopod(&["inspect", "--json", image.to_str().unwrap()], &[]);
    assert_eq!(o.0, 0, "{}", o.2);
    serde_json::from_str(&o.1).unwrap()
}

/// Let the program rewrite its pages for step `k`, and wait until it did.
fn step(run: &Run, k: u32) {
    std::fs::write(run.dir.join("step"), format!("{k}\n")).unwrap();
    let t = Instant::now();
    while std::fs::read_to_string(run.dir.join("stepped")).unwrap_or_default().trim() != k.to_string() {
        assert!(t.elapsed() < Duration::from_secs(10), "step {k} not taken");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `checkpoint --pid PID -o image --leave-running extra...`; its stderr.
fn checkpoint(run: &Run, image: &Path, extra: &[&str]) -> String {
    let pid = run.pid.to_string();
    let o = cryopod(&["checkpoint", "--pid", &pid, "-o", image.to_str().unwrap(), "--leave-running"], extra);
    assert_eq!(o.0, 0, "checkpoint into {} failed: {}", image.display(), o.2);
    o.2
}

/// Kill the running program (the images hold it) and wait until it is gone.
fn end_program(run: &mut Run) {
    // SAFETY: kill by the pid of the program this test started.
    unsafe { libc::kill(run.pid, libc::SIGKILL) };
    if let Some(mut c) = run.child.take() {
        let _ = c.wait();
    }
    let t = Instant::now();
    while Path::new(&format!("/proc/{}", run.pid)).exists() {
        reap_all();
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Restore `image` and expect the program to find every page as it was at
/// step `k`, then end it again.
fn restore_at(run: &mut Run, image: &Path, k: u32) {
    std::fs::write(run.dir.join("step"), format!("{k}\n")).unwrap();
    run.image = image.to_path_buf();
    let out = run.restore_and_verify();
    assert!(out.contains("ok every page holds its last generation"), "{out}");
    let _ = std::fs::remove_file(run.dir.join("go"));
    std::fs::write(run.dir.join("out"), b"").unwrap();
    let t = Instant::now();
    while Path::new(&format!("/proc/{}", run.pid)).exists() {
        reap_all();
        assert!(t.elapsed() < Duration::from_secs(10), "the verified program did not exit");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[track_caller]
fn restore_fails(image: &Path, pid: i32) -> String {
    let o = cryopod(&["restore", image.to_str().unwrap(), "--detach"], &[]);
    assert_ne!(o.0, 0, "restore of {} should have been refused: {}", image.display(), o.2);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "a refused restore left pid {pid}");
    o.2
}

#[test]
fn a_chain_of_ten_incremental_checkpoints_restores_exactly() {
    let mut run = Run::testprog_with("chain", env!("CARGO_BIN_EXE_tp-incremental"), &["64"]);
    let dir = run.dir.clone();
    let img = |k: u32| dir.join(format!("img-{k}"));
    let full = img(0);
    checkpoint(&run, &full, &[]);
    let full_bytes = inspect(&full)["image_bytes"].as_u64().unwrap();
    assert!(full_bytes > 60 << 20, "{full_bytes}");
    let mut images = vec![full.clone()];
    for k in 1..=10 {
        step(&run, k);
        let (parent, image) = (img(k - 1), img(k));
        let err = checkpoint(&run, &image, &["--parent", parent.to_str().unwrap()]);
        assert!(err.contains(&format!("incremental on parent {}", parent.display())), "{err}");
        let v = inspect(&image);
        // 1% of the pages, one in a hundred: about one 16-page chunk in
        // six changes; the rest is the parents'.
        let own = v["own_bytes"].as_u64().unwrap();
        assert!(own < full_bytes / 4, "link {k} stored {own} bytes of {full_bytes}");
        assert!(v["shared_bytes"].as_u64().unwrap() > full_bytes / 2);
        assert_eq!(v["parent"].as_str().unwrap(), std::fs::canonicalize(&parent).unwrap().to_str().unwrap());
        images.push(image);
    }
    let v = inspect(&images[10]);
    assert!(v["own_bytes"].as_u64().unwrap() < full_bytes / 4);
    run.image = images[10].clone();
    run.image_pids();
    end_program(&mut run);
    // The last link reads through all ten parents; a middle one through five.
    restore_at(&mut run, &images[10], 10);
    restore_at(&mut run, &images[5], 5);
    // The deepest parent the last link reads from, replaced by a copy of
    // its child, is refused before any process is made.
    let depth = inspect(&images[10])["chain_depth"].as_u64().unwrap() as usize;
    assert!(depth >= 2, "the last link reads through {depth} parents");
    let deep = 10 - depth;
    let moved = run.dir.join("img-moved");
    std::fs::rename(&images[deep], &moved).unwrap();
    let o = std::process::Command::new("cp").arg("-a").arg(&images[deep + 1]).arg(&images[deep]).status().unwrap();
    assert!(o.success());
    let e = restore_fails(&images[10], run.pid);
    assert!(e.contains(&format!("img-{deep} of")) && e.contains("has changed since"), "{e}");
    // That parent gone: refused, saying which.
    std::fs::remove_dir_all(&images[deep]).unwrap();
    let e = restore_fails(&images[10], run.pid);
    assert!(e.contains(&format!("img-{deep},")) && e.contains("gone"), "{e}");
    std::fs::rename(&moved, &images[deep]).unwrap();
    restore_at(&mut run, &images[10], 10);
    // A flipped byte in a chunk the last link takes from a parent's pack
    // is refused too.
    let m = read_manifest(&images[10]);
    let (c, d, name) = m
        .chunks
        .iter()
        .find_map(|c| match &m.packs[c.pack as usize] {
            p @ cryopod_image::Pack { home: cryopod_image::PackHome::Parent(d), .. } => Some((c, *d, p.name.clone())),
            _ => None,
        })
        .expect("a chunk from a parent");
    let pack = images[10 - d as usize].join(name);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[c.offset as usize + 1] ^= 1;
    std::fs::write(&pack, bytes).unwrap();
    let e = restore_fails(&images[10], run.pid);
    assert!(e.contains("checksum") || e.contains("corrupt"), "{e}");
    // Streams carry whole images only.
    let o = cryopod(&["export", images[10].to_str().unwrap(), "-o", run.dir.join("s").to_str().unwrap()], &[]);
    assert_ne!(o.0, 0);
    assert!(o.2.contains("a stream carries one whole image"), "{}", o.2);
}

/// Blocks allocated to every file under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        total += match m.is_dir() {
            true => disk_bytes(&e.path()),
            false => m.blocks() * 512,
        };
    }
    total
}

/// The number of chunks a gc's summary says it freed.
fn freed(out: &str) -> u64 {
    let n = out.split("freed ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok());
    n.unwrap_or_else(|| panic!("no count of freed chunks in {out}"))
}

fn gc(store: &Path) -> String {
    let o = cryopod(&["gc", "--store", store.to_str().unwrap()], &[]);
    assert_eq!(o.0, 0, "gc failed: {}", o.2);
    o.2
}

#[test]
fn a_store_keeps_each_chunk_once_and_gc_frees_only_what_no_image_needs() {
    let mut run = Run::testprog_with("store", env!("CARGO_BIN_EXE_tp-incremental"), &["48"]);
    let store = run.dir.join("store");
    let s = store.to_str().unwrap().to_string();
    let dir = run.dir.clone();
    let img = |n: &str| dir.join(n);
    // The first image fills the store; a second full image of the same
    // memory adds almost nothing; an incremental one its changes.
    checkpoint(&run, &img("a"), &["--store", &s]);
    let a = inspect(&img("a"));
    assert!(a["own_bytes"].as_u64().unwrap() > 40 << 20);
    assert!(disk_bytes(&img("a")) < 1 << 20, "the pages are in the store, not the image");
    checkpoint(&run, &img("b"), &["--store", &s]);
    let b = inspect(&img("b"));
    assert!(b["own_bytes"].as_u64().unwrap() < 1 << 20, "{b}");
    step(&run, 1);
    let err = checkpoint(&run, &img("c"), &["--parent", img("b").to_str().unwrap()]);
    assert!(err.contains("in store"), "a child of a store image stays in the store: {err}");
    let c = inspect(&img("c"));
    let c_own = c["own_bytes"].as_u64().unwrap();
    assert!(c_own > 0 && c_own < 16 << 20, "{c}");
    let held = disk_bytes(&store);
    // Nothing is dead: gc frees nothing.
    let out = gc(&store);
    assert_eq!(freed(&out), 0, "{out}");
    // Image a goes: its chunks stay, since b and c use them (but for the
    // few pages, such as its stack, that changed before b).
    std::fs::remove_dir_all(img("a")).unwrap();
    let out = gc(&store);
    assert!(out.contains("is gone") && freed(&out) < 64, "{out}");
    // c goes: its own chunks are freed, on disk too.
    std::fs::remove_dir_all(img("c")).unwrap();
    let out = gc(&store);
    assert!(freed(&out) > 0, "{out}");
    assert!(disk_bytes(&store) + c_own / 2 < held, "gc freed no disk space");
    // Checkpoints while gc runs again and again: each image must be whole.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let runs = std::sync::atomic::AtomicU32::new(0);
    let names: Vec<PathBuf> = (2..=6).map(|k| img(&format!("d{k}"))).collect();
    /// Stops the gc loop however the scope ends (a failed assertion too).
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    std::thread::scope(|sc| {
        let _stop = Stop(&stop);
        sc.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                gc(&store);
                runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let mut parent = img("b");
        for (i, name) in names.iter().enumerate() {
            step(&run, i as u32 + 2);
            checkpoint(&run, name, &["--parent", parent.to_str().unwrap()]);
            // Older links go away as new ones come: gc frees their chunks
            // only where no later image took them over.
            if i >= 2 {
                std::fs::remove_dir_all(&names[i - 2]).unwrap();
            }
            parent = name.clone();
        }
    });
    assert!(runs.load(std::sync::atomic::Ordering::Relaxed) >= 2, "gc did not run alongside");
    gc(&store);
    run.image = names[4].clone();
    run.image_pids();
    end_program(&mut run);
    for image in [img("b"), names[3].clone(), names[4].clone()] {
        let o = cryopod(&["check", "--image", image.to_str().unwrap()], &[]);
        assert_eq!(o.0, 0, "{} is damaged after gc: {}{}", image.display(), o.1, o.2);
    }
    restore_at(&mut run, &names[4], 6);
    restore_at(&mut run, &img("b"), 0);
}

/// The holder of the tracking continuing from `image` (its pid), if any.
fn holders() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let me = cryopod_bin();
            cmd.starts_with(me.as_os_str().as_encoded_bytes()) && cmd.windows(16).any(|w| w == b"__hold-tracking\0")
        })
        .collect()
}

#[test]
fn tracked_incrementals_read_only_the_pages_written() {
    let mut run = Run::testprog_with("tracked", env!("CARGO_BIN_EXE_tp-incremental"), &["64"]);
    let dir = run.dir.clone();
    let img = |k: u32| dir.join(format!("img-{k}"));
    let before: Vec<i32> = holders();
    let err = checkpoint(&run, &img(0), &["--track"]);
    assert!(err.contains("tracking goes on"), "{err}");
    let holder: Vec<i32> = holders().into_iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(holder.len(), 1, "one holder keeps the tracking: {holder:?}");
    // The holder is no process of the tree and leaves nothing in it.
    assert!(!tree_of(run.pid).contains(&holder[0]));
    let full = inspect(&img(0))["image_bytes"].as_u64().unwrap();
    for k in 1..=3 {
        step(&run, k);
        let (parent, image) = (img(k - 1), img(k));
        let err = checkpoint(&run, &image, &["--parent", parent.to_str().unwrap(), "--track"]);
        assert!(err.contains("tracked:"), "link {k} did not take the tracked path: {err}");
        let v = inspect(&image);
        // 1% of the pages, one in a hundred: page-sized runs, not chunks.
        let own = v["own_bytes"].as_u64().unwrap();
        assert!(own < full / 25, "link {k} stored {own} bytes of {full}");
    }
    // The holder of a link that was taken over is gone; one remains.
    let now: Vec<i32> = holders().into_iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(!now.contains(&holder[0]));
    // A holder gone (killed): the next checkpoint reads every page, and
    // says so; the image is still exact.
    // SAFETY: kill by the pid of the holder our checkpoint started.
    unsafe { libc::kill(now[0], libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(100));
    reap_all();
    step(&run, 4);
    let err = checkpoint(&run, &img(4), &["--parent", img(3).to_str().unwrap(), "--track"]);
    assert!(err.contains("no tracking is running") && err.contains("every page read"), "{err}");
    step(&run, 5);
    let err = checkpoint(&run, &img(5), &["--parent", img(4).to_str().unwrap()]);
    assert!(err.contains("every page read"), "without --track: {err}");
    run.image = img(5);
    run.image_pids();
    end_program(&mut run);
    // Once the tree is gone, its holder goes too.
    let t = Instant::now();
    while holders().iter().any(|p| !before.contains(p)) {
        assert!(t.elapsed() < Duration::from_secs(5), "a holder outlived its tree");
        reap_all();
        std::thread::sleep(Duration::from_millis(50));
    }
    restore_at(&mut run, &img(3), 3);
    restore_at(&mut run, &img(5), 5);
}

/// A pod, checkpointed with tracking twice: the second link reads only
/// what was written, and the pod restores from the chain exactly.
#[test]
fn a_tracked_pod_restores_from_its_chain() {
    let env = common::pod::PodEnv::new("pod-track");
    let work = env.dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let prog = env!("CARGO_BIN_EXE_tp-incremental");
    env.ok(&["run", "-d", "--name", "trk", "--", prog, work.to_str().unwrap(), "32"]);
    env.wait_log("trk", "READY", |l| l == "READY");
    let (i0, i1, i2) = (env.dir.join("i0"), env.dir.join("i1"), env.dir.join("i2"));
    env.ok(&["checkpoint", "trk", "-o", i0.to_str().unwrap(), "--leave-running", "--track"]);
    let step = |k: u32| {
        std::fs::write(work.join("step"), format!("{k}\n")).unwrap();
        let t = Instant::now();
        while std::fs::read_to_string(work.join("stepped")).unwrap_or_default().trim() != k.to_string() {
            assert!(t.elapsed() < Duration::from_secs(10), "step {k} not taken");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    step(1);
    let o = env.cryopod(&[
        "checkpoint",
        "trk",
        "-o",
        i1.to_str().unwrap(),
        "--leave-running",
        "--track",
        "--parent",
        i0.to_str().unwrap(),
    ]);
    assert_eq!(o.0, 0, "{}", o.2);
    assert!(o.2.contains("tracked:"), "the pod's second link is not tracked: {}", o.2);
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "--json", i1.to_str().unwrap()])).unwrap();
    assert!(v["own_bytes"].as_u64().unwrap() < 4 << 20, "{}", v["own_bytes"]);
    step(2);
    // The last link kills the pod (tracking ends with it).
    let o = env.cryopod(&["checkpoint", "trk", "-o", i2.to_str().unwrap(), "--parent", i1.to_str().unwrap()]);
    assert_eq!(o.0, 0, "{}", o.2);
    env.ok(&["restore", i2.to_str().unwrap(), "--detach"]);
    std::fs::write(work.join("go"), b"go").unwrap();
    let log = env.wait_log("trk", "verdict", |l| l.starts_with("PASS") || l.starts_with("FAIL ("));
    assert!(log.contains("PASS"), "{log}");
    env.ok(&["stop", "trk"]);
    assert_eq!(env.leftovers("trk"), Vec::<String>::new());
}
