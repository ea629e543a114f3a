//! The dashboard's state, with no I/O: what the last poll said, the rates
//! derived from successive polls, which pane and row are selected, and how
//! a key press changes all that.
//!
//! Everything here is driven by explicit inputs ([`App::ingest`] with the
//! time of the sample, [`App::handle_key`]), so rates, sorting, selection
//! and the close-confirmation flow are tested as plain state transitions.

use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use serde::Deserialize;

/// How many throughput samples the sparkline keeps.
pub const HISTORY: usize = 512;

/// `GET /v1/stream/stats`: counters since the server started.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Seconds since the server started.
    pub uptime_s: f64,
    /// Connections and UDP sessions open now.
    pub active: u64,
    /// Connections and UDP sessions accepted since start.
    pub total: u64,
    /// Server version, when the server reports it.
    pub version: Option<String>,
    /// Resident memory of the server process, when reported.
    pub memory_rss_bytes: Option<u64>,
    /// Per stream route.
    pub routes: Vec<RouteStats>,
    /// Per upstream node of each route.
    pub nodes: Vec<NodeStats>,
}

/// One stream route's counters.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct RouteStats {
    /// Route id.
    pub id: String,
    /// Open connections.
    pub active: u64,
    /// Connections since start.
    pub total: u64,
    /// Bytes received from clients.
    pub bytes_in: u64,
    /// Bytes sent to clients.
    pub bytes_out: u64,
    /// UDP sessions since start.
    pub udp_sessions: u64,
    /// Failed upstream connects.
    pub connect_failures: u64,
    /// What the route matches, e.g. `server_port=9100`.
    pub summary: Option<String>,
    /// The route's limit-bandwidth state, when it has the plugin.
    pub limit_bandwidth: Option<Bandwidth>,
    /// Requests decoded, on a protocol (xRPC) route.
    pub requests: Option<u64>,
}

/// A route's limit-bandwidth rates (bytes/s, 0: unlimited) and whether it
/// throttles now.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Bandwidth {
    /// Towards the client.
    pub download_rate: u64,
    /// Towards the upstream.
    pub upload_rate: u64,
    /// A session waited for its budget within the last second.
    pub throttled: bool,
}

/// One upstream node's counters, as used by one route.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct NodeStats {
    /// The route sending traffic to this node.
    pub route_id: String,
    /// The stored upstream, when the route names one.
    pub upstream_id: Option<String>,
    /// `host:port`.
    pub node: String,
    /// Open connections.
    pub active: u64,
    /// Connections since start.
    pub total: u64,
    /// Bytes received from clients through this node's connections.
    pub bytes_in: u64,
    /// Bytes sent to clients through this node's connections.
    pub bytes_out: u64,
    /// Failed connects to this node.
    pub connect_failures: u64,
    /// Health-check verdict; `None` when the node is not checked.
    pub healthy: Option<bool>,
}

/// `GET /v1/stream/connections`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ConnectionList {
    /// The live connections and UDP sessions.
    pub connections: Vec<Connection>,
}

/// One live connection or UDP session.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Connection {
    /// Server-wide id, used to close it.
    pub id: u64,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Client address.
    pub client: String,
    /// Listener address it arrived on.
    pub listener: String,
    /// Matched route, if any yet.
    pub route_id: Option<String>,
    /// Upstream node, once connected.
    pub node: Option<String>,
    /// Bytes received from the client.
    pub bytes_in: u64,
    /// Bytes sent to the client.
    pub bytes_out: u64,
    /// Seconds since it was accepted.
    pub age_s: f64,
    /// TLS SNI, when there was one.
    pub sni: Option<String>,
}

/// One poll of the Control API.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the answers arrived.
    pub at: Instant,
    /// The stats, or why they could not be read.
    pub stats: Result<Stats, String>,
    /// The connection list, or why it could not be read.
    pub connections: Result<Vec<Connection>, String>,
}

/// Per-second rate of a cumulative counter that may restart from zero.
///
/// A counter that went down (or any counter after the server's uptime went
/// down) belongs to a restarted server: the rate is then taken from the new
/// value alone, so a restart never shows as a negative or huge spike.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rate {
    last: Option<(u64, Instant)>,
    per_sec: f64,
}

impl Rate {
    /// Feed the counter's value at `at`; returns the current rate.
    pub fn update(&mut self, value: u64, at: Instant, restarted: bool) -> f64 {
        match self.last {
            Some((prev, then)) => {
                let dt = at.saturating_duration_since(then).as_secs_f64();
                if dt <= 0.0 {
                    return self.per_sec;
                }
                let delta = if restarted || value < prev {
                    value
                } else {
                    value - prev
                };
                self.per_sec = delta as f64 / dt;
            }
            None => self.per_sec = 0.0,
        }
        self.last = Some((value, at));
        self.per_sec
    }

    /// The rate computed by the last update (0 before two samples).
    pub fn per_sec(&self) -> f64 {
        self.per_sec
    }
}

/// Rates of one route or node.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// New connections per second.
    pub conns: Rate,
    /// Bytes per second from clients.
    pub bytes_in: Rate,
    /// Bytes per second to clients.
    pub bytes_out: Rate,
    /// Requests per second (protocol routes).
    pub requests: Rate,
}

impl Rates {
    fn update(&mut self, total: u64, bytes_in: u64, bytes_out: u64, at: Instant, restart: bool) {
        self.conns.update(total, at, restart);
        self.bytes_in.update(bytes_in, at, restart);
        self.bytes_out.update(bytes_out, at, restart);
    }
}

/// The focused pane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    /// Stream routes.
    Routes,
    /// Upstream nodes of the selected route.
    Nodes,
    /// Live connections.
    Connections,
}

/// Order of the routes table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSort {
    /// By id (numeric ids in numeric order).
    Id,
    /// Most open connections first.
    Active,
    /// Highest bytes/s (both ways) first.
    Throughput,
}

/// Order of the nodes table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeSort {
    /// By address.
    Node,
    /// Most open connections first.
    Active,
    /// Most connect failures first.
    Failures,
}

/// Order of the connections table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnSort {
    /// Youngest first.
    Newest,
    /// Most bytes (both ways) first.
    Biggest,
}

/// A key press, as far as the dashboard cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// A printable character.
    Char(char),
    /// Escape.
    Esc,
    /// Enter.
    Enter,
    /// Tab.
    Tab,
    /// Shift-Tab.
    BackTab,
    /// Arrow up.
    Up,
    /// Arrow down.
    Down,
    /// Ctrl-C (raw mode delivers it as a key, not a signal).
    CtrlC,
    /// Anything else.
    Other,
}

/// What the event loop must do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing beyond redrawing.
    None,
    /// Leave the dashboard.
    Quit,
    /// Ask the server to close this connection.
    Close(u64),
}

/// Whether the last poll reached the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    /// No answer yet.
    Connecting,
    /// The last poll succeeded.
    Up,
    /// The last poll failed with this error; polling goes on.
    Down(String),
}

/// The whole dashboard state.
#[derive(Debug, Clone)]
pub struct App {
    /// Control API base URL, shown in the header.
    pub server: String,
    /// The last stats received (kept while disconnected).
    pub stats: Option<Stats>,
    /// The last connection list received.
    pub connections: Vec<Connection>,
    /// Why the connection list is missing, if it is.
    pub connections_error: Option<String>,
    /// Reachability of the server.
    pub link: Link,
    /// Samples are dropped while paused.
    pub paused: bool,
    /// Focused pane.
    pub pane: Pane,
    /// Routes order.
    pub route_sort: RouteSort,
    /// Nodes order.
    pub node_sort: NodeSort,
    /// Connections order.
    pub conn_sort: ConnSort,
    /// Selected route id.
    pub selected_route: Option<String>,
    /// Selected node address (within the selected route).
    pub selected_node: Option<String>,
    /// Selected connection id.
    pub selected_conn: Option<u64>,
    /// A connection waiting for y/n before it is closed.
    pub confirm_close: Option<u64>,
    /// A one-line note for the footer (result of the last close).
    pub message: Option<String>,
    /// New connections per second, server-wide.
    pub conns_rate: Rate,
    /// Bytes/s from clients, server-wide (sum of the routes).
    pub in_rate: f64,
    /// Bytes/s to clients, server-wide (sum of the routes).
    pub out_rate: f64,
    /// Recent server-wide bytes/s (both ways), oldest first.
    pub history: VecDeque<u64>,
    route_rates: HashMap<String, Rates>,
    node_rates: HashMap<(String, String), Rates>,
    last_uptime: Option<f64>,
}

impl App {
    /// An empty dashboard for the server at `server`.
    pub fn new(server: impl Into<String>) -> App {
        App {
            server: server.into(),
            stats: None,
            connections: Vec::new(),
            connections_error: None,
            link: Link::Connecting,
            paused: false,
            pane: Pane::Routes,
            route_sort: RouteSort::Id,
            node_sort: NodeSort::Node,
            conn_sort: ConnSort::Newest,
            selected_route: None,
            selected_node: None,
            selected_conn: None,
            confirm_close: None,
            message: None,
            conns_rate: Rate::default(),
            in_rate: 0.0,
            out_rate: 0.0,
            history: VecDeque::new(),
            route_rates: HashMap::new(),
            node_rates: HashMap::new(),
            last_uptime: None,
        }
    }

    /// Take in one poll. A failed poll only marks the server as lost; the
    /// last figures stay on screen. Nothing changes while paused.
    pub fn ingest(&mut self, sample: Sample) {
        if self.paused {
            return;
        }
        let stats = match sample.stats {
            Ok(s) => s,
            Err(e) => {
                self.link = Link::Down(e);
                return;
            }
        };
        self.link = Link::Up;
        let at = sample.at;
        let restarted = self.last_uptime.is_some_and(|u| stats.uptime_s < u);
        self.last_uptime = Some(stats.uptime_s);
        self.conns_rate.update(stats.total, at, restarted);

        let mut route_rates = HashMap::with_capacity(stats.routes.len());
        let (mut rate_in, mut rate_out) = (0.0, 0.0);
        for r in &stats.routes {
            let mut rates = self.route_rates.remove(&r.id).unwrap_or_default();
            rates.update(r.total, r.bytes_in, r.bytes_out, at, restarted);
            rates
                .requests
                .update(r.requests.unwrap_or(0), at, restarted);
            rate_in += rates.bytes_in.per_sec();
            rate_out += rates.bytes_out.per_sec();
            route_rates.insert(r.id.clone(), rates);
        }
        self.route_rates = route_rates;
        let mut node_rates = HashMap::with_capacity(stats.nodes.len());
        for n in &stats.nodes {
            let key = (n.route_id.clone(), n.node.clone());
            let mut rates = self.node_rates.remove(&key).unwrap_or_default();
            rates.update(n.total, n.bytes_in, n.bytes_out, at, restarted);
            node_rates.insert(key, rates);
        }
        self.node_rates = node_rates;
        self.in_rate = rate_in;
        self.out_rate = rate_out;
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((rate_in + rate_out).round() as u64);

        self.stats = Some(stats);
        match sample.connections {
            Ok(c) => {
                self.connections = c;
                self.connections_error = None;
            }
            Err(e) => {
                self.connections.clear();
                self.connections_error = Some(e);
            }
        }
        self.fix_selection();
    }

    /// Rates of a route (zero before two samples).
    pub fn route_rates(&self, id: &str) -> Rates {
        self.route_rates.get(id).copied().unwrap_or_default()
    }

    /// Rates of a node of a route (zero before two samples).
    pub fn node_rates(&self, route_id: &str, node: &str) -> Rates {
        self.node_rates
            .get(&(route_id.to_string(), node.to_string()))
            .copied()
            .unwrap_or_default()
    }

    /// The routes in display order.
    pub fn routes(&self) -> Vec<&RouteStats> {
        let mut v: Vec<&RouteStats> = self.stats.iter().flat_map(|s| &s.routes).collect();
        match self.route_sort {
            RouteSort::Id => v.sort_by(|a, b| id_order(&a.id, &b.id)),
            RouteSort::Active => {
                v.sort_by(|a, b| b.active.cmp(&a.active).then(id_order(&a.id, &b.id)));
            }
            RouteSort::Throughput => {
                let t = |r: &RouteStats| {
                    let x = self.route_rates(&r.id);
                    x.bytes_in.per_sec() + x.bytes_out.per_sec()
                };
                v.sort_by(|a, b| {
                    t(b).partial_cmp(&t(a))
                        .unwrap_or(Ordering::Equal)
                        .then(id_order(&a.id, &b.id))
                });
            }
        }
        v
    }

    /// The nodes of the selected route (all nodes when there is no route),
    /// in display order.
    pub fn nodes(&self) -> Vec<&NodeStats> {
        let route = self.selected_route.as_deref();
        let mut v: Vec<&NodeStats> = self
            .stats
            .iter()
            .flat_map(|s| &s.nodes)
            .filter(|n| route.is_none_or(|r| n.route_id == r))
            .collect();
        let by_node = |a: &&NodeStats, b: &&NodeStats| {
            id_order(&a.route_id, &b.route_id).then_with(|| a.node.cmp(&b.node))
        };
        match self.node_sort {
            NodeSort::Node => v.sort_by(by_node),
            NodeSort::Active => v.sort_by(|a, b| b.active.cmp(&a.active).then(by_node(a, b))),
            NodeSort::Failures => v.sort_by(|a, b| {
                b.connect_failures
                    .cmp(&a.connect_failures)
                    .then(by_node(a, b))
            }),
        }
        v
    }

    /// The connections in display order.
    pub fn connections(&self) -> Vec<&Connection> {
        let mut v: Vec<&Connection> = self.connections.iter().collect();
        match self.conn_sort {
            ConnSort::Newest => v.sort_by(|a, b| {
                a.age_s
                    .partial_cmp(&b.age_s)
                    .unwrap_or(Ordering::Equal)
                    .then(b.id.cmp(&a.id))
            }),
            ConnSort::Biggest => v.sort_by(|a, b| {
                (b.bytes_in + b.bytes_out)
                    .cmp(&(a.bytes_in + a.bytes_out))
                    .then(b.id.cmp(&a.id))
            }),
        }
        v
    }

    /// Index of the selected row in each table's display order.
    pub fn route_index(&self) -> Option<usize> {
        let id = self.selected_route.as_deref()?;
        self.routes().iter().position(|r| r.id == id)
    }

    /// Index of the selected node in [`App::nodes`].
    pub fn node_index(&self) -> Option<usize> {
        let n = self.selected_node.as_deref()?;
        self.nodes().iter().position(|x| x.node == n)
    }

    /// Index of the selected connection in [`App::connections`].
    pub fn conn_index(&self) -> Option<usize> {
        let id = self.selected_conn?;
        self.connections().iter().position(|c| c.id == id)
    }

    /// Keep each selection on a row that exists, preferring the same item.
    fn fix_selection(&mut self) {
        let routes: Vec<String> = self.routes().iter().map(|r| r.id.clone()).collect();
        if !self
            .selected_route
            .as_ref()
            .is_some_and(|s| routes.contains(s))
        {
            self.selected_route = routes.first().cloned();
        }
        let nodes: Vec<String> = self.nodes().iter().map(|n| n.node.clone()).collect();
        if !self
            .selected_node
            .as_ref()
            .is_some_and(|s| nodes.contains(s))
        {
            self.selected_node = nodes.first().cloned();
        }
        let conns: Vec<u64> = self.connections().iter().map(|c| c.id).collect();
        if !self.selected_conn.is_some_and(|s| conns.contains(&s)) {
            self.selected_conn = conns.first().copied();
        }
    }

    /// Move the selection of the focused pane by `step` rows (clamped).
    fn move_selection(&mut self, step: isize) {
        fn next<T: Clone>(items: &[T], current: Option<usize>, step: isize) -> Option<T> {
            if items.is_empty() {
                return None;
            }
            let i = match current {
                Some(i) => i.saturating_add_signed(step).min(items.len() - 1),
                None => 0,
            };
            items.get(i).cloned()
        }
        match self.pane {
            Pane::Routes => {
                let ids: Vec<String> = self.routes().iter().map(|r| r.id.clone()).collect();
                self.selected_route = next(&ids, self.route_index(), step);
                // A new route: its nodes, from the first.
                self.selected_node = None;
            }
            Pane::Nodes => {
                let ids: Vec<String> = self.nodes().iter().map(|n| n.node.clone()).collect();
                self.selected_node = next(&ids, self.node_index(), step);
            }
            Pane::Connections => {
                let ids: Vec<u64> = self.connections().iter().map(|c| c.id).collect();
                self.selected_conn = next(&ids, self.conn_index(), step);
            }
        }
        self.fix_selection();
    }

    /// Apply a key press.
    pub fn handle_key(&mut self, key: Key) -> Action {
        if key == Key::CtrlC {
            return Action::Quit;
        }
        if let Some(id) = self.confirm_close.take() {
            // Any answer but yes cancels.
            return if matches!(key, Key::Char('y' | 'Y')) {
                self.message = Some(format!("closing connection {id}…"));
                Action::Close(id)
            } else {
                self.message = Some("close cancelled".to_string());
                Action::None
            };
        }
        self.message = None;
        match key {
            Key::Char('q') | Key::Esc => return Action::Quit,
            Key::Tab => {
                self.pane = match self.pane {
                    Pane::Routes => Pane::Nodes,
                    Pane::Nodes => Pane::Connections,
                    Pane::Connections => Pane::Routes,
                }
            }
            Key::BackTab => {
                self.pane = match self.pane {
                    Pane::Routes => Pane::Connections,
                    Pane::Nodes => Pane::Routes,
                    Pane::Connections => Pane::Nodes,
                }
            }
            Key::Up => self.move_selection(-1),
            Key::Down => self.move_selection(1),
            Key::Char('s') => self.cycle_sort(),
            Key::Char('p') => self.paused = !self.paused,
            Key::Char('k') => {
                if self.pane != Pane::Connections {
                    self.message = Some("k closes a connection: Tab to connections".into());
                } else if let Some(id) = self.selected_conn {
                    self.confirm_close = Some(id);
                } else {
                    self.message = Some("no connection selected".into());
                }
            }
            _ => {}
        }
        Action::None
    }

    fn cycle_sort(&mut self) {
        match self.pane {
            Pane::Routes => {
                self.route_sort = match self.route_sort {
                    RouteSort::Id => RouteSort::Active,
                    RouteSort::Active => RouteSort::Throughput,
                    RouteSort::Throughput => RouteSort::Id,
                }
            }
            Pane::Nodes => {
                self.node_sort = match self.node_sort {
                    NodeSort::Node => NodeSort::Active,
                    NodeSort::Active => NodeSort::Failures,
                    NodeSort::Failures => NodeSort::Node,
                }
            }
            Pane::Connections => {
                self.conn_sort = match self.conn_sort {
                    ConnSort::Newest => ConnSort::Biggest,
                    ConnSort::Biggest => ConnSort::Newest,
                }
            }
        }
    }

    /// Name of the focused pane's order, for the footer.
    pub fn sort_name(&self) -> &'static str {
        match self.pane {
            Pane::Routes => match self.route_sort {
                RouteSort::Id => "id",
                RouteSort::Active => "active",
                RouteSort::Throughput => "bytes/s",
            },
            Pane::Nodes => match self.node_sort {
                NodeSort::Node => "node",
                NodeSort::Active => "active",
                NodeSort::Failures => "failures",
            },
            Pane::Connections => match self.conn_sort {
                ConnSort::Newest => "newest",
                ConnSort::Biggest => "biggest",
            },
        }
    }

    /// The server's answer to a close request.
    pub fn close_done(&mut self, id: u64, result: Result<(), String>) {
        self.message = Some(match result {
            Ok(()) => {
                self.connections.retain(|c| c.id != id);
                self.fix_selection();
                format!("closed connection {id}")
            }
            Err(e) => format!("cannot close connection {id}: {e}"),
        });
    }
}

/// Ids in natural order: numeric ids by value, before other ids.
fn id_order(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}
