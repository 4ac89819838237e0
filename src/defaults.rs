//! Every default value, in one place. The CLI's flag defaults, the recipe reader, the library's
//! option structs and the docs take them from here (a test checks that docs/recipe.md,
//! docs/plan.md and docs/surgery.md state these values).

/// Fraction of parameters that trains in a stage (`plan --ratio`, a recipe plan's `ratio`), and
/// the fraction a half-reset puts back (`reset --ratio`): the paper's half.
pub const RATIO: f64 = 0.5;
/// Seed of every draw when none is given.
pub const SEED: u64 = 0;

/// LISA (LMFlow's defaults): layers that train per period (gamma).
pub const LISA_LAYERS: usize = 2;
/// LISA: optimizer steps per period (K).
pub const LISA_INTERVAL: u64 = 20;
/// LISA: how many periods a plan's schedule lists.
pub const LISA_PERIODS: usize = 50;

/// Largest shard a checkpoint directory gets (Hugging Face's own default).
pub const MAX_SHARD_SIZE: &str = "5GB";
/// `merge`: scale λ of the merged task vector.
pub const LAMBDA: f64 = 1.0;
/// `merge --method ties`: fraction of each task vector kept (the TIES paper's default).
pub const DENSITY: f64 = 0.2;
/// `merge --method dare`: drop rate of task-vector entries (the DARE paper's headline).
pub const DROP: f64 = 0.9;
/// `diff`: how many tensors the table lists as most changed.
pub const DIFF_TOP: usize = 10;

/// Stage settings of a recipe, where neither the stage nor the recipe's `defaults` set them.
pub mod stage {
    /// Peak learning rate.
    pub const LR: f64 = 1e-3;
    /// Fraction of the steps spent warming the learning rate up linearly.
    pub const WARMUP: f64 = 0.0;
    /// The learning-rate schedule after warm-up (`constant`, `linear`, `cosine`).
    pub const SCHEDULE: &str = "constant";
    /// Floor of the decaying schedules, as a fraction of `lr`.
    pub const MIN_LR: f64 = 0.1;
    /// Decoupled weight decay of AdamW.
    pub const WEIGHT_DECAY: f64 = 0.0;
    /// AdamW's β1 and β2 (PyTorch's defaults).
    pub const BETAS: [f64; 2] = [0.9, 0.999];
    /// AdamW's ε (PyTorch's default).
    pub const EPS: f64 = 1e-8;
    /// Gradient clipping by global norm (0: off).
    pub const CLIP: f64 = 1.0;
    /// Micro-batches per optimizer step.
    pub const ACCUMULATE: u64 = 1;
    /// Longest example in tokens, BOS/EOS included (a longer one is an error naming its line).
    pub const SEQ_LEN: usize = 128;
    /// Steps between loss-curve points and log lines.
    pub const LOG_EVERY: u64 = 50;
    /// DPO's β: the value of the DPO paper's experiments and TRL's default.
    pub const BETA: f64 = 0.1;
}
