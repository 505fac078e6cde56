//! [`SigmoidCuts`]: K − 1 ordered boundaries on one discriminant, softened
//! by sigmoids of a given steepness.

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::Params;

/// Sigmoid cuts on `[low, high]`.
///
/// The parameter `raw` has K − 1 entries. The boundaries are
/// `low + (high − low)·u` with `u` the first K − 1 entries of the cumulative
/// sum of softmax([raw…, 0]), so they are ordered and inside the range by
/// construction. With steepness k and σ the logistic function, event x
/// belongs to category 0 with weight 1 − σ(k(x − b₁)), to category i with
/// σ(k(x − bᵢ)) − σ(k(x − bᵢ₊₁)), and to the last with σ(k(x − b_{K−1})).
/// The argument of σ is clipped to ±75, as in gato-hep.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SigmoidCuts {
    /// Number of categories K.
    pub categories: usize,
    /// Lower end of the range.
    pub low: f64,
    /// Upper end of the range.
    pub high: f64,
}

impl SigmoidCuts {
    /// Builds the model.
    pub fn new(categories: usize, low: f64, high: f64) -> SigmoidCuts {
        SigmoidCuts { categories, low, high }
    }

    /// Equidistant boundaries for restart 0 (all raw values 0); for later
    /// restarts, raw values drawn from N(0, 0.5).
    pub fn init(&self, rng: &mut ChaCha8Rng, restart: usize) -> Params {
        let n = self.categories - 1;
        let raw: Vec<f64> = if restart == 0 {
            vec![0.0; n]
        } else {
            let normal = Normal::new(0.0, 0.5).expect("finite width");
            (0..n).map(|_| normal.sample(rng)).collect()
        };
        Params { names: vec!["raw".into()], shapes: vec![vec![n]], values: vec![raw] }
    }

    /// Returns the boundaries, ascending, in discriminant units.
    pub fn boundaries(&self, params: &Params) -> Vec<f64> {
        let raw = params.get("raw");
        let max = raw.iter().copied().fold(0.0f64, f64::max);
        let exp: Vec<f64> = raw.iter().map(|r| (r - max).exp()).collect();
        let total: f64 = exp.iter().sum::<f64>() + (-max).exp();
        let mut cumulative = 0.0;
        exp.iter()
            .map(|e| {
                cumulative += e / total;
                self.low + (self.high - self.low) * cumulative
            })
            .collect()
    }

    /// Raw parameters that put the boundaries at `cuts` (ascending, inside
    /// the range).
    pub fn raw_from_boundaries(&self, cuts: &[f64]) -> Vec<f64> {
        let width = self.high - self.low;
        let mut previous = 0.0;
        let mut raw = Vec::with_capacity(cuts.len());
        let last_share =
            1.0 - (cuts.last().copied().unwrap_or(self.low) - self.low) / width;
        for &cut in cuts {
            let u = (cut - self.low) / width;
            raw.push(((u - previous).max(1e-12) / last_share.max(1e-12)).ln());
            previous = u;
        }
        raw
    }

    /// Soft membership, shape [N, K].
    pub fn membership<B: Backend>(
        &self,
        x: &Tensor<B, 2>,
        raw: &Tensor<B, 1>,
        steepness: Tensor<B, 1>,
    ) -> Tensor<B, 2> {
        let device = raw.device();
        let k = self.categories;
        let n = x.dims()[0];
        let padded = Tensor::cat(vec![raw.clone(), Tensor::zeros([1], &device)], 0);
        let unit = softmax(padded, 0).cumsum(0).slice([0..k - 1]);
        let cuts = unit.mul_scalar(self.high - self.low).add_scalar(self.low);
        let z =
            (x.clone() - cuts.unsqueeze_dim::<2>(0)) * steepness.unsqueeze_dim::<2>(0);
        let above = super::logistic(z.clamp(-75.0, 75.0));
        let left = Tensor::cat(vec![Tensor::ones([n, 1], &device), above.clone()], 1);
        let right = Tensor::cat(vec![above, Tensor::zeros([n, 1], &device)], 1);
        left - right
    }
}

/// Hard category of `x` given ascending `cuts`: the number of cuts ≤ x, so a
/// value on a boundary goes to the upper category and values outside the
/// range go to the first or last category.
pub fn category_of(cuts: &[f64], x: f64) -> u32 {
    cuts.partition_point(|&c| c <= x) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_match_gato_hep_parametrisation() {
        // softmax([-1, 0.5, 0, 1, 0]) cumulated: gato-hep's float32 values.
        let model = SigmoidCuts::new(5, 0.0, 1.0);
        let params = Params {
            names: vec!["raw".into()],
            shapes: vec![vec![4]],
            values: vec![vec![-1.0, 0.5, 0.0, 1.0]],
        };
        let expected = [0.054_622_989, 0.299_426_228, 0.447_906_911, 0.851_519_227];
        for (got, want) in model.boundaries(&params).iter().zip(expected) {
            assert!((got - want).abs() < 1e-7, "{got} vs {want}");
        }
    }

    #[test]
    fn raw_from_boundaries_round_trips() {
        let model = SigmoidCuts::new(4, -2.0, 3.0);
        let cuts = [-1.5, 0.25, 2.9];
        let params = Params {
            names: vec!["raw".into()],
            shapes: vec![vec![3]],
            values: vec![model.raw_from_boundaries(&cuts)],
        };
        for (got, want) in model.boundaries(&params).iter().zip(cuts) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
    }

    #[test]
    fn category_of_half_open_edges() {
        let cuts = [0.2, 0.5];
        assert_eq!(category_of(&cuts, -1.0), 0);
        assert_eq!(category_of(&cuts, 0.19999), 0);
        assert_eq!(category_of(&cuts, 0.2), 1);
        assert_eq!(category_of(&cuts, 0.5), 2);
        assert_eq!(category_of(&cuts, 1.0), 2);
        assert_eq!(category_of(&cuts, 7.0), 2);
    }
}
