//! Pod networking over rtnetlink. Host side: the `cryopod0` bridge (holding
//! the first address of each pod network, so the host reaches pods) and one
//! veth per pod. Pod side: loopback up, the veth renamed `eth0` with the
//! pod's one address and a default route through the bridge. Also reads a
//! network namespace's configuration (interfaces, addresses, routes) for a
//! checkpoint.

use crate::state::IpConfig;
use crate::{PodError, Result};
use cryopod_image::pod::{PodLink, PodRoute};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};

/// The host bridge every pod veth is attached to.
pub const BRIDGE: &str = "cryopod0";

/// Metric of the unreachable route that guards each pod network: above the
/// bridge's connected route (metric 0), so it takes over only when the
/// bridge or its address is gone.
pub const GUARD_METRIC: u32 = 4242;

/// A network namespace's configuration as a checkpoint records it (IPv4
/// addresses as numbers, as the image keeps them).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NetConfig {
    pub links: Vec<PodLink>,
    pub routes: Vec<PodRoute>,
    /// Its settings (see [`crate::sysctls`]).
    pub sysctls: Vec<(String, String)>,
}

fn nerr(what: &str) -> impl FnOnce(rtnetlink::Error) -> PodError + '_ {
    move |e| PodError::Net(format!("{what}: {e}"))
}

/// Run netlink requests in the calling thread's network namespace.
fn with_handle<T>(f: impl AsyncFnOnce(Handle) -> Result<T>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| PodError::Net(format!("netlink runtime: {e}")))?;
    rt.block_on(async {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| PodError::Net(format!("netlink socket: {e}")))?;
        let task = tokio::spawn(conn);
        let r = f(handle).await;
        task.abort();
        r
    })
}

async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        Err(e) if no_device(&e) => Ok(None),
        Err(e) => Err(PodError::Net(format!("looking up {name}: {e}"))),
    }
}

fn no_device(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::ENODEV)
}

/// Delete a link; one already gone is fine (a pod's network namespace
/// takes its veth end, and so the pair, along when it goes).
async fn delete(h: &Handle, index: u32, what: &str) -> Result<()> {
    match h.link().del(index).execute().await {
        Err(e) if no_device(&e) => Ok(()),
        r => r.map_err(nerr(what)),
    }
}

async fn must_index(h: &Handle, name: &str) -> Result<u32> {
    index_of(h, name).await?.ok_or_else(|| PodError::Net(format!("interface {name} vanished")))
}

async fn set_up(h: &Handle, index: u32) -> Result<()> {
    h.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await.map_err(nerr("link up"))
}

/// The host-side veth's hardware address: locally administered, and
/// above any a bridge port is likely to have (`fe:` first), so that
/// joining a bridge never makes it the bridge's own address; the rest
/// from the pod's name and a random part.
fn host_side_mac(pod: &str) -> [u8; 6] {
    let mut r = [0u8; 3];
    let _ = rustix::rand::getrandom(&mut r, rustix::rand::GetRandomFlags::empty());
    let h = pod.bytes().fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    [0xfe, 0xcb, h, r[0], r[1], r[2]]
}

/// Host and pod-side names of a pod's veth (at most 15 bytes each).
pub fn veth_names(pod: &str) -> (String, String) {
    // FNV-1a: short, stable names that do not collide in practice.
    let h = pod.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let tag = (h ^ (h >> 32)) as u32;
    (format!("cpv{tag:08x}"), format!("cpp{tag:08x}"))
}

/// Every IPv4 address configured in the calling thread's network namespace.
pub fn addresses() -> Result<Vec<Ipv4Addr>> {
    with_handle(async |h| {
        let mut out = Vec::new();
        let mut s = h.address().get().execute();
        while let Some(m) = s.try_next().await.map_err(nerr("listing addresses"))? {
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V4(v4)) | AddressAttribute::Local(IpAddr::V4(v4)) = a {
                    out.push(*v4);
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    })
}

/// Host side: make sure the bridge exists, is up and holds the network's
/// first address; create the pod's veth, move its peer into the network
/// namespace of process `ns_pid`, attach the host end to the bridge (unless
/// `attach` is false: a restored pod's joins it with [`attach`] once its
/// sockets are made).
pub fn host_setup(pod: &str, ip: &IpConfig, ns_pid: i32, attach: bool, bridge: Option<&str>) -> Result<String> {
    let (host, peer) = veth_names(pod);
    with_handle(async |h| {
        let br = match (index_of(&h, bridge.unwrap_or(BRIDGE)).await?, bridge) {
            (Some(i), _) => i,
            (None, Some(b)) => {
                return Err(PodError::Net(format!(
                    "bridge {b} does not exist (cryopod uses a bridge given with --bridge as it is, never makes one)"
                )))
            }
            (None, None) => {
                h.link().add(LinkBridge::new(BRIDGE).build()).execute().await.map_err(nerr("creating the bridge"))?;
                must_index(&h, BRIDGE).await?
            }
        };
        guard(&h, ip).await?;
        // cryopod's own bridge is up and holds the network's first address;
        // one given with --bridge is used as it is.
        if bridge.is_none() {
            set_up(&h, br).await?;
            let gw = ip.gateway();
            let mut has = false;
            let mut s = h.address().get().set_link_index_filter(br).execute();
            while let Some(m) = s.try_next().await.map_err(nerr("bridge addresses"))? {
                has |= m.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(v)) if *v == gw));
            }
            if !has {
                h.address()
                    .add(br, IpAddr::V4(gw), ip.prefix)
                    .execute()
                    .await
                    .map_err(nerr("giving the bridge its address"))?;
            }
        }
        if index_of(&h, &host).await?.is_some() {
            return Err(PodError::Net(format!("interface {host} already exists (left over by a pod named {pod}?)")));
        }
        // The pod's end is made inside its network at once: moving it there
        // afterwards waits for an RCU grace period (~15 ms here).
        let inside = LinkMessageBuilder::<LinkUnspec>::new().name(peer.clone()).setns_by_pid(ns_pid as u32).build();
        let pair = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.clone())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(inside)));
        h.link().add(pair.build()).execute().await.map_err(nerr("creating the veth pair"))?;
        let res = async {
            let hi = must_index(&h, &host).await?;
            // A bridge takes the lowest hardware address of its ports
            // unless one was set on it: a pod's veth with a lower one
            // would change the host's own (an uplink bridge's), and its
            // neighbours would send to an address gone with the pod.
            let link = LinkUnspec::new_with_index(hi).address(host_side_mac(pod).to_vec()).up();
            let link = if attach { link.controller(br) } else { link };
            h.link().set(link.build()).execute().await.map_err(nerr("attaching the veth to the bridge"))
        }
        .await;
        if res.is_err() {
            if let Ok(Some(i)) = index_of(&h, &host).await {
                let _ = delete(&h, i, "removing the veth").await;
            }
        }
        res
    })?;
    Ok(host)
}

/// An unreachable route for the pod network, kept when the last pod goes
/// (its bridge with it): a packet for a pod address, checkpointed or gone,
/// must never follow the host's default route out of the machine. Routes
/// are cheap and the network may come back with a restore: cryopod never
/// removes it (`ip route del unreachable NET metric 4242` does).
async fn guard(h: &Handle, ip: &IpConfig) -> Result<()> {
    let net = Ipv4Addr::from(u32::from(ip.addr) & ip.mask());
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(net, ip.prefix)
        .kind(rtnetlink::packet_route::route::RouteType::Unreachable)
        .priority(GUARD_METRIC)
        .build();
    match h.route().add(route).execute().await {
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::EEXIST => Ok(()),
        r => r.map_err(nerr("adding the pod network's guard route")),
    }
}

/// Pod side (in the pod's network namespace): loopback up, and with an
/// address, the veth peer becomes `eth0` (with hardware address `mac` if
/// given) with that address and (`gateway`: on cryopod's bridge) a default
/// route through the host bridge.
pub fn pod_setup(pod: &str, ip: Option<&IpConfig>, mac: Option<&[u8]>, gateway: bool) -> Result<()> {
    with_handle(async |h| {
        let lo = must_index(&h, "lo").await?;
        set_up(&h, lo).await?;
        let Some(ip) = ip else { return Ok(()) };
        let (_, peer) = veth_names(pod);
        let i = must_index(&h, &peer).await?;
        let mut eth0 = LinkUnspec::new_with_index(i).name("eth0".to_string());
        if let Some(mac) = mac {
            eth0 = eth0.address(mac.to_vec());
        }
        h.link().set(eth0.build()).execute().await.map_err(nerr("renaming the veth to eth0"))?;
        h.address().add(i, IpAddr::V4(ip.addr), ip.prefix).execute().await.map_err(nerr("adding the address"))?;
        set_up(&h, i).await?;
        if !gateway {
            return Ok(());
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(ip.gateway()).output_interface(i).build();
        h.route().add(route).execute().await.map_err(nerr("adding the default route"))
    })
}

/// Pod side, on restore: its settings, and the addresses and routes the
/// pod had added itself (beyond loopback's, its own address and what the kernel derives
/// from addresses). `old` is the address it had. What cannot be added again
/// (a gateway outside a new address's network) is reported, not fatal.
pub fn apply_extra(cfg: &NetConfig, old: Option<Ipv4Addr>) -> Result<()> {
    crate::sysctls::write(&cfg.sysctls)?;
    let in_net = |a: u32, p: u8, d: u32| {
        let m = if p == 0 { 0 } else { u32::MAX << (32 - u32::from(p)) };
        a & m == d & m
    };
    with_handle(async |h| {
        for l in cfg.links.iter().filter(|l| l.name == "lo" || l.name == "eth0") {
            let Some(i) = index_of(&h, &l.name).await? else { continue };
            for &(a, p) in &l.addrs {
                let a = Ipv4Addr::from(a);
                if (l.name == "lo" && a == Ipv4Addr::LOCALHOST) || (l.name == "eth0" && Some(a) == old) {
                    continue;
                }
                if let Err(e) = h.address().add(i, IpAddr::V4(a), p).execute().await {
                    tracing::warn!("the pod's address {a}/{p} on {} was not added again: {e}", l.name);
                }
            }
        }
        for r in &cfg.routes {
            let derived = r.gateway.is_none()
                && cfg
                    .links
                    .iter()
                    .any(|l| l.name == r.dev && l.addrs.iter().any(|&(a, p)| p == r.prefix && in_net(a, p, r.dst)));
            let default = r.prefix == 0 && r.dev == "eth0";
            if derived || default || r.dev == "lo" {
                continue;
            }
            let Some(i) = index_of(&h, &r.dev).await? else { continue };
            let dst = Ipv4Addr::from(r.dst);
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dst, r.prefix).output_interface(i);
            if let Some(g) = r.gateway {
                b = b.gateway(Ipv4Addr::from(g));
            }
            if let Err(e) = h.route().add(b.build()).execute().await {
                tracing::warn!("the pod's route to {dst}/{} was not added again: {e}", r.prefix);
            }
        }
        Ok(())
    })
}

/// Remove a pod's veth (host end; the peer goes with it), and the bridge
/// once no veth is attached to it any more.
pub fn remove_veth(host: Option<&str>) -> Result<()> {
    with_handle(async |h| {
        let veth = match host {
            Some(n) => index_of(&h, n).await?,
            None => None,
        };
        if let Some(i) = veth {
            delete(&h, i, "removing the veth").await?;
        }
        let Some(br) = index_of(&h, BRIDGE).await? else { return Ok(()) };
        let mut ports = 0;
        let mut s = h.link().get().execute();
        while let Some(l) = s.try_next().await.map_err(nerr("listing links"))? {
            ports += l.attributes.iter().filter(|a| matches!(a, LinkAttribute::Controller(c) if *c == br)).count();
        }
        if ports == 0 {
            delete(&h, br, "removing the bridge").await?;
        }
        Ok(())
    })
}

/// Does an interface of this name exist in the calling thread's namespace?
pub fn link_exists(name: &str) -> Result<bool> {
    with_handle(async |h| Ok(index_of(&h, name).await?.is_some()))
}

/// The calling thread's network namespace: links, IPv4 addresses, routes
/// of the main table.
pub fn dump() -> Result<NetConfig> {
    with_handle(async |h| {
        let mut cfg = NetConfig { sysctls: crate::sysctls::read(), ..Default::default() };
        let mut names = std::collections::BTreeMap::new();
        let mut s = h.link().get().execute();
        while let Some(l) = s.try_next().await.map_err(nerr("listing links"))? {
            let mut link = PodLink {
                name: String::new(),
                up: l.header.flags.contains(LinkFlags::Up),
                mtu: 0,
                addrs: Vec::new(),
                mac: Vec::new(),
            };
            for a in &l.attributes {
                match a {
                    LinkAttribute::IfName(n) => link.name = n.clone(),
                    LinkAttribute::Mtu(m) => link.mtu = *m,
                    LinkAttribute::Address(a) => link.mac = a.clone(),
                    _ => {}
                }
            }
            names.insert(l.header.index, cfg.links.len());
            cfg.links.push(link);
        }
        let mut s = h.address().get().execute();
        while let Some(m) = s.try_next().await.map_err(nerr("listing addresses"))? {
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V4(v)) = a {
                    if let Some(&li) = names.get(&m.header.index) {
                        cfg.links[li].addrs.push((u32::from(*v), m.header.prefix_len));
                    }
                }
            }
        }
        let mut s = h.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        while let Some(r) = s.try_next().await.map_err(nerr("listing routes"))? {
            if r.header.table != 254 {
                continue;
            }
            let mut route =
                PodRoute { dst: 0, prefix: r.header.destination_prefix_length, gateway: None, dev: String::new() };
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => route.dst = u32::from(*d),
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => route.gateway = Some(u32::from(*g)),
                    RouteAttribute::Oif(i) => {
                        route.dev = names.get(i).map(|&li| cfg.links[li].name.clone()).unwrap_or_default()
                    }
                    _ => {}
                }
            }
            cfg.routes.push(route);
        }
        Ok(cfg)
    })
}

/// Lock (or unlock) a pod's network: the host end of its veth, a port of
/// the bridge, is set disabled, so the bridge drops every frame to and from
/// the pod. (Not "blocking": with STP off, the bridge at once makes any
/// port it does not find disabled forwarding again.) Peers see lost packets and send them again; nothing reaches
/// the pod's sockets while they are saved or made again, so no byte is
/// acknowledged that no image holds. (Set on the port, not the link: the
/// pod sees no carrier change.)
pub fn set_locked(veth: &str, locked: bool) -> Result<()> {
    with_handle(async |h| {
        let i = must_index(&h, veth).await?;
        h.link().set(port_state(i, locked)).execute().await.map_err(nerr(if locked {
            "locking the pod's network"
        } else {
            "unlocking the pod's network"
        }))
    })
}

/// Attach a pod's host-side veth to the bridge (a restored pod's, once
/// every socket of it is made). Until then no segment for the pod reaches
/// its namespace, where it would meet no socket and reset its connection;
/// locking the port instead left a window: a port comes up forwarding.
pub fn attach(veth: &str, bridge: Option<&str>) -> Result<()> {
    with_handle(async |h| {
        let br = must_index(&h, bridge.unwrap_or(BRIDGE)).await?;
        let i = must_index(&h, veth).await?;
        h.link()
            .set(LinkUnspec::new_with_index(i).controller(br).up().build())
            .execute()
            .await
            .map_err(nerr("attaching the veth to the bridge"))
    })
}

/// The port's state set as `bridge link set dev PORT state N` does it
/// (IFLA_PROTINFO of the bridge family: the port options of the link's
/// "bridge_slave" data leave a port disabled as it was).
fn port_state(index: u32, locked: bool) -> rtnetlink::packet_route::link::LinkMessage {
    use rtnetlink::packet_core::DefaultNla;
    use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage, LinkProtoInfoBridge};
    use rtnetlink::packet_route::AddressFamily;
    const IFLA_BRPORT_STATE: u16 = 1;
    const BR_STATE_DISABLED: u8 = 0;
    const BR_STATE_FORWARDING: u8 = 3;
    let state = if locked { BR_STATE_DISABLED } else { BR_STATE_FORWARDING };
    let mut m = LinkMessage::default();
    m.header.interface_family = AddressFamily::Bridge;
    m.header.index = index;
    m.attributes.push(LinkAttribute::ProtoInfoBridge(vec![LinkProtoInfoBridge::Other(DefaultNla::new(
        IFLA_BRPORT_STATE,
        vec![state],
    ))]));
    m
}

/// The request that unlocks a pod's network, as bytes to send on a
/// NETLINK_ROUTE socket (for a guardian, which must undo a lock should we
/// die, and has no netlink library of its own).
pub fn unlock_request(veth: &str) -> Result<Vec<u8>> {
    use rtnetlink::packet_core::{NetlinkMessage, NLM_F_REQUEST};
    use rtnetlink::packet_route::RouteNetlinkMessage;
    let i = with_handle(async |h| must_index(&h, veth).await)?;
    let mut m = NetlinkMessage::from(RouteNetlinkMessage::SetLink(port_state(i, false)));
    m.header.flags = NLM_F_REQUEST;
    m.finalize();
    let mut buf = vec![0u8; m.buffer_len()];
    m.serialize(&mut buf);
    Ok(buf)
}
