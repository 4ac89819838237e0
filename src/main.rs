//! The `hft` binary: parse, set the thread count, dispatch into [`cli`], map errors to exit
//! codes (2 bad input, 1 failure).

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};

/// The error line as the terminal should show it: control characters (from a file name or a
/// tensor name) escaped, so that one error is one line and cannot drive the terminal.
fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let esc: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            esc
        })
        .collect()
}

/// A command line clap refuses: one line (with clap's tip, if any), exit 2. Help and version
/// requests print as clap prints them.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind as K;
    if matches!(
        e.kind(),
        K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("bad arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let tip = lines.find_map(|l| l.strip_prefix("tip: "));
    match tip {
        Some(t) => eprintln!("hft: error: {} (tip: {t})", escape(first)),
        None => eprintln!("hft: error: {}", escape(first)),
    }
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    cli::signals::install();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n as usize)
            .build_global()
        {
            eprintln!("hft: cannot set {n} threads: {e}");
            return ExitCode::from(1);
        }
    }
    let result = match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "hft", &mut std::io::stdout());
            Ok(String::new())
        }
        cmd => cli::run(cmd, cli.quiet),
    };
    match result {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`hft diff ... | head`) is not an error worth a message.
            let _ = stdout.write_all(out.as_bytes());
            let _ = stdout.flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hft: error: {}", escape(&cli::explain(&e)));
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
