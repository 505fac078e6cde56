//! [`Optimizer`]: RMSprop and Adam on host parameters, with Keras's update
//! rules so that runs compare with gato-hep step for step.

use crate::config::OptimizerKind;
use crate::model::Params;

/// RMSprop decay ρ.
pub const RHO: f64 = 0.9;
/// Adam's first-moment decay β₁.
pub const BETA1: f64 = 0.9;
/// Adam's second-moment decay β₂.
pub const BETA2: f64 = 0.999;
/// ε of both optimisers.
pub const EPSILON: f64 = 1e-7;

/// Optimiser state for one set of parameters.
#[derive(Debug, Clone)]
pub struct Optimizer {
    kind: OptimizerKind,
    first: Vec<Vec<f64>>,
    second: Vec<Vec<f64>>,
    steps: i32,
}

impl Optimizer {
    /// Fresh state for parameters shaped like `params`.
    pub fn new(kind: OptimizerKind, params: &Params) -> Optimizer {
        let zeros: Vec<Vec<f64>> =
            params.values.iter().map(|v| vec![0.0; v.len()]).collect();
        Optimizer { kind, first: zeros.clone(), second: zeros, steps: 0 }
    }

    /// Takes one descent step on `params` along `grads` with learning rate
    /// `lr`.
    ///
    /// RMSprop: v ← ρv + (1 − ρ)g², θ ← θ − lr·g/√(v + ε).
    /// Adam: m ← β₁m + (1 − β₁)g, v ← β₂v + (1 − β₂)g²,
    /// θ ← θ − lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ)·m/(√v + ε).
    pub fn step(&mut self, params: &mut Params, grads: &[Vec<f64>], lr: f64) {
        self.steps += 1;
        let t = self.steps;
        for (tensor, (values, grad)) in params.values.iter_mut().zip(grads).enumerate() {
            for (i, (theta, &g)) in values.iter_mut().zip(grad).enumerate() {
                match self.kind {
                    OptimizerKind::Rmsprop => {
                        let v = &mut self.second[tensor][i];
                        *v = RHO * *v + (1.0 - RHO) * g * g;
                        *theta -= lr * g / (*v + EPSILON).sqrt();
                    }
                    OptimizerKind::Adam => {
                        let m = &mut self.first[tensor][i];
                        *m = BETA1 * *m + (1.0 - BETA1) * g;
                        let v = &mut self.second[tensor][i];
                        *v = BETA2 * *v + (1.0 - BETA2) * g * g;
                        let rate =
                            lr * (1.0 - BETA2.powi(t)).sqrt() / (1.0 - BETA1.powi(t));
                        *theta -= rate * *m / (v.sqrt() + EPSILON);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(value: f64) -> Params {
        Params {
            names: vec!["p".into()],
            shapes: vec![vec![1]],
            values: vec![vec![value]],
        }
    }

    #[test]
    fn rmsprop_two_steps_by_hand() {
        let mut params = one(1.0);
        let mut opt = Optimizer::new(OptimizerKind::Rmsprop, &params);
        opt.step(&mut params, &[vec![2.0]], 0.1);
        // v = 0.1·4 = 0.4; θ = 1 − 0.1·2/√(0.4 + 1e-7)
        let theta1 = 1.0 - 0.2 / (0.4f64 + 1e-7).sqrt();
        assert!((params.values[0][0] - theta1).abs() < 1e-15);
        opt.step(&mut params, &[vec![-1.0]], 0.05);
        let v2 = 0.9 * 0.4 + 0.1 * 1.0;
        let theta2 = theta1 + 0.05 / (v2 + 1e-7f64).sqrt();
        assert!((params.values[0][0] - theta2).abs() < 1e-15);
    }

    #[test]
    fn adam_first_step_moves_by_learning_rate() {
        let mut params = one(0.0);
        let mut opt = Optimizer::new(OptimizerKind::Adam, &params);
        opt.step(&mut params, &[vec![3.0]], 0.01);
        // m̂ = g and v̂ = g², so the step is lr·g/(|g| + ε·√(1−β₂)/(1−β₁)…) ≈ lr.
        let rate = 0.01 * (1.0 - BETA2).sqrt() / (1.0 - BETA1);
        let expected = -rate * 0.3 / ((0.001f64 * 9.0).sqrt() + EPSILON);
        assert!((params.values[0][0] - expected).abs() < 1e-15);
        assert!((params.values[0][0] + 0.01).abs() < 1e-6);
    }
}
