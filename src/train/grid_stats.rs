//! The statistics a grid comparison rests on: mean and spread over seeds, and interpolation
//! along a sweep.

use serde::{Deserialize, Serialize};

use crate::train::metrics::mean;

/// Mean, sample standard deviation (n − 1; absent for one value) and count.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub sd: Option<f64>,
    pub n: usize,
}

impl Stat {
    pub fn of(v: &[f64]) -> Option<Stat> {
        let v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        let m = mean(&v)?;
        let sd = (v.len() > 1).then(|| {
            (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
        });
        Some(Stat {
            mean: m,
            sd,
            n: v.len(),
        })
    }

    /// Standard error of the mean (None below two values).
    pub fn se(&self) -> Option<f64> {
        self.sd.map(|sd| sd / (self.n as f64).sqrt())
    }
}

/// Piecewise-linear interpolation of y at `x` through points sorted by x (points with equal x
/// are averaged first); None outside the points' range: the curve is not extrapolated.
pub fn interpolate(points: &[(f64, f64)], x: f64) -> Option<f64> {
    let mut p: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .collect();
    p.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut merged: Vec<(f64, f64, usize)> = Vec::new();
    for (a, b) in p {
        match merged.last_mut() {
            Some(m) if m.0 == a => {
                m.1 += b;
                m.2 += 1;
            }
            _ => merged.push((a, b, 1)),
        }
    }
    let pts: Vec<(f64, f64)> = merged.iter().map(|m| (m.0, m.1 / m.2 as f64)).collect();
    let (first, last) = (pts.first()?, pts.last()?);
    if x < first.0 || x > last.0 {
        return None;
    }
    for w in pts.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if x >= x0 && x <= x1 {
            return Some(y0 + (y1 - y0) * (x - x0) / (x1 - x0));
        }
    }
    Some(first.1)
}
