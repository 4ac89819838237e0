//! `hft run`: parse the device, call `crate::train::run`, print where the report went.

use crate::cli::RunArgs;
use crate::error::Result;
use crate::train::{self, Options, Outcome};

pub fn run(a: &RunArgs, quiet: bool) -> Result<String> {
    // candle's CPU kernels size their thread pools from RAYON_NUM_THREADS, not from rayon's
    // global pool (which `--threads` sets in main): pass the count on.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var(
            "RAYON_NUM_THREADS",
            rayon::current_num_threads().to_string(),
        );
    }
    let device = train::device(&a.device)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let o = Options {
        device,
        compare: a.compare.clone(),
        sweep: a.sweep.clone(),
        seeds: a.seeds.clone(),
        match_at: a.match_at.clone(),
        jobs: a.jobs.map(|j| j as usize),
        threads: rayon::current_num_threads(),
        plot: a.plot.clone(),
        precision: a.precision.clone(),
        quick: a.quick,
        output: a.output.clone(),
        resume: a.resume,
        force: a.force,
        quiet,
        command,
    };
    Ok(match train::run(&a.recipe, &o)? {
        Outcome::One(r) => r.markdown(),
        Outcome::Grid(g) => g.markdown(),
    })
}
