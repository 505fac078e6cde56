//! [`GaussianMixture`]: K Gaussian components in d dimensions whose
//! temperature-softmax gives each event a soft category.

use burn::tensor::Tensor;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::Backend;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::Params;
use crate::config::GmmInit;

const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// A Gaussian mixture over d discriminants.
///
/// Parameters: `logits` [K] (mixture weights π = softmax(logits)), `means`
/// [K, d] (raw means) and `scale` [K, d, d] (raw scale factor). The mean of
/// component k is `low + (high − low)·σ(raw)` per dimension, or, with
/// `simplex`, the first d entries of softmax([raw…, 0]). The scale factor
/// L_k is lower-triangular with diagonal `sigma_base·exp(raw_ii)` and
/// entries below it `damping·raw_ij`; entries above the diagonal are unused.
/// The covariance is L_k L_kᵀ. Event x belongs to component k with weight
/// softmax_k((ln π_k + ln N_k(x)) / T) at temperature T.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GaussianMixture {
    /// Number of components, which is the number of categories K.
    pub components: usize,
    /// Number of discriminants d.
    pub dim: usize,
    /// `(low, high)` per dimension, for sigmoid-mapped means.
    pub ranges: Vec<(f64, f64)>,
    /// Whether means live on the probability simplex.
    pub simplex: bool,
    /// Base width of the components.
    pub sigma_base: f64,
    /// Factor on the off-diagonal entries of the scale factor.
    pub damping: f64,
    /// Start used by [`GaussianMixture::init`].
    pub init: GmmInit,
}

impl GaussianMixture {
    /// Builds a mixture; `sigma_base` defaults to [`default_sigma_base`]
    /// times the geometric-mean width of the ranges.
    pub fn new(
        components: usize,
        ranges: Vec<(f64, f64)>,
        simplex: bool,
        sigma_base: Option<f64>,
        init: GmmInit,
    ) -> GaussianMixture {
        let dim = ranges.len();
        let sigma_base = sigma_base.unwrap_or_else(|| {
            let width = if simplex {
                1.0
            } else {
                ranges
                    .iter()
                    .map(|(lo, hi)| (hi - lo).ln())
                    .sum::<f64>()
                    .exp()
                    .powf(1.0 / dim as f64)
            };
            default_sigma_base(dim, components) * width
        });
        GaussianMixture {
            components,
            dim,
            ranges,
            simplex,
            sigma_base,
            damping: 0.1,
            init,
        }
    }

    /// Initial parameters; see [`GmmInit`]. Restarts after the first add
    /// N(0, 0.3) to the raw means of the quantile start.
    pub fn init(
        &self,
        rng: &mut ChaCha8Rng,
        restart: usize,
        signal: &[(f64, f64)],
    ) -> Params {
        let (k, d) = (self.components, self.dim);
        let use_quantiles =
            self.init == GmmInit::Quantiles && d == 1 && !signal.is_empty();
        let (logits, means) = if use_quantiles {
            let (lo, hi) = self.ranges[0];
            let mut means: Vec<f64> = weighted_quantiles(signal, k)
                .into_iter()
                .map(|q| {
                    let u = ((q - lo) / (hi - lo)).clamp(1e-4, 1.0 - 1e-4);
                    (u / (1.0 - u)).ln()
                })
                .collect();
            if restart > 0 {
                let jitter = Normal::new(0.0, 0.3).expect("finite width");
                means.iter_mut().for_each(|m| *m += jitter.sample(rng));
            }
            (vec![0.0; k], means)
        } else {
            let wide = Normal::new(0.0, 2.0).expect("finite width");
            let narrow = Normal::new(0.0, 0.1).expect("finite width");
            let means = (0..k * d).map(|_| wide.sample(rng)).collect();
            ((0..k).map(|_| narrow.sample(rng)).collect(), means)
        };
        Params {
            names: vec!["logits".into(), "means".into(), "scale".into()],
            shapes: vec![vec![k], vec![k, d], vec![k, d, d]],
            values: vec![logits, means, vec![0.0; k * d * d]],
        }
    }

    /// Soft membership, shape [N, K].
    pub fn membership<B: Backend>(
        &self,
        columns: &[Tensor<B, 2>],
        params: &[Tensor<B, 1>],
        temperature: Tensor<B, 1>,
    ) -> Tensor<B, 2> {
        let scores = self.log_joint(columns, params);
        softmax(scores / temperature.unsqueeze_dim::<2>(0), 1)
    }

    /// ln π_k + ln N_k(x), shape [N, K].
    pub fn log_joint<B: Backend>(
        &self,
        columns: &[Tensor<B, 2>],
        params: &[Tensor<B, 1>],
    ) -> Tensor<B, 2> {
        let (k, d) = (self.components, self.dim);
        let device = params[0].device();
        let log_pi = log_softmax(params[0].clone(), 0).unsqueeze_dim::<2>(0);
        let raw_means: Tensor<B, 2> = params[1].clone().reshape([k, d]);
        let means = if self.simplex {
            let padded = Tensor::cat(vec![raw_means, Tensor::zeros([k, 1], &device)], 1);
            softmax(padded, 1).slice([0..k, 0..d])
        } else {
            let low: Vec<f64> = self.ranges.iter().map(|r| r.0).collect();
            let width: Vec<f64> = self.ranges.iter().map(|r| r.1 - r.0).collect();
            super::logistic(raw_means)
                * super::tensor1::<B>(&width, &device).unsqueeze_dim::<2>(0)
                + super::tensor1::<B>(&low, &device).unsqueeze_dim::<2>(0)
        };
        let scale: Tensor<B, 2> = params[2].clone().reshape([k, d * d]);
        let entry = |i: usize, j: usize| -> Tensor<B, 2> {
            scale.clone().slice([0..k, i * d + j..i * d + j + 1]).reshape([1, k])
        };
        let ln_sigma = self.sigma_base.ln();

        // Forward substitution L y = x − μ, one dimension at a time.
        let mut ys: Vec<Tensor<B, 2>> = Vec::with_capacity(d);
        let mut log_det: Option<Tensor<B, 2>> = None;
        let mut quad: Option<Tensor<B, 2>> = None;
        for i in 0..d {
            let mean_i = means.clone().slice([0..k, i..i + 1]).reshape([1, k]);
            let mut residual = columns[i].clone() - mean_i;
            for (j, y_j) in ys.iter().enumerate() {
                residual = residual - y_j.clone() * entry(i, j).mul_scalar(self.damping);
            }
            let log_diag = entry(i, i).add_scalar(ln_sigma);
            let y = residual / log_diag.clone().exp();
            quad = Some(match quad {
                None => y.clone().powi_scalar(2),
                Some(q) => q + y.clone().powi_scalar(2),
            });
            log_det = Some(match log_det {
                None => log_diag,
                Some(l) => l + log_diag,
            });
            ys.push(y);
        }
        let quad = quad.expect("dimension is at least 1");
        let log_det = log_det.expect("dimension is at least 1");
        let log_n = quad.mul_scalar(-0.5) - log_det - 0.5 * d as f64 * LN_2PI;
        log_n + log_pi
    }

    /// Effective means [K][d] and scale factors [K][d][d] in float64.
    pub fn effective(&self, params: &Params) -> (Vec<Vec<f64>>, Vec<Vec<Vec<f64>>>) {
        let (k, d) = (self.components, self.dim);
        let raw = params.get("means");
        let scale = params.get("scale");
        let means = (0..k)
            .map(|c| {
                let row = &raw[c * d..(c + 1) * d];
                if self.simplex {
                    let max = row.iter().copied().fold(0.0f64, f64::max);
                    let total: f64 =
                        row.iter().map(|r| (r - max).exp()).sum::<f64>() + (-max).exp();
                    row.iter().map(|r| (r - max).exp() / total).collect()
                } else {
                    row.iter()
                        .zip(&self.ranges)
                        .map(|(r, (lo, hi))| lo + (hi - lo) / (1.0 + (-r).exp()))
                        .collect()
                }
            })
            .collect();
        let tril = (0..k)
            .map(|c| {
                (0..d)
                    .map(|i| {
                        (0..d)
                            .map(|j| {
                                let v = scale[c * d * d + i * d + j];
                                if i == j {
                                    self.sigma_base * v.exp()
                                } else if j < i {
                                    self.damping * v
                                } else {
                                    0.0
                                }
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        (means, tril)
    }

    /// Hard category of every event: argmax_k (ln π_k + ln N_k(x)), the
    /// lowest k on ties.
    pub fn assign(&self, params: &Params, discriminants: &[Vec<f64>]) -> Vec<u32> {
        let (means, tril) = self.effective(params);
        let logits = params.get("logits");
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let log_total = logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln() + max;
        let constant: Vec<f64> = (0..self.components)
            .map(|c| {
                let log_det: f64 = (0..self.dim).map(|i| tril[c][i][i].ln()).sum();
                logits[c] - log_total - log_det - 0.5 * self.dim as f64 * LN_2PI
            })
            .collect();
        let n = discriminants.first().map_or(0, Vec::len);
        let mut y = vec![0.0; self.dim];
        (0..n)
            .map(|e| {
                let mut best = (f64::NEG_INFINITY, 0u32);
                for c in 0..self.components {
                    let mut quad = 0.0;
                    for i in 0..self.dim {
                        let mut r = discriminants[i][e] - means[c][i];
                        for j in 0..i {
                            r -= tril[c][i][j] * y[j];
                        }
                        y[i] = r / tril[c][i][i];
                        quad += y[i] * y[i];
                    }
                    let score = constant[c] - 0.5 * quad;
                    if score > best.0 {
                        best = (score, c as u32);
                    }
                }
                best.1
            })
            .collect()
    }
}

/// Base width of the components for `components` in `dim` dimensions:
/// with m = max(d − 1, 1), V_simplex = √d/(d − 1)! and V_ball the volume of
/// the unit m-ball, σ = (V_simplex / (K·V_ball))^(1/m). For d = 1 this is
/// 1/(2K).
pub fn default_sigma_base(dim: usize, components: usize) -> f64 {
    let m = dim.saturating_sub(1).max(1);
    let factorial: f64 = (1..dim).map(|i| i as f64).product();
    let v_simplex = (dim as f64).sqrt() / factorial;
    let v_ball = std::f64::consts::PI.powf(m as f64 / 2.0)
        / gamma_half_integer(m as f64 / 2.0 + 1.0);
    (v_simplex / (components as f64 * v_ball)).powf(1.0 / m as f64)
}

/// Γ(x) for x a positive integer or half-integer.
fn gamma_half_integer(x: f64) -> f64 {
    let mut value = if x.fract() == 0.0 { 1.0 } else { std::f64::consts::PI.sqrt() };
    let mut t = if x.fract() == 0.0 { 1.0 } else { 0.5 };
    while t < x - 0.25 {
        value *= t;
        t += 1.0;
    }
    value
}

/// Computes the weighted quantiles at (i + 0.5)/n, i = 0..n, of
/// `(value, weight)` pairs.
fn weighted_quantiles(points: &[(f64, f64)], n: usize) -> Vec<f64> {
    let mut sorted: Vec<(f64, f64)> =
        points.iter().copied().filter(|p| p.1 > 0.0).collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = sorted.iter().map(|p| p.1).sum();
    let mut out = Vec::with_capacity(n);
    let mut cumulative = 0.0;
    let mut index = 0;
    for i in 0..n {
        let target = (i as f64 + 0.5) / n as f64 * total;
        while index + 1 < sorted.len() && cumulative + sorted[index].1 < target {
            cumulative += sorted[index].1;
            index += 1;
        }
        out.push(sorted.get(index).map_or(0.5, |p| p.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigma_base_matches_gato_hep_values() {
        assert!((default_sigma_base(1, 5) - 0.1).abs() < 1e-15);
        assert!((default_sigma_base(2, 5) - 0.141_421_356_237).abs() < 1e-10);
    }

    #[test]
    fn gamma_half_integer_values() {
        assert_eq!(gamma_half_integer(1.0), 1.0);
        assert_eq!(gamma_half_integer(3.0), 2.0);
        assert!(
            (gamma_half_integer(1.5) - std::f64::consts::PI.sqrt() / 2.0).abs() < 1e-15
        );
    }

    #[test]
    fn weighted_quantiles_of_uniform_points() {
        let points: Vec<(f64, f64)> =
            (0..1000).map(|i| (i as f64 / 1000.0, 1.0)).collect();
        let q = weighted_quantiles(&points, 4);
        for (got, want) in q.iter().zip([0.125, 0.375, 0.625, 0.875]) {
            assert!((got - want).abs() < 2e-3, "{got} vs {want}");
        }
    }
}
