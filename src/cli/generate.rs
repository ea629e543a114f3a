//! Shell completions and man pages, generated from the clap definitions
//! so they never drift from the real flags (the committed copies under
//! `completions/` and `man/` are checked against these by the tests).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use super::args::Cli;

/// Write completions for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    let mut text = Vec::new();
    clap_complete::generate(shell, &mut cmd, "apisix-stream", &mut text);
    if shell == clap_complete::Shell::Bash {
        // The bash generator names the state of a subcommand of a hyphenated
        // program inconsistently (`apisix__subcmd__stream__...` in the case
        // labels, `apisix__stream__...` where the state is set), so nothing
        // below the first level would complete. Use one spelling.
        text = String::from_utf8_lossy(&text)
            .replace("apisix__subcmd__stream__", "apisix__stream__")
            .into_bytes();
    }
    out.write_all(&text).context("cannot write the completions")
}

/// Every man page as (file name, roff text): the main page first, then one
/// per command, depth first (`apisix-stream-route.1`, `apisix-stream-route-add.1`).
pub fn man_pages() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    fn walk(cmd: &clap::Command, out: &mut Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
        let page = clap_mangen::Man::new(cmd.clone());
        let mut text = Vec::new();
        page.render(&mut text)
            .with_context(|| format!("cannot render the man page of {}", cmd.get_name()))?;
        out.push((page.get_filename(), text));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, out)?;
        }
        Ok(())
    }
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let mut out = Vec::new();
    walk(&root, &mut out)?;
    Ok(out)
}

/// The main man page (roff).
pub fn man() -> anyhow::Result<Vec<u8>> {
    man_pages()?
        .into_iter()
        .next()
        .map(|(_, text)| text)
        .context("no man page was generated")
}

/// Write every man page into `dir` (created if missing); returns the names.
pub fn man_to_dir(dir: &Path) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut names = Vec::new();
    for (name, text) in man_pages()? {
        let path = dir.join(&name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        names.push(name);
    }
    Ok(names)
}
