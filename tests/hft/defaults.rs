//! Every default has one home (`hft::defaults`); the docs must state the same values. A doc
//! table row is `| `name` | `default` | meaning |`.

use std::collections::BTreeMap;

use hft::defaults::{self, stage};

/// The `| name | default | ... |` rows of the tables of `doc` whose header starts with `first`.
fn table(doc: &str, first: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(format!("{}/docs/{doc}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("docs/{doc}: {e}"));
    let mut rows = BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with(&format!("| {first} | default |")) {
            inside = true;
            continue;
        }
        if !line.starts_with('|') {
            inside = false;
        }
        if inside {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() > 3 && cells[1].starts_with('`') {
                rows.insert(
                    cells[1].trim_matches('`').to_string(),
                    cells[2].trim_matches('`').to_string(),
                );
            }
        }
    }
    rows
}

fn number(rows: &BTreeMap<String, String>, doc: &str, name: &str) -> f64 {
    let v = rows
        .get(name)
        .unwrap_or_else(|| panic!("docs/{doc} has no default for `{name}`"));
    v.parse()
        .unwrap_or_else(|_| panic!("docs/{doc}: `{name}` default `{v}` is not a number"))
}

#[test]
fn the_recipe_reference_states_the_stage_defaults() {
    let doc = "recipe.md";
    let rows = table(doc, "field");
    let n = |name| number(&rows, doc, name);
    assert_eq!(n("lr"), stage::LR);
    assert_eq!(n("warmup"), stage::WARMUP);
    assert_eq!(n("min_lr"), stage::MIN_LR);
    assert_eq!(n("weight_decay"), stage::WEIGHT_DECAY);
    assert_eq!(n("clip"), stage::CLIP);
    assert_eq!(n("accumulate"), stage::ACCUMULATE as f64);
    assert_eq!(n("seq_len"), stage::SEQ_LEN as f64);
    assert_eq!(n("log_every"), stage::LOG_EVERY as f64);
    assert_eq!(rows["schedule"], stage::SCHEDULE);
    assert_eq!(
        rows["betas"],
        format!("[{}, {}]", stage::BETAS[0], stage::BETAS[1])
    );
    assert_eq!(rows["steps"], "-");
}

#[test]
fn the_plan_and_surgery_manuals_state_the_flag_defaults() {
    let plan = table("plan.md", "flag");
    let n = |name| number(&plan, "plan.md", name);
    assert_eq!(n("--ratio"), defaults::RATIO);
    assert_eq!(n("--seed"), defaults::SEED as f64);
    assert_eq!(n("--lisa-layers"), defaults::LISA_LAYERS as f64);
    assert_eq!(n("--lisa-interval"), defaults::LISA_INTERVAL as f64);
    assert_eq!(n("--lisa-periods"), defaults::LISA_PERIODS as f64);
    let surgery = table("surgery.md", "flag");
    let n = |name| number(&surgery, "surgery.md", name);
    assert_eq!(n("--ratio"), defaults::RATIO);
    assert_eq!(n("--lambda"), defaults::LAMBDA);
    assert_eq!(n("--density"), defaults::DENSITY);
    assert_eq!(n("--drop"), defaults::DROP);
    assert_eq!(surgery["--max-shard-size"], defaults::MAX_SHARD_SIZE);
}

#[test]
fn the_command_line_takes_its_defaults_from_the_library() {
    // The flags' help shows the library's values (clap prints `[default: ...]`).
    let help = |cmd: &str| {
        let out = crate::common::hft_bin()
            .args([cmd, "--help"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let reset = help("reset");
    assert!(
        reset.contains(&format!("[default: {}]", defaults::RATIO)),
        "{reset}"
    );
    let merge = help("merge");
    assert!(
        merge.contains(&format!("[default: {}]", defaults::SEED)),
        "{merge}"
    );
    let plan = help("plan");
    assert!(
        plan.contains(&format!("[default: {}]", defaults::LISA_INTERVAL)),
        "{plan}"
    );
}
