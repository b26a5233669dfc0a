//! Pods held for a migration: what keeps "never lose the pod" and "never
//! run it twice" while a pod moves between hosts.
//!
//! At the source, [`HeldPod`] is a pod checkpointed but not ended: frozen
//! by its cgroup, its network locked (its bridge port disabled, so its
//! address answers nothing), until the destination says it runs the pod
//! ([`HeldPod::end`]) or the move failed ([`HeldPod::resume`]). Should the
//! command die meanwhile, its guardian thaws and unlocks the pod, and the
//! checkpoint's note lets the next cryopod command do it too.
//!
//! At the destination, [`HeldRestore`] is a pod restored but not let go:
//! its processes frozen by the cgroup before the engine released them,
//! its veth not on the bridge, until the source has let its copy go
//! ([`HeldRestore::commit`]) or the move failed ([`HeldRestore::undo`]).
//! Should the command die meanwhile, its guardian kills the pod, and the
//! restore's note lets the next cryopod command remove what is left.

use crate::cgroup::Cgroup;
use crate::state::{PodRecord, StateDir, CHECKPOINTER, CREATOR};
use crate::{lifecycle, net, PodError, Result};
use cryopod_engine::guard::{Guard, Outcome};
use std::os::fd::AsFd;
use std::time::Duration;

fn engine_err(e: cryopod_engine::EngineError) -> PodError {
    PodError::Engine(e)
}

/// A checkpointed pod kept frozen and locked at the source.
pub struct HeldPod {
    rec: PodRecord,
    cg: Cgroup,
    guard: Guard,
    note: std::path::PathBuf,
}

impl HeldPod {
    /// Hold `rec`'s pod (frozen and locked by the checkpoint that made
    /// it): a guardian of our own thaws and unlocks it should we die.
    pub(crate) fn new(state: &StateDir, rec: PodRecord) -> Result<HeldPod> {
        let cg = Cgroup::of(state, &rec.name);
        let note = state.dir(&rec.name).join(CHECKPOINTER);
        let guard = Guard::start(Outcome::Resume).map_err(engine_err)?;
        let held = HeldPod { rec, cg, guard, note };
        held.guard.thaw_on_abort(held.cg.freezer_file()?.as_fd()).map_err(engine_err)?;
        if let Some(veth) = &held.rec.veth {
            let nl = cryopod_sys::sock::netlink_route()?;
            held.guard.send_on_abort(Outcome::Resume, nl.as_fd(), &net::unlock_request(veth)?).map_err(engine_err)?;
        }
        Ok(held)
    }

    pub fn name(&self) -> &str {
        &self.rec.name
    }

    /// Let the pod run here again: its network unlocked, thawed.
    pub fn resume(self) -> Result<()> {
        lifecycle::unlock_network(&self.rec);
        let r = self.cg.thaw();
        if r.is_ok() {
            let _ = std::fs::remove_file(&self.note);
            self.guard.disarm();
        }
        r
    }

    /// Leave the pod frozen and locked, on purpose (a move whose outcome is
    /// unknown: it may run elsewhere): no guardian nor later command thaws
    /// it; `cryopod stop` removes it.
    pub fn abandon(self) {
        self.guard.disarm();
        let _ = std::fs::remove_file(&self.note);
    }

    /// End the pod here (it runs elsewhere now): every process killed,
    /// then what is left of it removed.
    pub fn end(self, state: &StateDir) -> Result<()> {
        end_frozen(state, &self.rec, &self.guard)
    }
}

/// End a held (frozen) pod: every process killed, the cgroup thawed (frozen
/// tasks die only once thawed), the guardian told, the rest removed.
fn end_frozen(state: &StateDir, rec: &PodRecord, guard: &Guard) -> Result<()> {
    let cg = Cgroup::of(state, &rec.name);
    for p in cg.procs().unwrap_or_default() {
        let _ = cryopod_sys::process::kill(p, libc::SIGKILL);
    }
    cg.thaw()?;
    lifecycle::wait_gone(rec, Duration::from_secs(10));
    guard.disarm();
    lifecycle::cleanup(state, rec)
}

/// What tells the pod's segment where its address is now (gratuitous ARP
/// from its eth0), made ahead inside its network; None for a pod without
/// an address, or where it cannot be made (logged: the segment then
/// learns it from the pod's next frame).
pub fn announcer(rec: &PodRecord) -> Option<cryopod_sys::arp::Announcer> {
    let ip = rec.spec.ip?;
    // (In a thread: a lazy restore's filler runs beside, so no fork.)
    let make = move || Ok(cryopod_sys::arp::Announcer::new("eth0", ip.addr.octets())?);
    crate::join::in_net_of(rec.init_pid, make)
        .map_err(|e| tracing::warn!(pod = %rec.name, "announcing the pod's address: {e}"))
        .ok()
}

/// Announce `times` times (a failure is only logged).
pub fn announce(rec: &PodRecord, arp: Option<&cryopod_sys::arp::Announcer>, times: u32) {
    if let Some(Err(e)) = arp.map(|a| a.announce(times)) {
        tracing::warn!(pod = %rec.name, "announcing the pod's address: {e}");
    }
}

/// The hardware address of the pod's eth0.
pub fn hw_addr(rec: &PodRecord) -> Result<[u8; 6]> {
    crate::join::in_net_of(rec.init_pid, || {
        let sock = cryopod_sys::packet::socket(0)?;
        Ok(cryopod_sys::packet::hw_addr(&sock, "eth0")?)
    })
}

/// A restored pod kept frozen and unattached at the destination.
pub struct HeldRestore {
    rec: PodRecord,
    guard: Guard,
    /// Its private memory, still being filled (a lazy restore).
    lazy: Option<cryopod_engine::lazy::LazyPages>,
    /// Made ahead: it announces the pod's address at the commit.
    arp: Option<cryopod_sys::arp::Announcer>,
}

/// A pod handed over (see [`HeldRestore::commit`]).
pub struct Committed {
    pub rec: PodRecord,
    /// Its memory still being filled (a lazy restore).
    pub fill: Option<LazyFill>,
    /// To announce its address again (see [`announce`]); closed aside.
    pub arp: Option<cryopod_sys::arp::Announcer>,
}

/// A pod let go while its memory is still being filled: until
/// [`LazyFill::finish`], should we die, the guardian kills it (the kernel
/// would fill what is missing with zeros).
pub struct LazyFill {
    lazy: cryopod_engine::lazy::LazyPages,
    guard: Guard,
}

impl LazyFill {
    /// Wait for the last page. On failure the filler has killed the pod.
    pub fn finish(self) -> Result<cryopod_engine::lazy::LazyStats> {
        let stats = self.lazy.finish().map_err(crate::snapshot::engine_err)?;
        self.guard.disarm();
        Ok(stats)
    }
}

impl HeldRestore {
    pub(crate) fn new(rec: PodRecord, guard: Guard, lazy: Option<cryopod_engine::lazy::LazyPages>) -> HeldRestore {
        let arp = announcer(&rec);
        HeldRestore { rec, guard, lazy, arp }
    }

    pub fn record(&self) -> &PodRecord {
        &self.rec
    }

    /// Hand the pod over: its veth joins the bridge (the world reaches it
    /// again), its segment is told where its address is now, `deliver`
    /// hands it what its peers sent meanwhile (while it is still frozen: its
    /// kernel takes them in without competing with it), and it is thawed:
    /// the host's like any other, with its memory still being filled if it
    /// was restored lazily.
    pub fn commit(self, state: &StateDir, deliver: impl FnOnce(&PodRecord)) -> Result<Committed> {
        let t = std::time::Instant::now();
        if let Some(v) = &self.rec.veth {
            net::attach(v, self.rec.spec.bridge.as_deref())?;
        }
        // (The caller repeats it once it has told the source.)
        announce(&self.rec, self.arp.as_ref(), 1);
        deliver(&self.rec);
        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "commit: attached, announced, frames delivered");
        Cgroup::of(state, &self.rec.name).thaw()?;
        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "commit: thawed");
        let _ = std::fs::remove_file(state.dir(&self.rec.name).join(CREATOR));
        let fill = match self.lazy {
            Some(lazy) => Some(LazyFill { lazy, guard: self.guard }),
            None => {
                self.guard.disarm();
                None
            }
        };
        Ok(Committed { rec: self.rec, fill, arp: self.arp })
    }

    /// Remove the pod: every process killed, everything of it removed.
    pub fn undo(self, state: &StateDir) -> Result<()> {
        if let Some(a) = self.arp {
            a.close_aside();
        }
        end_frozen(state, &self.rec, &self.guard)
    }
}
