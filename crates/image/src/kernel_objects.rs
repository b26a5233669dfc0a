//! The records of descriptors on kernel objects other than files and
//! sockets: inotify watches, fanotify marks, and BPF maps with their
//! entries. Kept apart from [`crate::records`], which names them in
//! `FileKind` and validates them.

use serde::{Deserialize, Serialize};

/// One inotify watch: its descriptor, mask, and the watched file as a
/// file handle on the file system mounted at `mount` (a path of the tree).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InotifyWatch {
    pub wd: i32,
    pub mask: u32,
    pub mount: String,
    pub handle_type: i32,
    pub handle: Vec<u8>,
}

/// A BPF map of a kind whose contents can be read and written from user
/// space (hash, array, their per-CPU and LRU kinds): what it was made
/// with, whether it was frozen, and every entry. A per-CPU map's values
/// hold one 8-byte-aligned slot per possible CPU (`cpus` of them).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct BpfMapRec {
    /// The map's id at checkpoint: descriptions of one map (another fd
    /// opened by id, with other access) are one map again.
    pub id: u32,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub map_extra: u64,
    pub name: Vec<u8>,
    pub frozen: bool,
    /// Possible CPUs for a per-CPU map; 0 otherwise.
    pub cpus: u32,
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The map types carried: hash, array, per-CPU hash and array, LRU hash
/// and LRU per-CPU hash.
pub const BPF_MAP_TYPES: [u32; 6] = [1, 2, 5, 6, 9, 10];

impl BpfMapRec {
    /// The bytes of one value as lookups give them.
    pub fn value_bytes(&self) -> usize {
        match self.cpus {
            0 => self.value_size as usize,
            n => (self.value_size as usize).next_multiple_of(8) * n as usize,
        }
    }

    /// Sizes and entries that a map of its kind can hold.
    pub fn is_consistent(&self) -> bool {
        let percpu = matches!(self.map_type, 5 | 6 | 10);
        BPF_MAP_TYPES.contains(&self.map_type)
            && (1..=512).contains(&self.key_size)
            && (1..=(1 << 20)).contains(&self.value_size)
            && (percpu == (self.cpus > 0))
            && self.cpus <= 8192
            && self.name.len() < 16
            && self.entries.len() <= self.max_entries as usize
            && self.entries.iter().all(|(k, v)| k.len() == self.key_size as usize && v.len() == self.value_bytes())
    }
}

/// One fanotify mark: what it is on, its flags as fdinfo shows them
/// (FAN_MARK_IGNORED_SURV_MODIFY, FAN_MARK_EVICTABLE, FAN_MARK_IGNORE),
/// its mask and its ignored mask.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FanMark {
    pub on: FanTarget,
    pub mflags: u32,
    pub mask: u64,
    pub ignored: u64,
}

/// What a fanotify mark is on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum FanTarget {
    /// A file or directory, by file handle on the file system mounted at
    /// `mount` (a path of the tree), as for inotify.
    Inode { mount: String, handle_type: i32, handle: Vec<u8> },
    /// The mount at `path` (a path of the tree).
    Mount { path: String },
    /// The file system mounted at `mount`.
    Filesystem { mount: String },
}
