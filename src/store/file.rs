//! The standalone store (`config_provider: yaml` / `json`): a read-only view
//! of `conf/apisix.yaml` or `conf/apisix.json` in APISIX's standalone format.
//!
//! The file holds one array per resource type (`stream_routes`, `upstreams`,
//! `ssls`) of Admin-API-shaped objects; other top-level keys are ignored.
//! Each item's id is its `id` field (number or string), else `arr_<n>` (its
//! 1-based position); a later duplicate replaces an earlier one. Items are
//! validated as the Admin API validates them; an invalid item is logged and
//! left out while the others load, except a stream route, which is kept
//! marked [`super::UNSERVABLE`] so that its clients are refused.
//!
//! A YAML file must end with `#END` (a half-written file is never loaded);
//! `${{VAR}}` / `${{VAR:=default}}` placeholders come from the environment.
//! The file's modification time and size are checked every second and a
//! change reloads the whole file. A broken edit keeps the previous
//! configuration in force and is logged once. Every write through the Admin
//! API is refused: the file is the only source of truth.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::index::{Index, Objects};
use super::{Entry, Expect, PutOutcome, Store, StoreError};
use crate::config::substitute_env;
use crate::model::{self, EnabledPlugins, Kind, NotEnabled};
use crate::store::IndexView;

/// How often the file's modification time and size are checked.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How many trailing bytes of a YAML file must hold the `#END` marker.
const END_FLAG_WINDOW: usize = 10;

/// Syntax of the standalone file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `conf/apisix.yaml`, ending with `#END`.
    Yaml,
    /// `conf/apisix.json`.
    Json,
}

impl Format {
    /// The provider name (`yaml` / `json`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Yaml => "yaml",
            Format::Json => "json",
        }
    }
}

/// Valid items of one file, by kind and id.
type Items = BTreeMap<(Kind, String), Value>;

/// What identifies one version of the file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    ino: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Stamp {
            mtime: meta.modified().ok(),
            len: meta.len(),
            #[cfg(unix)]
            ino: meta.ino(),
        }
    }
}

/// What the last look at the file found.
struct Seen {
    /// The file version last looked at (`None`: it could not be read).
    seen: Option<Stamp>,
    /// Why the last look at the file did not load it, while the previous
    /// configuration stays in force.
    failure: Option<String>,
}

struct Shared {
    path: PathBuf,
    format: Format,
    plugins: EnabledPlugins,
    seen: Mutex<Seen>,
    index: Index,
}

/// The read-only standalone store; cheap to clone.
#[derive(Clone)]
pub struct FileStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.shared.path)
            .field("format", &self.shared.format)
            .finish_non_exhaustive()
    }
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Whether the YAML text ends with the `#END` marker (APISIX's `#END\s*$`
/// over the last 10 bytes).
fn has_end_flag(raw: &[u8]) -> bool {
    let tail = &raw[raw.len().saturating_sub(END_FLAG_WINDOW)..];
    let is_space = |b: &u8| b.is_ascii_whitespace() || *b == 0x0b;
    let end = tail.iter().rposition(|b| !is_space(b)).map_or(0, |i| i + 1);
    tail[..end].ends_with(b"#END")
}

/// Replace `${{VAR}}` placeholders in every string of a parsed JSON document.
fn substitute_json(
    v: &mut Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), crate::config::ConfigError> {
    match v {
        Value::String(s) if s.contains("${{") => {
            // A leading character keeps a string starting with `#` from
            // being taken for a comment line.
            let replaced = substitute_env(&format!("_{s}"), env)?;
            *s = replaced.get(1..).unwrap_or_default().to_string();
        }
        Value::Array(items) => {
            for item in items {
                substitute_json(item, env)?;
            }
        }
        Value::Object(map) => {
            for item in map.values_mut() {
                substitute_json(item, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Parse the raw file into a JSON document (marker check, placeholders).
fn parse_document(
    raw: &[u8],
    format: Format,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Value, String> {
    let shown = path.display();
    if format == Format::Yaml && !has_end_flag(raw) {
        return Err(format!("missing valid end flag in file {shown}"));
    }
    let text = std::str::from_utf8(raw)
        .map_err(|e| format!("failed to read file {shown}: not valid UTF-8 ({e})"))?;
    let one_line = |e: &dyn std::fmt::Display| e.to_string().replace('\n', " ");
    match format {
        Format::Yaml => {
            let text = substitute_env(text, env).map_err(|e| format!("file {shown}: {e}"))?;
            let doc: serde_yaml::Value = serde_yaml::from_str(&text)
                .map_err(|e| format!("failed to parse yaml file {shown}: {}", one_line(&e)))?;
            serde_json::to_value(doc)
                .map_err(|e| format!("failed to parse yaml file {shown}: {}", one_line(&e)))
        }
        Format::Json => {
            let mut doc: Value = serde_json::from_str(text)
                .map_err(|e| format!("failed to parse json file {shown}: {}", one_line(&e)))?;
            substitute_json(&mut doc, env).map_err(|e| format!("file {shown}: {e}"))?;
            Ok(doc)
        }
    }
}

/// The id an item is stored under: its `id` (number or string), else `arr_<n>`.
fn item_id(item: &Value, position: usize) -> String {
    match item.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => format!("arr_{position}"),
    }
}

/// Parse and validate the whole file; invalid items are logged and skipped,
/// a file that cannot be used at all is an error.
fn parse_items(
    raw: &[u8],
    format: Format,
    path: &Path,
    plugins: &EnabledPlugins,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Items, String> {
    let doc = parse_document(raw, format, path, env)?;
    let top = match &doc {
        Value::Object(map) => Some(map),
        Value::Null => None,
        _ => {
            return Err(format!(
                "invalid file {}: expected a table at the top level",
                path.display()
            ))
        }
    };
    let mut items = Items::new();
    for kind in Kind::ALL {
        let segment = kind.segment();
        let list = match top.and_then(|t| t.get(segment)) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(list)) => list,
            Some(_) => {
                tracing::warn!(
                    file = %path.display(),
                    kind = segment,
                    "invalid [{segment}] in the standalone file: expected an array; ignored"
                );
                continue;
            }
        };
        for (i, item) in list.iter().enumerate() {
            let position = i + 1;
            if !item.is_object() {
                tracing::warn!(
                    file = %path.display(),
                    kind = segment,
                    position,
                    "invalid item data of [{segment}/{position}], val: {item}, it should be an object"
                );
                continue;
            }
            // The file is written for this instance: a plugin it does not
            // enable is an error, as in an Admin API write.
            let mut value = item.clone();
            if let Err(e) = model::validate(kind, item, plugins, NotEnabled::Refuse) {
                tracing::warn!(
                    file = %path.display(),
                    kind = segment,
                    position,
                    "failed to check item data of [{segment}] err:{e}"
                );
                // A stream route stays, marked, so that its clients are
                // refused rather than served by a wider route.
                match super::unservable(kind, item, &e) {
                    Some(marked) => value = marked,
                    None => continue,
                }
            }
            let id = item_id(item, position);
            if let Value::Object(map) = &mut value {
                map.insert("id".into(), Value::String(id.clone()));
            }
            items.insert((kind, id), value);
        }
    }
    Ok(items)
}

impl FileStore {
    /// Load `path` (a missing or unusable file is an error) and watch it for
    /// changes until `cancel`.
    pub async fn open(
        path: &Path,
        format: Format,
        plugins: EnabledPlugins,
        cancel: CancellationToken,
    ) -> Result<FileStore, StoreError> {
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            format,
            plugins,
            seen: Mutex::new(Seen {
                seen: None,
                failure: None,
            }),
            index: Index::default(),
        });
        let first = shared.clone();
        tokio::task::spawn_blocking(move || first.load_first())
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))??;
        // The watcher stops on `cancel` or once the store is dropped.
        let watched = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    _ = tick.tick() => match watched.upgrade() {
                        Some(shared) => poll(shared).await,
                        None => break,
                    },
                }
            }
        });
        Ok(FileStore { shared })
    }
}

/// Look at the file once and reload it if it changed.
async fn poll(shared: Arc<Shared>) {
    if let Err(e) = tokio::task::spawn_blocking(move || shared.check()).await {
        tracing::warn!(error = %e, "standalone file check failed");
    }
}

impl Shared {
    fn seen(&self) -> MutexGuard<'_, Seen> {
        // Every change to it is a single assignment, never half done.
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stat then read the file.
    fn read(&self) -> Result<(Stamp, Vec<u8>), String> {
        let shown = self.path.display();
        let meta =
            std::fs::metadata(&self.path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let raw = std::fs::read(&self.path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        Ok((Stamp::of(&meta), raw))
    }

    fn parse(&self, raw: &[u8]) -> Result<Items, String> {
        parse_items(raw, self.format, &self.path, &self.plugins, &process_env)
    }

    /// Start-up load: any problem stops the server.
    fn load_first(&self) -> Result<(), StoreError> {
        let (stamp, raw) = self.read().map_err(StoreError::Unavailable)?;
        let items = self.parse(&raw).map_err(StoreError::Corrupt)?;
        self.seen().seen = Some(stamp);
        let (rev, objects) = self.apply(items);
        tracing::info!(
            file = %self.path.display(),
            objects,
            revision = rev,
            "loaded standalone configuration"
        );
        Ok(())
    }

    /// One periodic check: reload when the file's stamp changed, and log a
    /// file that cannot be used once per change.
    fn check(&self) {
        let stamp = std::fs::metadata(&self.path).ok().map(|m| Stamp::of(&m));
        if stamp == self.seen().seen {
            return;
        }
        let loaded = self
            .read()
            .and_then(|(stamp, raw)| Ok((stamp, self.parse(&raw)?)));
        let mut seen = self.seen();
        match loaded {
            Ok((stamp, items)) => {
                seen.seen = Some(stamp);
                seen.failure = None;
                let before = self.index.read(|t| t.revision());
                let (rev, objects) = self.apply(items);
                if rev != before {
                    tracing::info!(
                        file = %self.path.display(),
                        objects,
                        revision = rev,
                        "reloaded standalone configuration"
                    );
                }
            }
            Err(why) => {
                seen.seen = stamp;
                tracing::warn!(
                    file = %self.path.display(),
                    "{why}; keeping the previous configuration"
                );
                seen.failure = Some(why);
            }
        }
    }

    /// Install a freshly parsed file. Unchanged items keep their revisions;
    /// the revision advances (and the change feed fires) only when
    /// something changed. Returns the revision now in force and the number
    /// of objects.
    fn apply(&self, items: Items) -> (u64, usize) {
        self.index.update(|t| {
            let rev = t.revision() + 1;
            let objects = items.len();
            let mut changed = objects != t.objects().len();
            let mut entries = Objects::new();
            for ((kind, id), value) in items {
                let entry = match t.get(&(kind, id.clone())) {
                    Some(old) if *old.value == value => old.clone(),
                    old => {
                        changed = true;
                        Entry {
                            kind,
                            id: id.clone(),
                            value: super::shared_value(value),
                            create_rev: old.map_or(rev, |o| o.create_rev),
                            mod_rev: rev,
                        }
                    }
                };
                entries.insert((kind, id), entry);
            }
            if changed || t.revision() == 0 {
                t.replace(entries);
                t.commit(rev);
            }
            (t.revision(), objects)
        })
    }

    fn read_only(&self) -> StoreError {
        let name = self.path.file_name().map_or_else(
            || self.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        StoreError::ReadOnly(format!(
            "the Admin API cannot change resources in standalone mode \
             (config_provider: {}); edit {name} instead",
            self.format.name()
        ))
    }
}

#[async_trait]
impl Store for FileStore {
    fn index(&self) -> &dyn IndexView {
        &self.shared.index
    }

    async fn put(
        &self,
        _kind: Kind,
        _id: &str,
        _value: Value,
        _expect: Expect,
    ) -> Result<PutOutcome, StoreError> {
        Err(self.shared.read_only())
    }

    async fn delete(&self, _kind: Kind, _id: &str) -> Result<Option<Entry>, StoreError> {
        Err(self.shared.read_only())
    }

    async fn next_id(&self) -> Result<String, StoreError> {
        Err(self.shared.read_only())
    }

    fn describe(&self) -> String {
        format!(
            "{}:{}",
            self.shared.format.name(),
            self.shared.path.display()
        )
    }

    fn stale(&self) -> Option<String> {
        self.shared
            .seen()
            .failure
            .as_ref()
            .map(|why| format!("{why}; serving the last valid configuration"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn plugins() -> EnabledPlugins {
        EnabledPlugins::new(["ip-restriction", "limit-conn", "mqtt-proxy"])
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse_with(
        text: &str,
        format: Format,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Items, String> {
        parse_items(
            text.as_bytes(),
            format,
            Path::new("/conf/apisix.yaml"),
            &plugins(),
            env,
        )
    }

    fn yaml(text: &str) -> Result<Items, String> {
        parse_with(text, Format::Yaml, &no_env)
    }

    fn ids(items: &Items, kind: Kind) -> Vec<String> {
        items
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, id)| id.clone())
            .collect()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    const SAMPLE: &str = r#"
stream_routes:
  - id: 1
    server_port: 1985
    upstream_id: 1
    plugins:
      mqtt-proxy: {protocol_name: MQTT, protocol_level: 4}
  - id: "r-two"
    upstream:
      nodes: {"127.0.0.1:1996": 1}
      type: roundrobin
  - remote_addr: 127.0.0.1
    upstream_id: 1
upstreams:
  - id: 1
    type: roundrobin
    nodes:
      "127.0.0.1:1995": 1
routes:
  - uri: /ignored
plugin_metadata:
  - id: syslog
#END
"#;

    #[test]
    fn ids_from_numbers_strings_and_positions() {
        let items = yaml(SAMPLE).unwrap();
        assert_eq!(ids(&items, Kind::StreamRoute), ["1", "arr_3", "r-two"]);
        assert_eq!(ids(&items, Kind::Upstream), ["1"]);
        assert_eq!(ids(&items, Kind::Ssl), Vec::<String>::new());
        // The stored object carries its id as a string.
        let r = &items[&(Kind::StreamRoute, "1".to_string())];
        assert_eq!(r["id"], json!("1"));
        assert_eq!(r["server_port"], json!(1985));
        let r = &items[&(Kind::StreamRoute, "arr_3".to_string())];
        assert_eq!(r["id"], json!("arr_3"));
    }

    #[test]
    fn shipped_sample_loads() {
        let text = include_str!("../../conf/apisix.yaml");
        let items = yaml(text).unwrap();
        assert_eq!(ids(&items, Kind::StreamRoute), ["1"]);
        let u = &items[&(Kind::Upstream, "1".to_string())];
        assert_eq!(u["nodes"], json!({"127.0.0.1:1995": 1}));
    }

    #[test]
    fn later_duplicates_replace_earlier_ones() {
        let items = yaml(
            "upstreams:\n  - {id: 7, nodes: {\"127.0.0.1:1\": 1}, type: roundrobin}\n  \
             - {id: \"7\", nodes: {\"127.0.0.1:2\": 1}, type: roundrobin}\n#END\n",
        )
        .unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(
            items[&(Kind::Upstream, "7".to_string())]["nodes"],
            json!({"127.0.0.1:2": 1})
        );
    }

    #[test]
    fn end_flag_rules() {
        assert!(has_end_flag(b"a: 1\n#END"));
        assert!(has_end_flag(b"a: 1\n#END\n"));
        assert!(has_end_flag(b"a: 1\n#END \t\r\n  "));
        assert!(has_end_flag(b"#END"));
        assert!(!has_end_flag(b"a: 1\n"));
        assert!(!has_end_flag(b""));
        assert!(!has_end_flag(b"#END\nb: 2\n"));
        assert!(!has_end_flag(b"a: 1\n#EN"));
        // Only the last 10 bytes count.
        assert!(!has_end_flag(b"a: 1\n#END        \n"));
        let err = yaml("stream_routes: []\n").unwrap_err();
        assert_eq!(err, "missing valid end flag in file /conf/apisix.yaml");
        assert!(yaml("stream_routes: []\n#END   \n\n").unwrap().is_empty());
        // JSON needs no marker.
        assert!(parse_with("{}", Format::Json, &no_env).unwrap().is_empty());
    }

    #[test]
    fn broken_yaml_is_an_error() {
        let err = yaml("stream_routes: [\n#END\n").unwrap_err();
        assert!(
            err.starts_with("failed to parse yaml file /conf/apisix.yaml"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        let err = yaml("- 1\n- 2\n#END\n").unwrap_err();
        assert!(err.contains("expected a table at the top level"), "{err}");
        // A file with nothing but the marker holds no resources.
        assert!(yaml("#END\n").unwrap().is_empty());
    }

    #[test]
    fn environment_placeholders() {
        let env = |name: &str| match name {
            "UP_PORT" => Some("1995".to_string()),
            "ROUTE_ID" => Some("from-env".to_string()),
            _ => None,
        };
        let text = "stream_routes:\n  - id: ${{ROUTE_ID}}\n    upstream:\n      nodes:\n        \
                    \"127.0.0.1:${{UP_PORT}}\": 1\n        \"${{UP_HOST:=127.0.0.2}}:1\": 1\n      \
                    type: roundrobin\n#END\n";
        let items = parse_with(text, Format::Yaml, &env).unwrap();
        let r = &items[&(Kind::StreamRoute, "from-env".to_string())];
        assert_eq!(
            r["upstream"]["nodes"],
            json!({"127.0.0.1:1995": 1, "127.0.0.2:1": 1})
        );
        let err = parse_with("a: ${{NOPE}}\n#END\n", Format::Yaml, &env).unwrap_err();
        assert!(
            err.contains("can't find environment variable NOPE"),
            "{err}"
        );

        let json_text = r##"{"upstreams":[{"id":"${{ROUTE_ID}}","type":"roundrobin",
            "nodes":[{"host":"127.0.0.1","port":1,"weight":1}],"desc":"#${{UP_PORT}}"}]}"##;
        let items = parse_with(json_text, Format::Json, &env).unwrap();
        let u = &items[&(Kind::Upstream, "from-env".to_string())];
        assert_eq!(u["desc"], json!("#1995"));
    }

    #[test]
    fn invalid_items_are_skipped_and_others_load() {
        let text = r#"
stream_routes:
  - id: bad-port
    server_port: 70000
    upstream_id: 1
  - id: good
    upstream_id: 1
  - "not an object"
  - id: bad-plugin
    upstream_id: 1
    plugins:
      x-rewrite: {}
upstreams:
  - id: 1
    nodes: {"127.0.0.1:1995": 1}
    type: roundrobin
  - id: 2
    type: roundrobin
    retries: -1
    nodes: {"127.0.0.1:1995": 1}
#END
"#;
        let items = yaml(text).unwrap();
        // Stream routes are kept, marked, so that their clients are refused.
        assert_eq!(
            ids(&items, Kind::StreamRoute),
            ["bad-plugin", "bad-port", "good"]
        );
        for id in ["bad-plugin", "bad-port"] {
            let v = &items[&(Kind::StreamRoute, id.to_string())];
            assert!(crate::store::unservable_reason(v).is_some(), "{v}");
        }
        assert_eq!(ids(&items, Kind::Upstream), ["1"]);
    }

    #[test]
    fn unknown_plugin_is_rejected() {
        let route = json!({"upstream_id": 1, "plugins": {"x-rewrite": {}}});
        assert_eq!(
            model::validate(Kind::StreamRoute, &route, &plugins(), NotEnabled::Refuse).unwrap_err(),
            "unknown plugin [x-rewrite]"
        );
        let text =
            "stream_routes:\n  - id: 1\n    upstream_id: 1\n    plugins: {x-rewrite: {}}\n#END\n";
        let items = yaml(text).unwrap();
        let v = &items[&(Kind::StreamRoute, "1".to_string())];
        assert_eq!(
            crate::store::unservable_reason(v),
            Some("unknown plugin [x-rewrite]")
        );
    }

    #[test]
    fn json_variant() {
        let text = r#"{
            "stream_routes": [{"id": 1, "server_port": 1985, "upstream_id": 1},
                              {"upstream_id": 1}],
            "upstreams": [{"id": 1, "type": "roundrobin", "nodes": {"127.0.0.1:1995": 1}}],
            "routes": [{"uri": "/x"}]
        }"#;
        let items = parse_with(text, Format::Json, &no_env).unwrap();
        assert_eq!(ids(&items, Kind::StreamRoute), ["1", "arr_2"]);
        assert_eq!(ids(&items, Kind::Upstream), ["1"]);
        let err = parse_with("{\"stream_routes\": [", Format::Json, &no_env).unwrap_err();
        assert!(err.starts_with("failed to parse json file"), "{err}");
    }

    fn write(path: &Path, text: &str) {
        use std::sync::atomic::{AtomicU64, Ordering};
        static TICK: AtomicU64 = AtomicU64::new(1_000_000);
        std::fs::write(path, text).unwrap();
        // A distinct mtime for every write, even within one clock tick.
        let secs = TICK.fetch_add(1, Ordering::SeqCst);
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
    }

    fn stopped() -> CancellationToken {
        let c = CancellationToken::new();
        c.cancel();
        c
    }

    #[test]
    fn open_reload_revisions_and_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apisix.yaml");
        let up = |port: u16| {
            format!(
                "upstreams:\n  - id: 1\n    type: roundrobin\n    nodes: {{\"127.0.0.1:{port}\": 1}}\n  \
                 - id: 2\n    type: roundrobin\n    nodes: {{\"127.0.0.1:2\": 1}}\n#END\n"
            )
        };
        write(&path, &up(1));
        rt().block_on(async {
            let s = FileStore::open(&path, Format::Yaml, plugins(), stopped())
                .await
                .unwrap();
            assert_eq!(s.describe(), format!("yaml:{}", path.display()));
            assert_eq!(s.revision(), 1);
            let mut feed = s.subscribe();
            feed.borrow_and_update();
            let e = s.get(Kind::Upstream, "1").await.unwrap().unwrap();
            assert_eq!((e.create_rev, e.mod_rev), (1, 1));

            // Nothing changed on disk: nothing happens.
            poll(s.shared.clone()).await;
            assert_eq!(s.revision(), 1);

            // One item changes: only it gets the new revision.
            write(&path, &up(3));
            poll(s.shared.clone()).await;
            assert_eq!(s.revision(), 2);
            assert!(feed.has_changed().unwrap());
            feed.borrow_and_update();
            let e1 = s.get(Kind::Upstream, "1").await.unwrap().unwrap();
            assert_eq!((e1.create_rev, e1.mod_rev), (1, 2));
            assert_eq!(e1.value["nodes"], json!({"127.0.0.1:3": 1}));
            let e2 = s.get(Kind::Upstream, "2").await.unwrap().unwrap();
            assert_eq!((e2.create_rev, e2.mod_rev), (1, 1));

            // A broken edit keeps the old data and says so.
            write(&path, "upstreams: []\n");
            poll(s.shared.clone()).await;
            assert_eq!(s.revision(), 2);
            assert!(!feed.has_changed().unwrap());
            assert_eq!(s.list(Kind::Upstream).await.unwrap().len(), 2);
            assert!(s.stale().unwrap().contains("missing valid end flag"));

            // A removed file too.
            std::fs::remove_file(&path).unwrap();
            poll(s.shared.clone()).await;
            assert_eq!(s.list(Kind::Upstream).await.unwrap().len(), 2);
            assert!(s.stale().unwrap().contains("cannot read"));

            // A fixed file applies: item 2 is gone, item 1 is back to port 1.
            write(
                &path,
                "upstreams:\n  - id: 1\n    type: roundrobin\n    nodes: {\"127.0.0.1:1\": 1}\n#END\n",
            );
            poll(s.shared.clone()).await;
            assert_eq!(s.revision(), 3);
            assert!(s.stale().is_none());
            let dump = s.dump().await.unwrap();
            assert_eq!(dump.revision, 3);
            assert_eq!(dump.entries.len(), 1);
            assert_eq!(dump.entries[0].mod_rev, 3);

            // Writes are refused.
            let ro = |r: Result<(), StoreError>| match r {
                Err(StoreError::ReadOnly(msg)) => assert!(msg.contains("apisix.yaml"), "{msg}"),
                other => panic!("expected read-only, got {other:?}"),
            };
            ro(s
                .put(Kind::Upstream, "9", json!({}), Expect::Any)
                .await
                .map(|_| ()));
            ro(s.delete(Kind::Upstream, "1").await.map(|_| ()));
            ro(s.next_id().await.map(|_| ()));
        });
    }

    #[test]
    fn open_fails_on_missing_or_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apisix.yaml");
        rt().block_on(async {
            let err = FileStore::open(&path, Format::Yaml, plugins(), stopped())
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("cannot read") && err.contains("apisix.yaml"),
                "{err}"
            );
            std::fs::write(&path, "stream_routes: []\n").unwrap();
            let err = FileStore::open(&path, Format::Yaml, plugins(), stopped())
                .await
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!("missing valid end flag in file {}", path.display())
            );
            let json_path = dir.path().join("apisix.json");
            std::fs::write(&json_path, "{\"upstreams\": [}").unwrap();
            let err = FileStore::open(&json_path, Format::Json, plugins(), stopped())
                .await
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("failed to parse json file"), "{err}");
        });
    }
}
