//! `list` for every kind: APISIX's list filters (`--name`, a regular
//! expression on the name; `--label`, a label key that must be there) and
//! label selectors (`-l env=prod,tier!=cache,team`), printed once or
//! refreshed with `--watch`.

use std::io::{IsTerminal, Write};

use anyhow::{bail, Context};
use regex::Regex;
use serde_json::Value;

use super::args::{ListArgs, OutputFormat};
use super::client::AdminClient;
use super::output::{self, emit};
use crate::model::Kind;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` (or `key==value`).
    Equals(String, String),
    /// `key!=value`: the label is absent or has another value.
    NotEquals(String, String),
    /// `key`: the label is there.
    Exists(String),
    /// `!key`: the label is not there.
    Absent(String),
}

/// Parse `env=prod,tier!=cache,team,!legacy`.
pub fn parse_selector(text: &str) -> anyhow::Result<Vec<Requirement>> {
    let bad = |part: &str| {
        anyhow::anyhow!(
            "invalid --selector {text:?}: {part:?} is not KEY=VALUE, KEY!=VALUE, KEY or !KEY"
        )
    };
    let key_ok = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    };
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let req = if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotEquals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Requirement::Equals(k.trim().into(), v.trim().into())
        } else if let Some(k) = part.strip_prefix('!') {
            Requirement::Absent(k.trim().into())
        } else {
            Requirement::Exists(part.into())
        };
        let key = match &req {
            Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _)
            | Requirement::Exists(k)
            | Requirement::Absent(k) => k,
        };
        if !key_ok(key) {
            return Err(bad(part));
        }
        out.push(req);
    }
    if out.is_empty() {
        bail!("invalid --selector {text:?}: it is empty");
    }
    Ok(out)
}

/// The filters of one `list`.
#[derive(Debug, Default)]
pub struct Filter {
    name: Option<Regex>,
    label: Option<String>,
    selector: Vec<Requirement>,
}

impl Filter {
    /// The filters the flags ask for.
    pub fn from_args(a: &ListArgs) -> anyhow::Result<Filter> {
        let name = match &a.name {
            Some(n) => Some(Regex::new(n).with_context(|| format!("invalid --name {n:?}"))?),
            None => None,
        };
        let selector = match &a.selector {
            Some(s) => parse_selector(s)?,
            None => Vec::new(),
        };
        Ok(Filter {
            name,
            label: a.label.clone(),
            selector,
        })
    }

    /// Whether `item` passes every filter.
    pub fn keeps(&self, item: &Value) -> bool {
        if let Some(re) = &self.name {
            match item.get("name").and_then(Value::as_str) {
                Some(n) if re.is_match(n) => {}
                _ => return false,
            }
        }
        let labels = item.get("labels").and_then(Value::as_object);
        let label = |k: &str| labels.and_then(|l| l.get(k)).map(label_text);
        if let Some(k) = &self.label {
            if label(k).is_none() {
                return false;
            }
        }
        self.selector.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k).as_deref() == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k).as_deref() != Some(v.as_str()),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::Absent(k) => label(k).is_none(),
        })
    }
}

fn label_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The text of one listing.
fn render(
    client: &AdminClient,
    kind: Kind,
    args: &ListArgs,
    filter: &Filter,
    table: fn(&[Value]) -> String,
) -> anyhow::Result<String> {
    let items: Vec<Value> = client
        .list(kind)
        .with_context(|| format!("cannot list {}s", kind.noun()))?
        .into_iter()
        .filter(|i| filter.keeps(i))
        .collect();
    Ok(match args.output {
        OutputFormat::Json => output::json_text(&Value::Array(items)),
        OutputFormat::Table if items.is_empty() => format!("no {}s\n", kind.noun()),
        OutputFormat::Table => table(&items),
    })
}

/// `list`: print the filtered objects once, or keep refreshing them with
/// `--watch` (on a terminal the screen is redrawn; into a pipe a listing is
/// written each time it changes) until interrupted.
pub fn run(
    client: &AdminClient,
    kind: Kind,
    args: &ListArgs,
    table: fn(&[Value]) -> String,
) -> anyhow::Result<()> {
    let filter = Filter::from_args(args)?;
    if !args.watch {
        let text = render(client, kind, args, &filter, table)?;
        if args.output == OutputFormat::Table && text.starts_with("no ") {
            eprint!("{text}");
            return Ok(());
        }
        return emit(&text);
    }
    let interval = crate::top::parse_interval(&args.interval)?;
    let terminal = std::io::stdout().is_terminal();
    let mut last: Option<String> = None;
    loop {
        let text = match render(client, kind, args, &filter, table) {
            Ok(t) => t,
            Err(e) => format!("{e:#}\n"),
        };
        if terminal || last.as_deref() != Some(text.as_str()) {
            let mut page = String::new();
            if terminal {
                page.push_str("\x1b[2J\x1b[H");
                page.push_str(&format!(
                    "every {}: {} list    {}\n\n",
                    args.interval,
                    kind.noun(),
                    crate::timefmt::rfc3339(std::time::SystemTime::now())
                ));
            } else if last.is_some() {
                page.push('\n');
            }
            page.push_str(&text);
            let mut out = std::io::stdout().lock();
            match out.write_all(page.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => {}
                // The reader went away (`| head`): done.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => bail!("cannot write to stdout: {e}"),
            }
            last = Some(text);
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_parse_and_refuse_garbage() {
        assert_eq!(
            parse_selector("env=prod, tier!=cache,team,!legacy,a==b").unwrap(),
            vec![
                Requirement::Equals("env".into(), "prod".into()),
                Requirement::NotEquals("tier".into(), "cache".into()),
                Requirement::Exists("team".into()),
                Requirement::Absent("legacy".into()),
                Requirement::Equals("a".into(), "b".into()),
            ]
        );
        for bad in ["", ",", "=x", "a b=c", "!"] {
            assert!(parse_selector(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn filters_as_apisix_lists() {
        let f = |name: Option<&str>, label: Option<&str>, sel: Option<&str>| {
            Filter::from_args(&ListArgs {
                output: OutputFormat::Table,
                name: name.map(Into::into),
                label: label.map(Into::into),
                selector: sel.map(Into::into),
                watch: false,
                interval: "2s".into(),
            })
            .unwrap()
        };
        let db =
            json!({"id": "1", "name": "mysql-primary", "labels": {"env": "prod", "tier": "db"}});
        let cache = json!({"id": "2", "name": "redis", "labels": {"env": "dev"}});
        let bare = json!({"id": "3"});
        let keeps = |f: &Filter| -> Vec<&str> {
            [&db, &cache, &bare]
                .iter()
                .filter(|i| f.keeps(i))
                .filter_map(|i| i["id"].as_str())
                .collect()
        };
        assert_eq!(keeps(&f(None, None, None)), ["1", "2", "3"]);
        assert_eq!(keeps(&f(Some("^mysql"), None, None)), ["1"]);
        assert_eq!(keeps(&f(None, Some("tier"), None)), ["1"]);
        assert_eq!(keeps(&f(None, None, Some("env=prod"))), ["1"]);
        assert_eq!(keeps(&f(None, None, Some("env!=prod"))), ["2", "3"]);
        assert_eq!(keeps(&f(None, None, Some("env,!tier"))), ["2"]);
        assert!(Filter::from_args(&ListArgs {
            output: OutputFormat::Table,
            name: Some("(".into()),
            label: None,
            selector: None,
            watch: false,
            interval: "2s".into(),
        })
        .is_err());
    }
}
