//! Per-category significance formulas in float64, for exact evaluation.
//!
//! The Asimov significance of `s` signal over `b` background events is
//! Z = √(2((s + b)·ln(1 + s/b) − s)). [`SignificanceKind::AsimovGato`] is
//! gato-hep's rule: s/√b where s/b < 0.1, Asimov otherwise, with b clamped
//! at 1e-9.
//!
//! Evaluation rule, the same for categories, baselines and the DP optimum:
//! a category whose background yield is zero or negative, or whose signal
//! yield is zero or negative, scores Z = 0. Without it, a category holding
//! only signal would look infinitely significant under the clamp.

use crate::config::SignificanceKind;

/// Below this s/b the Asimov formula is evaluated by its series.
const SERIES_BELOW: f64 = 1e-3;

/// Z of one category under `kind`, with the evaluation rule above.
pub fn category_z(kind: SignificanceKind, s: f64, b: f64) -> f64 {
    if !(s > 0.0 && b > 0.0) {
        return 0.0;
    }
    match kind {
        SignificanceKind::Asimov => asimov(s, b),
        SignificanceKind::AsimovGato => asimov_gato(s, b),
    }
}

/// Asimov significance for s > 0, b > 0, accurate for every s/b.
///
/// For r = s/b < 1e-3 it uses Z² = (s²/b)·(1 − r/3 + r²/6 − r³/10), the
/// series of 2b((1 + r)ln(1 + r) − r), because the direct form cancels
/// catastrophically there.
pub fn asimov(s: f64, b: f64) -> f64 {
    let r = s / b;
    if r < SERIES_BELOW {
        let z2 = s * s / b * (1.0 - r / 3.0 + r * r / 6.0 - r * r * r / 10.0);
        return z2.sqrt();
    }
    (2.0 * ((s + b) * r.ln_1p() - s)).max(0.0).sqrt()
}

/// gato-hep's rule: s/√b where s/b < 0.1, Asimov otherwise, b ≥ 1e-9.
pub fn asimov_gato(s: f64, b: f64) -> f64 {
    let b = b.max(1e-9);
    let r = s / b;
    if r < 0.1 { s / b.sqrt() } else { (2.0 * ((s + b) * r.ln_1p() - s)).max(0.0).sqrt() }
}

/// Combined significance √(Σ Z_k²).
pub fn combine(zs: &[f64]) -> f64 {
    zs.iter().map(|z| z * z).sum::<f64>().sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asimov_hand_value() {
        // s = 10, b = 100: 2(110 ln 1.1 − 10) = 0.968239..., Z = 0.983992...
        let expected = (2.0 * (110.0 * 1.1f64.ln() - 10.0)).sqrt();
        assert!((asimov(10.0, 100.0) - expected).abs() < 1e-14);
        assert!((asimov(10.0, 100.0) - 0.983_992).abs() < 1e-6);
    }

    #[test]
    fn asimov_series_matches_direct_at_switch() {
        let b = 1000.0;
        let s = SERIES_BELOW * b;
        let below = asimov(s * (1.0 - 1e-12), b);
        let direct = (2.0 * ((s + b) * (s / b).ln_1p() - s)).sqrt();
        assert!((below - direct).abs() / direct < 1e-9, "{below} vs {direct}");
    }

    #[test]
    fn asimov_small_ratio_limit() {
        let z = asimov(1e-6, 1e6);
        assert!((z - 1e-9).abs() / 1e-9 < 1e-9);
    }

    #[test]
    fn asimov_gato_uses_ratio_switch() {
        assert_eq!(asimov_gato(1.0, 100.0), 0.1);
        let expected = (2.0 * (30.0 * 1.5f64.ln() - 10.0)).sqrt();
        assert!((asimov_gato(10.0, 20.0) - expected).abs() < 1e-14);
    }

    #[test]
    fn category_z_zero_without_background_or_signal() {
        for kind in [SignificanceKind::Asimov, SignificanceKind::AsimovGato] {
            assert_eq!(category_z(kind, 5.0, 0.0), 0.0);
            assert_eq!(category_z(kind, 5.0, -1.0), 0.0);
            assert_eq!(category_z(kind, 0.0, 3.0), 0.0);
            assert_eq!(category_z(kind, -2.0, 3.0), 0.0);
        }
    }

    #[test]
    fn combine_in_quadrature() {
        assert_eq!(combine(&[3.0, 4.0]), 5.0);
    }
}
