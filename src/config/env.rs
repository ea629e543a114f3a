//! `${{NAME}}` / `${{NAME:=default}}` placeholders, as `apisix/cli/file.lua` substitutes them.
//!
//! A placeholder opens with `${{` and closes with the first `}}` on the same line; spaces
//! around the name and the default are ignored. [`substitute_env`] replaces them before the
//! YAML is read; the YAML editor uses [`next_placeholder`] to find the same spans in the raw text.

use std::ops::Range;

use super::ConfigError;

/// The process environment, as the default source of variables.
pub(super) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// One `${{ ... }}` in a line: its byte range and the text between the braces.
pub(super) struct Placeholder<'a> {
    /// From the `$` to just past the closing `}}`.
    pub range: Range<usize>,
    /// Between `${{` and `}}`, untrimmed.
    pub inner: &'a str,
}

/// The first closed placeholder in `line` that starts at or after byte `from`.
///
/// An opener without a `}}` after it on the line is passed over. Callers resume at
/// `range.end`, or just after the opener to look inside a placeholder they reject.
pub(super) fn next_placeholder(line: &str, mut from: usize) -> Option<Placeholder<'_>> {
    while let Some(p) = line.get(from..)?.find("${{") {
        let start = from + p;
        let after = start + 3;
        match line[after..].find("}}") {
            Some(len) => {
                return Some(Placeholder {
                    range: start..after + len + 2,
                    inner: &line[after..after + len],
                })
            }
            None => from = after,
        }
    }
    None
}

/// Replace `${{NAME}}` / `${{NAME:=default}}` (spaces allowed inside the braces) in `text`.
///
/// Lines whose first non-blank character is `#` are left alone so that a commented-out
/// placeholder does not demand a variable. A placeholder whose name is not a valid variable
/// name is left as written, like APISIX's pattern match does.
pub fn substitute_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut copied = 0;
        let mut from = 0;
        while let Some(p) = next_placeholder(line, from) {
            let (name, default) = match p.inner.split_once(":=") {
                Some((n, d)) => (n.trim(), Some(d.trim())),
                None => (p.inner.trim(), None),
            };
            if !is_env_name(name) {
                // Not a variable: a placeholder may still open inside it.
                from = p.range.start + 3;
                continue;
            }
            out.push_str(&line[copied..p.range.start]);
            match (env(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(ConfigError::MissingEnv(name.to_string())),
            }
            copied = p.range.end;
            from = p.range.end;
        }
        out.push_str(&line[copied..]);
    }
    Ok(out)
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn env_substitution() {
        let env = |name: &str| match name {
            "PORT" => Some("9200".to_string()),
            "MODE" => Some("stream".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let out = substitute_env("a: ${{PORT}}\nb: ${{ MODE }}\nc: ${{NOPE:=dflt}}\nd: ${{ NOPE := x y }}\ne: '${{EMPTY:=z}}'\n", &env).unwrap();
        assert_eq!(out, "a: 9200\nb: stream\nc: dflt\nd: x y\ne: ''\n");
        // Commented lines and invalid names are left alone; a lone "${{" is kept.
        let out = substitute_env("# ${{NOPE}}\nx: ${{1bad}}\ny: ${{\n", &env).unwrap();
        assert_eq!(out, "# ${{NOPE}}\nx: ${{1bad}}\ny: ${{\n");
        let e = substitute_env("a: 1\nb: ${{ NOPE }}\n", &env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to handle configuration: can't find environment variable NOPE"
        );
        let c = Config::from_yaml_with_env(
            "apisix:\n  proxy_mode: ${{MODE}}\n  stream_proxy:\n    udp: [${{PORT}}]\n  control:\n    port: ${{CONTROL_PORT:=9999}}\n",
            &env,
        )
        .unwrap();
        assert!(c.stream_enabled());
        assert_eq!(c.apisix.stream_proxy.unwrap().udp[0].addr.port(), 9200);
        assert_eq!(c.apisix.control.port, 9999);
    }

    #[test]
    fn placeholders_close_on_their_line() {
        let found = |line: &str| -> Vec<(usize, usize, String)> {
            let mut out = Vec::new();
            let mut from = 0;
            while let Some(p) = next_placeholder(line, from) {
                out.push((p.range.start, p.range.end, p.inner.to_string()));
                from = p.range.end;
            }
            out
        };
        assert_eq!(
            found("a: ${{A}} ${{ B:=x }}"),
            [(3, 9, "A".into()), (10, 21, " B:=x ".into())]
        );
        // An unclosed opener is passed over; one closed later on the line still counts.
        assert_eq!(found("${{ ${{C}}"), [(0, 10, " ${{C".into())]);
        assert_eq!(found("x: ${{y"), []);
        assert_eq!(found("${{é}}}"), [(0, 7, "é".into())]);
        // Substitution keeps text after an unclosed opener and around skipped names, and
        // looks inside a skipped one.
        let env = |_: &str| Some("v".to_string());
        assert_eq!(
            substitute_env("a ${{1}} ${{B}} ${{", &env).unwrap(),
            "a ${{1}} v ${{"
        );
        assert_eq!(substitute_env("${{ ${{C}}", &env).unwrap(), "${{ v");
    }
}
