//! Identity and limits across checkpoint/restore: uids/gids/groups,
//! capabilities (effective, permitted, inheritable, bounding, ambient),
//! no_new_privs, rlimits, umask, cwd, personality, comm, and what
//! /proc/self/{cmdline,environ,exe,stat} show.

use cryopod_testprogs::*;

fn read(p: &str) -> Vec<u8> {
    std::fs::read(p).unwrap_or_default()
}

fn stat_fields() -> Vec<String> {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = s.rsplit_once(") ").unwrap().1.to_string();
    let f: Vec<String> = rest.split_whitespace().map(String::from).collect();
    // start_code, end_code, start_stack (26-28), start_data..env_end (45-51).
    [26, 27, 28, 45, 46, 47, 48, 49, 50, 51].iter().map(|&n| f[n - 3].clone()).collect()
}

fn rlim(r: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    unsafe { libc::getrlimit(r, &mut l) };
    (l.rlim_cur, l.rlim_max)
}

const CAP_CHOWN: u32 = 0;
const CAP_KILL: u32 = 5;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_SYS_BOOT: u32 = 22;

fn main() {
    let dir = work_dir();
    let mut c = Checks::new();
    let sub = dir.join("sub dir");
    std::fs::create_dir_all(&sub).unwrap();
    unsafe {
        libc::setrlimit(libc::RLIMIT_NOFILE, &libc::rlimit { rlim_cur: 300, rlim_max: 4000 });
        libc::setrlimit(libc::RLIMIT_CORE, &libc::rlimit { rlim_cur: 0, rlim_max: 1 << 20 });
        libc::setrlimit(libc::RLIMIT_MSGQUEUE, &libc::rlimit { rlim_cur: 4096, rlim_max: 8192 });
        libc::umask(0o027);
        std::env::set_current_dir(&sub).unwrap();
        libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong);
        libc::prctl(libc::PR_SET_NAME, c"ident-main".as_ptr());
        // Credentials: drop a bounding cap, set groups and ids, keep some caps.
        libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0);
        let groups = [10u32, 20, 30];
        libc::setgroups(3, groups.as_ptr());
        libc::setresgid(1000, 1001, 1002);
        libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
        libc::setresuid(1000, 1001, 1002);
        #[repr(C)]
        struct Hdr(u32, i32);
        #[repr(C)]
        struct Data(u32, u32, u32);
        let bit = |c: u32| 1u32 << c;
        let hdr = Hdr(0x2008_0522, 0);
        let data = [
            Data(
                bit(CAP_NET_BIND_SERVICE) | bit(CAP_KILL),
                bit(CAP_NET_BIND_SERVICE) | bit(CAP_KILL) | bit(CAP_CHOWN),
                bit(CAP_KILL),
            ),
            Data(0, 0, 0),
        ];
        libc::syscall(libc::SYS_capset, &hdr, data.as_ptr());
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, CAP_KILL, 0, 0);
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
    let keys = ["Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Umask"];
    let before: Vec<String> = keys.iter().map(|k| status(k)).collect();
    let cmdline = read("/proc/self/cmdline");
    let environ = read("/proc/self/environ");
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let stat_before = stat_fields();
    let limits = [libc::RLIMIT_NOFILE, libc::RLIMIT_CORE, libc::RLIMIT_MSGQUEUE, libc::RLIMIT_STACK].map(rlim);
    let pers = unsafe { libc::personality(0xffff_ffff) };

    ready_and_wait(&dir);

    for (k, b) in keys.iter().zip(&before) {
        c.eq(k, status(k), b.clone());
    }
    c.check("uid dropped to 1000", status("Uid").starts_with("1000\t1001\t1002"), status("Uid"));
    c.check("ambient cap kept", status("CapAmb") != "0000000000000000", status("CapAmb"));
    c.eq("cmdline", read("/proc/self/cmdline"), cmdline);
    c.eq("environ", read("/proc/self/environ"), environ);
    c.eq("exe link", std::fs::read_link("/proc/self/exe").unwrap(), exe);
    c.eq("mm fields in stat", stat_fields(), stat_before);
    c.eq(
        "rlimits",
        [libc::RLIMIT_NOFILE, libc::RLIMIT_CORE, libc::RLIMIT_MSGQUEUE, libc::RLIMIT_STACK].map(rlim),
        limits,
    );
    c.eq("cwd", std::env::current_dir().unwrap(), sub.clone());
    c.eq("personality", unsafe { libc::personality(0xffff_ffff) }, pers);
    c.eq("comm", std::fs::read_to_string("/proc/self/comm").unwrap().trim().to_string(), "ident-main".to_string());
    c.eq("args seen by the program", std::env::args().nth(1).map(std::path::PathBuf::from), Some(dir.clone()));
    c.finish();
}
