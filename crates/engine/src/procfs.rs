//! Reading `/proc/<pid>/...`: the process tree, memory maps with their
//! flags, status fields, stat fields and fdinfo. Parsers return
//! `EngineError::Proc` naming the file they failed on.

use crate::{EngineError, Result};
use std::collections::BTreeSet;

pub fn read(pid: i32, what: &str) -> Result<String> {
    let p = format!("/proc/{pid}/{what}");
    std::fs::read_to_string(&p).map_err(|e| EngineError::Proc { path: p, msg: e.to_string() })
}

/// The one number `/proc/<pid>/<what>` holds (oom_score_adj, loginuid...),
/// if it can be read.
pub fn number(pid: i32, what: &str) -> Option<i64> {
    read(pid, what).ok().and_then(|s| s.trim().parse().ok())
}

/// [`number`] for this process.
pub fn own_number(what: &str) -> Option<i64> {
    number(std::process::id() as i32, what)
}

fn perr(pid: i32, what: &str, msg: impl Into<String>) -> EngineError {
    EngineError::Proc { path: format!("/proc/{pid}/{what}"), msg: msg.into() }
}

/// Thread ids of a process.
pub fn tids(pid: i32) -> Result<Vec<i32>> {
    let p = format!("/proc/{pid}/task");
    let mut v: Vec<i32> = std::fs::read_dir(&p)
        .map_err(|e| EngineError::Proc { path: p.clone(), msg: e.to_string() })?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    // Leader first.
    if let Some(i) = v.iter().position(|&t| t == pid) {
        v.remove(i);
        v.insert(0, pid);
    }
    Ok(v)
}

/// Children of a process (of all its threads).
pub fn children(pid: i32) -> Result<BTreeSet<i32>> {
    let mut out = BTreeSet::new();
    for t in tids(pid)? {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/children")) {
            out.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
        }
    }
    Ok(out)
}

/// Fields of /proc/pid/stat after the command name (index 0 = field 3, state).
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    fields: Vec<u64>,
}

impl Stat {
    /// Field number `n` as the proc(5) man page counts (1-based, n >= 4).
    pub fn field(&self, n: usize) -> u64 {
        self.fields.get(n.wrapping_sub(3)).copied().unwrap_or(0)
    }
}

pub fn stat(pid: i32) -> Result<Stat> {
    let s = read(pid, "stat")?;
    let rest = s.rsplit_once(") ").map(|x| x.1).ok_or_else(|| perr(pid, "stat", "no command field"))?;
    let mut it = rest.split_whitespace();
    let state = it.next().and_then(|x| x.chars().next()).unwrap_or('?');
    let fields: Vec<u64> =
        std::iter::once(0).chain(it.map(|x| x.parse::<i64>().map(|v| v as u64).unwrap_or(0))).collect();
    let f = |n: usize| fields.get(n - 3).copied().unwrap_or(0) as i32;
    Ok(Stat { state, ppid: f(4), pgid: f(5), sid: f(6), fields })
}

/// Start time of a process (stat field 22, clock ticks after boot): a
/// recycled PID has another. None if it does not exist.
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).ok().map(|s| s.field(22))
}

/// A `key:\tvalue` line of /proc/pid/status.
pub fn status_field(status: &str, key: &str) -> Option<String> {
    status.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(|v| v.trim().to_string()))
}

pub fn status_hex(status: &str, key: &str) -> u64 {
    status_field(status, key).and_then(|v| u64::from_str_radix(&v, 16).ok()).unwrap_or(0)
}

pub fn status_ids(status: &str, key: &str) -> [u32; 4] {
    let mut out = [0u32; 4];
    if let Some(v) = status_field(status, key) {
        for (i, x) in v.split_whitespace().take(4).enumerate() {
            out[i] = x.parse().unwrap_or(0);
        }
    }
    out
}

/// One line of /proc/pid/smaps with the flags we care about.
#[derive(Debug, Clone)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    pub dev: String,
    pub inode: u64,
    pub path: String,
    pub vmflags: Vec<String>,
}

impl MapEntry {
    pub fn shared(&self) -> bool {
        self.perms.as_bytes().get(3) == Some(&b's')
    }
    pub fn prot(&self) -> u32 {
        let b = self.perms.as_bytes();
        let mut p = 0;
        if b.first() == Some(&b'r') {
            p |= libc::PROT_READ as u32;
        }
        if b.get(1) == Some(&b'w') {
            p |= libc::PROT_WRITE as u32;
        }
        if b.get(2) == Some(&b'x') {
            p |= libc::PROT_EXEC as u32;
        }
        p
    }
    pub fn has_flag(&self, f: &str) -> bool {
        self.vmflags.iter().any(|x| x == f)
    }
}

fn parse_map_line(line: &str) -> Option<MapEntry> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.to_string();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let dev = it.next()?.to_string();
    let inode = it.next()?.parse().ok()?;
    let path = it.next().map(|p| p.trim_start().to_string()).unwrap_or_default();
    let (s, e) = range.split_once('-')?;
    Some(MapEntry {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        perms,
        offset,
        dev,
        inode,
        path,
        vmflags: Vec::new(),
    })
}

/// Memory areas with their VmFlags (from smaps).
pub fn smaps(pid: i32) -> Result<Vec<MapEntry>> {
    let s = read(pid, "smaps")?;
    let mut out: Vec<MapEntry> = Vec::new();
    for line in s.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.vmflags = flags.split_whitespace().map(String::from).collect();
            }
            continue;
        }
        let first = line.split(' ').next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            if let Some(m) = parse_map_line(line) {
                out.push(m);
                continue;
            }
        }
    }
    Ok(out)
}

/// Plain /proc/pid/maps (no flags), cheap.
pub fn maps(pid: i32) -> Result<Vec<MapEntry>> {
    Ok(read(pid, "maps")?.lines().filter_map(parse_map_line).collect())
}

/// `pos:` and `flags:` of /proc/pid/fdinfo/N.
pub fn fdinfo(pid: i32, fd: i32) -> Result<(u64, u32, Vec<String>)> {
    let what = format!("fdinfo/{fd}");
    let s = read(pid, &what)?;
    let pos = status_field(&s, "pos").and_then(|v| v.parse().ok()).unwrap_or(0);
    let flags = status_field(&s, "flags").and_then(|v| u32::from_str_radix(&v, 8).ok()).unwrap_or(0);
    let locks = s.lines().filter_map(|l| l.strip_prefix("lock:")).map(|l| l.trim().to_string()).collect();
    Ok((pos, flags, locks))
}

/// Open fds of a process, sorted.
pub fn fds(pid: i32) -> Result<Vec<i32>> {
    let p = format!("/proc/{pid}/fd");
    let mut v: Vec<i32> = std::fs::read_dir(&p)
        .map_err(|e| EngineError::Proc { path: p.clone(), msg: e.to_string() })?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

pub fn readlink(path: &str) -> Result<String> {
    std::fs::read_link(path)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| EngineError::Proc { path: path.to_string(), msg: e.to_string() })
}

/// /proc/pid/auxv as u64 words.
pub fn auxv(pid: i32) -> Result<Vec<u64>> {
    let p = format!("/proc/{pid}/auxv");
    let b = std::fs::read(&p).map_err(|e| EngineError::Proc { path: p, msg: e.to_string() })?;
    Ok(b.chunks_exact(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default())).collect())
}

/// One line of /proc/PID/mountinfo.
#[derive(Debug, Clone)]
pub struct MountInfo {
    /// The mount's id (as fdinfo names mounts).
    pub id: u32,
    /// The file system's device, "major:minor".
    pub dev: String,
    pub root: String,
    pub target: String,
    pub options: String,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

/// Undo mountinfo's octal escapes (\040 for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The lines of a mountinfo file (malformed ones skipped).
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 6 || r.len() < 3 {
            continue;
        }
        out.push(MountInfo {
            id: l[0].parse().unwrap_or(0),
            dev: l[2].to_string(),
            root: unescape(l[3]),
            target: unescape(l[4]),
            options: l[5].to_string(),
            fstype: r[0].to_string(),
            source: unescape(r[1]),
            super_options: r[2].to_string(),
        });
    }
    out
}

/// `/proc/PID/REST` as (PID, REST) (REST empty for the directory itself),
/// if `path` is a process's place under /proc.
pub fn split_pid_path(path: &str) -> Option<(i32, &str)> {
    let rest = path.strip_prefix("/proc/")?;
    let (num, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let pid: i32 = num.parse().ok().filter(|&p| p > 0)?;
    (!tail.split('/').any(|c| c == ".." || c == ".")).then_some((pid, tail))
}

/// Open `/proc/PID/REST` again as the tree held it (status flags, offset):
/// run by a stub once every process exists.
pub fn open_of(pid: i32, rest: &str, flags: u32, pos: u64) -> Result<std::os::fd::OwnedFd> {
    use std::io::Seek;
    use std::os::unix::fs::OpenOptionsExt;
    let path = if rest.is_empty() { format!("/proc/{pid}") } else { format!("/proc/{pid}/{rest}") };
    let acc = flags & libc::O_ACCMODE as u32;
    let mut f = std::fs::OpenOptions::new()
        .read(acc != libc::O_WRONLY as u32)
        .write(acc != libc::O_RDONLY as u32)
        .custom_flags((flags & !(libc::O_ACCMODE as u32)) as i32)
        .open(&path)
        .map_err(|e| EngineError::Proc { path: path.clone(), msg: e.to_string() })?;
    if pos > 0 {
        f.seek(std::io::SeekFrom::Start(pos))
            .map_err(|e| EngineError::Proc { path, msg: format!("seek to {pos}: {e}") })?;
    }
    Ok(f.into())
}

/// /proc/self/ns/`ns` of the caller (a stub, in the tree's namespaces).
pub fn open_own_ns(ns: &str) -> Result<std::os::fd::OwnedFd> {
    let path = format!("/proc/self/ns/{ns}");
    std::fs::File::open(&path).map(Into::into).map_err(|e| EngineError::Proc { path, msg: e.to_string() })
}
