//! Admin key generation and write-back into `config.yaml`.
//!
//! APISIX (`apisix/cli/ops.lua`) gives every `role: admin` entry whose `key` is empty 32 random
//! letters and rewrites `conf/config.yaml`, so `yq '.deployment.admin.admin_key[0].key'` prints
//! the key afterwards. APISIX re-serialises the whole merged config; we instead edit only the
//! bytes of the affected `key` values so the user's comments, quoting and layout survive.
//! The spans come from yaml-rust2's event parser (scalar start markers, counted in chars), and
//! the edited text is re-parsed and compared with the original before it is written.

use std::io::Write;
use std::path::Path;

use serde_yaml::Value;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;

use super::{AdminRole, Config, ConfigError, DeploymentRole, Secret};

/// A key generated at start-up, to be printed once.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// Position in `deployment.admin.admin_key`.
    pub index: usize,
    /// The entry's `name`.
    pub name: String,
    /// The new key.
    pub key: Secret,
}

const KEY_LEN: usize = 32;
const LETTERS: &[u8; 52] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// 32 random ASCII letters [A-Za-z] from the OS RNG; no key at all when the
/// OS cannot supply random bytes.
pub fn generate_key() -> Result<String, ConfigError> {
    use rand::TryRngCore;
    let mut out = String::with_capacity(KEY_LEN);
    let mut buf = [0u8; 64];
    while out.len() < KEY_LEN {
        rand::rngs::OsRng.try_fill_bytes(&mut buf).map_err(|e| {
            ConfigError::Other(format!(
                "cannot generate an admin key: the operating system's random source failed: {e}"
            ))
        })?;
        // 208 = 4 * 52: rejecting larger bytes keeps every letter equally likely.
        for b in buf.iter().filter(|b| **b < 208) {
            if out.len() == KEY_LEN {
                break;
            }
            out.push(char::from(LETTERS[usize::from(*b) % LETTERS.len()]));
        }
    }
    Ok(out)
}

/// Parsed YAML node with source positions (char indices into the text).
#[derive(Debug)]
enum Node {
    Scalar {
        value: String,
        style: TScalarStyle,
        start: usize,
    },
    Seq {
        items: Vec<Node>,
    },
    Map {
        start: usize,
        flow: bool,
        pairs: Vec<(Node, Node)>,
    },
    Alias,
}

impl Node {
    fn get(&self, key: &str) -> Option<(&Node, &Node)> {
        match self {
            Node::Map { pairs, .. } => pairs
                .iter()
                .find(|(k, _)| matches!(k, Node::Scalar { value, .. } if value == key))
                .map(|(k, v)| (k, v)),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self, Node::Scalar { value, style: TScalarStyle::Plain, .. }
            if value.is_empty() || value == "~" || value == "null" || value == "Null" || value == "NULL")
    }
}

/// The source text with a char-index to byte-offset table (markers count chars).
struct Source<'a> {
    text: &'a str,
    offsets: Vec<usize>,
}

impl<'a> Source<'a> {
    fn new(text: &'a str) -> Self {
        let mut offsets: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        offsets.push(text.len());
        Source { text, offsets }
    }

    fn byte(&self, char_idx: usize) -> Result<usize, String> {
        self.offsets
            .get(char_idx)
            .copied()
            .ok_or_else(|| "parser position outside the text".to_string())
    }

    /// Byte offset of the start of the line containing `byte`.
    fn line_start(&self, byte: usize) -> usize {
        self.text[..byte].rfind('\n').map_or(0, |i| i + 1)
    }

    /// Byte offset just past a scalar that starts at char index `start`.
    fn scalar_end(&self, value: &str, style: TScalarStyle, start: usize) -> Result<usize, String> {
        let b = self.byte(start)?;
        let rest = &self.text[b..];
        match style {
            TScalarStyle::SingleQuoted => {
                let mut i = 1;
                while let Some(p) = rest[i..].find('\'') {
                    let q = i + p;
                    if rest[q + 1..].starts_with('\'') {
                        i = q + 2;
                    } else {
                        return Ok(b + q + 1);
                    }
                }
                Err("unterminated single-quoted scalar".into())
            }
            TScalarStyle::DoubleQuoted => {
                let mut escaped = false;
                for (i, c) in rest.char_indices().skip(1) {
                    match c {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        '"' => return Ok(b + i + 1),
                        _ => {}
                    }
                }
                Err("unterminated double-quoted scalar".into())
            }
            TScalarStyle::Plain if rest.starts_with(value) => Ok(b + value.len()),
            _ => Err("the value spans several lines or is a block scalar".into()),
        }
    }
}

/// Parse the first document into a positioned tree; `None` for an empty document.
fn parse_tree(text: &str) -> Result<Option<Node>, String> {
    let mut parser = Parser::new_from_str(text);
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| e.to_string())?;
        match ev {
            Event::StreamStart | Event::DocumentStart | Event::Nothing => continue,
            Event::StreamEnd | Event::DocumentEnd => return Ok(None),
            ev => return build_node(&mut parser, ev, mark.index(), text).map(Some),
        }
    }
}

fn build_node(
    parser: &mut Parser<std::str::Chars<'_>>,
    ev: Event,
    start: usize,
    text: &str,
) -> Result<Node, String> {
    let next = |parser: &mut Parser<std::str::Chars<'_>>| {
        parser
            .next_token()
            .map(|(e, m)| (e, m.index()))
            .map_err(|e| e.to_string())
    };
    match ev {
        Event::Scalar(value, style, _, _) => Ok(Node::Scalar {
            value,
            style,
            start,
        }),
        Event::Alias(_) => Ok(Node::Alias),
        Event::SequenceStart(..) => {
            let mut items = Vec::new();
            loop {
                match next(parser)? {
                    (Event::SequenceEnd, _) => return Ok(Node::Seq { items }),
                    (e, s) => items.push(build_node(parser, e, s, text)?),
                }
            }
        }
        Event::MappingStart(..) => {
            let flow = text.chars().nth(start) == Some('{');
            let mut pairs = Vec::new();
            loop {
                match next(parser)? {
                    (Event::MappingEnd, _) => return Ok(Node::Map { start, flow, pairs }),
                    (e, s) => {
                        let k = build_node(parser, e, s, text)?;
                        let (e, s) = next(parser)?;
                        let v = build_node(parser, e, s, text)?;
                        pairs.push((k, v));
                    }
                }
            }
        }
        other => Err(format!("unexpected YAML event {other:?}")),
    }
}

/// Whether a key can be written without quotes and still read back as the same string.
fn plain_safe(v: &str) -> bool {
    const RESERVED: [&str; 10] = [
        "true", "false", "null", "yes", "no", "on", "off", "y", "n", "nan",
    ];
    v.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && v.chars().all(|c| c.is_ascii_alphanumeric())
        && !RESERVED.contains(&v.to_ascii_lowercase().as_str())
}

fn single_quoted(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// The new value in the style of the one it replaces.
fn quote_like(v: &str, style: TScalarStyle) -> String {
    match style {
        TScalarStyle::DoubleQuoted => {
            format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
        }
        TScalarStyle::SingleQuoted => single_quoted(v),
        _ if plain_safe(v) => v.to_string(),
        _ => single_quoted(v),
    }
}

/// One text replacement, in byte offsets.
struct Edit {
    from: usize,
    to: usize,
    insert: String,
}

/// The keys from `deployment` down to the admin key list.
const CHAIN: [&str; 3] = ["deployment", "admin", "admin_key"];

/// Pure: return `text` with admin_key[i].key set to the given values, everything else unchanged.
///
/// Handles quoted, empty, `~` and missing `key`s in block and flow entries, and a config with
/// no `deployment.admin.admin_key` at all (APISIX's default single `admin` entry is written).
/// The result is re-parsed and must equal the original with only those keys changed.
pub fn write_back(text: &str, keys: &[(usize, String)]) -> Result<String, ConfigError> {
    if keys.is_empty() {
        return Ok(text.to_string());
    }
    let fail = ConfigError::WriteBack;
    let src = Source::new(text);
    let masked = mask_placeholders(text);
    let root = parse_tree(&masked).map_err(fail)?;
    let mut edits = Vec::new();

    // Walk down deployment -> admin -> admin_key; stop where the chain breaks.
    let mut node = root.as_ref();
    let mut depth = 0;
    while depth < CHAIN.len() {
        match node.and_then(|n| n.get(CHAIN[depth])) {
            Some((_, v)) if !v.is_null() => {
                node = Some(v);
                depth += 1;
            }
            Some(_) => {
                return Err(fail(format!(
                    "{} is null; cannot add admin keys under it",
                    CHAIN[..=depth].join(".")
                )))
            }
            None => break,
        }
    }

    if depth < CHAIN.len() {
        // The list is absent, so the default [{name: admin, key: '', role: admin}] applies.
        let [(0, key)] = keys else {
            return Err(fail(
                "deployment.admin.admin_key is absent; only entry 0 can be written".into(),
            ));
        };
        edits.push(insert_chain(&src, node, &CHAIN[depth..], key).map_err(fail)?);
    } else {
        let Some(Node::Seq { items }) = node else {
            return Err(fail("deployment.admin.admin_key is not a list".into()));
        };
        for (i, key) in keys {
            let entry = items
                .get(*i)
                .ok_or_else(|| fail(format!("deployment.admin.admin_key[{i}] does not exist")))?;
            edits.push(
                set_entry_key(&src, entry, key)
                    .map_err(|e| fail(format!("deployment.admin.admin_key[{i}]: {e}")))?,
            );
        }
    }

    edits.sort_by_key(|e| std::cmp::Reverse(e.from));
    let mut out = text.to_string();
    for e in edits {
        out.replace_range(e.from..e.to, &e.insert);
    }
    verify(&masked, &mask_placeholders(&out), keys).map_err(fail)?;
    Ok(out)
}

/// `text` with every `${{...}}` placeholder replaced by as many `_` as it has chars.
///
/// The file is edited before env substitution, and a placeholder inside a flow table
/// (`{port: ${{PORT}}}`) is not valid YAML; masking keeps every char position unchanged.
fn mask_placeholders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        let after = &rest[start + 3..];
        let end = match (after.find("}}"), after.find('\n')) {
            (Some(e), Some(nl)) if e < nl => e,
            (Some(e), None) => e,
            _ => {
                out.push_str(&rest[..start + 3]);
                rest = after;
                continue;
            }
        };
        out.push_str(&rest[..start]);
        let placeholder = &rest[start..start + 3 + end + 2];
        out.push_str(&"_".repeat(placeholder.chars().count()));
        rest = &rest[start + placeholder.len()..];
    }
    out.push_str(rest);
    out
}

/// Edit that sets the `key` of one block or flow admin_key entry.
fn set_entry_key(src: &Source<'_>, entry: &Node, key: &str) -> Result<Edit, String> {
    let Node::Map { start, flow, pairs } = entry else {
        return Err("entry is not a table".into());
    };
    if let Some((k, v)) = entry.get("key") {
        return match v {
            Node::Scalar {
                value,
                style,
                start,
            } if !value.is_empty() || *style != TScalarStyle::Plain => {
                let from = src.byte(*start)?;
                let to = src.scalar_end(value, *style, *start)?;
                Ok(Edit {
                    from,
                    to,
                    insert: quote_like(key, *style),
                })
            }
            Node::Scalar { .. } => {
                // `key:` with nothing after it: put the value right after the colon.
                let Node::Scalar {
                    value: kv,
                    style: ks,
                    start: kstart,
                } = k
                else {
                    return Err("unexpected key node".into());
                };
                let kend = src.scalar_end(kv, *ks, *kstart)?;
                let colon = src.text[kend..]
                    .find(':')
                    .map(|p| kend + p + 1)
                    .ok_or("no ':' after key")?;
                Ok(Edit {
                    from: colon,
                    to: colon,
                    insert: format!(" {}", quote_like(key, TScalarStyle::Plain)),
                })
            }
            _ => Err("key is not a string".into()),
        };
    }
    let line = format!("key: {}", quote_like(key, TScalarStyle::Plain));
    if *flow {
        // `{name: admin, role: admin}` -> `{key: ..., name: admin, role: admin}`
        let at = src.byte(*start)? + 1;
        let sep = if pairs.is_empty() { "" } else { ", " };
        return Ok(Edit {
            from: at,
            to: at,
            insert: format!("{line}{sep}"),
        });
    }
    // Block entry: insert a line before the last key that starts its own line, reusing its
    // indentation; otherwise (a one-line entry) after the line of the last value.
    for (k, _) in pairs.iter().rev() {
        let Node::Scalar { start, .. } = k else {
            continue;
        };
        let kb = src.byte(*start)?;
        let ls = src.line_start(kb);
        let indent = &src.text[ls..kb];
        if indent.chars().all(|c| c == ' ') {
            return Ok(Edit {
                from: ls,
                to: ls,
                insert: format!("{indent}{line}\n"),
            });
        }
    }
    let (first_key, _) = pairs.first().ok_or("empty entry")?;
    let (_, last_val) = pairs.last().ok_or("empty entry")?;
    let (
        Node::Scalar { start: fk, .. },
        Node::Scalar {
            value,
            style,
            start: vs,
        },
    ) = (first_key, last_val)
    else {
        return Err("cannot find where to add the key".into());
    };
    let fkb = src.byte(*fk)?;
    let indent = " ".repeat(src.text[src.line_start(fkb)..fkb].chars().count());
    let vend = if value.is_empty() && *style == TScalarStyle::Plain {
        fkb
    } else {
        src.scalar_end(value, *style, *vs)?
    };
    let eol = src.text[vend..]
        .find('\n')
        .map_or(src.text.len(), |p| vend + p);
    Ok(Edit {
        from: eol,
        to: eol,
        insert: format!("\n{indent}{line}"),
    })
}

/// Edit that adds the missing tail of deployment.admin.admin_key (`missing`) under `parent`
/// (`None` = the document root), holding APISIX's default admin entry with `key`.
fn insert_chain(
    src: &Source<'_>,
    parent: Option<&Node>,
    missing: &[&str],
    key: &str,
) -> Result<Edit, String> {
    let value = quote_like(key, TScalarStyle::Plain);
    let block = |indent: &str| {
        let mut s = String::new();
        let mut pad = indent.to_string();
        for name in missing {
            s.push_str(&format!("{pad}{name}:\n"));
            pad.push_str("  ");
        }
        s.push_str(&format!(
            "{pad}- name: admin\n{pad}  key: {value}\n{pad}  role: admin\n"
        ));
        s
    };
    match parent {
        // Empty document, or the root table lacks `deployment`: append at the end.
        None => Ok(append_at_end(src, block(""))),
        Some(Node::Map { flow: false, .. }) if missing.len() == CHAIN.len() => {
            Ok(append_at_end(src, block("")))
        }
        Some(Node::Map {
            flow: true, start, ..
        }) => {
            let mut inner = format!("[{{name: admin, key: {value}, role: admin}}]");
            for name in missing.iter().skip(1).rev() {
                inner = format!("{{{name}: {inner}}}");
            }
            let at = src.byte(*start)? + 1;
            let has_pairs = matches!(parent, Some(Node::Map { pairs, .. }) if !pairs.is_empty());
            let sep = if has_pairs { ", " } else { "" };
            Ok(Edit {
                from: at,
                to: at,
                insert: format!("{}: {inner}{sep}", missing[0]),
            })
        }
        Some(Node::Map {
            flow: false, pairs, ..
        }) => {
            // A nested block table: its first key starts a line; add ours above it.
            let Some((Node::Scalar { start, .. }, _)) = pairs.first() else {
                return Err("cannot find where to add admin_key".into());
            };
            let kb = src.byte(*start)?;
            let ls = src.line_start(kb);
            let indent = &src.text[ls..kb];
            if !indent.chars().all(|c| c == ' ') {
                return Err("cannot find where to add admin_key".into());
            }
            Ok(Edit {
                from: ls,
                to: ls,
                insert: block(indent),
            })
        }
        Some(_) => Err(format!("{} is not a table", missing[0])),
    }
}

fn append_at_end(src: &Source<'_>, block: String) -> Edit {
    let end = src.text.len();
    let nl = if src.text.is_empty() || src.text.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    Edit {
        from: end,
        to: end,
        insert: format!("{nl}{block}"),
    }
}

/// The edited text must read back as the original with exactly the requested keys set.
fn verify(before: &str, after: &str, keys: &[(usize, String)]) -> Result<(), String> {
    let parse = |t: &str| serde_yaml::from_str::<Value>(t).map_err(|e| e.to_string());
    let mut expected = parse(before)?;
    let got = parse(after).map_err(|e| format!("edited text does not parse: {e}"))?;
    if expected.is_null() {
        expected = Value::Mapping(Default::default());
    }
    let mut cur = &mut expected;
    for name in CHAIN {
        let Value::Mapping(m) = cur else {
            return Err(format!("{name}'s parent is not a table"));
        };
        let default = if name == "admin_key" {
            serde_yaml::from_str("[{name: admin, key: '', role: admin}]")
                .map_err(|e| e.to_string())?
        } else {
            Value::Mapping(Default::default())
        };
        cur = m.entry(Value::from(name)).or_insert(default);
    }
    let Value::Sequence(items) = cur else {
        return Err("admin_key is not a list".into());
    };
    for (i, key) in keys {
        let Some(Value::Mapping(entry)) = items.get_mut(*i) else {
            return Err(format!("admin_key[{i}] is not a table"));
        };
        entry.insert(Value::from("key"), Value::from(key.as_str()));
    }
    if expected == got {
        Ok(())
    } else {
        Err("edited text does not read back as expected".into())
    }
}

/// For each admin_key entry, whether its `key` is written as a `${{VAR}}` placeholder.
fn placeholder_keys(text: &str) -> Vec<bool> {
    let src = Source::new(text);
    let Ok(Some(root)) = parse_tree(&mask_placeholders(text)) else {
        return Vec::new();
    };
    let mut node = &root;
    for name in CHAIN {
        match node.get(name) {
            Some((_, v)) => node = v,
            None => return Vec::new(),
        }
    }
    let Node::Seq { items } = node else {
        return Vec::new();
    };
    items
        .iter()
        .map(|e| match e.get("key") {
            Some((_, Node::Scalar { start, .. })) => src.byte(*start).is_ok_and(|b| {
                let line = src.text[b..].split('\n').next().unwrap_or("");
                line.contains("${{")
            }),
            _ => false,
        })
        .collect()
}

/// Generate keys for empty `role: admin` entries, write them back atomically, update `config`.
///
/// Only when the Admin API is on with keys required (data planes never generate).
/// `text` is the file's raw text so `${{VAR}}` placeholders survive; an entry whose key comes
/// from such a placeholder gets an in-memory key only.
pub fn ensure_admin_keys(
    path: &Path,
    text: &str,
    config: &mut Config,
) -> Result<Vec<GeneratedKey>, ConfigError> {
    let admin = &config.deployment.admin;
    if !config.apisix.enable_admin
        || !admin.admin_key_required
        || config.deployment.role == DeploymentRole::DataPlane
    {
        return Ok(Vec::new());
    }
    let from_placeholder = placeholder_keys(text);
    let mut generated = Vec::new();
    let mut to_write = Vec::new();
    for (index, entry) in admin.admin_key.iter().enumerate() {
        if entry.role != AdminRole::Admin || !entry.key.is_empty() {
            continue;
        }
        let key = generate_key()?;
        let from_env = from_placeholder.get(index).copied().unwrap_or(false);
        if from_env {
            tracing::warn!(
                name = %entry.name,
                "admin key comes from an empty environment variable; using a generated key for this run only"
            );
        } else {
            to_write.push((index, key.clone()));
        }
        generated.push(GeneratedKey {
            index,
            name: entry.name.clone(),
            key: Secret::new(key),
        });
    }
    if !to_write.is_empty() {
        let new_text = write_back(text, &to_write)?;
        write_atomic(path, &new_text)?;
        tracing::info!(path = %path.display(), "generated admin key written to config file");
    }
    for g in &generated {
        if let Some(entry) = config.deployment.admin.admin_key.get_mut(g.index) {
            entry.key = g.key.clone();
        }
    }
    Ok(generated)
}

/// Replace `path` with `text`: temp file in the same directory, fsync, keep mode, rename.
fn write_atomic(path: &Path, text: &str) -> Result<(), ConfigError> {
    let werr = |source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.yaml".into());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let perms = std::fs::metadata(path).map(|m| m.permissions()).ok();
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        // The text holds the new key: owner-only until the original mode is applied.
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        if let Some(p) = perms {
            f.set_permissions(p)?;
        }
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Persist the rename itself; not every platform lets a directory be opened.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(werr)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key_at(text: &str, i: usize) -> String {
        let v: Value = serde_yaml::from_str(text).unwrap();
        v["deployment"]["admin"]["admin_key"][i]["key"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn wb(text: &str, k: &str) -> String {
        write_back(text, &[(0, k.to_string())]).unwrap()
    }

    #[test]
    fn generated_keys_are_32_letters_and_differ() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphabetic()));
        assert_ne!(a, b);
    }

    const BLOCK: &str = "# top comment\napisix:\n  proxy_mode: stream   # mode\n\ndeployment:\n  admin:\n    admin_key:\n      # the admin\n      - name: \"admin\"\n        key: ''\n        role: admin  # all\n      - name: viewer\n        key: abc\n        role: viewer\n    allow_admin:\n      - 127.0.0.0/24\n";

    #[test]
    fn single_quoted_empty_key() {
        let out = wb(BLOCK, "NewKeyABC");
        assert_eq!(out, BLOCK.replace("key: ''", "key: 'NewKeyABC'"));
        assert_eq!(key_at(&out, 0), "NewKeyABC");
        assert_eq!(key_at(&out, 1), "abc");
    }

    #[test]
    fn double_quoted_null_and_tilde_keys() {
        for (before, after) in [
            ("key: \"\"", "key: \"Abc\""),
            ("key: ~", "key: Abc"),
            ("key: null", "key: Abc"),
            ("key:", "key: Abc"),
            ("key:   # empty", "key: Abc   # empty"),
        ] {
            let text = format!(
                "deployment:\n  admin:\n    admin_key:\n      - name: admin\n        {before}\n        role: admin\n# end\n"
            );
            let out = wb(&text, "Abc");
            let want = text.replace(
                &format!("        {before}\n"),
                &format!("        {after}\n"),
            );
            assert_eq!(out, want, "for {before}");
            assert_eq!(key_at(&out, 0), "Abc");
        }
    }

    #[test]
    fn missing_key_line_is_inserted_with_entry_indentation() {
        let text = "deployment:\n  admin:\n    admin_key:\n      - name: admin\n        role: admin\n    admin_listen: {ip: 127.0.0.1, port: 9180}\n";
        let out = wb(text, "Abc");
        assert_eq!(
            out,
            "deployment:\n  admin:\n    admin_key:\n      - name: admin\n        key: Abc\n        role: admin\n    admin_listen: {ip: 127.0.0.1, port: 9180}\n"
        );
        let one_line = "deployment:\n  admin:\n    admin_key:\n    - name: admin # me\n    allow_admin: [127.0.0.0/24]\n";
        let out = wb(one_line, "Abc");
        assert_eq!(
            out,
            "deployment:\n  admin:\n    admin_key:\n    - name: admin # me\n      key: Abc\n    allow_admin: [127.0.0.0/24]\n"
        );
    }

    #[test]
    fn flow_entries() {
        let text = "deployment:\n  admin:\n    admin_key:\n      - {name: admin, key: '', role: admin}   # c\n      - {name: b, role: admin}\n";
        let out = write_back(text, &[(0, "Abc".into()), (1, "Def".into())]).unwrap();
        assert_eq!(
            out,
            "deployment:\n  admin:\n    admin_key:\n      - {name: admin, key: 'Abc', role: admin}   # c\n      - {key: Def, name: b, role: admin}\n"
        );
        assert_eq!(key_at(&out, 1), "Def");
        let flow_null = "deployment: {admin: {admin_key: [{name: admin, key: , role: admin}]}}\n";
        let out = wb(flow_null, "Abc");
        assert_eq!(key_at(&out, 0), "Abc");
    }

    #[test]
    fn no_admin_key_section_appends_default_entry() {
        for text in [
            "",
            "# only a comment",
            "apisix:\n  proxy_mode: stream\n",
            "apisix:\n  proxy_mode: stream\ndeployment:\n  role: traditional\n  etcd:\n    prefix: /x\n",
            "deployment:\n  admin:\n    admin_listen:\n      port: 9180\n",
        ] {
            let out = wb(text, "Abc");
            // Every original line survives, in order.
            let mut rest = out.lines();
            for line in text.lines() {
                assert!(rest.any(|l| l == line), "{line:?} lost in {out}");
            }
            assert_eq!(key_at(&out, 0), "Abc", "for {text:?}: {out}");
            let v: Value = serde_yaml::from_str(&out).unwrap();
            assert_eq!(v["deployment"]["admin"]["admin_key"][0]["role"], "admin");
        }
    }

    #[test]
    fn flow_tables_without_admin_key_get_a_flow_entry() {
        assert_eq!(
            wb("deployment: {role: traditional}  # c\n", "Abc"),
            "deployment: {admin: {admin_key: [{name: admin, key: Abc, role: admin}]}, role: traditional}  # c\n"
        );
        assert_eq!(
            wb("deployment:\n  admin: {}\n", "Abc"),
            "deployment:\n  admin: {admin_key: [{name: admin, key: Abc, role: admin}]}\n"
        );
    }

    #[test]
    fn non_ascii_text_and_placeholders_are_kept() {
        let text = "# clé générée ↓\napisix:\n  ssl: {fallback_sni: \"é.example\"}\ndeployment:\n  admin:\n    admin_key:\n      - name: ädmin\n        key: ''\n        role: admin\n    admin_listen:\n      port: ${{ADMIN_PORT:=9180}}\n";
        let out = wb(text, "Abc");
        assert_eq!(out, text.replace("key: ''", "key: 'Abc'"));
    }

    #[test]
    fn placeholders_in_flow_tables_do_not_break_the_edit() {
        let text = "apisix:\n  control: {ip: 127.0.0.1, port: ${{ CONTROL_PORT:=9090 }}}\ndeployment:\n  admin:\n    admin_key:\n      - {name: admin, key: '', role: admin}\n      - {name: env, key: '${{K}}', role: admin}\n";
        let out = wb(text, "Abc");
        assert_eq!(out, text.replacen("key: ''", "key: 'Abc'", 1));
        assert_eq!(placeholder_keys(text), [false, true]);
        assert_eq!(mask_placeholders("a: ${{ é }} ${{x"), "a: ________ ${{x");
    }

    #[test]
    fn write_back_errors() {
        let text = "deployment:\n  admin:\n    admin_key:\n      - name: admin\n        key: ''\n";
        assert!(write_back(text, &[(3, "x".into())]).is_err());
        let null_list = "deployment:\n  admin:\n    admin_key:\n";
        assert!(write_back(null_list, &[(0, "x".into())]).is_err());
        let e = write_back("a: [", &[(0, "x".into())]).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("failed to write the generated admin key"));
    }

    #[test]
    fn key_needing_quotes_is_quoted() {
        let text = "deployment:\n  admin:\n    admin_key:\n      - name: admin\n        key:\n";
        let out = wb(text, "it's: #1");
        assert_eq!(key_at(&out, 0), "it's: #1");
        let out = wb(text, "true");
        assert_eq!(key_at(&out, 0), "true");
    }

    #[cfg(unix)]
    #[test]
    fn ensure_admin_keys_rewrites_file_once_and_keeps_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        let text = "# my config\ndeployment:\n  admin:\n    admin_key:\n      - name: admin\n        key: ''   # generated\n        role: admin\n      - name: viewer\n        key: ''\n        role: viewer\n";
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut config = Config::from_yaml_with_env(text, &|_| None).unwrap();
        let generated = ensure_admin_keys(&path, text, &mut config).unwrap();
        assert_eq!(generated.len(), 1);
        assert_eq!(generated[0].index, 0);
        assert_eq!(generated[0].name, "admin");
        let key = generated[0].key.expose().to_string();
        assert_eq!(config.deployment.admin.admin_key[0].key.expose(), key);
        assert!(config.deployment.admin.admin_key[1].key.is_empty());
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            written,
            text.replace("key: ''   #", &format!("key: '{key}'   #"))
        );
        assert_eq!(key_at(&written, 0), key);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let mut again = Config::load(&path).unwrap();
        assert!(ensure_admin_keys(&path, &written, &mut again)
            .unwrap()
            .is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), written);
    }

    #[test]
    fn ensure_admin_keys_skips_when_not_needed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        for text in [
            "apisix:\n  enable_admin: false\n",
            "deployment:\n  admin:\n    admin_key_required: false\n",
            "deployment:\n  role: data_plane\n  role_data_plane:\n    config_provider: yaml\n",
        ] {
            std::fs::write(&path, text).unwrap();
            let mut config = Config::from_yaml_with_env(text, &|_| None).unwrap();
            assert!(ensure_admin_keys(&path, text, &mut config)
                .unwrap()
                .is_empty());
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        }
    }

    #[test]
    fn ensure_admin_keys_default_config_and_env_placeholder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        let text = "apisix:\n  proxy_mode: stream\n";
        std::fs::write(&path, text).unwrap();
        let mut config = Config::from_yaml_with_env(text, &|_| None).unwrap();
        let g = ensure_admin_keys(&path, text, &mut config).unwrap();
        assert_eq!(g.len(), 1);
        let written = std::fs::read_to_string(&path).unwrap();
        assert_eq!(key_at(&written, 0), g[0].key.expose());

        let text = "deployment:\n  admin:\n    admin_key:\n      - name: admin\n        key: \"${{KEY:=}}\"\n        role: admin\n";
        std::fs::write(&path, text).unwrap();
        let mut config = Config::from_yaml_with_env(text, &|_| None).unwrap();
        let g = ensure_admin_keys(&path, text, &mut config).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(config.deployment.admin.admin_key[0].key, g[0].key);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}
