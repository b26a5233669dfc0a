//! A pod's IPC namespace across checkpoint/restore: a SysV shared memory
//! segment attached twice (once read-only) in this process and once in a
//! child (still shared after restore), a semaphore set with its values, a
//! message queue with typed messages, and a POSIX message queue with
//! prioritised messages, read through the descriptor kept open across the
//! checkpoint. Run in a pod (the objects live in its namespace).

use cryopod_testprogs::*;

const SHM_SIZE: usize = 64 * 1024;

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    unsafe {
        let shmid = libc::shmget(0x1234, SHM_SIZE, libc::IPC_CREAT | 0o640);
        assert!(shmid >= 0, "shmget: {}", std::io::Error::last_os_error());
        let p = libc::shmat(shmid, std::ptr::null(), 0) as *mut u8;
        let ro = libc::shmat(shmid, std::ptr::null(), libc::SHM_RDONLY) as *const u8;
        let pat = pattern(3, SHM_SIZE);
        std::ptr::copy_nonoverlapping(pat.as_ptr(), p, SHM_SIZE);
        // A private segment marked for removal while attached.
        let gone = libc::shmget(libc::IPC_PRIVATE, 8192, libc::IPC_CREAT | 0o600);
        let g = libc::shmat(gone, std::ptr::null(), 0) as *mut u8;
        let gpat = pattern(9, 8192);
        std::ptr::copy_nonoverlapping(gpat.as_ptr(), g, 8192);
        libc::shmctl(gone, libc::IPC_RMID, std::ptr::null_mut());
        let semid = libc::semget(0x2345, 3, libc::IPC_CREAT | 0o600);
        for (i, v) in [1, 5, 42].iter().enumerate() {
            libc::semctl(semid, i as i32, libc::SETVAL, *v);
        }
        let msqid = libc::msgget(0x3456, libc::IPC_CREAT | 0o600);
        for (t, text) in [(1i64, "first"), (2, "second"), (1, "third")] {
            let mut b = t.to_ne_bytes().to_vec();
            b.extend_from_slice(text.as_bytes());
            libc::msgsnd(msqid, b.as_ptr().cast(), text.len(), 0);
        }
        let mq_name = c"/tp-mq";
        let mut attr: libc::mq_attr = std::mem::zeroed();
        attr.mq_maxmsg = 4;
        attr.mq_msgsize = 64;
        // Kept open across the checkpoint (non-blocking, to read it empty).
        let mq = libc::mq_open(mq_name.as_ptr(), libc::O_CREAT | libc::O_RDWR | libc::O_NONBLOCK, 0o600, &attr);
        assert!(mq >= 0, "mq_open: {}", std::io::Error::last_os_error());
        libc::mq_send(mq, b"low".as_ptr().cast(), 3, 1);
        libc::mq_send(mq, b"high".as_ptr().cast(), 4, 5);
        let child = libc::fork();
        if child == 0 {
            let q = libc::shmat(shmid, std::ptr::null(), 0) as *mut u8;
            wait_go(&dir);
            // Written after restore: the parent must see it.
            *q.add(100) = 0xAB;
            libc::_exit(0);
        }
        ready_and_wait(&dir);

        c.eq("segment keeps its id", libc::shmget(0x1234, 0, 0), shmid);
        let now = std::slice::from_raw_parts(p, SHM_SIZE);
        let same = now.iter().enumerate().all(|(i, &b)| i == 100 || b == pat[i]);
        c.check("segment contents", same, "differ");
        let mut st = 0;
        libc::waitpid(child, &mut st, 0);
        c.eq("child's write seen through the shared segment", *p.add(100), 0xAB);
        c.eq("read-only attachment sees it too", *ro.add(100), 0xAB);
        let mut ds: libc::shmid_ds = std::mem::zeroed();
        libc::shmctl(shmid, libc::IPC_STAT, &mut ds);
        c.eq("attachments after the child left", ds.shm_nattch, 2);
        c.eq("segment mode", ds.shm_perm.mode & 0o777, 0o640);
        c.check("removed segment contents", std::slice::from_raw_parts(g, 8192) == &gpat[..], "differ");
        let mut ds: libc::shmid_ds = std::mem::zeroed();
        c.eq("removed segment still attached", libc::shmctl(gone, libc::IPC_STAT, &mut ds), 0);
        c.check("removed segment still marked for removal", ds.shm_perm.mode & 0o1000 != 0, "not marked");
        c.eq("removed segment attachments", ds.shm_nattch, 1);
        c.eq("semaphore set keeps its id", libc::semget(0x2345, 0, 0), semid);
        let vals: Vec<i32> = (0..3).map(|i| libc::semctl(semid, i, libc::GETVAL)).collect();
        c.eq("semaphore values", vals, vec![1, 5, 42]);
        c.eq("message queue keeps its id", libc::msgget(0x3456, 0), msqid);
        let mut got = Vec::new();
        let mut buf = [0u8; 72];
        for _ in 0..3 {
            let n = libc::msgrcv(msqid, buf.as_mut_ptr().cast(), 64, 0, libc::IPC_NOWAIT);
            let t = i64::from_ne_bytes(buf[..8].try_into().unwrap());
            got.push(format!("{t}:{}", String::from_utf8_lossy(&buf[8..8 + n.max(0) as usize])));
        }
        c.eq("messages in order with types", got, vec!["1:first".into(), "2:second".into(), "1:third".into()]);
        let mut got = Vec::new();
        let mut b = [0u8; 64];
        for _ in 0..3 {
            let mut prio = 0u32;
            let n = libc::mq_receive(mq, b.as_mut_ptr().cast(), 64, &mut prio);
            if n >= 0 {
                got.push(format!("{prio}:{}", String::from_utf8_lossy(&b[..n as usize])));
            }
        }
        c.eq("POSIX queue by priority", got, vec!["5:high".to_string(), "1:low".to_string()]);
        libc::mq_getattr(mq, &mut attr);
        c.eq("POSIX queue attributes", (attr.mq_maxmsg, attr.mq_msgsize), (4, 64));
        c.eq(
            "POSIX queue descriptor still non-blocking",
            attr.mq_flags & libc::O_NONBLOCK as i64,
            libc::O_NONBLOCK as i64,
        );
        c.check("POSIX queue descriptor still writable", libc::mq_send(mq, b"x".as_ptr().cast(), 1, 0) == 0, "mq_send");
    }
    c.finish()
}
