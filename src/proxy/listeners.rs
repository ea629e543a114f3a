//! The `stream_proxy` listeners: binding entries, and changing them while
//! running (SIGHUP).
//!
//! With `enable_reuseport` (APISIX's default) each entry gets one socket per
//! data-plane worker bound with `SO_REUSEPORT`, so the kernel spreads new
//! connections over the workers' accept loops, as nginx does.
//!
//! A reload is two steps. [`plan`] compares the entries wanted with those
//! bound and decides, without touching a socket, what to add, keep and
//! remove; [`Listeners::apply`] then binds the added entries, hands their
//! sockets to the workers, stops the removed ones and swaps the published
//! [`ListenerSet`]. New sockets are bound before old ones stop, so an entry
//! whose options changed on the same address (with reuseport) never stops
//! listening.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
use tokio_util::sync::CancellationToken;

use super::udp::UdpCounters;
use super::worker::{WorkerSockets, Workers};
use super::ListenerInfo;
use crate::config::{Config, ListenSpec};

/// Pending-connection queue length (nginx's `backlog` on Linux is 511;
/// a longer queue absorbs connection bursts).
const BACKLOG: i32 = 4096;
/// Socket buffer asked for on UDP listeners, to ride out bursts.
const UDP_SOCKET_BUFFER: usize = 4 << 20;

/// The stream listeners in force: swapped whole by a reload, read by the
/// Control API and the metrics.
#[derive(Debug, Default)]
pub struct ListenerSet {
    /// TCP entries.
    pub tcp: Vec<Arc<ListenerInfo>>,
    /// UDP entries with their counters.
    pub udp: Vec<(Arc<ListenerInfo>, Arc<UdpCounters>)>,
}

/// The listener set, shared lock-free.
pub type SharedListeners = Arc<arc_swap::ArcSwap<ListenerSet>>;

/// Which list of `stream_proxy` an entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `stream_proxy.tcp`.
    Tcp,
    /// `stream_proxy.udp`.
    Udp,
}

impl Protocol {
    /// Lower-case name, as logs print it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// The config key its entries come from, as errors name it.
    pub fn config_key(self) -> &'static str {
        match self {
            Protocol::Tcp => "apisix.stream_proxy.tcp entry",
            Protocol::Udp => "apisix.stream_proxy.udp entry",
        }
    }
}

/// One `stream_proxy` entry: a listen spec and its list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Address and options.
    pub spec: ListenSpec,
}

impl Entry {
    /// A TCP entry.
    pub fn tcp(spec: ListenSpec) -> Entry {
        Entry {
            protocol: Protocol::Tcp,
            spec,
        }
    }

    /// A UDP entry.
    pub fn udp(spec: ListenSpec) -> Entry {
        Entry {
            protocol: Protocol::Udp,
            spec,
        }
    }

    /// What makes two entries the same listener: protocol, address and
    /// every option.
    fn key(&self) -> (Protocol, SocketAddr, [bool; 4]) {
        let s = &self.spec;
        (
            self.protocol,
            s.addr,
            [
                s.tls,
                s.tls_passthrough,
                s.proxy_protocol,
                s.proxy_protocol_to_upstream,
            ],
        )
    }
}

impl Entry {
    /// How a binary upgrade names the entry's sockets: list, address as
    /// configured and options, so the new process adopts the sockets of
    /// the entries its config still names.
    pub fn tag(&self) -> String {
        let (protocol, addr, opts) = self.key();
        format!("{} {addr} {opts:?}", protocol.name())
    }
}

/// The entries `config` asks for, TCP first (none when the stream
/// subsystem is off).
pub fn wanted(config: &Config) -> Vec<Entry> {
    match config
        .apisix
        .stream_proxy
        .as_ref()
        .filter(|_| config.stream_enabled())
    {
        Some(sp) => sp
            .tcp
            .iter()
            .cloned()
            .map(Entry::tcp)
            .chain(sp.udp.iter().cloned().map(Entry::udp))
            .collect(),
        None => Vec::new(),
    }
}

/// What a reload does, decided without touching a socket.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Entries to bind, in the order wanted.
    pub add: Vec<Entry>,
    /// Positions in the bound list of entries that stay as they are.
    pub keep: Vec<usize>,
    /// Positions in the bound list of entries that stop accepting.
    pub remove: Vec<usize>,
}

/// Compare the entries `wanted` with those `bound`: a bound entry still
/// wanted is kept, a wanted entry not bound is added, a bound entry no
/// longer wanted is removed. An entry whose options changed is a different
/// entry (the new one added, the old one removed). An entry on a fixed port
/// listed twice counts once; an entry on port 0 asks for a free port each
/// time it is listed, so identical port-0 entries are matched one to one.
pub fn plan(wanted: &[Entry], bound: &[Entry]) -> Plan {
    let mut missing: HashMap<_, usize> = HashMap::new();
    for w in wanted {
        let n = missing.entry(w.key()).or_default();
        *n = if w.spec.addr.port() == 0 { *n + 1 } else { 1 };
    }
    // Take one wanted slot of `e`'s kind, if one is left.
    let mut take = |e: &Entry| match missing.get_mut(&e.key()) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    };
    let mut out = Plan::default();
    for (i, b) in bound.iter().enumerate() {
        if take(b) {
            out.keep.push(i);
        } else {
            out.remove.push(i);
        }
    }
    out.add = wanted.iter().filter(|w| take(w)).cloned().collect();
    out
}

/// What a listener reload did, by listener label.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Entries bound and now accepting.
    pub added: Vec<String>,
    /// Entries that stopped accepting.
    pub removed: Vec<String>,
    /// Entries that could not be bound, with the reason.
    pub failed: Vec<String>,
}

/// An entry that could not be bound at start-up.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {} {}: {error}", entry.protocol.config_key(), entry.spec.addr)]
pub struct BindError {
    /// The entry.
    pub entry: Entry,
    /// The OS error.
    pub error: io::Error,
}

/// One bound entry and the token that stops its accept loops.
#[derive(Debug)]
struct Bound {
    entry: Entry,
    info: Arc<ListenerInfo>,
    /// Set for UDP entries.
    counters: Option<Arc<UdpCounters>>,
    stop: CancellationToken,
    /// Copies of the entry's sockets, to hand to a new binary.
    copies: Vec<std::os::fd::OwnedFd>,
}

/// The bound `stream_proxy` entries of a running server.
#[derive(Debug)]
pub struct Listeners {
    bound: Vec<Bound>,
    shared: SharedListeners,
    reuseport: bool,
    /// Parent of every entry's stop token (the server's).
    stop: CancellationToken,
}

impl Listeners {
    /// Bind every entry of `wanted` before anything serves, all or nothing:
    /// `workers` sockets per entry, returned per worker to start them with.
    pub fn bind(
        wanted: &[Entry],
        reuseport: bool,
        workers: usize,
        stop: &CancellationToken,
    ) -> Result<(Listeners, Vec<WorkerSockets>), BindError> {
        let mut per_worker = worker_sockets(workers);
        let mut bound = Vec::new();
        for entry in plan(wanted, &[]).add {
            match bind_entry(&entry, reuseport, &mut per_worker, stop) {
                Ok(b) => bound.push(b),
                Err(error) => return Err(BindError { entry, error }),
            }
        }
        let shared = Arc::new(arc_swap::ArcSwap::from_pointee(listener_set(&bound)));
        let listeners = Listeners {
            bound,
            shared,
            reuseport,
            stop: stop.clone(),
        };
        Ok((listeners, per_worker))
    }

    /// The published listener set (the Control API reads it).
    pub fn shared(&self) -> SharedListeners {
        self.shared.clone()
    }

    /// The listener set in force now.
    pub fn current(&self) -> Arc<ListenerSet> {
        self.shared.load_full()
    }

    /// The entries bound now, in the order [`plan`] numbers them.
    pub fn entries(&self) -> Vec<Entry> {
        self.bound.iter().map(|b| b.entry.clone()).collect()
    }

    /// Every bound socket with its tag and address, copied for a binary
    /// upgrade.
    pub fn handover(&self) -> Vec<(String, SocketAddr, io::Result<std::os::fd::OwnedFd>)> {
        use std::os::fd::AsFd;
        self.bound
            .iter()
            .flat_map(|b| {
                let tag = b.entry.tag();
                b.copies
                    .iter()
                    .map(move |fd| (tag.clone(), b.info.local, fd.as_fd().try_clone_to_owned()))
            })
            .collect()
    }

    /// Close the copies kept for an upgrade, so that the sockets close
    /// once the accept loops let go of them (shutdown).
    pub fn release_copies(&mut self) {
        for b in &mut self.bound {
            b.copies.clear();
        }
    }

    /// Log one line per bound entry (at start-up).
    pub fn log_listening(&self) {
        for b in &self.bound {
            tracing::info!(listen = %b.info.label, addr = %b.info.local, "{} proxy listening", b.entry.protocol.name());
        }
    }

    /// Make the bound entries those of `wanted`: [`plan`], then
    /// [`apply`](Listeners::apply).
    pub fn reload(&mut self, wanted: &[Entry], workers: &Workers) -> ReloadOutcome {
        let plan = plan(wanted, &self.entries());
        self.apply(plan, workers)
    }

    /// Carry out `plan` (made against [`entries`](Listeners::entries)):
    /// bind the added entries and hand each worker its sockets, stop the
    /// removed ones (their connections finish normally), then publish the
    /// new set. An entry that cannot be bound is reported and skipped (an
    /// entry it was to replace on the same address stays); the rest still
    /// applies.
    pub fn apply(&mut self, plan: Plan, workers: &Workers) -> ReloadOutcome {
        let mut out = ReloadOutcome::default();
        let mut old: Vec<Option<Bound>> = std::mem::take(&mut self.bound)
            .into_iter()
            .map(Some)
            .collect();
        let mut take = |i: usize| old.get_mut(i).and_then(Option::take);
        self.bound = plan.keep.iter().filter_map(|&i| take(i)).collect();
        let gone: Vec<Bound> = plan.remove.iter().filter_map(|&i| take(i)).collect();
        let mut per_worker = worker_sockets(workers.count());
        let mut unbound = HashSet::new();
        for entry in &plan.add {
            match bind_entry(entry, self.reuseport, &mut per_worker, &self.stop) {
                Ok(b) => {
                    tracing::info!(listen = %b.info.label, addr = %b.info.local, protocol = entry.protocol.name(), "listener added");
                    out.added.push(b.info.label.clone());
                    self.bound.push(b);
                }
                Err(e) => {
                    tracing::error!(listen = %entry.spec.addr, protocol = entry.protocol.name(), error = %e, "cannot add listener");
                    out.failed.push(format!("{}: {e}", entry.spec.addr));
                    unbound.insert((entry.protocol, entry.spec.addr));
                }
            }
        }
        workers.add(per_worker);
        for b in gone {
            // Without reuseport, new options on an address cannot be bound
            // while the old socket holds it: the old one keeps serving
            // rather than leaving the address unserved.
            if unbound.contains(&(b.entry.protocol, b.info.local)) {
                tracing::warn!(listen = %b.info.label, "keeping the current listener: its replacement could not be bound");
                self.bound.push(b);
                continue;
            }
            b.stop.cancel();
            tracing::info!(listen = %b.info.label, "listener removed; its connections drain");
            out.removed.push(b.info.label.clone());
        }
        self.shared.store(Arc::new(listener_set(&self.bound)));
        out
    }
}

fn worker_sockets(workers: usize) -> Vec<WorkerSockets> {
    (0..workers).map(|_| WorkerSockets::default()).collect()
}

fn listener_set(bound: &[Bound]) -> ListenerSet {
    ListenerSet {
        tcp: bound
            .iter()
            .filter(|b| b.counters.is_none())
            .map(|b| b.info.clone())
            .collect(),
        udp: bound
            .iter()
            .filter_map(|b| b.counters.as_ref().map(|c| (b.info.clone(), c.clone())))
            .collect(),
    }
}

/// Bind one entry, one socket per worker, appended to `per_worker`.
fn bind_entry(
    entry: &Entry,
    reuseport: bool,
    per_worker: &mut [WorkerSockets],
    parent: &CancellationToken,
) -> io::Result<Bound> {
    use std::os::fd::AsFd;
    let stop = parent.child_token();
    let spec = &entry.spec;
    let tag = entry.tag();
    let mut copies = Vec::new();
    let (info, counters) = match entry.protocol {
        Protocol::Udp => {
            let (info, socks) = bind_udp(spec, reuseport, per_worker.len(), &tag)?;
            for s in &socks {
                copies.push(s.as_fd().try_clone_to_owned()?);
            }
            let (info, counters) = (Arc::new(info), Arc::new(UdpCounters::default()));
            for (w, sock) in per_worker.iter_mut().zip(socks) {
                w.udp
                    .push((info.clone(), counters.clone(), sock, stop.clone()));
            }
            (info, Some(counters))
        }
        Protocol::Tcp => {
            let (info, socks) = bind_tcp(spec, reuseport, per_worker.len(), &tag)?;
            for s in &socks {
                copies.push(s.as_fd().try_clone_to_owned()?);
            }
            let info = Arc::new(info);
            for (w, sock) in per_worker.iter_mut().zip(socks) {
                w.tcp.push((info.clone(), sock, stop.clone()));
            }
            (info, None)
        }
    };
    Ok(Bound {
        entry: entry.clone(),
        info,
        counters,
        stop,
        copies,
    })
}

fn bind_one(addr: SocketAddr, ty: Type, reuseport: bool) -> io::Result<Socket> {
    let udp = ty == Type::DGRAM;
    let proto = if udp {
        SockProtocol::UDP
    } else {
        SockProtocol::TCP
    };
    let sock = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    #[cfg(unix)]
    if reuseport {
        sock.set_reuse_port(true)?;
    }
    if !udp {
        // Accepted connections inherit it: no setsockopt per connection.
        sock.set_tcp_nodelay(true)?;
    }
    if udp {
        let _ = sock.set_recv_buffer_size(UDP_SOCKET_BUFFER);
        let _ = sock.set_send_buffer_size(UDP_SOCKET_BUFFER);
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    if !udp {
        sock.listen(BACKLOG)?;
    }
    Ok(sock)
}

/// Bind one listener entry as `count` sockets on the same address, one per
/// worker: separate `SO_REUSEPORT` sockets (the kernel spreads new
/// connections and keeps each UDP client on one socket), or without
/// reuseport one socket shared through duplicated descriptors.
fn bind_sockets(
    spec: &ListenSpec,
    ty: Type,
    reuseport: bool,
    count: usize,
    tag: &str,
) -> io::Result<(ListenerInfo, Vec<Socket>)> {
    // Sockets a previous binary handed over are adopted as they are.
    let adopt = |fd: std::os::fd::OwnedFd| -> io::Result<Socket> {
        let sock = Socket::from(fd);
        sock.set_nonblocking(true)?;
        Ok(sock)
    };
    let first = match crate::server::upgrade::take(tag) {
        Some(fd) => adopt(fd)?,
        None => bind_one(spec.addr, ty, reuseport)?,
    };
    let local = first
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))?;
    let mut socks = Vec::with_capacity(count.max(1));
    for _ in 1..count.max(1) {
        if let Some(fd) = crate::server::upgrade::take_at(tag, local) {
            socks.push(adopt(fd)?);
            continue;
        }
        socks.push(if reuseport {
            bind_one(local, ty, true)?
        } else {
            first.try_clone()?
        });
    }
    socks.insert(0, first);
    let info = ListenerInfo {
        spec: spec.clone(),
        local,
        // An ephemeral port (0) is labelled with the port actually bound.
        label: if spec.addr.port() == 0 {
            local.to_string()
        } else {
            spec.listen_addr()
        },
        stats: Default::default(),
    };
    Ok((info, socks))
}

/// Bind a `stream_proxy.tcp` entry (see [`bind_sockets`]).
fn bind_tcp(
    spec: &ListenSpec,
    reuseport: bool,
    count: usize,
    tag: &str,
) -> io::Result<(ListenerInfo, Vec<std::net::TcpListener>)> {
    let (info, socks) = bind_sockets(spec, Type::STREAM, reuseport, count, tag)?;
    Ok((info, socks.into_iter().map(Into::into).collect()))
}

/// Bind a `stream_proxy.udp` entry (see [`bind_sockets`]).
fn bind_udp(
    spec: &ListenSpec,
    reuseport: bool,
    count: usize,
    tag: &str,
) -> io::Result<(ListenerInfo, Vec<std::net::UdpSocket>)> {
    let (info, socks) = bind_sockets(spec, Type::DGRAM, reuseport, count, tag)?;
    Ok((info, socks.into_iter().map(Into::into).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(addr: &str) -> Entry {
        Entry::tcp(ListenSpec::new(addr.parse().expect("addr")))
    }

    fn udp(addr: &str) -> Entry {
        Entry::udp(ListenSpec::new(addr.parse().expect("addr")))
    }

    #[test]
    fn nothing_bound_adds_everything_wanted() {
        let wanted = [tcp("127.0.0.1:9100"), udp("127.0.0.1:9200")];
        let p = plan(&wanted, &[]);
        assert_eq!(p.add, wanted);
        assert!(p.keep.is_empty() && p.remove.is_empty());
    }

    #[test]
    fn unchanged_entries_are_kept_and_nothing_else_happens() {
        let bound = [tcp("127.0.0.1:9100"), udp("127.0.0.1:9200")];
        // The order wanted does not matter.
        let wanted = [udp("127.0.0.1:9200"), tcp("127.0.0.1:9100")];
        let p = plan(&wanted, &bound);
        assert_eq!(p.keep, [0, 1]);
        assert!(p.add.is_empty() && p.remove.is_empty(), "{p:?}");
    }

    #[test]
    fn added_and_removed_entries() {
        let bound = [tcp("127.0.0.1:9100"), tcp("127.0.0.1:9101")];
        let wanted = [tcp("127.0.0.1:9101"), tcp("127.0.0.1:9102")];
        let p = plan(&wanted, &bound);
        assert_eq!(p.keep, [1]);
        assert_eq!(p.remove, [0]);
        assert_eq!(p.add, [tcp("127.0.0.1:9102")]);
        // Nothing wanted: everything goes.
        let p = plan(&[], &bound);
        assert_eq!(p.remove, [0, 1]);
        assert!(p.add.is_empty() && p.keep.is_empty());
    }

    #[test]
    fn a_changed_entry_is_added_new_and_removed_old() {
        let bound = [tcp("127.0.0.1:9100")];
        let mut tls = tcp("127.0.0.1:9100");
        tls.spec.tls = true;
        let p = plan(std::slice::from_ref(&tls), &bound);
        assert_eq!(p.add, [tls]);
        assert_eq!(p.remove, [0]);
        assert!(p.keep.is_empty());
        // The same address in the other list is another listener.
        let p = plan(&[udp("127.0.0.1:9100")], &bound);
        assert_eq!(p.add, [udp("127.0.0.1:9100")]);
        assert_eq!(p.remove, [0]);
    }

    #[test]
    fn duplicates_count_once() {
        let a = tcp("127.0.0.1:9100");
        let p = plan(&[a.clone(), a.clone()], &[]);
        assert_eq!(p.add, std::slice::from_ref(&a));
        // Wanted twice and bound once: kept once, nothing added.
        let p = plan(&[a.clone(), a.clone()], std::slice::from_ref(&a));
        assert_eq!(p.keep, [0]);
        assert!(p.add.is_empty() && p.remove.is_empty());
        // Bound twice: the first is kept, the second removed.
        let p = plan(std::slice::from_ref(&a), &[a.clone(), a.clone()]);
        assert_eq!((p.keep, p.remove), (vec![0], vec![1]));
    }

    #[test]
    fn an_ephemeral_port_entry_is_kept_by_its_spec() {
        // Port 0 binds some free port; the entry is still the same entry.
        let bound = [tcp("127.0.0.1:0")];
        let p = plan(&[tcp("127.0.0.1:0"), tcp("127.0.0.1:9100")], &bound);
        assert_eq!(p.keep, [0]);
        assert_eq!(p.add, [tcp("127.0.0.1:9100")]);
    }

    #[test]
    fn each_port_zero_entry_is_its_own_listener() {
        let any = tcp("127.0.0.1:0");
        let two = [any.clone(), any.clone()];
        assert_eq!(plan(&two, &[]).add, two);
        // One bound, two wanted: one kept, one added.
        let p = plan(&two, std::slice::from_ref(&any));
        assert_eq!((p.keep, p.add), (vec![0], vec![any.clone()]));
        // Two bound, one wanted: the first kept, the second removed.
        let p = plan(std::slice::from_ref(&any), &two);
        assert_eq!((p.keep, p.remove), (vec![0], vec![1]));
        assert!(p.add.is_empty());
    }

    #[test]
    fn wanted_entries_are_empty_when_stream_is_off() {
        assert!(wanted(&Config::default()).is_empty());
        let c = Config::from_yaml(
            "apisix:\n  proxy_mode: http&stream\n  stream_proxy:\n    tcp: [9100, 9101]\n    udp: [9200]\n",
        )
        .expect("config");
        let w = wanted(&c);
        let protocols: Vec<Protocol> = w.iter().map(|e| e.protocol).collect();
        assert_eq!(protocols, [Protocol::Tcp, Protocol::Tcp, Protocol::Udp]);
    }

    #[test]
    fn binding_labels_ephemeral_ports_with_the_port_bound() {
        let stop = CancellationToken::new();
        let wanted = [tcp("127.0.0.1:0"), udp("127.0.0.1:0")];
        let (l, per_worker) = Listeners::bind(&wanted, true, 2, &stop).expect("bind");
        assert_eq!(per_worker.len(), 2);
        assert!(per_worker
            .iter()
            .all(|w| w.tcp.len() == 1 && w.udp.len() == 1));
        let set = l.shared().load_full();
        let label = &set.tcp[0].label;
        assert_ne!(set.tcp[0].local.port(), 0);
        assert_eq!(*label, set.tcp[0].local.to_string());
        assert_eq!(l.entries(), wanted);
    }

    #[test]
    fn apply_binds_added_stops_removed_and_publishes_the_set() {
        let stop = CancellationToken::new();
        let (mut l, _sockets) =
            Listeners::bind(&[tcp("127.0.0.1:0")], true, 1, &stop).expect("bind");
        let old = l.current().tcp[0].clone();
        let workers = Workers::default();
        // The same address with new options: the new entry binds beside the
        // old one (reuseport), the old one stops.
        let mut changed = tcp(&old.local.to_string());
        changed.spec.proxy_protocol = true;
        let wanted = [changed.clone(), udp("127.0.0.1:0")];
        let out = l.reload(&wanted, &workers);
        assert_eq!(out.added.len(), 2, "{out:?}");
        assert_eq!(out.removed, std::slice::from_ref(&old.label));
        assert!(out.failed.is_empty());
        assert_eq!(l.entries(), wanted);
        let set = l.current();
        assert!(set.tcp[0].spec.proxy_protocol && set.tcp[0].local == old.local);
        assert_eq!(set.udp.len(), 1);
        // The same entries again: nothing happens.
        assert_eq!(l.reload(&wanted, &workers), ReloadOutcome::default());
    }

    #[test]
    fn without_reuseport_a_replacement_that_cannot_bind_keeps_the_old_entry() {
        let stop = CancellationToken::new();
        // The old socket stays open (held here as a worker would hold it).
        let (mut l, _sockets) =
            Listeners::bind(&[tcp("127.0.0.1:0")], false, 1, &stop).expect("bind");
        let old = l.current().tcp[0].clone();
        let mut changed = tcp(&old.local.to_string());
        changed.spec.tls = true;
        let out = l.reload(&[changed], &Workers::default());
        assert_eq!(out.failed.len(), 1, "{out:?}");
        assert!(out.added.is_empty() && out.removed.is_empty(), "{out:?}");
        assert!(
            Arc::ptr_eq(&l.current().tcp[0], &old),
            "the old entry serves on"
        );
    }

    #[test]
    fn a_busy_address_fails_start_up_naming_the_entry() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr").to_string();
        let stop = CancellationToken::new();
        let e = Listeners::bind(&[tcp(&addr)], false, 1, &stop).expect_err("busy");
        assert!(
            e.to_string().starts_with(&format!(
                "cannot bind apisix.stream_proxy.tcp entry {addr}: "
            )),
            "{e}"
        );
    }
}
