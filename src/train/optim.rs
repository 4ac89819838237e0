//! AdamW with element masks.
//!
//! Only trainable tensors (candle `Var`s) are given to the optimizer, so frozen tensors have no
//! state at all. A tensor the plan trains in part (an element mask, or the row ranges of a fused
//! tensor) carries a 0/1 mask: its gradient is masked before the moments, and the whole update,
//! weight decay included, is masked too, so masked elements stay bit-identical.

use candle_core::{DType, Result, Tensor, Var};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// A recipe stage's defaults ([`crate::defaults::stage`]).
    fn default() -> Self {
        use crate::defaults::stage;
        AdamWConfig {
            beta1: stage::BETAS[0],
            beta2: stage::BETAS[1],
            eps: stage::EPS,
            weight_decay: stage::WEIGHT_DECAY,
        }
    }
}

struct Slot {
    var: Var,
    mask: Option<Tensor>,
    m: Tensor,
    v: Tensor,
}

pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl AdamW {
    /// One slot per trainable variable, with its mask (if it trains in part).
    pub fn new(vars: Vec<(Var, Option<Tensor>)>, cfg: AdamWConfig) -> Result<AdamW> {
        let slots = vars
            .into_iter()
            .map(|(var, mask)| {
                let m = var.zeros_like()?;
                let v = var.zeros_like()?;
                Ok(Slot { var, mask, m, v })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            cfg,
            slots,
            step: 0,
        })
    }

    /// Bytes of optimizer state (two moments per trainable tensor).
    pub fn state_bytes(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| 2 * (s.m.elem_count() * s.m.dtype().size_in_bytes()) as u64)
            .sum()
    }

    /// Masks `grads` (one per slot, in order; `None` where no gradient arrived) in place and
    /// returns their global L2 norm.
    pub fn mask_and_norm(&self, grads: &mut [Option<Tensor>]) -> Result<f64> {
        let mut total = 0f64;
        for (s, g) in self.slots.iter().zip(grads.iter_mut()) {
            if let Some(gt) = g.as_mut() {
                if let Some(m) = &s.mask {
                    *gt = gt.mul(m)?;
                }
                total += gt
                    .sqr()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
            }
        }
        Ok(total.sqrt())
    }

    /// One update with learning rate `lr`; `grads` as given to [`Self::mask_and_norm`],
    /// already masked and scaled by `scale` (gradient clipping).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64, scale: f64) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for (s, g) in self.slots.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            let g = g.detach();
            let g = if scale != 1.0 { (g * scale)? } else { g };
            s.m = ((&s.m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            s.v = ((&s.v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let mhat = (&s.m / bc1)?;
            let denom = ((&s.v / bc2)?.sqrt()? + c.eps)?;
            let theta = &s.var.as_tensor().detach();
            let mut upd = ((mhat / denom)? + (theta * c.weight_decay)?)?;
            upd = (upd * lr)?;
            if let Some(m) = &s.mask {
                upd = upd.mul(m)?;
            }
            let new = (theta - upd)?;
            s.var.set(&new)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn masked_elements_stay_bit_identical_weight_decay_included() -> Result<()> {
        let dev = Device::Cpu;
        let w0 = Tensor::new(&[1.5f32, -2.0, 0.25, 3.0], &dev)?;
        let var = Var::from_tensor(&w0)?;
        let mask = Tensor::new(&[1f32, 0., 1., 0.], &dev)?;
        let mut opt = AdamW::new(vec![(var.clone(), Some(mask))], AdamWConfig::default())?;
        for _ in 0..3 {
            let mut g = vec![Some(Tensor::new(&[0.1f32, 0.2, -0.3, 0.4], &dev)?)];
            let n = opt.mask_and_norm(&mut g)?;
            assert!((n - (0.01f64 + 0.09).sqrt()).abs() < 1e-6);
            opt.step(&g, 0.1, 1.0)?;
        }
        let w = var.as_tensor().to_vec1::<f32>()?;
        assert_eq!(w[1].to_bits(), (-2.0f32).to_bits());
        assert_eq!(w[3].to_bits(), 3.0f32.to_bits());
        assert!(w[0] < 1.5 && w[2] > 0.25);
        assert_eq!(opt.state_bytes(), 2 * 4 * 4);
        Ok(())
    }
}
