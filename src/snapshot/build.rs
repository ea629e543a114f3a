//! Compiling a [`Snapshot`]: the previous snapshot plus the store's changes.
//!
//! A snapshot's collections are persistent maps, so the next one starts as
//! a copy that shares everything and is changed only where the store
//! changed: each object changed is compiled again, and so is each object
//! that names something changed — a stream route naming an upstream (its
//! `upstream_id`, traffic-split's `upstream_id`s) that was recompiled,
//! added or removed, a stream route or an upstream naming an SSL object
//! (`client_cert_id`) after SSL objects changed, an upstream that gains or
//! loses the routes naming it (it gets or drops its health checker). SSL
//! objects (and the SNI index) are recompiled only when one of them
//! changed; the route index takes out and puts back only the routes
//! compiled again. So a write costs what it touches, whatever the number of
//! routes. A whole store (the first build, or after the store replaced
//! everything) is compared with the previous snapshot to find what changed.
//!
//! Each object compiles on its own: one that fails (or panics while
//! compiling) is logged once, left out, and listed in
//! [`Snapshot::rejected`]; the others are served. A stream route that
//! fails (or that its store marked unservable) keeps its match filters and
//! refuses the connections they catch, so its clients never fall through to
//! a wider route; only one whose filters cannot be read is left out.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use serde_json::Value;

use imbl::OrdMap;

use super::{service, Carry, RouteRt, Snapshot, UpstreamRt, UpstreamSource};
use crate::model::{Kind, StreamRoute};
use crate::plugins;
use crate::store::index::Key;
use crate::store::{unservable_reason, Dump, Entry};
use crate::tls;

/// What a stream route was compiled from, to tell whether it can be reused.
#[derive(Debug, Clone)]
pub struct RouteSource {
    /// The stored JSON.
    value: Arc<Value>,
    /// Store revision of its last write.
    mod_rev: u64,
    /// Its `upstream_id` (a stored upstream it names and gives a checker).
    upstream_id: Option<String>,
    /// Every upstream id it names, its plugins' included.
    refs: Vec<String>,
    /// Whether it names an SSL object (`client_cert_id`).
    uses_ssl: bool,
    /// Whether an upstream inside it takes nodes from a registry (its
    /// upstreams are then looked at on every build).
    uses_discovery: bool,
    /// Why it cannot be served as written, if so.
    problem: Option<String>,
}

impl RouteSource {
    fn new(e: &Entry, parsed: Option<&StreamRoute>) -> RouteSource {
        let mut refs = Vec::new();
        let mut uses_ssl = false;
        scan(&e.value, &mut refs, &mut uses_ssl);
        let uses_discovery = crate::discovery::named_in(&e.value);
        RouteSource {
            value: Arc::clone(&e.value),
            mod_rev: e.mod_rev,
            upstream_id: parsed
                .filter(|r| r.superior_id.is_none())
                .and_then(|r| r.upstream_id.clone()),
            refs,
            uses_ssl,
            uses_discovery,
            problem: None,
        }
    }
}

/// Collect the upstream ids a stored value names, and whether it names an
/// SSL object.
fn scan(v: &Value, refs: &mut Vec<String>, uses_ssl: &mut bool) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("upstream_id", Value::String(s)) => refs.push(s.clone()),
                    ("upstream_id", Value::Number(n)) => refs.push(n.to_string()),
                    ("client_cert_id", _) => *uses_ssl = true,
                    _ => scan(v, refs, uses_ssl),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| scan(v, refs, uses_ssl)),
        _ => {}
    }
}

/// The message of a panic payload.
pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic")
}

/// Run one object's compilation; a panic comes back as an error, so one
/// object never stops the others.
pub(super) fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(format!(
            "compiling it failed unexpectedly: {}",
            panic_message(&*p)
        ))
    })
}

/// Parse a stored stream route; one its store marked unservable is an error.
fn parse(e: &Entry) -> Result<StreamRoute, String> {
    if let Some(why) = unservable_reason(&e.value) {
        return Err(why.to_string());
    }
    guarded(|| StreamRoute::from_value(&e.value))
}

/// A route that cannot be served keeps its filters and refuses the
/// connections they catch (503), so its clients never fall through to a
/// wider route; `Err(why)` when not even its filters can be read.
fn refusing_route(
    e: &Entry,
    why: String,
    mut source: RouteSource,
    carry: &Carry,
) -> Result<RouteRt, String> {
    let Ok(r) = StreamRoute::filters_from_value(&e.value) else {
        return Err(why);
    };
    tracing::warn!(route_id = %e.id, error = %why, "stream route cannot be served; refusing its clients");
    let refused = format!("stream route cannot be served: {why}");
    source.problem = Some(why);
    Ok(RouteRt {
        id: e.id.clone(),
        remote_addr: r.remote_addr,
        server_addr: r.server_addr,
        server_port: r.server_port,
        sni: r.sni,
        upstream: Err(refused),
        chain: plugins::Chain::default(),
        stats: carry.stats.route(&e.id),
        node_stats: Vec::new(),
        protocol: None,
        source,
    })
}

/// One stored object's change: its key and new entry (values opened), or
/// None when it was removed.
pub type Update = (Key, Option<Entry>);

/// Whether a route has a health checker of its own (an inline upstream's).
fn inline_checker(r: &RouteRt) -> bool {
    r.upstream
        .as_ref()
        .is_ok_and(|u| u.upstream_id.is_none() && u.health().is_some())
}

/// Whether two stored values are the same (shared, or equal).
fn same_value(a: &Arc<Value>, b: &Arc<Value>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// What differs between `dump` and the objects `prev` was built from.
pub(super) fn diff(dump: &Dump, prev: &Snapshot) -> Vec<Update> {
    let mut out = Vec::new();
    let mut present: HashSet<(Kind, &str)> = HashSet::with_capacity(dump.entries.len());
    for e in &dump.entries {
        present.insert((e.kind, e.id.as_str()));
        let unchanged = match e.kind {
            Kind::StreamRoute => prev
                .route_source(&e.id)
                .is_some_and(|s| s.mod_rev == e.mod_rev && same_value(&s.value, &e.value)),
            Kind::Upstream => prev
                .stored_upstreams
                .get(&e.id)
                .is_some_and(|o| o.mod_rev == e.mod_rev && same_value(&o.value, &e.value)),
            Kind::Ssl => prev
                .ssl_sources
                .get(&e.id)
                .is_some_and(|v| same_value(v, &e.value)),
            // Merged into routes and put in force before the build.
            Kind::Service | Kind::PluginMetadata | Kind::Secret => true,
        };
        if !unchanged {
            out.push(((e.kind, e.id.clone()), Some(e.clone())));
        }
    }
    let gone = |kind: Kind, id: &String| !present.contains(&(kind, id.as_str()));
    let routes = prev.routes.keys().chain(prev.left_out.keys());
    let removed = routes
        .filter(|id| gone(Kind::StreamRoute, id))
        .map(|id| (Kind::StreamRoute, id.clone()))
        .chain(
            prev.stored_upstreams
                .keys()
                .filter(|id| gone(Kind::Upstream, id))
                .map(|id| (Kind::Upstream, id.clone())),
        )
        .chain(
            prev.ssl_sources
                .keys()
                .filter(|id| gone(Kind::Ssl, id))
                .map(|id| (Kind::Ssl, id.clone())),
        );
    out.extend(removed.map(|k| (k, None)));
    out
}

impl Snapshot {
    /// What a stored stream route (served or left out) was compiled from.
    fn route_source(&self, id: &str) -> Option<&RouteSource> {
        self.routes
            .get(id)
            .map(|r| &r.source)
            .or_else(|| self.left_out.get(id))
    }

    /// Take a stream route out of every collection but `named`, returning
    /// what it was compiled from.
    fn take_route(&mut self, id: &str) -> Option<RouteSource> {
        let source = match self.routes.remove(id) {
            Some(r) => {
                Arc::make_mut(&mut self.index).remove(&r);
                if inline_checker(&r) {
                    self.checkers_changed = true;
                }
                r.source.clone()
            }
            None => self.left_out.remove(id)?,
        };
        self.rejected.remove(&(Kind::StreamRoute, id.to_string()));
        for uid in &source.refs {
            self.users.remove(&(uid.clone(), id.to_string()));
        }
        if source.uses_ssl {
            self.ssl_users.remove(id);
        }
        Some(source)
    }

    /// Record what a compiled or left-out stream route names.
    fn note_refs(&mut self, id: &str, source: &RouteSource) {
        for uid in &source.refs {
            self.users.insert((uid.clone(), id.to_string()));
        }
        if source.uses_ssl {
            self.ssl_users.insert(id.to_string());
        }
        if let Some(why) = &source.problem {
            self.rejected
                .insert((Kind::StreamRoute, id.to_string()), why.clone());
        }
    }
}

/// Count one more (or one less) route naming upstream `id`, noting it in
/// `touched`.
fn count(
    named: &mut OrdMap<String, usize>,
    touched: &mut BTreeSet<String>,
    id: Option<&String>,
    add: bool,
) {
    let Some(id) = id else { return };
    touched.insert(id.clone());
    if add {
        *named.entry(id.clone()).or_default() += 1;
    } else if let Some(n) = named.get_mut(id) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            named.remove(id);
        }
    }
}

/// A stream route to compile: its entry, and the parse when done already.
type Todo = (Entry, Option<Result<StreamRoute, String>>);

/// The snapshot `prev` becomes with `updates` at `revision` (see the
/// module comment): only what the updates touch is compiled.
pub(super) fn apply(
    prev: &Snapshot,
    revision: u64,
    updates: Vec<Update>,
    carry: &Carry,
) -> Snapshot {
    let mut next = Snapshot {
        revision,
        routes: prev.routes.clone(),
        index: Arc::clone(&prev.index),
        upstreams: prev.upstreams.clone(),
        tls: Arc::clone(&prev.tls),
        rejected: prev.rejected.clone(),
        left_out: prev.left_out.clone(),
        stored_upstreams: prev.stored_upstreams.clone(),
        named: prev.named.clone(),
        users: prev.users.clone(),
        ssl_users: prev.ssl_users.clone(),
        ssl_sources: prev.ssl_sources.clone(),
        ssl_failed: prev.ssl_failed,
        checkers_changed: false,
        services: service::Services::default(),
        subordinates: OrdMap::new(),
    };
    next.services.generation = prev.services.generation;
    let mut todo: BTreeMap<String, Todo> = BTreeMap::new();
    let mut upstream_todo: BTreeSet<String> = BTreeSet::new();
    let mut ssl_touched = false;
    let mut named_touched: BTreeSet<String> = BTreeSet::new();
    for ((kind, id), entry) in updates {
        match kind {
            Kind::Ssl => {
                ssl_touched = true;
                match entry {
                    Some(e) => next.ssl_sources.insert(id, e.value),
                    None => next.ssl_sources.remove(&id),
                };
            }
            Kind::Upstream => {
                match entry {
                    Some(e) => next.stored_upstreams.insert(id.clone(), e),
                    None => next.stored_upstreams.remove(&id),
                };
                upstream_todo.insert(id);
            }
            // Merged into routes and put in force by a whole build.
            Kind::Service | Kind::PluginMetadata | Kind::Secret => {}
            Kind::StreamRoute => {
                if let Some(old) = next.take_route(&id) {
                    let named = &mut next.named;
                    count(named, &mut named_touched, old.upstream_id.as_ref(), false);
                }
                if let Some(e) = entry {
                    let parsed = parse(&e);
                    if let Ok(r) = &parsed {
                        if r.superior_id.is_none() {
                            let named = &mut next.named;
                            count(named, &mut named_touched, r.upstream_id.as_ref(), true);
                        }
                    }
                    todo.insert(id, (e, Some(parsed)));
                }
            }
        }
    }

    // SSL objects: certificates and the SNI index change only with them.
    let ssl_changed = ssl_touched && (next.ssl_failed || next.ssl_sources != prev.ssl_sources);
    if ssl_changed {
        let built = guarded(|| {
            Ok(tls::TlsCerts::build(
                next.ssl_sources.iter().map(|(id, v)| (id.as_str(), &**v)),
                Some(&prev.tls),
                &carry.tls_policy,
            ))
        });
        let stale: Vec<(Kind, String)> = next
            .rejected
            .range((Kind::Ssl, String::new())..)
            .take_while(|((k, _), _)| *k == Kind::Ssl)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            next.rejected.remove(&k);
        }
        next.tls = match built {
            Ok(c) => {
                next.ssl_failed = false;
                Arc::new(c)
            }
            Err(why) => {
                tracing::warn!(error = %why, "ssl objects skipped");
                for id in next.ssl_sources.keys() {
                    next.rejected.insert((Kind::Ssl, id.clone()), why.clone());
                }
                // Compiled again on the next change.
                next.ssl_failed = true;
                Arc::new(tls::TlsCerts::default())
            }
        };
        for (id, why) in next.tls.rejected() {
            next.rejected.insert((Kind::Ssl, id.clone()), why.clone());
        }
        // Upstreams naming an SSL object are compiled again.
        for (id, e) in next.stored_upstreams.iter() {
            let names_ssl = e
                .value
                .get("tls")
                .and_then(|t| t.get("client_cert_id"))
                .is_some();
            if names_ssl {
                upstream_todo.insert(id.clone());
            }
        }
    }

    // Upstreams whose being named by a route changed gain or lose a checker.
    let enabled = carry.health.enabled();
    for id in named_touched {
        if prev.named.contains_key(&id) != next.named.contains_key(&id) {
            upstream_todo.insert(id);
        }
    }
    // A registry's node list moved: upstreams built with an older one, and
    // routes holding a discovered upstream, are compiled again.
    let nodes_moved = carry.discovery.take_moved();
    if nodes_moved {
        for (id, u) in next.upstreams.iter() {
            if !u.nodes_current(&carry.discovery) {
                upstream_todo.insert(id.clone());
            }
        }
    }

    // Upstreams: reused while their JSON, checker and SSL objects are the
    // same; an upstream that a stream route names and that has `checks` gets
    // a checker (sharing the targets of the one it replaces), unless health
    // checks are off.
    let certs = Arc::clone(&next.tls);
    let compile = |origin: String,
                   id: Option<String>,
                   src: UpstreamSource,
                   checked: bool|
     -> Result<Arc<UpstreamRt>, String> {
        let old = prev.upstream_by_origin(&origin);
        if let Some(old) = old {
            if *old.source == *src
                && old.upstream_id == id
                && !(ssl_changed && old.uses_ssl_object())
                && old.health().is_some() == (checked && old.checks().is_some())
                && old.nodes_current(&carry.discovery)
            {
                return Ok(Arc::clone(old));
            }
        }
        guarded(|| {
            let up =
                UpstreamRt::build_shared(origin, id, src, &certs, &carry.trust, &carry.discovery)?;
            Ok(Arc::new(if checked {
                up.with_checker(old.and_then(|o| o.health()).map(|c| &**c), &carry.trust)
            } else {
                up
            }))
        })
    };
    let mut changed_upstreams = Vec::new();
    for id in upstream_todo {
        let old = next.upstreams.remove(&id);
        next.rejected.remove(&(Kind::Upstream, id.clone()));
        let compiled = next.stored_upstreams.get(&id).map(|e| {
            let checked = enabled && next.named.contains_key(&id);
            let src = UpstreamSource::Stored(Arc::clone(&e.value));
            compile(format!("upstreams/{id}"), Some(id.clone()), src, checked)
        });
        let new = match compiled {
            None => None,
            Some(Ok(u)) => {
                if let Some(Err(why)) = &u.tls {
                    let reused = old.as_ref().is_some_and(|o| Arc::ptr_eq(o, &u));
                    if !reused {
                        tracing::warn!(upstream_id = %id, error = %why, "upstream cannot speak TLS to its nodes");
                    }
                    next.rejected
                        .insert((Kind::Upstream, id.clone()), why.clone());
                }
                next.upstreams.insert(id.clone(), Arc::clone(&u));
                Some(u)
            }
            Some(Err(err)) => {
                tracing::warn!(upstream_id = %id, error = %err, "upstream skipped");
                next.rejected.insert((Kind::Upstream, id.clone()), err);
                None
            }
        };
        let health = |u: &Option<Arc<UpstreamRt>>| {
            u.as_ref()
                .map(|u| u.health().map(|c| Arc::as_ptr(c) as usize))
        };
        if health(&old) != health(&new) {
            next.checkers_changed = true;
        }
        let same = match (&old, &new) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if !same {
            changed_upstreams.push(id);
        }
    }

    // Routes naming a changed upstream (or, after an SSL change, an SSL
    // object) are compiled again from the value they were compiled from.
    let mut dependents: BTreeSet<String> = BTreeSet::new();
    for uid in &changed_upstreams {
        let from = (uid.clone(), String::new());
        dependents.extend(
            next.users
                .range(from..)
                .take_while(|(u, _)| u == uid)
                .map(|(_, rid)| rid.clone()),
        );
    }
    if ssl_changed {
        dependents.extend(next.ssl_users.iter().cloned());
    }
    if nodes_moved {
        let discovered = next.routes.iter().filter(|(_, r)| r.source.uses_discovery);
        dependents.extend(discovered.map(|(id, _)| id.clone()));
    }
    for id in dependents {
        if todo.contains_key(&id) {
            continue;
        }
        // Its value is the same, and so are the upstreams it names.
        if let Some(source) = next.take_route(&id) {
            let e = Entry {
                kind: Kind::StreamRoute,
                id: id.clone(),
                value: source.value,
                create_rev: source.mod_rev,
                mod_rev: source.mod_rev,
            };
            todo.insert(id, (e, None));
        }
    }

    // Routes: compile those changed and those naming what changed.
    let upstreams = next.upstreams.clone();
    for (id, (e, parsed)) in todo {
        let parsed = parsed.unwrap_or_else(|| parse(&e));
        let mut source = RouteSource::new(&e, parsed.as_ref().ok());
        let compiled = match parsed {
            // xRPC subordinate routes are never matched directly.
            Ok(r) if r.superior_id.is_some() => {
                next.note_refs(&id, &source);
                next.left_out.insert(id, source);
                continue;
            }
            Ok(r) => guarded(|| {
                compile_route(&e, r, source.clone(), carry, &upstreams, &|o, v, c| {
                    compile(o, None, v, c && enabled)
                })
            }),
            Err(err) => Err(err),
        };
        let compiled = compiled.or_else(|err| refusing_route(&e, err, source.clone(), carry));
        match compiled {
            Ok(rt) => {
                if inline_checker(&rt) {
                    next.checkers_changed = true;
                }
                let rt = Arc::new(rt);
                next.note_refs(&id, &rt.source);
                Arc::make_mut(&mut next.index).insert(&rt);
                next.routes.insert(id, rt);
            }
            Err(err) => {
                tracing::warn!(route_id = %e.id, error = %err, "stream route skipped");
                source.problem = Some(err);
                next.note_refs(&id, &source);
                next.left_out.insert(id, source);
            }
        }
    }
    next.subordinates = subordinates(&next, carry, &|o, v, c| compile(o, None, v, c));
    next
}

/// Every xRPC subordinate route (left out of matching) compiled, by the id
/// of its superior; one that cannot be compiled is logged and skipped.
fn subordinates(
    next: &Snapshot,
    carry: &Carry,
    compile: &CompileInline<'_>,
) -> OrdMap<String, Arc<[Arc<crate::xrpc::Subordinate>]>> {
    let mut by_superior: BTreeMap<String, Vec<Arc<crate::xrpc::Subordinate>>> = BTreeMap::new();
    for (id, source) in &next.left_out {
        let v = &source.value;
        let Some(p) = v.get("protocol") else { continue };
        let Some(superior) = p.get("superior_id").and_then(crate::model::id_string) else {
            continue;
        };
        if source.problem.is_some() {
            continue;
        }
        let protocol = match guarded(|| crate::xrpc::RouteProtocol::compile(p, &carry.plugins)) {
            Ok(p) => p,
            Err(err) => {
                tracing::warn!(route_id = %id, error = %err, "subordinate stream route skipped");
                continue;
            }
        };
        let upstream = match (
            v.get("upstream_id").and_then(crate::model::id_string),
            v.get("upstream"),
        ) {
            (Some(uid), _) => next
                .upstreams
                .get(&uid)
                .cloned()
                .ok_or_else(|| format!("upstream [{uid}] not found")),
            (None, Some(_)) => compile(
                format!("stream_routes/{id}"),
                UpstreamSource::Inline(Arc::clone(v)),
                false,
            ),
            (None, None) => Err("missing upstream configuration in Route or Service".into()),
        };
        by_superior
            .entry(superior)
            .or_default()
            .push(Arc::new(crate::xrpc::Subordinate {
                id: id.clone(),
                protocol,
                upstream,
            }));
    }
    by_superior
        .into_iter()
        .map(|(k, v)| (k, Arc::from(v)))
        .collect()
}

/// Compiles an upstream: (origin, JSON, whether it may get a checker).
type CompileInline<'a> =
    dyn Fn(String, UpstreamSource, bool) -> Result<Arc<UpstreamRt>, String> + 'a;

/// Compile one stream route: its plugin chain and the upstream in force.
/// `compile(origin, json, checked)` compiles an inline upstream.
fn compile_route(
    e: &Entry,
    r: StreamRoute,
    mut source: RouteSource,
    carry: &Carry,
    upstreams: &OrdMap<String, Arc<UpstreamRt>>,
    compile: &CompileInline<'_>,
) -> Result<RouteRt, String> {
    let stats = &carry.stats;
    let chain = plugins::Chain::build(
        &r.plugins,
        &plugins::BuildCtx {
            route_id: &e.id,
            route_name: r.name.as_deref(),
            service_id: r.service_id.as_deref(),
            version: e.mod_rev,
            shared: &carry.plugins,
            upstreams,
            compile: &|origin, v| compile(origin, UpstreamSource::Owned(v.clone()), false),
            node_stats: &|label| stats.node(&e.id, label),
        },
    )?;
    let upstream = match (&r.upstream_id, e.value.get("upstream")) {
        (Some(uid), _) => upstreams
            .get(uid)
            .cloned()
            .ok_or_else(|| format!("upstream [{uid}] not found")),
        (None, Some(_)) => {
            let up = compile(
                format!("stream_routes/{}", e.id),
                UpstreamSource::Inline(Arc::clone(&e.value)),
                true,
            );
            let unusable = match &up {
                Err(why) => Some(why),
                Ok(u) => match &u.tls {
                    Some(Err(why)) => Some(why),
                    _ => None,
                },
            };
            if let Some(why) = unusable {
                tracing::warn!(route_id = %e.id, error = %why, "stream route's upstream cannot be used");
                source.problem = Some(why.clone());
            }
            up
        }
        (None, None) => Err("missing upstream configuration in Route or Service".into()),
    };
    let node_stats = match &upstream {
        Ok(u) => u
            .balancer
            .backends()
            .iter()
            .map(|b| stats.node(&e.id, &b.label))
            .collect(),
        Err(_) => Vec::new(),
    };
    let protocol = e
        .value
        .get("protocol")
        .map(|p| crate::xrpc::RouteProtocol::compile(p, &carry.plugins).map(Arc::new))
        .transpose()?;
    // Also through a service's plugins: refused rather than run unpaced.
    if protocol.is_some() && chain.bandwidth().is_some() {
        return Err(crate::model::PROTOCOL_AND_BANDWIDTH.into());
    }
    Ok(RouteRt {
        id: e.id.clone(),
        remote_addr: r.remote_addr,
        server_addr: r.server_addr,
        server_port: r.server_port,
        sni: r.sni.map(|s| s.to_ascii_lowercase()),
        upstream,
        chain,
        stats: stats.route(&e.id),
        node_stats,
        protocol,
        source,
    })
}
