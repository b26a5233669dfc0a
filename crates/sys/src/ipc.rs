//! SysV IPC and POSIX message queues, as a pod's IPC namespace holds them:
//! reading a shared memory segment, semaphore values and queued messages
//! (MSG_COPY, without removing them), and creating them again with their
//! ids, owners and contents. Neither has a safe wrapper in rustix (SysV
//! IPC not at all, message queues beyond their descriptor's owner and
//! mode), so these calls are libc's; a queue's descriptor is an OwnedFd
//! (on Linux an mqd_t is the descriptor, and mq_close is close).

use crate::{Errno, SysError, SysResult};
use rustix::fs::{Gid, Mode, Uid};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn check(r: i64, what: impl Into<String>) -> SysResult<i64> {
    if r < 0 {
        return Err(SysError::last(what, 0));
    }
    Ok(r)
}

/// Owner and mode of an IPC object: (uid, gid, mode).
pub type Perm = (u32, u32, u32);

/// A shared memory segment's contents (attached read-only, copied, detached).
pub fn shm_read(id: i32, size: usize) -> SysResult<Vec<u8>> {
    // SAFETY: shmat maps the segment at an address of the kernel's choice.
    let p = unsafe { libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY) };
    if p as isize == -1 {
        return Err(SysError::last(format!("shmat({id})"), 0));
    }
    // SAFETY: the mapping is at least `size` bytes long (the segment size).
    let data = unsafe { std::slice::from_raw_parts(p as *const u8, size) }.to_vec();
    // SAFETY: `p` came from shmat.
    unsafe { libc::shmdt(p) };
    Ok(data)
}

/// Create segment (key, size) — the id is whatever the namespace's
/// `shm_next_id` says — fill it and set its owner.
pub fn shm_create(key: i32, size: usize, perm: Perm, data: &[u8]) -> SysResult<i32> {
    // SAFETY: integer arguments.
    let id =
        check(unsafe { libc::shmget(key, size, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) } as i64, "shmget")? as i32;
    // SAFETY: as in shm_read, writable this time.
    let p = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    if p as isize == -1 {
        return Err(SysError::last(format!("shmat({id})"), 0));
    }
    let n = data.len().min(size);
    // SAFETY: the segment is `size` bytes long and `n <= size`.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p as *mut u8, n) };
    // SAFETY: `p` came from shmat.
    unsafe { libc::shmdt(p) };
    // SAFETY: shmid_ds is plain data filled by IPC_STAT.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    check(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } as i64, "shmctl(IPC_STAT)")?;
    ds.shm_perm.uid = perm.0;
    ds.shm_perm.gid = perm.1;
    ds.shm_perm.mode = perm.2 as _;
    // SAFETY: valid in pointer.
    check(unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) } as i64, "shmctl(IPC_SET)")?;
    Ok(id)
}

/// Mark segment `id` for removal (it goes with its last attachment).
pub fn shm_remove(id: i32) -> SysResult<()> {
    // SAFETY: IPC_RMID takes no buffer.
    check(unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) } as i64, format!("shmctl({id}, IPC_RMID)"))?;
    Ok(())
}

#[repr(C)]
union Semun {
    val: i32,
    array: *mut u16,
    buf: *mut libc::semid_ds,
}

/// Values of every semaphore of set `id`.
pub fn sem_values(id: i32, nsems: usize) -> SysResult<Vec<u16>> {
    let mut v = vec![0u16; nsems];
    let arg = Semun { array: v.as_mut_ptr() };
    // SAFETY: GETALL writes nsems u16 values into `v`.
    check(unsafe { libc::semctl(id, 0, libc::GETALL, arg) } as i64, format!("semctl({id}, GETALL)"))?;
    Ok(v)
}

/// Create semaphore set (key, values), set values and owner.
pub fn sem_create(key: i32, values: &[u16], perm: Perm) -> SysResult<i32> {
    // SAFETY: integer arguments.
    let id = check(
        unsafe { libc::semget(key, values.len() as i32, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) } as i64,
        "semget",
    )? as i32;
    let mut v = values.to_vec();
    let arg = Semun { array: v.as_mut_ptr() };
    // SAFETY: SETALL reads nsems u16 values from `v`.
    check(unsafe { libc::semctl(id, 0, libc::SETALL, arg) } as i64, "semctl(SETALL)")?;
    // SAFETY: semid_ds is plain data.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    let arg = Semun { buf: &mut ds };
    // SAFETY: IPC_STAT fills `ds`.
    check(unsafe { libc::semctl(id, 0, libc::IPC_STAT, arg) } as i64, "semctl(IPC_STAT)")?;
    ds.sem_perm.uid = perm.0;
    ds.sem_perm.gid = perm.1;
    ds.sem_perm.mode = perm.2 as _;
    let arg = Semun { buf: &mut ds };
    // SAFETY: IPC_SET reads `ds`.
    check(unsafe { libc::semctl(id, 0, libc::IPC_SET, arg) } as i64, "semctl(IPC_SET)")?;
    Ok(id)
}

/// MSG_COPY: copy a message by position, without removing it.
const MSG_COPY: i32 = 0o40000;

/// Every message of queue `id`, in order: (type, bytes).
pub fn msg_copy_all(id: i32, count: usize, max_bytes: usize) -> SysResult<Vec<(i64, Vec<u8>)>> {
    let mut out = Vec::with_capacity(count.min(1 << 16));
    let mut buf = vec![0u8; 8 + max_bytes.max(1)];
    for i in 0..count {
        // SAFETY: `buf` holds a long (mtype) followed by max_bytes of text.
        let r = unsafe {
            libc::msgrcv(
                id,
                buf.as_mut_ptr().cast(),
                max_bytes,
                i as i64,
                MSG_COPY | libc::IPC_NOWAIT | libc::MSG_NOERROR,
            )
        };
        let n = check(r as i64, format!("msgrcv({id}, MSG_COPY {i})"))? as usize;
        let mtype = i64::from_ne_bytes(buf[..8].try_into().unwrap_or_default());
        out.push((mtype, buf[8..8 + n].to_vec()));
    }
    Ok(out)
}

/// The byte limit of message queue `id`.
pub fn msg_qbytes(id: i32) -> SysResult<u64> {
    // SAFETY: msqid_ds is plain data.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT fills `ds`.
    check(unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) } as i64, format!("msgctl({id}, IPC_STAT)"))?;
    Ok(ds.msg_qbytes as u64)
}

/// Create message queue `key` with its messages, byte limit and owner.
pub fn msg_create(key: i32, msgs: &[(i64, Vec<u8>)], qbytes: u64, perm: Perm) -> SysResult<i32> {
    // SAFETY: integer arguments.
    let id = check(unsafe { libc::msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) } as i64, "msgget")? as i32;
    // SAFETY: msqid_ds is plain data.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT fills `ds`.
    check(unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) } as i64, "msgctl(IPC_STAT)")?;
    ds.msg_perm.uid = perm.0;
    ds.msg_perm.gid = perm.1;
    ds.msg_perm.mode = perm.2 as _;
    ds.msg_qbytes = qbytes as _;
    // SAFETY: IPC_SET reads `ds`.
    check(unsafe { libc::msgctl(id, libc::IPC_SET, &mut ds) } as i64, "msgctl(IPC_SET)")?;
    for (t, text) in msgs {
        let mut b = t.to_ne_bytes().to_vec();
        b.extend_from_slice(text);
        // SAFETY: `b` is a long type followed by text.len() bytes.
        let r = unsafe { libc::msgsnd(id, b.as_ptr().cast(), text.len(), libc::IPC_NOWAIT) };
        check(r as i64, "msgsnd")?;
    }
    Ok(id)
}

/// A POSIX message queue: attributes and messages (priority, bytes).
pub struct PosixQueue {
    pub maxmsg: i64,
    pub msgsize: i64,
    pub msgs: Vec<(u32, Vec<u8>)>,
}

fn mq_name(name: &str) -> SysResult<CString> {
    CString::new(format!("/{name}")).map_err(|_| SysError::new("mq_open (NUL in name)", 0, Errno(libc::EINVAL)))
}

/// mq_open(name, flags[, mode, attributes]) as an OwnedFd.
fn mq_open(name: &str, flags: i32, create: Option<(u32, &libc::mq_attr)>) -> SysResult<OwnedFd> {
    let n = mq_name(name)?;
    // SAFETY: `n` is a valid name; with O_CREAT the mode and a valid
    // attribute struct follow, as mq_open reads them.
    let q = unsafe {
        match create {
            None => libc::mq_open(n.as_ptr(), flags | libc::O_CLOEXEC),
            Some((mode, attr)) => {
                libc::mq_open(n.as_ptr(), flags | libc::O_CLOEXEC, mode, attr as *const libc::mq_attr)
            }
        }
    };
    if q < 0 {
        let what = if create.is_some() { format!("mq_open({name}, O_CREAT)") } else { format!("mq_open({name})") };
        return Err(SysError::last(what, 0));
    }
    // SAFETY: a new descriptor that nothing else owns (an mqd_t is one).
    Ok(unsafe { OwnedFd::from_raw_fd(q) })
}

/// mq_send of one message.
fn mq_send(q: &OwnedFd, m: &[u8], prio: u32) -> bool {
    // SAFETY: pointer and length of a live slice.
    unsafe { libc::mq_send(q.as_raw_fd(), m.as_ptr().cast(), m.len(), prio) == 0 }
}

/// Read queue `name`'s messages by receiving them all, then send them back
/// in the same order: afterwards the queue holds what it held.
pub fn mq_read(name: &str) -> SysResult<PosixQueue> {
    let q = mq_open(name, libc::O_RDWR | libc::O_NONBLOCK, None)?;
    // SAFETY: mq_attr is plain data.
    let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    unsafe { libc::mq_getattr(q.as_raw_fd(), &mut attr) };
    let mut msgs = Vec::new();
    let mut buf = vec![0u8; attr.mq_msgsize.max(1) as usize];
    loop {
        let mut prio = 0u32;
        // SAFETY: `buf` holds mq_msgsize bytes.
        let r = unsafe { libc::mq_receive(q.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), &mut prio) };
        if r < 0 {
            break;
        }
        msgs.push((prio, buf[..r as usize].to_vec()));
    }
    let mut res = Ok(());
    for (p, m) in &msgs {
        if !mq_send(&q, m, *p) {
            res = Err(SysError::last(format!("mq_send({name}) putting a message back"), 0));
        }
    }
    drop(q);
    res?;
    Ok(PosixQueue { maxmsg: attr.mq_maxmsg, msgsize: attr.mq_msgsize, msgs })
}

/// Create queue `name` with its attributes, owner, mode and messages.
pub fn mq_create(name: &str, q: &PosixQueue, perm: Perm) -> SysResult<()> {
    // SAFETY: mq_attr is plain data.
    let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
    attr.mq_maxmsg = q.maxmsg;
    attr.mq_msgsize = q.msgsize;
    let fd = mq_open(name, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, Some((perm.2 & 0o777, &attr)))?;
    for (p, m) in &q.msgs {
        if !mq_send(&fd, m, *p) {
            return Err(SysError::last(format!("mq_send({name})"), 0));
        }
    }
    // Owner ids and mode (not the creation umask's).
    let owner = rustix::fs::fchown(&fd, Some(Uid::from_raw(perm.0)), Some(Gid::from_raw(perm.1)));
    let mode = rustix::fs::fchmod(&fd, Mode::from_raw_mode(perm.2 & 0o777));
    owner.and(mode).map_err(|e| SysError::new(format!("fchown/fchmod(mqueue {name})"), 0, e.into()))
}

/// mq_open(name, flags) for an fd (close-on-exec) in the caller's IPC
/// namespace; the queue must exist.
pub fn mq_open_fd(name: &str, flags: i32) -> SysResult<OwnedFd> {
    mq_open(name, flags, None)
}
