//! The optimisation settings of a stage, listed once: the macro below makes from that one list
//! the `Settings` of a recipe's `defaults`, the same fields inline in a `Stage` (serde cannot
//! flatten them there and still refuse unknown keys), and the merge of the two. Their defaults
//! come from [`crate::defaults::stage`] in [`Settings::resolve`].

use std::path::PathBuf;

use serde::Deserialize;

use super::PlanSpec;
use crate::defaults::stage as d;

/// Declares `Settings` from a list of optional fields, and `Stage` with its own fields followed
/// by the same list.
macro_rules! with_settings {
    (
        settings { $( $(#[doc = $sd:literal])* $f:ident : $t:ty ),* $(,)? }
        $(#[$sm:meta])*
        pub struct Stage { $( $(#[$fm:meta])* pub $g:ident : $gt:ty ),* $(,)? }
    ) => {
        /// Optimisation settings; each is optional in `defaults` and in a stage (the stage wins).
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            $( $(#[doc = $sd])* pub $f: Option<$t>, )*
        }

        impl Settings {
            /// These settings, with `d`'s where these have none.
            pub fn or(&self, d: &Settings) -> Settings {
                Settings { $( $f: self.$f.or(d.$f), )* }
            }
        }

        $(#[$sm])*
        pub struct Stage {
            $( $(#[$fm])* pub $g: $gt, )*
            $( $(#[doc = $sd])* pub $f: Option<$t>, )*
        }

        impl Stage {
            /// The stage's own settings.
            pub fn settings(&self) -> Settings {
                Settings { $( $f: self.$f, )* }
            }
        }
    };
}

with_settings! {
    settings {
        steps: u64,
        epochs: f64,
        lr: f64,
        /// Warm-up as a fraction of the steps.
        warmup: f64,
        schedule: Schedule,
        /// The learning rate at the end of a decaying schedule, as a fraction of `lr`.
        min_lr: f64,
        weight_decay: f64,
        betas: [f64; 2],
        /// Global gradient-norm clipping (0: off).
        clip: f64,
        /// Micro-batches per optimizer step.
        accumulate: u64,
        /// Longest example in tokens (BOS/EOS included); longer ones are an error.
        seq_len: usize,
        /// Log the training loss every this many steps.
        log_every: u64,
    }
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Stage {
        pub name: String,
        /// `lm` (language modelling / SFT on `text` or `prompt`/`completion` data, the default)
        /// or `dpo` (preference pairs `prompt`/`chosen`/`rejected`, see `train::objective::dpo`).
        #[serde(default)]
        pub kind: StageKind,
        /// DPO's β (only for `kind: dpo`).
        pub beta: Option<f64>,
        pub data: Vec<Source>,
        /// Names of the eval sets that are this stage's task (the diagonal of R).
        #[serde(default)]
        pub tasks: Vec<String>,
        /// This stage's own plan. A stage with a plan keeps it when a grid compares strategies.
        pub plan: Option<PlanSpec>,
        /// The plan ratio a sweep of `ratio` gives a stage without a plan of its own (setting
        /// `plan` instead would pin the stage).
        #[serde(skip)]
        pub ratio: Option<f64>,
    }
}

/// One example source of a stage: each optimizer step takes `batch` examples from it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub path: PathBuf,
    pub batch: usize,
}

/// What a stage optimises.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    #[default]
    Lm,
    Dpo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

impl Schedule {
    fn named(s: &str) -> Schedule {
        match s {
            "linear" => Schedule::Linear,
            "cosine" => Schedule::Cosine,
            _ => Schedule::Constant,
        }
    }
}

/// Settings with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub steps: Option<u64>,
    pub epochs: Option<f64>,
    pub lr: f64,
    pub warmup: f64,
    pub schedule: Schedule,
    pub min_lr: f64,
    pub weight_decay: f64,
    pub betas: [f64; 2],
    pub clip: f64,
    pub accumulate: u64,
    pub seq_len: usize,
    pub log_every: u64,
}

impl Settings {
    /// Refuses values no training can use, naming the field (the caller adds file and stage).
    pub fn check(&self) -> crate::error::Result<()> {
        use crate::error::Error;
        let r = self.resolve();
        let range = |field: &str, v: f64, lo: f64, hi: f64, what: &str| {
            if v.is_finite() && v >= lo && v <= hi {
                Ok(())
            } else {
                Err(Error::field(field, format!("{v} is not {what}")))
            }
        };
        let count = |field: &str, v: Option<u64>, max: u64| match v {
            Some(v) if !(1..=max).contains(&v) => {
                Err(Error::field(field, format!("{v} is not in 1 ..= {max}")))
            }
            _ => Ok(()),
        };
        count("steps", self.steps, 100_000_000)?;
        count("accumulate", self.accumulate, 65_536)?;
        count("log_every", self.log_every, u64::MAX)?;
        if let Some(e) = self.epochs {
            range(
                "epochs",
                e,
                f64::MIN_POSITIVE,
                1e6,
                "a positive number of epochs",
            )?;
        }
        // The optimiser computes in f32: the rate must be finite there.
        let lr_max = f32::MAX as f64;
        range(
            "lr",
            r.lr,
            f32::MIN_POSITIVE as f64,
            lr_max,
            "a positive learning rate",
        )?;
        range(
            "warmup",
            r.warmup,
            0.0,
            0.999,
            "a fraction of the steps in [0, 1)",
        )?;
        range("min_lr", r.min_lr, 0.0, 1.0, "a fraction of lr in [0, 1]")?;
        range("weight_decay", r.weight_decay, 0.0, 1e3, "a decay >= 0")?;
        for b in r.betas {
            range("betas", b, 0.0, 0.999_999, "in [0, 1)")?;
        }
        range("clip", r.clip, 0.0, f64::MAX, "a norm >= 0 (0: off)")?;
        if !(2..=1 << 20).contains(&r.seq_len) {
            return Err(Error::field(
                "seq_len",
                format!("{} is not in 2 ..= 1048576 tokens", r.seq_len),
            ));
        }
        Ok(())
    }

    /// Fills in the defaults ([`crate::defaults::stage`]).
    pub fn resolve(&self) -> Resolved {
        Resolved {
            steps: self.steps,
            epochs: self.epochs,
            lr: self.lr.unwrap_or(d::LR),
            warmup: self.warmup.unwrap_or(d::WARMUP),
            schedule: self.schedule.unwrap_or(Schedule::named(d::SCHEDULE)),
            min_lr: self.min_lr.unwrap_or(d::MIN_LR),
            weight_decay: self.weight_decay.unwrap_or(d::WEIGHT_DECAY),
            betas: self.betas.unwrap_or(d::BETAS),
            clip: self.clip.unwrap_or(d::CLIP),
            accumulate: self.accumulate.unwrap_or(d::ACCUMULATE).max(1),
            seq_len: self.seq_len.unwrap_or(d::SEQ_LEN),
            log_every: self.log_every.unwrap_or(d::LOG_EVERY).max(1),
        }
    }
}
