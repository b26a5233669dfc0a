//! The `cryopod` command: argument parsing, progress display and summaries.
//! All the work is in cryopod-engine.
#![forbid(unsafe_code)]

mod check;
mod checkpoint;
mod inspect;
mod migrate;
mod pods;
mod progress;
mod store;
mod streams;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "cryopod", version, about = "Run programs in pods; checkpoint and restore pods and process trees")]
struct Cli {
    /// More log output (also RUST_LOG).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Where pod records live (default /run/cryopod, or $CRYOPOD_STATE_DIR).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a command in a new pod (its own namespaces and cgroup).
    Run(pods::RunArgs),
    /// List pods.
    Ps {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a running pod.
    Exec {
        name: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Stop a pod (SIGTERM, then SIGKILL) and remove everything it had.
    Stop {
        name: String,
        /// Seconds to wait after SIGTERM before SIGKILL.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Show the output of a detached pod.
    Logs { name: String },
    /// Checkpoint a pod (by name) or the process tree rooted at --pid into DIR.
    Checkpoint(checkpoint::CheckpointArgs),
    /// (Internal) hold a tree's dirty tracking between two checkpoints.
    #[command(name = "__hold-tracking", hide = true)]
    HoldTracking { socket: PathBuf },
    /// Restore the pod or tree saved in DIR (or in a stream on stdin: -),
    /// with its original PIDs.
    Restore {
        dir: PathBuf,
        /// Name of the restored pod (default: the name it had).
        #[arg(long)]
        name: Option<String>,
        /// New address of the restored pod (default: the one it had).
        #[arg(long)]
        ip: Option<String>,
        /// Return once the tree runs, instead of waiting for its root.
        #[arg(long)]
        detach: bool,
        /// Print the restored root's PID on stdout (scripts).
        #[arg(long)]
        print_pid: bool,
        /// With --ip: restore the pod's TCP connections on its old address
        /// closed (reset), instead of refusing
        #[arg(long)]
        tcp_close: bool,
        /// The key the image was sealed with (see `checkpoint --key`).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// A pod: an existing bridge for its veth (see `run --bridge`).
        #[arg(long, value_name = "BR")]
        bridge: Option<String>,
    },
    /// Show what an image holds.
    Inspect {
        dir: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// The key the image was sealed with (see `checkpoint --key`).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Write image DIR as one stream to FILE (or stdout: -o -).
    Export {
        dir: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Make image directory DIR from a stream in FILE (or stdin: -),
    /// checked as it comes.
    Import {
        file: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Remove the chunks of a store that no image refers to any more.
    Gc {
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
    },
    /// Move a pod to another host running `cryopod serve`.
    Migrate(migrate::MigrateArgs),
    /// Accept pods other hosts migrate here.
    Serve(migrate::ServeArgs),
    /// Migrate every running pod of this host to another.
    Drain(migrate::DrainArgs),
    /// Check whether this kernel and CPU can restore an image, and why not.
    Check {
        #[arg(long)]
        image: PathBuf,
        /// The key the image was sealed with (see `checkpoint --key`).
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
}

/// The key in `path` (`--key`), read once.
fn load_key(path: Option<&std::path::Path>) -> Result<Option<std::sync::Arc<cryopod_image::ImageKey>>> {
    Ok(path.map(cryopod_image::ImageKey::from_file).transpose()?.map(std::sync::Arc::new))
}

fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

fn human(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn main() {
    cryopod_sys::signal::default_sigpipe();
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let state = cryopod_pod::StateDir::new(cli.state_dir.unwrap_or_else(cryopod_pod::state::default_root));
    match run(cli.cmd, &state) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("cryopod: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(cmd: Cmd, state: &cryopod_pod::StateDir) -> Result<i32> {
    // What a cryopod command that died left of pods is put right first.
    if !matches!(cmd, Cmd::Inspect { .. } | Cmd::Check { .. } | Cmd::HoldTracking { .. }) {
        cryopod_pod::lifecycle::recover(state);
    }
    match cmd {
        Cmd::Run(a) => pods::run(state, a),
        Cmd::Ps { json } => pods::ps(state, json),
        Cmd::Exec { name, cmd } => pods::exec(state, &name, &cmd),
        Cmd::Stop { name, timeout } => pods::stop(state, &name, timeout),
        Cmd::Logs { name } => pods::logs(state, &name),
        Cmd::Checkpoint(a) => checkpoint::run(state, a),
        Cmd::Restore { dir, name, ip, detach, print_pid, tcp_close, key, bridge } => {
            let key = load_key(key.as_deref())?;
            // A stream is taken in whole and checked before anything else.
            let stream = match streams::is_stdio(&dir) {
                true => Some(streams::TempImage::new()?),
                false => None,
            };
            let dir = match &stream {
                Some(t) => {
                    streams::import(&dir, &t.image())?;
                    t.image()
                }
                None => dir,
            };
            // Opened once: the owner from the descriptors, then the
            // manifest, then what it asks for; the same opened image goes on.
            let img = cryopod_engine::CheckedImage::open(&dir, key)
                .with_context(|| format!("cannot restore {}", dir.display()))?;
            if img.manifest().pod.is_some() {
                let how = pods::RestoreAs { name, ip, tcp_close, bridge };
                return pods::restore(state, &img, how, detach, print_pid);
            }
            anyhow::ensure!(
                name.is_none() && ip.is_none() && !tcp_close && bridge.is_none(),
                "--name, --ip, --tcp-close and --bridge are for pods; {} holds a process tree",
                dir.display()
            );
            let opts = cryopod_engine::RestoreOptions { image: &img, threads: cpus(), pod: None, guard: None };
            let bar = progress::Bar::new("restore");
            let o = cryopod_engine::restore(&opts, &|phase, d, t| bar.update(phase, d, t))
                .with_context(|| format!("restore of {} failed; nothing was left running", dir.display()))?;
            bar.finish();
            drop(stream);
            eprintln!(
                "restored {} processes ({} threads), {} of memory in {:.1} ms; root pid {}",
                o.processes,
                o.threads,
                human(o.memory_bytes),
                o.elapsed.as_secs_f64() * 1e3,
                o.root_pid
            );
            if print_pid {
                println!("{}", o.root_pid);
            }
            if detach {
                return Ok(0);
            }
            Ok(cryopod_engine::restore::wait_root(o.root_pid, o.root_group)?)
        }
        Cmd::Inspect { dir, json, key } => inspect::run(&dir, json, load_key(key.as_deref())?),
        Cmd::Export { dir, output } => {
            let n = streams::export(&dir, &output)?;
            eprintln!("exported {} as a stream of {}", dir.display(), human(n));
            Ok(0)
        }
        Cmd::Import { file, output } => {
            match streams::import(&file, &output)?.manifest {
                Some(m) => eprintln!("imported an image of {} processes into {}", m.processes.len(), output.display()),
                None => eprintln!("imported an encrypted image into {}", output.display()),
            }
            Ok(0)
        }
        Cmd::Gc { store } => store::gc(&store),
        Cmd::HoldTracking { socket } => {
            let stdin = std::os::fd::AsFd::as_fd(&std::io::stdin()).try_clone_to_owned()?;
            cryopod_engine::track::hold::serve(stdin, &socket)?;
            Ok(0)
        }
        Cmd::Check { image, key } => check::run(&image, load_key(key.as_deref())?),
        Cmd::Migrate(a) => migrate::migrate(state, a),
        Cmd::Serve(a) => migrate::serve(state, a),
        Cmd::Drain(a) => migrate::drain(state, a),
    }
}
