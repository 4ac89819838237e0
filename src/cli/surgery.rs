//! Arguments of the surgery commands: `reset`, `average`, `merge`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Where and how a surgery writes its checkpoint (shared by reset, average and merge).
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Output: a directory (Hugging Face layout: model.safetensors, or shards plus
    /// model.safetensors.index.json, with config and tokenizer files copied) or a path ending in
    /// .safetensors (one file, weights only).
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// Store float tensors in this dtype (bf16, f16, f32, f64) instead of the input's;
    /// rounding is to nearest even.
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<String>,
    /// Largest shard of a directory output (5GB, 500MB, 2GiB, or bytes); larger models are
    /// split into model-0000k-of-0000K.safetensors shards.
    #[arg(long, default_value = "5GB", value_name = "SIZE")]
    pub max_shard_size: String,
    /// Replace an existing non-empty output (never an input).
    #[arg(long)]
    pub force: bool,
    /// Copy tensors that only some inputs hold from one that holds it (TUNED / the first model
    /// first), and for a resized vocabulary combine the shared rows and copy the extra rows
    /// from the model that has them, instead of refusing.
    #[arg(long)]
    pub allow_missing: bool,
}

pub use crate::surgery::reset::ResetStrategy;

/// Put part of a fine-tuned model back to its base values (the HFT paper's half-reset).
///
/// Writes TUNED with a chosen part of its parameters reset to BASE. The part comes from a
/// selection strategy (the same machinery as `hft plan`), from a plan file (what the plan
/// freezes is reset, what it trains is kept), or from a list of tensor names. Embeddings and the
/// LM head always train in the paper's rule, so they are not reset unless asked. Prints per
/// layer which tensors were reset and the fraction of parameters reset.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    hft reset --base base/ --tuned tuned/ --ratio 0.5 --strategy category --seed 7 -o half/\n  \
    hft reset --base base/ --tuned tuned/ --strategy element --ratio 0.3 -o out/\n  \
    hft reset --base base/ --tuned tuned/ --plan plan.yaml -o out/   # reset what the plan freezes\n  \
    hft reset --base base/ --tuned tuned/ --names frozen.txt -o out/")]
pub struct ResetArgs {
    /// The model to reset towards (the previous stage, usually the pretrained base).
    #[arg(long, value_name = "BASE")]
    pub base: PathBuf,
    /// The fine-tuned model whose parameters are partly reset.
    #[arg(long, value_name = "TUNED")]
    pub tuned: PathBuf,
    /// Fraction of the parameters in the draw that are reset, in [0, 1].
    #[arg(long, default_value_t = 0.5, value_name = "R", conflicts_with_all = ["plan", "names"])]
    pub ratio: f64,
    /// How the reset part is drawn.
    #[arg(long, value_enum, default_value = "category", conflicts_with_all = ["plan", "names"])]
    pub strategy: ResetStrategy,
    /// Seed of the draw: the same seed gives the same reset on any machine.
    #[arg(long, default_value_t = 0, value_name = "S", conflicts_with_all = ["plan", "names"])]
    pub seed: u64,
    /// Training stage whose draw to use (each stage of a sequence draws afresh).
    #[arg(long, default_value_t = 0, value_name = "K", conflicts_with_all = ["plan", "names"])]
    pub stage: u64,
    /// Take the selection from a plan file (`hft plan`): frozen parts are reset.
    #[arg(long, value_name = "FILE", conflicts_with = "names")]
    pub plan: Option<PathBuf>,
    /// Reset exactly the tensors named in FILE (one name a line, `#` comments).
    #[arg(long, value_name = "FILE")]
    pub names: Option<PathBuf>,
    /// Also reset the token (and position) embeddings.
    #[arg(long, conflicts_with_all = ["plan", "names"])]
    pub reset_embeddings: bool,
    /// Also reset the LM head (absent when embeddings are tied).
    #[arg(long, conflicts_with_all = ["plan", "names"])]
    pub reset_head: bool,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// Weighted average of N checkpoints (model soup; WiSE-FT with two).
///
/// Every float tensor becomes Σ wᵢ Mᵢ, computed in f32 and rounded once to the output dtype.
/// Weights are normalised to sum to 1 unless --no-normalize. Per-layer and per-category weights
/// come from a YAML file (--config): see the README (`hft average`). Config, tokenizer and metadata come
/// from the first model.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    hft average base/ tuned/ --alpha 0.3 -o wise/          # 0.7*base + 0.3*tuned\n  \
    hft average m1/ m2/ m3/ --weights 0.5,0.3,0.2 -o soup/\n  \
    hft average base/ tuned/ --config weights.yaml -o out/\n\n\
    weights.yaml:\n  \
    default: [0.5, 0.5]\n  \
    rules:\n    \
    - categories: [ffn]        # FFN from tuned, attention averaged\n      \
    weights: [0, 1]\n    \
    - layers: \"0-3\"\n      \
    weights: [1, 0]")]
pub struct AverageArgs {
    /// The checkpoints to average (two or more).
    #[arg(required = true, num_args = 2.., value_name = "MODEL")]
    pub models: Vec<PathBuf>,
    /// Comma-separated weights, one per model (default: equal).
    #[arg(long, value_name = "W1,W2,..", conflicts_with = "alpha")]
    pub weights: Option<String>,
    /// Two models only: (1 - a)·M1 + a·M2.
    #[arg(long, value_name = "A")]
    pub alpha: Option<f64>,
    /// Use the weights as given instead of scaling them to sum to 1.
    #[arg(long)]
    pub no_normalize: bool,
    /// YAML file with per-category and per-layer weights.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MergeMethod {
    /// BASE + λ Σ wᵢ (Mᵢ − BASE).
    TaskArithmetic,
    /// Trim each task vector to --density by magnitude, elect a sign per element, disjoint
    /// mean of the agreeing entries, times λ.
    Ties,
    /// Drop each task-vector entry with probability --drop, rescale by 1/(1 − p), then task
    /// arithmetic.
    Dare,
    /// Per element, take Mᵢ with probability pᵢ (--probs); no BASE.
    Select,
}

/// Merge fine-tunes of one base: task arithmetic, TIES, DARE, or per-element selection.
///
/// Task vectors are dᵢ = Mᵢ − BASE. Arithmetic in f32, rounded once to the output dtype. Random
/// draws (dare, select) are pure functions of (seed, tensor name, element index), so a merge is
/// reproducible anywhere. Config, tokenizer and metadata come from the first model.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    hft merge --method task-arithmetic --base base/ math/ code/ --lambda 0.8 -o out/\n  \
    hft merge --method ties --base base/ m1/ m2/ m3/ --density 0.2 -o out/\n  \
    hft merge --method dare --base base/ m1/ m2/ --drop 0.9 --seed 1 -o out/\n  \
    hft merge --method select base/ tuned/ --probs 0.5,0.5 --seed 7 -o half/   # element half-reset")]
pub struct MergeArgs {
    /// The merge method.
    #[arg(long, value_enum)]
    pub method: MergeMethod,
    /// The common base model the task vectors are taken from (not for select).
    #[arg(long, value_name = "BASE")]
    pub base: Option<PathBuf>,
    /// The models to merge.
    #[arg(required = true, num_args = 1.., value_name = "MODEL")]
    pub models: Vec<PathBuf>,
    /// Comma-separated task-vector weights wᵢ, one per model (default: 1 each).
    #[arg(long, value_name = "W1,W2,..")]
    pub weights: Option<String>,
    /// Scale λ of the merged task vector.
    #[arg(long, default_value_t = 1.0, value_name = "L")]
    pub lambda: f64,
    /// ties: fraction of each task vector kept (largest magnitudes).
    #[arg(long, value_name = "D")]
    pub density: Option<f64>,
    /// dare: drop rate p of task-vector entries.
    #[arg(long, value_name = "P")]
    pub drop: Option<f64>,
    /// select: comma-separated probabilities, one per model (default: equal).
    #[arg(long, value_name = "P1,P2,..")]
    pub probs: Option<String>,
    /// Seed of the random draws (dare, select).
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    #[command(flatten)]
    pub out: OutputArgs,
}
