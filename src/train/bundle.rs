//! The bundled continual-learning recipe's model and data, made deterministically here
//! (`cargo run --release --features train --example tiny_continual`), so anyone can rebuild
//! the committed files and check them.
//!
//! The model is a randomly initialised tiny Llama (byte vocabulary, grouped-query attention,
//! f32). Stage 0 teaches it a small "general" language (sentences of a random grammar) and
//! three skills (copy `y:`, uppercase `u:`, length `l:`); then three tasks follow in order:
//! `facts` (memorise 3-digit values of 3-letter keys), `count` (how many `a` in a string) and
//! `sort` (the letters of a string in order).

use std::path::Path;

use serde_json::json;

use crate::error::{Error, Result};
use crate::io::dtype::DType;
use crate::io::writer::WriterOptions;
use crate::rng;
use crate::synth::{write_model, ModelSpec};

/// The tiny model's shape: hidden 64, 4 layers, 4 heads, 2 key-value heads, FFN 172, 264 bytes+specials.
pub fn tiny_spec() -> ModelSpec {
    ModelSpec {
        dtype: DType::F32,
        ..ModelSpec::llama(64, 4, 4, 2, 172)
    }
}

const SUBJECTS: [&str; 8] = [
    "the cat",
    "a dog",
    "the bird",
    "my friend",
    "the king",
    "a child",
    "the old man",
    "our teacher",
];
const VERBS: [&str; 8] = [
    "sees", "likes", "finds", "draws", "helps", "calls", "follows", "meets",
];
const OBJECTS: [&str; 8] = [
    "the tree",
    "a red ball",
    "the river",
    "a small house",
    "the moon",
    "a green hat",
    "the door",
    "a cold stone",
];
const ENDINGS: [&str; 6] = [
    ".",
    " today.",
    " at night.",
    " again.",
    " in the rain.",
    " every day.",
];

fn pick<'a>(list: &[&'a str], key: u64, i: u64) -> &'a str {
    list[(rng::draw(key, i) % list.len() as u64) as usize]
}

/// One sentence of the general language.
pub fn sentence(seed: u64, i: u64) -> String {
    let k = rng::key(seed, "sentence");
    let base = i * 8;
    let mut s = format!(
        "{} {} {}{}",
        pick(&SUBJECTS, k, base),
        pick(&VERBS, k, base + 1),
        pick(&OBJECTS, k, base + 2),
        pick(&ENDINGS, k, base + 3)
    );
    let more = format!(
        " {} {} {}.",
        pick(&SUBJECTS, k, base + 5),
        pick(&VERBS, k, base + 6),
        pick(&OBJECTS, k, base + 7)
    );
    // A second clause when the whole stays within 60 bytes (sequences of 64 with BOS/EOS).
    if rng::draw(k, base + 4).is_multiple_of(2) && s.len() + more.len() <= 60 {
        s.push_str(&more);
    }
    s
}

fn letters(key: u64, i: u64, len: usize, alphabet: &[u8]) -> String {
    (0..len)
        .map(|j| {
            alphabet[(rng::draw(key, i * 64 + j as u64) % alphabet.len() as u64) as usize] as char
        })
        .collect()
}

const ABC: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

/// A skill example (copy, uppercase or length), prompt and completion.
pub fn skill(seed: u64, i: u64) -> (String, String) {
    let k = rng::key(seed, "skill");
    let len = 2 + (rng::draw(k, i * 3) % 6) as usize;
    let w = letters(k, i, len, ABC);
    match rng::draw(k, i * 3 + 1) % 3 {
        0 => (format!("y:{w}="), w),
        1 => (format!("u:{w}="), w.to_uppercase()),
        _ => (format!("l:{w}="), len.to_string()),
    }
}

/// The `i`-th of the fixed facts: a 3-letter key and a 3-digit value.
pub fn fact(i: u64) -> (String, String) {
    let k = rng::key(11, "facts");
    let key = letters(k, i, 3, ABC);
    let value = 100 + rng::draw(k, 1_000_000 + i) % 900;
    (format!("k:{key}="), value.to_string())
}

/// A count example: how many `a` in a string over `abc`.
pub fn count(seed: u64, i: u64) -> (String, String) {
    let k = rng::key(seed, "count");
    let len = 3 + (rng::draw(k, i * 2) % 6) as usize;
    let w = letters(k, i, len, b"abc");
    let n = w.bytes().filter(|b| *b == b'a').count();
    (format!("c:{w}="), n.to_string())
}

/// A sort example: the letters of a string in order.
pub fn sort(seed: u64, i: u64) -> (String, String) {
    let k = rng::key(seed, "sort");
    let len = 3 + (rng::draw(k, i * 2) % 4) as usize;
    let w = letters(k, i, len, b"abcdefgh");
    let mut s: Vec<u8> = w.bytes().collect();
    s.sort();
    (format!("s:{w}="), String::from_utf8(s).expect("ascii"))
}

/// How many facts the `facts` task holds (train and eval are the same keys: memorisation).
pub const FACTS: u64 = 120;

fn jsonl(lines: impl Iterator<Item = serde_json::Value>) -> String {
    let mut s = String::new();
    for l in lines {
        s.push_str(&l.to_string());
        s.push('\n');
    }
    s
}

fn pairs(f: impl Fn(u64) -> (String, String), n: u64) -> String {
    jsonl((0..n).map(|i| {
        let (p, c) = f(i);
        json!({"prompt": p, "completion": c})
    }))
}

/// The data files of the bundled recipe, name and contents.
pub fn data_files() -> Vec<(&'static str, String)> {
    let text = |seed: u64, n: u64| jsonl((0..n).map(move |i| json!({"text": sentence(seed, i)})));
    vec![
        ("general-train.jsonl", text(1, 2000)),
        ("general-eval.jsonl", text(2, 100)),
        ("skills-train.jsonl", pairs(|i| skill(1, i), 2000)),
        ("skills-eval.jsonl", pairs(|i| skill(2, i), 100)),
        ("facts.jsonl", pairs(fact, FACTS)),
        ("count-train.jsonl", pairs(|i| count(1, i), 2000)),
        ("count-eval.jsonl", pairs(|i| count(2, i), 100)),
        ("sort-train.jsonl", pairs(|i| sort(1, i), 2000)),
        ("sort-eval.jsonl", pairs(|i| sort(2, i), 100)),
    ]
}

/// Writes the tiny model to `model_dir` and the data files into `data_dir`.
pub fn write_bundle(model_dir: &Path, data_dir: &Path, force: bool) -> Result<()> {
    let opts = WriterOptions {
        force,
        ..WriterOptions::default()
    };
    write_model(&tiny_spec(), model_dir, 42, None, &opts)?;
    std::fs::create_dir_all(data_dir).map_err(|e| Error::io(data_dir, e))?;
    for (name, text) in data_files() {
        let p = data_dir.join(name);
        std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_are_well_formed() {
        let (p, c) = sort(1, 3);
        let mut w: Vec<u8> = p[2..p.len() - 1].bytes().collect();
        w.sort();
        assert_eq!(w, c.as_bytes());
        let (p, c) = count(1, 5);
        assert_eq!(p.matches('a').count(), c.parse::<usize>().unwrap());
        assert_ne!(fact(0), fact(1));
        assert!((0..500).all(|i| sentence(1, i).len() <= 60));
    }

    #[test]
    fn committed_data_matches_the_generator() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/data");
        for (name, text) in data_files() {
            let p = dir.join(name);
            let on_disk = std::fs::read_to_string(&p).unwrap_or_default();
            assert!(
                on_disk == text,
                "{} differs from the generator: rerun the example",
                p.display()
            );
        }
    }
}
