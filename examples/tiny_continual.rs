//! Writes the bundled continual-learning recipe's model and data (see `hft::fixtures::bundle`):
//! `cargo run --release --features train --example tiny_continual -- [--force]`
//! from the project root rebuilds `fixtures/tiny-llama/` and `recipes/data/`.

use std::path::Path;

fn main() {
    let force = std::env::args().any(|a| a == "--force");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Err(e) = hft::fixtures::bundle::write_bundle(
        &root.join("fixtures/tiny-llama"),
        &root.join("recipes/data"),
        force,
    ) {
        eprintln!("tiny_continual: {e}");
        std::process::exit(e.exit_code());
    }
}
