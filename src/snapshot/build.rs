//! Compiling a [`Snapshot`] from a store dump, reusing what the previous
//! snapshot compiled.
//!
//! Each object is compiled once and its compiled form reused until it
//! changes or something it names changes: a stream route is reused while
//! its stored value is the same (same `Arc`, same `mod_rev`), every upstream
//! it names (`upstream_id`, traffic-split's `upstream_id`s) is the same
//! compiled object, and, when it names an SSL object (`client_cert_id`), no
//! SSL object changed. SSL objects (and the SNI index) are recompiled only
//! when one of them changed; the route index is updated for the routes
//! added, removed or refiltered, and kept as is otherwise. Unchanged routes
//! cost a pointer comparison each, so a write costs about the same whatever
//! the number of routes.
//!
//! Each object compiles on its own: one that fails (or panics while
//! compiling) is logged once, left out, and listed in
//! [`Snapshot::rejected`]; the others are served. A stream route that
//! fails (or that its store marked unservable) keeps its match filters and
//! refuses the connections they catch, so its clients never fall through to
//! a wider route; only one whose filters cannot be read is left out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use serde_json::Value;

use super::{matcher, Carry, RouteRt, Snapshot, UpstreamRt, UpstreamSource};
use crate::model::{Kind, StreamRoute};
use crate::plugins;
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
    /// Why it cannot be served as written, if so.
    problem: Option<String>,
}

impl RouteSource {
    fn new(e: &Entry, parsed: Option<&StreamRoute>) -> RouteSource {
        let mut refs = Vec::new();
        let mut uses_ssl = false;
        scan(&e.value, &mut refs, &mut uses_ssl);
        RouteSource {
            value: Arc::clone(&e.value),
            mod_rev: e.mod_rev,
            upstream_id: parsed
                .filter(|r| r.superior_id.is_none())
                .and_then(|r| r.upstream_id.clone()),
            refs,
            uses_ssl,
            problem: None,
        }
    }

    /// Whether `e` is the very value this was compiled from.
    fn same(&self, e: &Entry) -> bool {
        self.mod_rev == e.mod_rev && Arc::ptr_eq(&self.value, &e.value)
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
        plugins: serde_json::Map::new(),
        chain: plugins::Chain::default(),
        stats: carry.stats.route(&e.id),
        node_stats: Vec::new(),
        source,
    })
}

/// A stream route of the dump and what the previous snapshot made of it.
struct Item<'a> {
    entry: &'a Entry,
    /// The previous compiled route (with its position) or left-out record.
    old: Old<'a>,
    /// The parsed route, unless the previous compiled form may be reused
    /// (boxed: most items have none, and the list is walked per write).
    parsed: Option<Box<Result<StreamRoute, String>>>,
}

enum Old<'a> {
    None,
    Route(usize, &'a Arc<RouteRt>),
    LeftOut(&'a RouteSource),
}

impl Old<'_> {
    fn source(&self) -> Option<&RouteSource> {
        match self {
            Old::None => None,
            Old::Route(_, r) => Some(&r.source),
            Old::LeftOut(s) => Some(s),
        }
    }
}

fn count(named: &mut HashMap<String, usize>, id: Option<&String>, add: bool) {
    let Some(id) = id else { return };
    if add {
        *named.entry(id.clone()).or_default() += 1;
    } else if let Some(n) = named.get_mut(id) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            named.remove(id);
        }
    }
}

/// Whether a route has a health checker of its own (an inline upstream's).
fn inline_checker(r: &RouteRt) -> bool {
    r.upstream
        .as_ref()
        .is_ok_and(|u| u.upstream_id.is_none() && u.health().is_some())
}

/// Whether the routes at the same position filter connections the same way.
fn same_filters(a: &RouteRt, b: &RouteRt) -> bool {
    a.remote_addr == b.remote_addr
        && a.server_addr == b.server_addr
        && a.server_port == b.server_port
        && a.sni == b.sni
}

/// Compile `dump`, reusing what `prev` compiled (see the module comment).
pub(super) fn build(dump: &Dump, prev: &Snapshot, carry: &Carry) -> Snapshot {
    let mut rejected: BTreeMap<(Kind, String), String> = BTreeMap::new();

    // SSL objects: certificates and the SNI index change only with them.
    let mut ssl_sources: Vec<(String, Arc<Value>)> = dump
        .entries
        .iter()
        .filter(|e| e.kind == Kind::Ssl)
        .map(|e| (e.id.clone(), Arc::clone(&e.value)))
        .collect();
    let ssl_changed = ssl_sources != prev.ssl_sources;
    let certs = if ssl_changed {
        let built = guarded(|| {
            Ok(tls::TlsCerts::build(
                ssl_sources.iter().map(|(id, v)| (id.as_str(), &**v)),
                Some(&prev.tls),
            ))
        });
        match built {
            Ok(c) => Arc::new(c),
            Err(why) => {
                tracing::warn!(error = %why, "ssl objects skipped");
                for (id, _) in &ssl_sources {
                    rejected.insert((Kind::Ssl, id.clone()), why.clone());
                }
                // Compiled again on the next change.
                ssl_sources.clear();
                Arc::new(tls::TlsCerts::default())
            }
        }
    } else {
        Arc::clone(&prev.tls)
    };
    for (id, why) in certs.rejected() {
        rejected.insert((Kind::Ssl, id.clone()), why.clone());
    }

    // Routes, merged with the previous ones (both in id order): those whose
    // stored value is unchanged may be reused; the others are parsed now.
    let mut named = prev.named.clone();
    let mut items = Vec::with_capacity(prev.routes.len().saturating_add(16));
    let mut kept_left_out: HashSet<&str> = HashSet::new();
    let mut old_routes = prev.routes.iter().enumerate().peekable();
    for e in dump.entries.iter().filter(|e| e.kind == Kind::StreamRoute) {
        let mut old = Old::None;
        while let Some((i, r)) = old_routes.peek() {
            if Arc::ptr_eq(&r.source.value, &e.value) {
                // The very value it was compiled from: same id.
                old = Old::Route(*i, r);
                old_routes.next();
                break;
            }
            if r.id.as_str() < e.id.as_str() {
                count(&mut named, r.source.upstream_id.as_ref(), false);
                old_routes.next();
            } else {
                if r.id == e.id {
                    old = Old::Route(*i, r);
                    old_routes.next();
                }
                break;
            }
        }
        if matches!(old, Old::None) {
            if let Some(s) = prev.left_out.get(&e.id) {
                old = Old::LeftOut(s);
            }
        }
        let parsed = match old.source() {
            Some(s) if s.same(e) => {
                if matches!(old, Old::LeftOut(_)) {
                    kept_left_out.insert(&e.id);
                }
                None
            }
            other => {
                if let Some(s) = other {
                    count(&mut named, s.upstream_id.as_ref(), false);
                    if matches!(old, Old::LeftOut(_)) {
                        kept_left_out.insert(&e.id);
                    }
                }
                let p = parse(e);
                if let Ok(r) = &p {
                    if r.superior_id.is_none() {
                        count(&mut named, r.upstream_id.as_ref(), true);
                    }
                }
                Some(Box::new(p))
            }
        };
        items.push(Item {
            entry: e,
            old,
            parsed,
        });
    }
    for (_, r) in old_routes {
        count(&mut named, r.source.upstream_id.as_ref(), false);
    }
    for (id, s) in &prev.left_out {
        if !kept_left_out.contains(id.as_str()) {
            count(&mut named, s.upstream_id.as_ref(), false);
        }
    }

    // Upstreams: reused while their JSON, checker and SSL objects are the
    // same; an upstream that a stream route names and that has `checks` gets
    // a checker (sharing the targets of the one it replaces), unless health
    // checks are off.
    let enabled = carry.health.enabled();
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
            {
                return Ok(Arc::clone(old));
            }
        }
        guarded(|| {
            let up = UpstreamRt::build_shared(origin, id, src, &certs, &carry.trust)?;
            Ok(Arc::new(if checked {
                up.with_checker(old.and_then(|o| o.health()).map(|c| &**c))
            } else {
                up
            }))
        })
    };

    let mut upstreams = HashMap::new();
    for e in dump.entries.iter().filter(|e| e.kind == Kind::Upstream) {
        let checked = enabled && named.contains_key(&e.id);
        match compile(
            format!("upstreams/{}", e.id),
            Some(e.id.clone()),
            UpstreamSource::Stored(Arc::clone(&e.value)),
            checked,
        ) {
            Ok(u) => {
                if let Some(Err(why)) = &u.tls {
                    let reused = prev
                        .upstreams
                        .get(&e.id)
                        .is_some_and(|o| Arc::ptr_eq(o, &u));
                    if !reused {
                        tracing::warn!(upstream_id = %e.id, error = %why, "upstream cannot speak TLS to its nodes");
                    }
                    rejected.insert((Kind::Upstream, e.id.clone()), why.clone());
                }
                upstreams.insert(e.id.clone(), u);
            }
            Err(err) => {
                tracing::warn!(upstream_id = %e.id, error = %err, "upstream skipped");
                rejected.insert((Kind::Upstream, e.id.clone()), err);
            }
        }
    }

    // Routes: reuse, or compile.
    let reusable = |s: &RouteSource| {
        !(ssl_changed && s.uses_ssl)
            && s.refs
                .iter()
                .all(|id| match (prev.upstreams.get(id), upstreams.get(id)) {
                    (None, None) => true,
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    _ => false,
                })
    };
    let mut routes: Vec<Arc<RouteRt>> = Vec::with_capacity(items.len());
    let mut left_out = BTreeMap::new();
    let mut remap: Vec<Option<usize>> = vec![None; prev.routes.len()];
    let mut added = Vec::new();
    let mut checkers_changed = false;
    for item in items {
        let e = item.entry;
        if item.parsed.is_none() {
            match item.old {
                Old::Route(pos, r) if reusable(&r.source) => {
                    if let Some(why) = &r.source.problem {
                        rejected.insert((Kind::StreamRoute, e.id.clone()), why.clone());
                    }
                    remap[pos] = Some(routes.len());
                    routes.push(Arc::clone(r));
                    continue;
                }
                Old::LeftOut(s) if reusable(s) => {
                    if let Some(why) = &s.problem {
                        rejected.insert((Kind::StreamRoute, e.id.clone()), why.clone());
                    }
                    left_out.insert(e.id.clone(), s.clone());
                    continue;
                }
                _ => {}
            }
        }
        let parsed = match item.parsed {
            Some(p) => *p,
            None => parse(e),
        };
        let mut source = RouteSource::new(e, parsed.as_ref().ok());
        let compiled = match parsed {
            // xRPC subordinate routes are never matched directly.
            Ok(r) if r.superior_id.is_some() => {
                left_out.insert(e.id.clone(), source);
                continue;
            }
            Ok(r) => guarded(|| {
                compile_route(e, r, source.clone(), carry, &upstreams, &|o, v, c| {
                    compile(o, None, v, c && enabled)
                })
            }),
            Err(err) => Err(err),
        };
        let compiled = compiled.or_else(|err| refusing_route(e, err, source.clone(), carry));
        match compiled {
            Ok(rt) => {
                let pos = routes.len();
                checkers_changed |= inline_checker(&rt);
                if let Old::Route(_, r) = &item.old {
                    checkers_changed |= inline_checker(r);
                }
                match item.old {
                    Old::Route(old, r) if same_filters(r, &rt) => remap[old] = Some(pos),
                    _ => added.push(pos),
                }
                if let Some(why) = &rt.source.problem {
                    rejected.insert((Kind::StreamRoute, e.id.clone()), why.clone());
                }
                routes.push(Arc::new(rt));
            }
            Err(err) => {
                tracing::warn!(route_id = %e.id, error = %err, "stream route skipped");
                rejected.insert((Kind::StreamRoute, e.id.clone()), err.clone());
                source.problem = Some(err);
                left_out.insert(e.id.clone(), source);
            }
        }
    }

    checkers_changed = checkers_changed
        || remap
            .iter()
            .zip(&prev.routes)
            .any(|(m, r)| m.is_none() && inline_checker(r))
        || upstreams.len() != prev.upstreams.len()
        || upstreams.iter().any(|(id, u)| {
            let health = |u: &Arc<UpstreamRt>| u.health().map(Arc::as_ptr);
            prev.upstreams.get(id).map(health) != Some(health(u))
        });
    let same_layout = added.is_empty()
        && routes.len() == prev.routes.len()
        && remap.iter().enumerate().all(|(i, m)| *m == Some(i));
    let index = if same_layout {
        Arc::clone(&prev.index)
    } else if added.len().saturating_mul(8) > routes.len() {
        Arc::new(matcher::RouteIndex::build(&routes))
    } else {
        Arc::new(matcher::RouteIndex::update(
            &prev.index,
            &remap,
            &added,
            &routes,
        ))
    };
    Snapshot {
        revision: dump.revision,
        routes,
        index,
        upstreams,
        tls: certs,
        rejected,
        left_out,
        named,
        ssl_sources,
        checkers_changed,
        services: Default::default(),
    }
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
    upstreams: &HashMap<String, Arc<UpstreamRt>>,
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
    Ok(RouteRt {
        id: e.id.clone(),
        remote_addr: r.remote_addr,
        server_addr: r.server_addr,
        server_port: r.server_port,
        sni: r.sni.map(|s| s.to_ascii_lowercase()),
        upstream,
        plugins: r.plugins,
        chain,
        stats: stats.route(&e.id),
        node_stats,
        source,
    })
}
