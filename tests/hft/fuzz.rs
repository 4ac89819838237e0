//! Property test over corrupted bytes: whatever a file holds, opening it and reading every
//! tensor either works or fails with an `Error`, never a panic or an out-of-bounds read.
//! `PROPTEST_CASES=20000 cargo test --release --test hft fuzz::` runs it longer.

use hft::io::Checkpoint;
use proptest::prelude::*;

/// A small valid file with tensors of several dtypes and a metadata map.
fn valid() -> Vec<u8> {
    let header = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[4],"data_offsets":[12,28]},"c":{"dtype":"I64","shape":[1],"data_offsets":[28,36]}}"#;
    let mut pad = header.to_string();
    while !(8 + pad.len()).is_multiple_of(8) {
        pad.push(' ');
    }
    let mut v = (pad.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(pad.as_bytes());
    v.extend((0..36u8).map(|i| i.wrapping_mul(37)));
    v
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    HeaderLen(u64),
    ReplaceDigit(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        any::<u64>().prop_map(Mutation::HeaderLen),
        (any::<usize>(), b'0'..=b'9').prop_map(|(i, d)| Mutation::ReplaceDigit(i, d)),
    ]
}

fn apply(mut v: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        match m {
            Mutation::Flip(i, b) if !v.is_empty() => {
                let n = v.len();
                v[i % n] ^= b | 1;
            }
            Mutation::Truncate(i) => v.truncate(i % (v.len() + 1)),
            Mutation::Insert(i, bytes) => {
                let at = i % (v.len() + 1);
                v.splice(at..at, bytes.iter().copied());
            }
            Mutation::HeaderLen(n) if v.len() >= 8 => {
                // Small lengths are the interesting ones; huge ones are checked too.
                let n = if n % 2 == 0 { n % 512 } else { *n };
                v[..8].copy_from_slice(&n.to_le_bytes());
            }
            Mutation::ReplaceDigit(i, d) => {
                // Digits live in shapes and offsets: corrupting them exercises validation.
                let digits: Vec<usize> = (0..v.len()).filter(|&j| v[j].is_ascii_digit()).collect();
                if !digits.is_empty() {
                    v[digits[i % digits.len()]] = *d;
                }
            }
            _ => {}
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]
    #[test]
    fn corrupted_files_never_panic(muts in proptest::collection::vec(mutation(), 1..4)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, apply(valid(), &muts)).unwrap();
        if let Ok(ck) = Checkpoint::open(&path) {
            for t in ck.tensors() {
                let bytes = ck.bytes(t);
                prop_assert_eq!(bytes.len(), t.nbytes());
                ck.release(t);
            }
        }
    }
}

#[test]
fn the_unmutated_file_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    std::fs::write(&path, valid()).unwrap();
    let ck = Checkpoint::open(&path).unwrap();
    assert_eq!(ck.tensors().len(), 3);
    assert_eq!(ck.metadata().get("format").map(String::as_str), Some("pt"));
}
