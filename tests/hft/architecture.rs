//! The architecture's rules, checked on the source text (docs/architecture.md says why each
//! exists). Each test names the file and line that breaks a rule.
//!
//! Layers, top to bottom; a module may use its own layer's modules (without cycles) and the
//! layers below, never those above:
//! 1. `report` (it formats the structs of every layer below; training reaches it only through
//!    the `train::Reporter` its caller passes); 2. `train`, `import`, `tokenizer`;
//! 3. `surgery`, `select`, `plan`; 4. `analysis`; 5. `arch`; 6. `io`.
//!
//! Beside them, usable from anywhere and using none of the layers: `error`, `rng`, `progress`,
//! `choice`, `defaults`. `fixtures` is dev-only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LAYERS: &[&[&str]] = &[
    &["report"],
    &["train", "import", "tokenizer"],
    &["surgery", "select", "plan"],
    &["analysis"],
    &["arch"],
    &["io"],
];
const BESIDE: &[&str] = &["error", "rng", "progress", "choice", "defaults"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A library source file: its path relative to `src/` and its lines, with test code (files
/// named `tests.rs`, and everything after a file's first `#[cfg(test)]`) left out.
struct Source {
    rel: String,
    lines: Vec<(usize, String)>,
}

fn library() -> Vec<Source> {
    let src = root().join("src");
    rust_files(&src)
        .into_iter()
        .filter_map(|p| {
            let rel = p
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if rel.starts_with("cli/") || rel == "main.rs" || rel.ends_with("tests.rs") {
                return None;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let lines = text
                .lines()
                .enumerate()
                .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
                .map(|(i, l)| (i + 1, l.to_string()))
                .collect();
            Some(Source { rel, lines })
        })
        .collect()
}

/// The top-level module a file belongs to (`train/model/ops.rs` -> `train`).
fn top(rel: &str) -> &str {
    let first = rel.split('/').next().unwrap();
    first.strip_suffix(".rs").unwrap_or(first)
}

/// Code of a line: what precedes a `//` comment (strings are kept; good enough for these checks).
fn code(line: &str) -> &str {
    let t = line.trim_start();
    if t.starts_with("//") {
        ""
    } else {
        line
    }
}

fn layer_of(m: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&m))
}

#[test]
fn the_library_knows_no_command_line_and_never_prints() {
    let mut bad = Vec::new();
    for s in library() {
        for (n, l) in &s.lines {
            let c = code(l);
            for word in [
                "clap",
                "println!",
                "eprintln!",
                "print!(",
                "eprint!(",
                "dbg!(",
                "indicatif",
                "stderr()",
                "stdout()",
                "IsTerminal",
            ] {
                if c.contains(word) {
                    bad.push(format!("src/{}:{n}: `{word}` in the library", s.rel));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Flags (`--ratio`) belong to the CLI: library messages name fields (`ratio`) or say
/// "option `ratio`", which the CLI turns into the flag. Rendered reports (src/report) and raw
/// string templates of generated code (`r#"..."#`) are text for other programs' users.
#[test]
fn library_messages_name_fields_not_flags() {
    let flag = regex::Regex::new(r"(^|[\s(`'])--[a-z][a-z-]+").unwrap();
    let mut bad = Vec::new();
    for s in library().iter().filter(|s| !s.rel.starts_with("report/")) {
        let mut raw = false;
        for (n, l) in &s.lines {
            let c = code(l);
            if raw {
                raw = !c.contains("\"#");
                continue;
            }
            if c.contains("r#\"") && !c.contains("\"#") {
                raw = true;
            }
            if c.contains('"') && flag.is_match(c) {
                bad.push(format!("src/{}:{n}: {}", s.rel, l.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "flags named in the library:\n{}",
        bad.join("\n")
    );
}

/// The module-level dependency graph: `crate::x` in a file of module `m` is an edge m -> x.
fn edges() -> BTreeMap<(String, String), (String, usize)> {
    let re = regex::Regex::new(r"crate::([a-z_]+)(::([a-z_]+))?").unwrap();
    let mut out = BTreeMap::new();
    for s in library() {
        let from = top(&s.rel).to_string();
        for (n, l) in &s.lines {
            for c in re.captures_iter(code(l)) {
                let to = c[1].to_string();
                if to != from {
                    out.entry((from.clone(), to)).or_insert((s.rel.clone(), *n));
                }
            }
        }
    }
    out
}

#[test]
fn dependencies_point_down_the_layers() {
    let mut bad = Vec::new();
    for ((from, to), (file, line)) in edges() {
        if to == "fixtures" {
            continue; // checked below
        }
        let ok = match (
            BESIDE.contains(&from.as_str()),
            layer_of(&from),
            layer_of(&to),
        ) {
            // Beside modules use each other only.
            (true, _, _) => BESIDE.contains(&to.as_str()),
            (false, Some(a), Some(b)) => a <= b,
            (false, Some(_), None) => BESIDE.contains(&to.as_str()),
            (false, None, _) => from == "fixtures" || from == "lib",
        };
        if !ok {
            bad.push(format!("src/{file}:{line}: {from} uses {to}"));
        }
    }
    assert!(
        bad.is_empty(),
        "dependencies against the layers:\n{}",
        bad.join("\n")
    );
}

/// Strongly connected pieces of a directed graph with more than one node: the cycles.
fn cycles(nodes: &BTreeSet<String>, edge: &BTreeSet<(String, String)>) -> Vec<Vec<String>> {
    let reach = |a: &str| {
        let mut seen = BTreeSet::from([a.to_string()]);
        let mut stack = vec![a.to_string()];
        while let Some(x) = stack.pop() {
            for (f, t) in edge {
                if f == &x && seen.insert(t.clone()) {
                    stack.push(t.clone());
                }
            }
        }
        seen
    };
    let all: BTreeMap<&String, BTreeSet<String>> = nodes.iter().map(|n| (n, reach(n))).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for n in nodes {
        let comp: Vec<String> = nodes
            .iter()
            .filter(|m| all[n].contains(*m) && all[*m].contains(n))
            .cloned()
            .collect();
        if comp.len() > 1 && !out.contains(&comp) {
            out.push(comp);
        }
    }
    out
}

#[test]
fn no_cycles_between_modules_or_between_training_modules() {
    let e: BTreeSet<(String, String)> = edges().into_keys().collect();
    let nodes: BTreeSet<String> = e.iter().flat_map(|(a, b)| [a.clone(), b.clone()]).collect();
    let mut found = cycles(&nodes, &e);
    // Inside train/, between its modules (a parent and its children may refer to each other).
    let re = regex::Regex::new(r"crate::train::([a-z_]+)").unwrap();
    let mut inner = BTreeSet::new();
    for s in library().iter().filter(|s| s.rel.starts_with("train/")) {
        let parts: Vec<&str> = s.rel.split('/').collect();
        if parts.len() < 2 || parts[1] == "mod.rs" {
            continue;
        }
        let from = parts[1].trim_end_matches(".rs").to_string();
        for (_, l) in &s.lines {
            for c in re.captures_iter(code(l)) {
                if c[1] != from && !c[1].chars().next().unwrap().is_uppercase() {
                    inner.insert((from.clone(), c[1].to_string()));
                }
            }
        }
    }
    let inner_nodes = inner
        .iter()
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .collect();
    found.extend(cycles(&inner_nodes, &inner));
    assert!(found.is_empty(), "dependency cycles: {found:?}");
}

#[test]
fn fixture_generators_are_reached_only_from_tests() {
    let lib_rs = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    assert!(
        lib_rs.contains("#[cfg(any(test, feature = \"fixtures\"))]\npub mod fixtures;"),
        "src/lib.rs must compile `fixtures` only for tests and the `fixtures` feature"
    );
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let default = manifest
        .lines()
        .find(|l| l.starts_with("default ="))
        .unwrap_or("");
    assert!(
        !default.contains("fixtures"),
        "`fixtures` must stay off by default"
    );
    let mut bad = Vec::new();
    for s in library().iter().filter(|s| !s.rel.starts_with("fixtures/")) {
        for (n, l) in &s.lines {
            if code(l).contains("crate::fixtures") {
                bad.push(format!("src/{}:{n}", s.rel));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "shipped code uses fixtures:\n{}",
        bad.join("\n")
    );
}

/// Module names of model families appear in the architecture tables, the fixture generators
/// and the trainer's model file (one per family, as candle has), nowhere else.
#[test]
fn family_names_live_in_arch() {
    let names = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "input_layernorm",
        "post_attention_layernorm",
        "embed_tokens",
        "lm_head.weight",
        "c_attn",
        "query_key_value",
        "qkv_proj",
        "gate_up_proj",
    ];
    let mut bad = Vec::new();
    for s in library() {
        if s.rel.starts_with("arch/")
            || s.rel.starts_with("fixtures/")
            || s.rel.starts_with("train/model/")
        {
            continue;
        }
        for (n, l) in &s.lines {
            let c = code(l);
            if c.contains('"') {
                if let Some(w) = names.iter().find(|w| c.contains(*w)) {
                    bad.push(format!("src/{}:{n}: `{w}`", s.rel));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "family names outside arch:\n{}",
        bad.join("\n")
    );
}

/// Files stay under about 500 lines (unit tests beside the code not counted); the few that are
/// one idea each are listed with why.
#[test]
fn files_stay_small() {
    const ONE_IDEA: &[(&str, &str)] = &[(
        "src/surgery/tests.rs",
        "each Combine method checked against a hand computation, on the same small inputs",
    )];
    let mut bad = Vec::new();
    for p in rust_files(&root().join("src"))
        .into_iter()
        .chain(rust_files(&root().join("tests")))
    {
        let rel = p
            .strip_prefix(root())
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&p).unwrap();
        let n = text
            .lines()
            .take_while(|l| l.trim() != "#[cfg(test)]")
            .count();
        if n > 550 && !ONE_IDEA.iter().any(|(f, _)| *f == rel) {
            bad.push(format!("{rel}: {n} lines"));
        }
    }
    assert!(bad.is_empty(), "files over 550 lines:\n{}", bad.join("\n"));
}

/// Committed fixtures stay small (under 5 MB in all): a clone stays light and nothing large
/// slips in as test data.
#[test]
fn fixtures_stay_under_five_megabytes() {
    fn size(p: &Path) -> u64 {
        if p.is_dir() {
            std::fs::read_dir(p)
                .unwrap()
                .map(|e| size(&e.unwrap().path()))
                .sum()
        } else {
            p.metadata().unwrap().len()
        }
    }
    let total = size(&root().join("fixtures"));
    assert!(total < 5_000_000, "fixtures/ holds {total} bytes");
}

/// The README is a front door; nothing links outside the repository.
#[test]
fn readme_is_short_and_links_stay_inside() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let n = readme.lines().count();
    assert!(
        n <= 300,
        "README.md has {n} lines (at most 300; manuals go in docs/)"
    );
    let link = regex::Regex::new(r"\]\(([^)#\s]+)").unwrap();
    let mut bad = Vec::new();
    let mut docs: Vec<PathBuf> = vec![root().join("README.md")];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            docs.push(p);
        }
    }
    for d in &docs {
        let text = std::fs::read_to_string(d).unwrap();
        for c in link.captures_iter(&text) {
            let target = &c[1];
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let p = d.parent().unwrap().join(target);
            let inside = p
                .canonicalize()
                .map(|p| p.starts_with(root().canonicalize().unwrap()))
                .unwrap_or(false);
            if !inside {
                bad.push(format!("{}: {target}", d.display()));
            }
        }
    }
    let shared = ["..", "shared"].join("/");
    for p in rust_files(&root().join("src"))
        .into_iter()
        .chain(rust_files(&root().join("tests")))
        .chain(docs.iter().cloned())
        .chain(scripts())
    {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        if text.contains(&shared) {
            bad.push(format!("{}: points outside the repository", p.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "links that leave the repository:\n{}",
        bad.join("\n")
    );
}

fn scripts() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["scripts", "bench", "bench/gpu", ".ci"] {
        if let Ok(rd) = std::fs::read_dir(root().join(dir)) {
            for e in rd {
                let p = e.unwrap().path();
                if p.is_file() {
                    out.push(p);
                }
            }
        }
    }
    out
}
