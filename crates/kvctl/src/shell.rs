//! `kvctl completions SHELL` and `kvctl man`: generated from the same command definition as
//! the parser, so they never disagree with it.

use std::io::Write;

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};
use crate::exit::Failure;

pub(crate) fn completions(args: CompletionsArgs) -> Result<(), Failure> {
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut command, "kvctl", &mut out);
    out.flush()
        .map_err(|e| Failure::Io("writing to stdout".into(), e))
}

pub(crate) fn man() -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Io("writing to stdout".into(), e))
}
