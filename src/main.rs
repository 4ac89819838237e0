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

fn main() -> ExitCode {
    let cli = Cli::parse();
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
