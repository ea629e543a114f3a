//! Comment-preserving edits of YAML text: set one field in entries of a list of tables.
//!
//! Serialising a parsed document again would drop the user's comments, quoting and layout,
//! so an edit here is a splice of bytes into the original text and everything else stays
//! as written. Where to splice comes from yaml-rust2's event parser, whose events carry the
//! position where each node starts; a tree of those positions is built once per document.
//! yaml-rust2 reports no end positions, so the end of a quoted scalar is found by reading to
//! its closing quote (a plain one-line scalar ends after its value). serde_yaml then reads the
//! edited text back, and it must equal the original with only the requested values changed.
//!
//! `${{VAR}}` placeholders are not valid YAML inside flow tables (`{port: ${{PORT}}}`), so the
//! tree is built from a copy of the text with every placeholder byte replaced by `_`: byte
//! offsets are the same in both texts.

use serde_yaml::Value;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;

use super::env::next_placeholder;

/// Why an edit was refused; the text is one line naming the entry and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EditError(String);

impl From<String> for EditError {
    fn from(s: String) -> Self {
        EditError(s)
    }
}

impl From<&str> for EditError {
    fn from(s: &str) -> Self {
        EditError(s.to_string())
    }
}

/// A list of tables somewhere in the document and the field of its entries that is set.
#[derive(Debug, Clone, Copy)]
pub struct ListField<'a> {
    /// Keys from the root down to the list, e.g. `deployment`, `admin`, `admin_key`.
    pub path: &'a [&'a str],
    /// The field set in each entry, e.g. `key`.
    pub field: &'a str,
    /// The single entry the list holds when it is absent, as `(key, value)` pairs in the
    /// order they are written; the field's own value here is the empty string.
    pub default_entry: &'a [(&'a str, &'a str)],
}

impl ListField<'_> {
    fn name(&self) -> String {
        self.path.join(".")
    }
}

/// Parsed YAML node with source positions (char indices, as yaml-rust2 counts them).
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

/// One text replacement, in byte offsets.
struct Edit {
    from: usize,
    to: usize,
    insert: String,
}

/// A YAML text ready for edits: the original, its masked copy and the positioned tree.
pub struct Document<'a> {
    text: &'a str,
    /// `text` with every `${{...}}` placeholder byte replaced by `_`.
    masked: String,
    /// Byte offset in `masked` (and `text`) of each char index of `masked`, plus the end.
    offsets: Vec<usize>,
    /// The first document's root; `None` for an empty document.
    root: Option<Node>,
}

impl<'a> Document<'a> {
    /// Parse `text` (its first document) for editing.
    pub fn parse(text: &'a str) -> Result<Self, EditError> {
        let masked = mask_placeholders(text);
        let mut offsets: Vec<usize> = masked.char_indices().map(|(i, _)| i).collect();
        offsets.push(masked.len());
        let root = parse_tree(&masked, &offsets)?;
        Ok(Document {
            text,
            masked,
            offsets,
            root,
        })
    }

    /// For each entry of the list, whether its field's value is written with a `${{VAR}}`
    /// placeholder; empty when the list is absent.
    pub fn placeholder_fields(&self, list: &ListField<'_>) -> Vec<bool> {
        let mut node = self.root.as_ref();
        for name in list.path {
            node = node.and_then(|n| n.get(name)).map(|(_, v)| v);
        }
        let Some(Node::Seq { items }) = node else {
            return Vec::new();
        };
        items
            .iter()
            .map(|entry| match entry.get(list.field) {
                Some((
                    _,
                    Node::Scalar {
                        value,
                        style,
                        start,
                    },
                )) => self
                    .scalar_span(value, *style, *start)
                    .is_ok_and(|(from, to)| self.text.get(from..to) != self.masked.get(from..to)),
                _ => false,
            })
            .collect()
    }

    /// The text with entry `i`'s field set to each given value, every other byte unchanged.
    ///
    /// Handles quoted, empty, `~` and missing fields in block and flow entries (a new value
    /// keeps the quoting of the one it replaces), and a document without the list at all
    /// (the list is added holding the default entry; only entry 0 can then be set).
    pub fn set_fields(
        &self,
        list: &ListField<'_>,
        values: &[(usize, String)],
    ) -> Result<String, EditError> {
        if values.is_empty() {
            return Ok(self.text.to_string());
        }
        // Walk down the path; stop where it breaks.
        let mut node = self.root.as_ref();
        let mut depth = 0;
        while depth < list.path.len() {
            match node.and_then(|n| n.get(list.path[depth])) {
                Some((_, v)) if !v.is_null() => {
                    node = Some(v);
                    depth += 1;
                }
                Some(_) if depth + 1 == list.path.len() => {
                    return Err(
                        format!("{} is null; cannot add an entry to it", list.name()).into(),
                    )
                }
                Some(_) => {
                    return Err(format!(
                        "{} is null; cannot add {} under it",
                        list.path[..=depth].join("."),
                        list.path[depth + 1..].join(".")
                    )
                    .into())
                }
                None => break,
            }
        }
        let mut edits = Vec::new();
        if depth < list.path.len() {
            let [(0, value)] = values else {
                return Err(
                    format!("{} is absent; only entry 0 can be written", list.name()).into(),
                );
            };
            edits.push(self.insert_list(node, list, depth, value)?);
        } else {
            let Some(Node::Seq { items }) = node else {
                return Err(format!("{} is not a list", list.name()).into());
            };
            for (i, value) in values {
                let entry = items
                    .get(*i)
                    .ok_or_else(|| format!("{}[{i}] does not exist", list.name()))?;
                edits.push(
                    self.set_entry_field(entry, list.field, value)
                        .map_err(|e| format!("{}[{i}]: {e}", list.name()))?,
                );
            }
        }
        edits.sort_by_key(|e| std::cmp::Reverse(e.from));
        let mut out = self.text.to_string();
        for e in edits {
            // Offsets come from the masked copy; one inside a placeholder is refused.
            if !(out.is_char_boundary(e.from) && out.is_char_boundary(e.to)) {
                return Err("the value to replace is inside a ${{...}} placeholder".into());
            }
            out.replace_range(e.from..e.to, &e.insert);
        }
        verify(&self.masked, &mask_placeholders(&out), list, values)?;
        Ok(out)
    }

    fn byte(&self, char_idx: usize) -> Result<usize, EditError> {
        self.offsets
            .get(char_idx)
            .copied()
            .ok_or_else(|| "parser position outside the text".into())
    }

    /// Byte offset of the start of the line containing `byte`.
    fn line_start(&self, byte: usize) -> usize {
        self.masked[..byte].rfind('\n').map_or(0, |i| i + 1)
    }

    /// The spaces before the key at char index `start`, when the key starts its own line.
    fn own_line_indent(&self, start: usize) -> Result<Option<(usize, &str)>, EditError> {
        let kb = self.byte(start)?;
        let ls = self.line_start(kb);
        let indent = &self.masked[ls..kb];
        Ok(indent.chars().all(|c| c == ' ').then_some((ls, indent)))
    }

    /// Byte range of a one-line scalar that starts at char index `start`.
    fn scalar_span(
        &self,
        value: &str,
        style: TScalarStyle,
        start: usize,
    ) -> Result<(usize, usize), EditError> {
        let b = self.byte(start)?;
        let rest = &self.masked[b..];
        let end = match style {
            TScalarStyle::SingleQuoted => {
                let mut i = 1;
                loop {
                    let q = i + rest[i..]
                        .find('\'')
                        .ok_or("unterminated single-quoted scalar")?;
                    if !rest[q + 1..].starts_with('\'') {
                        break q + 1;
                    }
                    i = q + 2;
                }
            }
            TScalarStyle::DoubleQuoted => {
                let mut escaped = false;
                let close = rest.char_indices().skip(1).find(|&(_, c)| match c {
                    _ if escaped => {
                        escaped = false;
                        false
                    }
                    '\\' => {
                        escaped = true;
                        false
                    }
                    c => c == '"',
                });
                close.ok_or("unterminated double-quoted scalar")?.0 + 1
            }
            TScalarStyle::Plain if rest.starts_with(value) => value.len(),
            _ => return Err("the value spans several lines or is a block scalar".into()),
        };
        Ok((b, b + end))
    }

    /// Edit that sets `field` of one block or flow entry.
    fn set_entry_field(&self, entry: &Node, field: &str, value: &str) -> Result<Edit, EditError> {
        let Node::Map { start, flow, pairs } = entry else {
            return Err("entry is not a table".into());
        };
        if let Some((k, v)) = entry.get(field) {
            let Node::Scalar {
                value: old,
                style,
                start: vstart,
            } = v
            else {
                return Err(format!("{field} is not a string").into());
            };
            if !old.is_empty() || *style != TScalarStyle::Plain {
                let (from, to) = self.scalar_span(old, *style, *vstart)?;
                return Ok(Edit {
                    from,
                    to,
                    insert: quote_like(value, *style),
                });
            }
            // `field:` with nothing after it: put the value right after the colon.
            let Node::Scalar {
                value: kv,
                style: ks,
                start: kstart,
            } = k
            else {
                return Err("unexpected key node".into());
            };
            let (_, kend) = self.scalar_span(kv, *ks, *kstart)?;
            let colon = self.masked[kend..]
                .find(':')
                .map(|p| kend + p + 1)
                .ok_or_else(|| format!("no ':' after {field}"))?;
            return Ok(Edit {
                from: colon,
                to: colon,
                insert: format!(" {}", quote_like(value, TScalarStyle::Plain)),
            });
        }
        let line = format!("{field}: {}", quote_like(value, TScalarStyle::Plain));
        if *flow {
            // `{name: admin, role: admin}` -> `{key: ..., name: admin, role: admin}`
            let at = self.byte(*start)? + 1;
            let sep = if pairs.is_empty() { "" } else { ", " };
            return Ok(Edit {
                from: at,
                to: at,
                insert: format!("{line}{sep}"),
            });
        }
        // Block entry: a line before the last key that starts its own line, with its
        // indentation; otherwise (a one-line entry) a line after the last value.
        for (k, _) in pairs.iter().rev() {
            let Node::Scalar { start, .. } = k else {
                continue;
            };
            if let Some((ls, indent)) = self.own_line_indent(*start)? {
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
                value: lv,
                style,
                start: vs,
            },
        ) = (first_key, last_val)
        else {
            return Err(format!("cannot find where to add {field}").into());
        };
        let fkb = self.byte(*fk)?;
        let indent = " ".repeat(self.masked[self.line_start(fkb)..fkb].chars().count());
        let vend = if lv.is_empty() && *style == TScalarStyle::Plain {
            fkb
        } else {
            self.scalar_span(lv, *style, *vs)?.1
        };
        let eol = self.masked[vend..]
            .find('\n')
            .map_or(self.masked.len(), |p| vend + p);
        Ok(Edit {
            from: eol,
            to: eol,
            insert: format!("\n{indent}{line}"),
        })
    }

    /// Edit that adds the missing keys `list.path[depth..]` under `parent` (`None` = the
    /// document root), ending in the list with its default entry, the field set to `value`.
    fn insert_list(
        &self,
        parent: Option<&Node>,
        list: &ListField<'_>,
        depth: usize,
        value: &str,
    ) -> Result<Edit, EditError> {
        let missing = &list.path[depth..];
        let entry: Vec<(&str, String)> = list
            .default_entry
            .iter()
            .map(|(k, v)| {
                let v = if *k == list.field { value } else { v };
                (*k, quote_like(v, TScalarStyle::Plain))
            })
            .collect();
        let block = |indent: &str| {
            let mut s = String::new();
            let mut pad = indent.to_string();
            for name in missing {
                s.push_str(&format!("{pad}{name}:\n"));
                pad.push_str("  ");
            }
            for (i, (k, v)) in entry.iter().enumerate() {
                let lead = if i == 0 { "- " } else { "  " };
                s.push_str(&format!("{pad}{lead}{k}: {v}\n"));
            }
            s
        };
        match parent {
            // Empty document, or the root table lacks the first key: append at the end.
            None => Ok(self.append_at_end(block(""))),
            Some(Node::Map { flow: false, .. }) if depth == 0 => Ok(self.append_at_end(block(""))),
            Some(Node::Map {
                flow: true,
                start,
                pairs,
            }) => {
                let fields: Vec<String> = entry.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                let mut inner = format!("[{{{}}}]", fields.join(", "));
                for name in missing.iter().skip(1).rev() {
                    inner = format!("{{{name}: {inner}}}");
                }
                let at = self.byte(*start)? + 1;
                let sep = if pairs.is_empty() { "" } else { ", " };
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
                    return Err(format!("cannot find where to add {}", missing[0]).into());
                };
                let (ls, indent) = self
                    .own_line_indent(*start)?
                    .ok_or_else(|| format!("cannot find where to add {}", missing[0]))?;
                Ok(Edit {
                    from: ls,
                    to: ls,
                    insert: block(indent),
                })
            }
            Some(_) if depth == 0 => Err("the document is not a table".into()),
            Some(_) => Err(format!("{} is not a table", list.path[..depth].join(".")).into()),
        }
    }

    fn append_at_end(&self, block: String) -> Edit {
        let end = self.text.len();
        let nl = if self.text.is_empty() || self.text.ends_with('\n') {
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
}

/// `text` with every byte of every `${{...}}` placeholder replaced by `_`.
fn mask_placeholders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let mut copied = 0;
        while let Some(p) = next_placeholder(line, copied) {
            out.push_str(&line[copied..p.range.start]);
            out.push_str(&"_".repeat(p.range.len()));
            copied = p.range.end;
        }
        out.push_str(&line[copied..]);
    }
    out
}

/// Parse the first document into a positioned tree; `None` for an empty document.
/// `offsets` maps char indices of `text` to byte offsets.
fn parse_tree(text: &str, offsets: &[usize]) -> Result<Option<Node>, EditError> {
    let mut parser = Parser::new_from_str(text);
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| e.to_string())?;
        match ev {
            Event::StreamStart | Event::DocumentStart | Event::Nothing => continue,
            Event::StreamEnd | Event::DocumentEnd => return Ok(None),
            ev => return build_node(&mut parser, ev, mark.index(), text, offsets).map(Some),
        }
    }
}

fn build_node(
    parser: &mut Parser<std::str::Chars<'_>>,
    ev: Event,
    start: usize,
    text: &str,
    offsets: &[usize],
) -> Result<Node, EditError> {
    let next = |parser: &mut Parser<std::str::Chars<'_>>| {
        parser
            .next_token()
            .map(|(e, m)| (e, m.index()))
            .map_err(|e| EditError(e.to_string()))
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
                    (e, s) => items.push(build_node(parser, e, s, text, offsets)?),
                }
            }
        }
        Event::MappingStart(..) => {
            let flow = offsets
                .get(start)
                .is_some_and(|&b| text[b..].starts_with('{'));
            let mut pairs = Vec::new();
            loop {
                match next(parser)? {
                    (Event::MappingEnd, _) => return Ok(Node::Map { start, flow, pairs }),
                    (e, s) => {
                        let k = build_node(parser, e, s, text, offsets)?;
                        let (e, s) = next(parser)?;
                        let v = build_node(parser, e, s, text, offsets)?;
                        pairs.push((k, v));
                    }
                }
            }
        }
        other => Err(format!("unexpected YAML event {other:?}").into()),
    }
}

/// Whether a value can be written without quotes and still read back as the same string.
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

/// The edited text must read back as the original with exactly the requested fields set.
fn verify(
    before: &str,
    after: &str,
    list: &ListField<'_>,
    values: &[(usize, String)],
) -> Result<(), EditError> {
    let parse = |t: &str| serde_yaml::from_str::<Value>(t).map_err(|e| e.to_string());
    let mut expected = parse(before)?;
    let got = parse(after).map_err(|e| format!("edited text does not parse: {e}"))?;
    if expected.is_null() {
        expected = Value::Mapping(Default::default());
    }
    let mut cur = &mut expected;
    for (depth, name) in list.path.iter().enumerate() {
        let Value::Mapping(m) = cur else {
            return Err(format!("{name}'s parent is not a table").into());
        };
        let default = if depth + 1 == list.path.len() {
            let entry: serde_yaml::Mapping = list
                .default_entry
                .iter()
                .map(|(k, v)| (Value::from(*k), Value::from(*v)))
                .collect();
            Value::Sequence(vec![Value::Mapping(entry)])
        } else {
            Value::Mapping(Default::default())
        };
        cur = m.entry(Value::from(*name)).or_insert(default);
    }
    let Value::Sequence(items) = cur else {
        return Err(format!("{} is not a list", list.name()).into());
    };
    for (i, value) in values {
        let Some(Value::Mapping(entry)) = items.get_mut(*i) else {
            return Err(format!("{}[{i}] is not a table", list.name()).into());
        };
        entry.insert(Value::from(list.field), Value::from(value.as_str()));
    }
    if expected == got {
        Ok(())
    } else {
        Err("edited text does not read back as expected".into())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const USERS: ListField<'static> = ListField {
        path: &["app", "users"],
        field: "token",
        default_entry: &[("id", "root"), ("token", "")],
    };

    #[test]
    fn sets_a_field_in_a_list_anywhere_in_the_document() {
        let text =
            "# users\napp:\n  users:\n    - id: a   # first\n      token: \"\"\n    - {id: b}\n";
        let doc = Document::parse(text).unwrap();
        let out = doc
            .set_fields(&USERS, &[(0, "T1".into()), (1, "T 2".into())])
            .unwrap();
        assert_eq!(
            out,
            "# users\napp:\n  users:\n    - id: a   # first\n      token: \"T1\"\n    - {token: 'T 2', id: b}\n"
        );
        // An absent list gets the default entry, in block or flow style.
        let out = Document::parse("app:\n  name: x\n")
            .unwrap()
            .set_fields(&USERS, &[(0, "T".into())])
            .unwrap();
        assert_eq!(
            out,
            "app:\n  users:\n    - id: root\n      token: T\n  name: x\n"
        );
        let out = Document::parse("app: {name: x}\n")
            .unwrap()
            .set_fields(&USERS, &[(0, "T".into())])
            .unwrap();
        assert_eq!(out, "app: {users: [{id: root, token: T}], name: x}\n");
    }

    #[test]
    fn placeholders_are_masked_byte_for_byte() {
        assert_eq!(
            mask_placeholders("a: ${{ é }} ${{x\nb: ${{Y}}"),
            "a: _________ ${{x\nb: ______"
        );
        let text = "app:\n  port: {n: ${{ PORT:=1 }}}\n  users:\n    - {id: é, token: '${{T}}'}\n    - id: b\n      token: ${{T}}\n    - {id: c, token: ''}\n";
        let doc = Document::parse(text).unwrap();
        assert_eq!(doc.placeholder_fields(&USERS), [true, true, false]);
        let out = doc.set_fields(&USERS, &[(2, "New".into())]).unwrap();
        assert_eq!(out, text.replace("token: ''", "token: 'New'"));
        let absent = Document::parse("app: {}\n").unwrap();
        assert!(absent.placeholder_fields(&USERS).is_empty());
    }

    #[test]
    fn refused_edits_say_why() {
        let err = |text: &str, values: &[(usize, String)]| {
            Document::parse(text)
                .and_then(|d| d.set_fields(&USERS, values))
                .unwrap_err()
                .to_string()
        };
        let one = [(0, "T".to_string())];
        assert_eq!(
            err("app:\n  users:\n", &one),
            "app.users is null; cannot add an entry to it"
        );
        assert_eq!(
            err("app: ~\n", &one),
            "app is null; cannot add users under it"
        );
        assert_eq!(err("- 1\n", &one), "the document is not a table");
        assert_eq!(err("app: {users: x}\n", &one), "app.users is not a list");
        assert_eq!(
            err("app: {users: [{id: a}]}\n", &[(1, "T".into())]),
            "app.users[1] does not exist"
        );
        assert_eq!(
            err("app: {users: [{token: [1]}]}\n", &one),
            "app.users[0]: token is not a string"
        );
        assert_eq!(err("app: [1]\n", &one), "app is not a table");
        assert_eq!(
            err("app: {}\n", &[(1, "T".into())]),
            "app.users is absent; only entry 0 can be written"
        );
        assert!(err("a: [", &one).contains("line"));
    }
}
