//! Category models: [`SigmoidCuts`] and [`GaussianMixture`], behind the
//! [`CategoryModel`] enum.
//!
//! A model's trainable parameters live on the host as [`Params`], a list of
//! float64 vectors. Each training step turns them into burn tensors that
//! require gradients, runs [`CategoryModel::membership`] to get each event's
//! soft category membership, and reads the gradients back. Hard categories
//! ([`CategoryModel::assign`]) are computed on the host in float64.

mod gmm;
mod grid;
mod saved;
mod sigmoid;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand_chacha::ChaCha8Rng;

pub use gmm::GaussianMixture;
pub use grid::SigmoidGrid;
pub use saved::SavedModel;
pub use sigmoid::{SigmoidCuts, category_of};

/// Trainable parameters, one float64 vector per named tensor.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Params {
    /// Name of each tensor.
    pub names: Vec<String>,
    /// Shape of each tensor.
    pub shapes: Vec<Vec<usize>>,
    /// Values of each tensor, row-major.
    pub values: Vec<Vec<f64>>,
}

impl Params {
    /// Number of scalar parameters.
    pub fn len(&self) -> usize {
        self.values.iter().map(Vec::len).sum()
    }

    /// Returns whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the tensor called `name`.
    pub fn get(&self, name: &str) -> &[f64] {
        let i =
            self.names.iter().position(|n| n == name).expect("parameter name is known");
        &self.values[i]
    }
}

/// A category model with K categories.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CategoryModel {
    /// Ordered sigmoid cuts on one discriminant.
    Sigmoid(SigmoidCuts),
    /// Sigmoid cuts on several discriminants; the cells are the categories.
    Grid(SigmoidGrid),
    /// Gaussian mixture with temperature-softmax assignment.
    Gmm(GaussianMixture),
}

impl CategoryModel {
    /// Number of categories.
    pub fn categories(&self) -> usize {
        match self {
            CategoryModel::Sigmoid(m) => m.categories,
            CategoryModel::Grid(m) => m.categories(),
            CategoryModel::Gmm(m) => m.components,
        }
    }

    /// Bins per discriminant: `[K]` except for the grid.
    pub fn bins(&self) -> Vec<usize> {
        match self {
            CategoryModel::Grid(m) => m.bins(),
            _ => vec![self.categories()],
        }
    }

    /// Sigmoid cuts per discriminant (sigmoid models only).
    pub fn cuts(&self, params: &Params) -> Option<Vec<Vec<f64>>> {
        match self {
            CategoryModel::Sigmoid(m) => Some(vec![m.boundaries(params)]),
            CategoryModel::Grid(m) => Some(m.boundaries(params)),
            CategoryModel::Gmm(_) => None,
        }
    }

    /// Soft membership of every event in every category, shape [N, K]; each
    /// row sums to 1.
    ///
    /// `columns` contains one [N, 1] tensor per discriminant and `params` the
    /// tensors of [`Params`] in order. `anneal` is the steepness of each
    /// discriminant (sigmoid models, shape [d]) or the temperature (GMM,
    /// shape [1]).
    pub fn membership<B: Backend>(
        &self,
        columns: &[Tensor<B, 2>],
        params: &[Tensor<B, 1>],
        anneal: Tensor<B, 1>,
    ) -> Tensor<B, 2> {
        match self {
            CategoryModel::Sigmoid(m) => m.membership(&columns[0], &params[0], anneal),
            CategoryModel::Grid(m) => m.membership(columns, params, anneal),
            CategoryModel::Gmm(m) => m.membership(columns, params, anneal),
        }
    }

    /// Hard category of every event. `discriminants` contains one vector per
    /// dimension.
    pub fn assign(&self, params: &Params, discriminants: &[Vec<f64>]) -> Vec<u32> {
        match self {
            CategoryModel::Sigmoid(m) => {
                let cuts = m.boundaries(params);
                discriminants[0].iter().map(|&x| sigmoid::category_of(&cuts, x)).collect()
            }
            CategoryModel::Grid(m) => m.assign(params, discriminants),
            CategoryModel::Gmm(m) => m.assign(params, discriminants),
        }
    }

    /// Initial parameters for `restart` (0 is the model's default start).
    pub fn init(
        &self,
        rng: &mut ChaCha8Rng,
        restart: usize,
        signal: &[(f64, f64)],
    ) -> Params {
        match self {
            CategoryModel::Sigmoid(m) => m.init(rng, restart),
            CategoryModel::Grid(m) => m.init(rng, restart),
            CategoryModel::Gmm(m) => m.init(rng, restart, signal),
        }
    }
}

/// The logistic function 1/(1 + e^(−x)), elementwise.
///
/// burn-ndarray 0.21's own `sigmoid` is accurate only to about 1e-8 in
/// float64, which spoils finite-difference checks of the gradient. This
/// form keeps full float64 precision. Inputs must stay above about
/// −700 (f64) or −87 (f32) so that e^(−x) is finite: both models clip or
/// bound their arguments well inside that.
pub fn logistic<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.neg().exp().add_scalar(1.0).recip()
}

/// Copies a host vector into a rank-1 tensor on `device`.
pub fn tensor1<B: Backend>(values: &[f64], device: &B::Device) -> Tensor<B, 1> {
    let data = TensorData::new(values.to_vec(), [values.len()]).convert::<B::FloatElem>();
    Tensor::from_data(data, device)
}

/// Copies a tensor back to the host as float64.
pub fn to_host<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f64> {
    tensor.into_data().iter::<f64>().collect()
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, NdArray};

    use super::*;

    #[test]
    fn tensor_round_trip_keeps_float64() {
        type B = Autodiff<NdArray<f64>>;
        let value = 1.0 + 1e-12;
        let t = tensor1::<B>(&[value, 2.0], &Default::default());
        assert_eq!(to_host((t.clone() * t).sum())[0], value * value + 4.0);
    }

    #[test]
    fn logistic_matches_float64_formula() {
        type B = Autodiff<NdArray<f64>>;
        let x = [0.3 + 1e-12, 1.7, -0.4, -70.0, 70.0];
        let got = to_host(logistic(tensor1::<B>(&x, &Default::default())));
        for (g, v) in got.iter().zip(x) {
            let want = 1.0 / (1.0 + (-v).exp());
            assert!((g - want).abs() <= 1e-16 * want.max(1e-300), "{v}: {g} vs {want}");
        }
    }
}
