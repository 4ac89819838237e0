//! Tensor names and shapes computed from a `config.json` alone, so a plan can be made before
//! the weights are downloaded. The names and shapes are the architecture's
//! ([`crate::arch::decoder`]); this only orders them as a checkpoint's headers would be.

use std::path::Path;

use crate::arch::{decoder, Layout};
use crate::error::{Error, Result};
use crate::io::checkpoint::natural_cmp;

/// Names and shapes (natural order) of the checkpoint a config describes.
pub fn shapes(path: &Path, layout: &Layout) -> Result<Vec<(String, Vec<usize>)>> {
    let family = layout.family.ok_or_else(|| {
        Error::input(
            path,
            format!(
                "shapes can be computed from a config.json alone for {} models, not for \
                 `{}` (family unknown); give the checkpoint instead",
                decoder::decoder_families().join(", "),
                layout.dims.model_type()
            ),
        )
    })?;
    let mut t = decoder::tensors(family, &layout.dims, path)?;
    t.sort_by(|a, b| natural_cmp(&a.0, &b.0));
    Ok(t)
}
