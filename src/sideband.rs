//! Background estimates from a fit to the mass spectrum: an exponential
//! A·e^(B·m) fitted to a binned spectrum, the share of its yield that falls
//! in a mass window, and the per-category factors built from them.

use crate::config::{Pipeline, Role, SidebandSpec};
use crate::select::Events;

/// An exponential fitted to a binned spectrum.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExpFit {
    /// Slope B, per unit of mass.
    pub slope: f64,
    /// Fitted yield on the whole fit range.
    pub total: f64,
    /// χ² of the fit, with the bins' Σw² as variances.
    pub chi2: f64,
}

/// ∫ from `a` to `b` of e^(B·(m − origin)) dm, stable for B near 0.
fn integral(slope: f64, a: f64, b: f64, origin: f64) -> f64 {
    let (a, b) = (a - origin, b - origin);
    let width = b - a;
    if (slope * width).abs() < 1e-12 {
        return width * (slope * a).exp();
    }
    (slope * a).exp() * (slope * width).exp_m1() / slope
}

/// Derivative of [`integral`] with respect to the slope.
fn integral_slope_derivative(slope: f64, a: f64, b: f64, origin: f64) -> f64 {
    let (a, b) = (a - origin, b - origin);
    if slope.abs() < 1e-9 {
        return (b * b - a * a) / 2.0;
    }
    let (ea, eb) = ((slope * a).exp(), (slope * b).exp());
    (b * eb - a * ea) / slope - (eb - ea) / (slope * slope)
}

/// Fits A·e^(B·m) to the yields of the bins between `edges` (ascending,
/// one more than the bins) by least squares, with each bin's variance its
/// Σw² (bins with Σw² = 0 get the smallest positive Σw² of the spectrum).
///
/// The model of a bin is the exponential's integral over it. The start is a
/// straight-line fit of ln(yield) against the bin centres; Levenberg–
/// Marquardt steps then minimise χ². Returns `None` when fewer than two
/// bins have a positive yield or the fit does not converge to finite
/// values.
pub fn fit_exponential(edges: &[f64], yields: &[f64], sumw2: &[f64]) -> Option<ExpFit> {
    let n = yields.len();
    if edges.len() != n + 1 || sumw2.len() != n {
        return None;
    }
    let origin = edges[0];
    let smallest =
        sumw2.iter().copied().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    if !smallest.is_finite() {
        return None;
    }
    let variance: Vec<f64> =
        sumw2.iter().map(|&v| if v > 0.0 { v } else { smallest }).collect();

    // Start: weighted line through ln(y / width) at the bin centres.
    let (mut sw, mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut positive = 0;
    for i in 0..n {
        if yields[i] <= 0.0 {
            continue;
        }
        positive += 1;
        let width = edges[i + 1] - edges[i];
        let x = 0.5 * (edges[i] + edges[i + 1]) - origin;
        let y = (yields[i] / width).ln();
        // Var(ln y) ≈ σ²/y², so the weight is y²/σ².
        let w = yields[i] * yields[i] / variance[i];
        sw += w;
        sx += w * x;
        sy += w * y;
        sxx += w * x * x;
        sxy += w * x * y;
    }
    if positive < 2 {
        return None;
    }
    let det = sw * sxx - sx * sx;
    let mut slope = if det.abs() > 0.0 { (sw * sxy - sx * sy) / det } else { 0.0 };
    let intercept = (sy - slope * sx) / sw;
    let mut log_norm = intercept;
    if !(slope.is_finite() && log_norm.is_finite()) {
        slope = 0.0;
        log_norm = (yields.iter().sum::<f64>().max(f64::MIN_POSITIVE)
            / (edges[n] - origin))
            .ln();
    }

    let chi2_of = |log_norm: f64, slope: f64| -> f64 {
        (0..n)
            .map(|i| {
                let f = log_norm.exp() * integral(slope, edges[i], edges[i + 1], origin);
                (yields[i] - f).powi(2) / variance[i]
            })
            .sum()
    };
    let mut chi2 = chi2_of(log_norm, slope);
    let mut lambda = 1e-3;
    for _ in 0..200 {
        // Normal equations of the linearised model in (ln A, B).
        let (mut a11, mut a12, mut a22, mut g1, mut g2) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let norm = log_norm.exp();
        for i in 0..n {
            let f = norm * integral(slope, edges[i], edges[i + 1], origin);
            let d1 = f;
            let d2 =
                norm * integral_slope_derivative(slope, edges[i], edges[i + 1], origin);
            let r = yields[i] - f;
            let w = 1.0 / variance[i];
            a11 += w * d1 * d1;
            a12 += w * d1 * d2;
            a22 += w * d2 * d2;
            g1 += w * d1 * r;
            g2 += w * d2 * r;
        }
        let (m11, m22) = (a11 * (1.0 + lambda), a22 * (1.0 + lambda));
        let det = m11 * m22 - a12 * a12;
        if !(det.is_finite() && det > 0.0) {
            break;
        }
        let step1 = (m22 * g1 - a12 * g2) / det;
        let step2 = (m11 * g2 - a12 * g1) / det;
        let trial = chi2_of(log_norm + step1, slope + step2);
        if trial.is_finite() && trial <= chi2 {
            let converged = (chi2 - trial) <= 1e-12 * chi2.max(1e-300);
            log_norm += step1;
            slope += step2;
            chi2 = trial;
            lambda = (lambda * 0.3).max(1e-12);
            if converged {
                break;
            }
        } else {
            lambda *= 10.0;
            if lambda > 1e12 {
                break;
            }
        }
    }
    let total = log_norm.exp() * integral(slope, edges[0], edges[n], origin);
    (slope.is_finite() && total.is_finite() && chi2.is_finite()).then_some(ExpFit {
        slope,
        total,
        chi2,
    })
}

/// Share of an exponential's yield on `range` that falls in `window`
/// (both `(low, high)`): ∫_window e^(B·m) dm / ∫_range e^(B·m) dm.
pub fn window_fraction(slope: f64, window: (f64, f64), range: (f64, f64)) -> f64 {
    let origin = range.0;
    integral(slope, window.0, window.1, origin)
        / integral(slope, range.0, range.1, origin)
}

/// The background mass spectrum of one hard category and its fit.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CategorySpectrum {
    /// Background yield per bin of the fit range.
    pub background: Vec<f64>,
    /// Background Σw² per bin.
    pub background_sumw2: Vec<f64>,
    /// Yield of all signals per bin (signal outside the window weighs 0).
    pub signal: Vec<f64>,
    /// The exponential fitted to `background`; `None` where the fit failed
    /// or was not tried.
    pub fit: Option<ExpFit>,
    /// Share of the background in the window: from the fit, or the window
    /// width over the range width where there is no fit.
    pub factor: f64,
}

/// Bins each of the `k` hard categories' mass spectrum on the fit range
/// (`spec.bins` equal bins: background yields and Σw², signal yields) and
/// fits the background with [`fit_exponential`].
///
/// The factor of each category is the fitted share of its background in
/// the window. Where the fit fails, or the category has no background event in
/// the window, the factor is the window's share of the range width and
/// `fit` is `None`. Without `events.mass` every category gets that flat
/// factor and empty spectra.
pub fn category_spectra(
    pipeline: &Pipeline,
    events: &Events,
    assign: &[u32],
    k: usize,
    spec: &SidebandSpec,
) -> Vec<CategorySpectrum> {
    let (lo, hi) = spec.range;
    let flat = (spec.window.1 - spec.window.0) / (hi - lo);
    let bins = spec.bins;
    let mut spectra = vec![
        CategorySpectrum {
            background: vec![0.0; bins],
            background_sumw2: vec![0.0; bins],
            signal: vec![0.0; bins],
            fit: None,
            factor: flat,
        };
        k
    ];
    let Some(mass) = events.mass.as_ref() else {
        return spectra;
    };
    let mut in_window = vec![false; k];
    for (p, range) in events.process_ranges.iter().enumerate() {
        let background = pipeline.processes[p].role == Role::Background;
        for i in range.clone() {
            let m = mass[i];
            if !(lo..=hi).contains(&m) {
                continue;
            }
            let c = assign[i] as usize;
            let bin = (((m - lo) / (hi - lo)) * bins as f64)
                .floor()
                .min((bins - 1) as f64) as usize;
            let w = events.weight[i];
            let s = &mut spectra[c];
            if !background {
                s.signal[bin] += w;
                continue;
            }
            s.background[bin] += w;
            s.background_sumw2[bin] += w * w;
            if (spec.window.0..=spec.window.1).contains(&m) {
                in_window[c] = true;
            }
        }
    }
    let edges = spectrum_edges(spec);
    for (s, seen) in spectra.iter_mut().zip(in_window) {
        if !seen {
            continue;
        }
        s.fit = fit_exponential(&edges, &s.background, &s.background_sumw2);
        if let Some(fit) = s.fit {
            s.factor = window_fraction(fit.slope, spec.window, spec.range);
        }
    }
    spectra
}

/// Bin edges of the fitted spectrum: `spec.bins` equal bins on the range.
pub fn spectrum_edges(spec: &SidebandSpec) -> Vec<f64> {
    let (lo, hi) = spec.range;
    (0..=spec.bins).map(|b| lo + (hi - lo) * b as f64 / spec.bins as f64).collect()
}

/// Yield of a fitted exponential in the bin `[a, b]` of the fit range
/// `range`.
pub fn fitted_yield(fit: &ExpFit, a: f64, b: f64, range: (f64, f64)) -> f64 {
    fit.total * integral(fit.slope, a, b, range.0)
        / integral(fit.slope, range.0, range.1, range.0)
}

/// Returns the background factor of each of the `k` hard categories in
/// `assign` (see [`category_spectra`]).
pub fn category_factors(
    pipeline: &Pipeline,
    events: &Events,
    assign: &[u32],
    k: usize,
    spec: &SidebandSpec,
) -> Vec<f64> {
    category_spectra(pipeline, events, assign, k, spec).iter().map(|s| s.factor).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edges() -> Vec<f64> {
        (0..=10).map(|i| 100.0 + 8.0 * i as f64).collect()
    }

    #[test]
    fn exact_exponential_spectrum_recovers_slope() {
        // Bins of 5000·e^(−0.05(m − 100)) integrated by hand: the yield of
        // [a, b] is 5000/0.05·(e^(−0.05(a−100)) − e^(−0.05(b−100))).
        let e = edges();
        let yields: Vec<f64> = (0..10)
            .map(|i| {
                5000.0 / 0.05
                    * ((-0.05 * (e[i] - 100.0)).exp()
                        - (-0.05 * (e[i + 1] - 100.0)).exp())
            })
            .collect();
        let sumw2: Vec<f64> = yields.iter().map(|y| y * 0.01).collect();
        let fit = fit_exponential(&e, &yields, &sumw2).unwrap();
        assert!((fit.slope + 0.05).abs() < 1e-9, "slope {}", fit.slope);
        let total: f64 = yields.iter().sum();
        assert!((fit.total - total).abs() < 1e-7 * total, "{} vs {total}", fit.total);
        assert!(fit.chi2 < 1e-12);
    }

    #[test]
    fn fluctuating_spectrum_fits_close_to_truth() {
        // ±5 % alternating offsets around slope −0.03.
        let e = edges();
        let truth: Vec<f64> = (0..10)
            .map(|i| {
                800.0 / 0.03
                    * ((-0.03 * (e[i] - 100.0)).exp()
                        - (-0.03 * (e[i + 1] - 100.0)).exp())
            })
            .collect();
        let yields: Vec<f64> = truth
            .iter()
            .enumerate()
            .map(|(i, y)| y * if i % 2 == 0 { 1.05 } else { 0.95 })
            .collect();
        let sumw2: Vec<f64> = yields.to_vec();
        let fit = fit_exponential(&e, &yields, &sumw2).unwrap();
        assert!((fit.slope + 0.03).abs() < 2e-3, "slope {}", fit.slope);
    }

    #[test]
    fn too_few_filled_bins_fail() {
        let e = edges();
        let mut yields = vec![0.0; 10];
        yields[3] = 5.0;
        let sumw2 = yields.clone();
        assert!(fit_exponential(&e, &yields, &sumw2).is_none());
        assert!(fit_exponential(&e, &[0.0; 10], &[0.0; 10]).is_none());
    }

    #[test]
    fn window_fraction_hand_values() {
        // Flat: the width ratio.
        assert!(
            (window_fraction(0.0, (123.5, 126.5), (100.0, 180.0)) - 3.0 / 80.0).abs()
                < 1e-15
        );
        // Slope −0.05: (e^(−0.05·23.5) − e^(−0.05·26.5)) / (1 − e^(−4)).
        let want =
            ((-0.05f64 * 23.5).exp() - (-0.05f64 * 26.5).exp()) / (1.0 - (-4.0f64).exp());
        let got = window_fraction(-0.05, (123.5, 126.5), (100.0, 180.0));
        assert!((got - want).abs() < 1e-14, "{got} vs {want}");
    }
}
