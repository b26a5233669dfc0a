//! The pod state directory (default `/run/cryopod`): one directory per pod
//! holding its record (`pod.json`) and, for detached pods, its output
//! (`log`). Creating the directory is what reserves a name, atomically.

use crate::{PodError, Result};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// What the user asked for when starting the pod (kept for restore too).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PodSpec {
    pub hostname: String,
    pub domainname: String,
    pub rootfs: Option<PathBuf>,
    pub ip: Option<IpConfig>,
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub cpus: Option<f64>,
    pub userns: bool,
    /// An existing bridge of the host the pod's veth joins (`--bridge`),
    /// used as it is (never made, addressed or removed by cryopod); None:
    /// cryopod's own `cryopod0`, with the network's first address and a
    /// default route through it.
    #[serde(default)]
    pub bridge: Option<String>,
}

/// The pod's one address.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpConfig {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl IpConfig {
    /// Parse `ADDR/PREFIX` (IPv4).
    pub fn parse(s: &str) -> Result<IpConfig> {
        let bad = || PodError::Invalid(format!("{s:?} is not an IPv4 address with a prefix, like 10.77.0.2/24"));
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(PodError::Invalid(format!("prefix /{prefix} of {s}: use /8 to /30")));
        }
        let ip = IpConfig { addr, prefix };
        if addr == ip.gateway() || addr == ip.broadcast() || u32::from(addr) & !ip.mask() == 0 {
            return Err(PodError::Invalid(format!(
                "{addr} is the network, broadcast or host-bridge address ({}) of {s}; choose another",
                ip.gateway()
            )));
        }
        Ok(ip)
    }

    pub fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// The host bridge's address in this network: the first one.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from((u32::from(self.addr) & self.mask()) + 1)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
}

impl std::fmt::Display for IpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A pod as the state directory knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub name: String,
    /// Host PID of the pod's PID 1.
    pub init_pid: i32,
    /// Its start time (clock ticks after boot, /proc/PID/stat field 22):
    /// tells the pod's init from a later process that reused the PID.
    pub init_start: u64,
    pub created_unix: u64,
    pub spec: PodSpec,
    pub cmd: Vec<String>,
    /// Host side of the pod's veth, if it has an IP.
    pub veth: Option<String>,
    pub detached: bool,
}

/// Where pod records live.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

/// Pod names: what a directory name, a cgroup name and a hostname accept.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.starts_with('-');
    if !ok {
        return Err(PodError::Invalid(format!(
            "pod name {name:?}: use 1 to 64 letters, digits, '-' or '_' (not starting with '-')"
        )));
    }
    Ok(())
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    fn pods(&self) -> PathBuf {
        self.root.join("pods")
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.pods().join(name)
    }

    /// The directory of this host's pod cgroups (see `crate::cgroup`):
    /// `cryopod` for the default state directory, otherwise
    /// `cryopod-` and 8 hexadecimal digits of the BLAKE3 of the state
    /// directory's absolute path.
    pub fn cgroup_parent(&self) -> String {
        let abs = std::path::absolute(&self.root).unwrap_or_else(|_| self.root.clone());
        if abs == Path::new(DEFAULT_ROOT) {
            return "cryopod".to_string();
        }
        let h = blake3::hash(abs.as_os_str().as_encoded_bytes());
        format!("cryopod-{}", cryopod_image::shared::hex(&h.as_bytes()[..4]))
    }

    fn moved(&self) -> PathBuf {
        self.root.join("moved")
    }

    /// Note that pod `name` left this host for `to` (`cryopod ps` says so
    /// until a pod of that name is here again).
    pub fn note_departure(&self, name: &str, to: &str) -> Result<()> {
        check_name(name)?;
        let dir = self.moved();
        std::fs::create_dir_all(&dir).map_err(PodError::io(&dir))?;
        let d = Departure { name: name.to_string(), to: to.to_string(), unix: now_unix() };
        let text = serde_json::to_vec(&d).map_err(|e| PodError::Invalid(e.to_string()))?;
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(PodError::io(&path))
    }

    /// The pods that left this host, by name.
    pub fn departures(&self) -> Vec<Departure> {
        let mut out: Vec<Departure> = std::fs::read_dir(self.moved())
            .map(|rd| {
                rd.flatten().filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()).collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("log")
    }

    /// Reserve `name` (fails if a pod of that name exists). The directory
    /// appears with the note of who reserved it already inside (made under
    /// a temporary name, then renamed without replacing anything), so that
    /// a command killed at any instant leaves a reservation the next one
    /// can tell is dead; the note stays until the record is written.
    pub fn reserve(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        let pods = self.pods();
        std::fs::create_dir_all(&pods).map_err(PodError::io(&pods))?;
        let d = self.dir(name);
        if d.exists() {
            return Err(PodError::Exists(name.to_string()));
        }
        let tmp = pods.join(format!(".{name}.{}", std::process::id()));
        std::fs::create_dir(&tmp).map_err(PodError::io(&tmp))?;
        let made = note_owner(&tmp.join(CREATOR)).map_err(PodError::io(&tmp)).and_then(|_| {
            let flags = rustix::fs::RenameFlags::NOREPLACE;
            rustix::fs::renameat_with(rustix::fs::CWD, &tmp, rustix::fs::CWD, &d, flags).map_err(|e| match e {
                rustix::io::Errno::EXIST | rustix::io::Errno::NOTEMPTY => PodError::Exists(name.to_string()),
                e => PodError::io(&d)(e.into()),
            })
        });
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        } else {
            // A pod of this name is here (again): no longer "moved".
            let _ = std::fs::remove_file(self.moved().join(name));
        }
        made.map(|_| d)
    }

    /// Remove reservations being made (`.NAME.PID`) by a process that died.
    pub fn remove_dead_reservations(&self) {
        let Ok(rd) = std::fs::read_dir(self.pods()) else { return };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !n.starts_with('.') {
                continue;
            }
            // Its note, or (killed before writing it) the PID in its name.
            let dead = match noted_owner(&e.path().join(CREATOR)) {
                Some((_, alive)) => !alive,
                None => {
                    n.rsplit('.').next().and_then(|p| p.parse::<i32>().ok()).is_some_and(|p| start_time(p).is_none())
                }
            };
            if dead {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Release a name reserved or used before (its whole directory).
    pub fn release(&self, name: &str) {
        let _ = std::fs::remove_dir_all(self.dir(name));
    }

    pub fn save(&self, rec: &PodRecord) -> Result<()> {
        let d = self.dir(&rec.name);
        let tmp = d.join(".pod.json.tmp");
        let text = serde_json::to_vec_pretty(rec).map_err(|e| PodError::Invalid(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(PodError::io(&tmp))?;
        let path = d.join("pod.json");
        std::fs::rename(&tmp, &path).map_err(PodError::io(&path))
    }

    pub fn load(&self, name: &str) -> Result<PodRecord> {
        check_name(name)?;
        let path = self.dir(name).join("pod.json");
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(PodError::Unknown(name.to_string())),
            Err(e) => return Err(PodError::io(&path)(e)),
        };
        serde_json::from_slice(&text).map_err(|e| PodError::Io { path: path.display().to_string(), msg: e.to_string() })
    }

    /// Names of every pod directory (with a record or being made).
    pub fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.pods())
            .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str().map(String::from)).collect())
            .unwrap_or_default();
        out.retain(|n| !n.starts_with('.'));
        out.sort();
        out
    }

    /// Every pod with a record, by name.
    pub fn list(&self) -> Result<Vec<PodRecord>> {
        let pods = self.pods();
        let rd = match std::fs::read_dir(&pods) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(PodError::io(&pods)(e)),
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            if let Some(name) = e.file_name().to_str() {
                // A name being reserved has no record yet.
                if let Ok(r) = self.load(name) {
                    out.push(r);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// In a pod's directory: who reserved it and has not written its record
/// yet (a pod being run or restored).
pub const CREATOR: &str = "creator";
/// In a pod's directory: who is checkpointing it.
pub const CHECKPOINTER: &str = "checkpointer";

/// Note at `path` that this process (PID and start time) works on a pod,
/// so that a later command can tell whether it died doing so.
pub fn note_owner(path: &Path) -> std::io::Result<()> {
    let me = std::process::id() as i32;
    std::fs::write(path, format!("{me} {}", start_time(me).unwrap_or(0)))
}

/// The process a note at `path` names, if the note exists: its PID, and
/// whether that very process still runs.
pub fn noted_owner(path: &Path) -> Option<(i32, bool)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut it = text.split_whitespace();
    let pid: i32 = it.next()?.parse().ok()?;
    let start: Option<u64> = it.next().and_then(|s| s.parse().ok());
    let alive = match start {
        Some(s) => start_time(pid) == Some(s),
        None => start_time(pid).is_some(),
    };
    Some((pid, alive))
}

/// Start time of a process (stat field 22), if it exists and is not a zombie.
pub fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl PodRecord {
    /// The record of a pod whose PID 1 (host PID `init_pid`) runs now.
    pub fn new(
        name: &str,
        init_pid: i32,
        spec: PodSpec,
        cmd: Vec<String>,
        veth: Option<String>,
        detached: bool,
    ) -> PodRecord {
        PodRecord {
            name: name.to_string(),
            init_pid,
            init_start: start_time(init_pid).unwrap_or(0),
            created_unix: now_unix(),
            spec,
            cmd,
            veth,
            detached,
        }
    }

    /// Is the pod's init (the same process, not a PID reuse) still alive?
    pub fn alive(&self) -> bool {
        start_time(self.init_pid) == Some(self.init_start)
    }
}

/// Where a pod that left this host went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Departure {
    pub name: String,
    /// The host it went to (ADDR:PORT).
    pub to: String,
    /// When (seconds since the epoch).
    pub unix: u64,
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The state directory when neither `--state-dir` nor `CRYOPOD_STATE_DIR`
/// names another.
pub const DEFAULT_ROOT: &str = "/run/cryopod";

/// Default state directory, overridable with `CRYOPOD_STATE_DIR`.
pub fn default_root() -> PathBuf {
    std::env::var_os("CRYOPOD_STATE_DIR").map(PathBuf::from).unwrap_or_else(|| Path::new(DEFAULT_ROOT).into())
}
