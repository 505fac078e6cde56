//! [`Schedule`]: a value annealed over the epochs.

use super::file::ScheduleKind;

/// A value that moves from `initial` at the first epoch to `final_value` at
/// the last.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Schedule {
    /// Shape of the curve.
    pub kind: ScheduleKind,
    /// Value at epoch 0.
    pub initial: f64,
    /// Value at the last epoch.
    pub final_value: f64,
}

impl Schedule {
    /// Builds a schedule.
    pub fn new(kind: ScheduleKind, initial: f64, final_value: f64) -> Schedule {
        Schedule { kind, initial, final_value }
    }

    /// Value at `epoch` of `epochs` (0-based; the last epoch is `epochs - 1`).
    ///
    /// Cosine: `final + (initial − final)·(1 + cos(π·t))/2`; exponential:
    /// `initial·(final/initial)^t`; with `t = epoch / (epochs − 1)`.
    pub fn value(&self, epoch: usize, epochs: usize) -> f64 {
        let t = if epochs <= 1 { 0.0 } else { epoch as f64 / (epochs - 1) as f64 };
        let (a, b) = (self.initial, self.final_value);
        match self.kind {
            ScheduleKind::Constant => a,
            ScheduleKind::Cosine => {
                b + (a - b) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            ScheduleKind::Exponential => a * (b / a).powf(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_cosine_ends_and_middle() {
        let s = Schedule::new(ScheduleKind::Cosine, 0.1, 0.001);
        assert_eq!(s.value(0, 11), 0.1);
        assert!((s.value(10, 11) - 0.001).abs() < 1e-15);
        assert!((s.value(5, 11) - 0.0505).abs() < 1e-15);
    }

    #[test]
    fn schedule_exponential_geometric_middle() {
        let s = Schedule::new(ScheduleKind::Exponential, 50.0, 5000.0);
        assert!((s.value(1, 3) - 500.0).abs() < 1e-9);
        assert!((s.value(2, 3) - 5000.0).abs() < 1e-9);
    }

    #[test]
    fn schedule_constant_ignores_final() {
        let s = Schedule::new(ScheduleKind::Constant, 2.0, 7.0);
        assert_eq!(s.value(3, 4), 2.0);
    }
}
