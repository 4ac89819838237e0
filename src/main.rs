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
    // clap's message spans lines (the missing arguments, the possible values, a tip, usage):
    // everything but the usage and the pointer to --help goes on the one line.
    let text = e.render().to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let joined = parts.join(" ");
    let line = joined.strip_prefix("error: ").unwrap_or(&joined);
    eprintln!("hft: error: {}", escape(line));
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
            match stdout
                .write_all(out.as_bytes())
                .and_then(|_| stdout.flush())
            {
                Ok(()) => ExitCode::SUCCESS,
                // A reader that stopped early (`hft diff ... | head`) is not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                // A full disk or a closed stdout lost the result: say so, exit 1.
                Err(e) => {
                    eprintln!("hft: error: writing to stdout: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Err(e) => {
            eprintln!("hft: error: {}", escape(&cli::explain(&e)));
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
