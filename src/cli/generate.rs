//! Shell completions and the man page, generated from the clap definitions
//! so they never drift from the real flags (the committed copies under
//! `completions/` and `man/` are checked against these by the tests).

use std::io::Write;

use anyhow::Context;
use clap::CommandFactory;

use super::args::Cli;

/// Write completions for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "apisix-stream", out);
    Ok(())
}

/// Write the man page (roff) to `out`.
pub fn man(out: &mut dyn Write) -> anyhow::Result<()> {
    clap_mangen::Man::new(Cli::command())
        .render(out)
        .context("cannot write the man page")
}
