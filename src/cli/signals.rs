//! What happens when hft is interrupted. SIGINT, SIGTERM and SIGHUP remove every temporary
//! output (an unfinished checkpoint under `.NAME.hft-tmp-PID`) on a normal thread, then exit
//! with 128 + the signal, as a shell reports it. A bus error (an input file truncated while
//! hft reads it through its memory map) is reported in one line, with the temporaries
//! removed, exit status 1; without this it would kill the process with no message.

use std::io::Write;

use signal_hook::consts::{SIGBUS, SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use hft::io::output;

pub fn install() {
    if let Ok(mut signals) = Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                output::remove_temporaries();
                let _ =
                    std::io::stderr().write_all(b"hft: interrupted; unfinished outputs removed\n");
                std::process::exit(128 + sig);
            }
        });
    }
    // SAFETY: the action runs inside the signal handler. A bus error here means a memory-mapped
    // input shrank under a read, which never happens inside the allocator or while the registry
    // of temporaries is locked (`try_lock` skips it if it were), so removing files and writing
    // one line before `_exit` cannot deadlock on a lock this thread holds.
    let _ = unsafe {
        signal_hook::low_level::register(SIGBUS, || {
            output::remove_temporaries();
            let msg = b"hft: error: an input file shrank or changed while it was being read (bus \
                error); no output was written\n";
            let _ = std::io::stderr().write_all(msg);
            signal_hook::low_level::exit(1);
        })
    };
}
