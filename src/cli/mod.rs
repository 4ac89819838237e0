//! The command line: the only place that knows flags, stdout and stderr. A file per command
//! holds its clap arguments and its call into the library; this file holds the global flags,
//! the dispatch, and what every command shares (opening checkpoints, naming flags in errors).

mod average;
mod diff;
#[cfg(feature = "train")]
mod import;
mod merge;
mod output;
mod plan;
mod reset;
#[cfg(feature = "train")]
mod run;
pub mod signals;
mod terminal;

use std::path::Path;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};

use hft::choice::Choice;
use hft::error::{Error, Result};
use hft::io::Checkpoint;
use hft::progress::{Level, Sink};

pub use terminal::Terminal;

#[derive(Debug, Parser)]
#[command(
    name = "hft",
    version,
    about = "Checkpoint surgery for Half Fine-Tuning: diff, half-reset, average and merge, freeze plans",
    long_about = "Checkpoint surgery for Half Fine-Tuning (HFT) of large language models.\n\n\
        Every command streams safetensors checkpoints tensor by tensor from memory maps, so \
        models far larger than memory are handled in a bounded resident set.\n\n\
        A checkpoint is any of: a .safetensors file; a directory holding model.safetensors; a \
        directory holding model.safetensors.index.json and its shards; the index file itself.",
    after_help = "Examples:\n  hft diff base/ tuned/\n  hft diff base/ tuned/ --format json > d.json\n  hft completions bash > /etc/bash_completion.d/hft"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Worker threads (default: all cores).
    #[arg(long, global = true, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// No progress bars or notes on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Diff(diff::DiffArgs),
    Reset(reset::ResetArgs),
    Average(average::AverageArgs),
    Merge(merge::MergeArgs),
    Plan(plan::PlanArgs),
    #[cfg(feature = "train")]
    Run(run::RunArgs),
    #[cfg(feature = "train")]
    Import(import::ImportArgs),
    #[cfg(feature = "train")]
    #[command(hide = true)]
    Logits(import::LogitsArgs),
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    Completions {
        shell: clap_complete::Shell,
    },
}

/// Runs a parsed command; returns what belongs on stdout. Library errors about a field are
/// turned into errors about the flag the user typed.
pub fn run(cmd: &Command, quiet: bool) -> Result<String> {
    let sink = Terminal { quiet };
    let (name, result) = match cmd {
        Command::Diff(a) => ("diff", diff::run(a, &sink)),
        Command::Reset(a) => ("reset", reset::run(a, &sink)),
        Command::Average(a) => ("average", average::run(a, &sink)),
        Command::Merge(a) => ("merge", merge::run(a, &sink)),
        Command::Plan(a) => ("plan", plan::run(a, &sink)),
        #[cfg(feature = "train")]
        Command::Run(a) => ("run", run::run(a, &sink)),
        #[cfg(feature = "train")]
        Command::Import(a) => ("import", import::import(a, &sink)),
        #[cfg(feature = "train")]
        Command::Logits(a) => ("logits", import::logits(a)),
        Command::Completions { .. } => (
            "completions",
            Err(Error::Internal("completions handled by main".into())),
        ),
    };
    result.map_err(|e| flags(e, name))
}

/// A clap parser for a library [`Choice`]: its names, with each variant's doc line as help.
pub fn choice<T: Choice + Send + Sync>() -> impl TypedValueParser<Value = T> {
    let values = T::ALL.iter().map(|c| {
        let help = c.help().split_whitespace().collect::<Vec<_>>().join(" ");
        PossibleValue::new(c.name()).help(help)
    });
    PossibleValuesParser::new(values).map(|s| T::parse(&s).expect("clap checked the name"))
}

/// Opens a checkpoint and passes its warnings on.
pub fn open(path: &Path, sink: &dyn Sink) -> Result<Checkpoint> {
    let ck = Checkpoint::open(path)?;
    for w in &ck.warnings {
        sink.say(Level::Warning, w);
    }
    Ok(ck)
}

/// Says which flag of `command` a library error's field came from: the library names fields
/// (`ratio`), the user typed flags (`--ratio`). A field with no flag of that name keeps its name.
pub fn flags(e: Error, command: &str) -> Error {
    match e {
        Error::Field { field, msg } => {
            let flag = field.replace('_', "-");
            let cli = <Cli as clap::CommandFactory>::command();
            let known = cli.find_subcommand(command).is_some_and(|c| {
                c.get_arguments()
                    .any(|a| a.get_long() == Some(flag.as_str()))
            });
            if known {
                Error::Usage(format!("--{flag}: {msg}"))
            } else {
                Error::Field { field, msg }
            }
        }
        other => other,
    }
}

/// An error as the user reads it (see [`flags_in`]).
pub fn explain(e: &Error) -> String {
    flags_in(&e.to_string())
}

/// A library message as the user reads it: "option `force`" becomes "--force" when hft has
/// such a flag.
pub fn flags_in(text: &str) -> String {
    // Every long flag of hft, gathered once: the terminal sink passes each log line here.
    static LONGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let longs = LONGS.get_or_init(|| {
        let cli = <Cli as clap::CommandFactory>::command();
        cli.get_subcommands()
            .flat_map(|c| c.get_arguments().filter_map(|a| a.get_long()))
            .chain(cli.get_arguments().filter_map(|a| a.get_long()))
            .map(str::to_string)
            .collect()
    });
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("option `") {
        let after = &rest[i + "option `".len()..];
        match after.find('`') {
            Some(j) if longs.iter().any(|l| l == &after[..j]) => {
                out.push_str(&rest[..i]);
                out.push_str("--");
                out.push_str(&after[..j]);
                rest = &after[j + 1..];
            }
            _ => {
                out.push_str(&rest[..i + "option `".len()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The command line as a shell would need it typed, for outputs' provenance metadata.
pub fn command_line() -> String {
    // Arguments that are not UTF-8 (a file name in another encoding) are shown lossily.
    let mut args = std::env::args_os().map(|a| a.to_string_lossy().into_owned());
    let first = args.next().map(|p| {
        Path::new(&p)
            .file_name()
            .map_or(p.clone(), |n| n.to_string_lossy().into_owned())
    });
    first
        .into_iter()
        .chain(args)
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@+".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
