//! [`SigmoidGrid`]: sigmoid cuts on several discriminants at once; the
//! categories are the cells of the grid the cuts make.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use rand_chacha::ChaCha8Rng;

use super::{Params, SigmoidCuts, category_of};

/// One [`SigmoidCuts`] per discriminant; category = cell of the grid.
///
/// With K_j bins on discriminant j, there are K = Π K_j categories,
/// numbered row-major: the cell with bin indices (i₁, …, i_d) is category
/// Σ_j i_j·Π_{l>j} K_l, so the first discriminant changes slowest. An
/// event's soft membership of a cell is the product of its soft
/// memberships of the cell's bins. Parameters: `raw_0`, …, `raw_{d−1}`,
/// each parametrised as in [`SigmoidCuts`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct SigmoidGrid {
    /// The cuts on each discriminant.
    pub axes: Vec<SigmoidCuts>,
}

impl SigmoidGrid {
    /// Builds the grid from `(bins, low, high)` per discriminant.
    pub fn new(axes: &[(usize, f64, f64)]) -> SigmoidGrid {
        SigmoidGrid {
            axes: axes.iter().map(|&(k, lo, hi)| SigmoidCuts::new(k, lo, hi)).collect(),
        }
    }

    /// Number of categories, the product of the bins.
    pub fn categories(&self) -> usize {
        self.axes.iter().map(|a| a.categories).product()
    }

    /// Bins per discriminant.
    pub fn bins(&self) -> Vec<usize> {
        self.axes.iter().map(|a| a.categories).collect()
    }

    /// Parameter names, one per discriminant.
    pub fn names(&self) -> Vec<String> {
        (0..self.axes.len()).map(|j| format!("raw_{j}")).collect()
    }

    /// Starting parameters: each discriminant's cuts as
    /// [`SigmoidCuts::init`] makes them.
    pub fn init(&self, rng: &mut ChaCha8Rng, restart: usize) -> Params {
        let mut params =
            Params { names: self.names(), shapes: Vec::new(), values: Vec::new() };
        for axis in &self.axes {
            let start = axis.init(rng, restart);
            params.shapes.push(start.shapes[0].clone());
            params.values.push(start.values[0].clone());
        }
        params
    }

    /// Returns the cuts on each discriminant, ascending.
    pub fn boundaries(&self, params: &Params) -> Vec<Vec<f64>> {
        self.axes
            .iter()
            .zip(&params.values)
            .map(|(axis, raw)| axis.boundaries(&axis_params(raw)))
            .collect()
    }

    /// `[low, high]` of every discriminant in each category, in category
    /// order; the outer bins extend to the ends of the range.
    pub fn cells(&self, params: &Params) -> Vec<Vec<[f64; 2]>> {
        let edges: Vec<Vec<f64>> = self
            .axes
            .iter()
            .zip(self.boundaries(params))
            .map(|(axis, cuts)| {
                let mut e = vec![axis.low];
                e.extend(cuts);
                e.push(axis.high);
                e
            })
            .collect();
        (0..self.categories())
            .map(|c| {
                self.indices(c)
                    .iter()
                    .zip(&edges)
                    .map(|(&i, e)| [e[i], e[i + 1]])
                    .collect()
            })
            .collect()
    }

    /// Bin index per discriminant of category `c`.
    pub fn indices(&self, c: usize) -> Vec<usize> {
        let mut rest = c;
        let mut out = vec![0; self.axes.len()];
        for (j, axis) in self.axes.iter().enumerate().rev() {
            out[j] = rest % axis.categories;
            rest /= axis.categories;
        }
        out
    }

    /// Soft membership, shape [N, K]. `steepness` has one entry per
    /// discriminant.
    pub fn membership<B: Backend>(
        &self,
        columns: &[Tensor<B, 2>],
        params: &[Tensor<B, 1>],
        steepness: Tensor<B, 1>,
    ) -> Tensor<B, 2> {
        let n = columns[0].dims()[0];
        let mut product: Option<Tensor<B, 2>> = None;
        for (j, axis) in self.axes.iter().enumerate() {
            let m = axis.membership(
                &columns[j],
                &params[j],
                steepness.clone().slice([j..j + 1]),
            );
            product = Some(match product {
                None => m,
                Some(p) => {
                    let cells = p.dims()[1] * axis.categories;
                    (p.unsqueeze_dim::<3>(2) * m.unsqueeze_dim::<3>(1))
                        .reshape([n, cells])
                }
            });
        }
        product.expect("a grid has at least one discriminant")
    }

    /// Hard category of every event.
    pub fn assign(&self, params: &Params, discriminants: &[Vec<f64>]) -> Vec<u32> {
        let cuts = self.boundaries(params);
        let n = discriminants[0].len();
        let mut out = vec![0u32; n];
        for ((axis, cuts), values) in self.axes.iter().zip(&cuts).zip(discriminants) {
            let k = axis.categories as u32;
            for (c, &x) in out.iter_mut().zip(values) {
                *c = *c * k + category_of(cuts, x);
            }
        }
        out
    }
}

fn axis_params(raw: &[f64]) -> Params {
    Params {
        names: vec!["raw".into()],
        shapes: vec![vec![raw.len()]],
        values: vec![raw.to_vec()],
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, NdArray};

    use super::*;
    use crate::model::{tensor1, to_host};

    type B = Autodiff<NdArray<f64>>;

    fn grid_and_params() -> (SigmoidGrid, Params) {
        let grid = SigmoidGrid::new(&[(2, 0.0, 1.0), (3, -1.0, 1.0)]);
        let params = Params {
            names: grid.names(),
            shapes: vec![vec![1], vec![2]],
            values: vec![vec![0.3], vec![-0.2, 0.4]],
        };
        (grid, params)
    }

    #[test]
    fn cells_are_numbered_row_major() {
        let (grid, params) = grid_and_params();
        assert_eq!(grid.categories(), 6);
        assert_eq!(grid.indices(4), vec![1, 1]);
        let b = grid.boundaries(&params);
        // The first discriminant's cut is softmax([0.3, 0])[0] = 1/(1 + e^-0.3).
        let first = 1.0 / (1.0 + (-0.3f64).exp());
        assert!((b[0][0] - first).abs() < 1e-15);
        let x0 = vec![first - 1e-9, first, 0.99];
        let x1 = vec![-0.99, b[1][0], 0.99];
        assert_eq!(grid.assign(&params, &[x0, x1]), vec![0, 4, 5]);
        let cells = grid.cells(&params);
        assert_eq!(cells[4], vec![[first, 1.0], [b[1][0], b[1][1]]]);
    }

    #[test]
    fn membership_is_product_of_axis_memberships() {
        let (grid, params) = grid_and_params();
        let device = Default::default();
        let x0 = [0.1, 0.55, 0.9];
        let x1 = [-0.5, 0.05, 0.7];
        let column = |v: &[f64]| tensor1::<B>(v, &device).reshape([3, 1]);
        let raws: Vec<Tensor<B, 1>> =
            params.values.iter().map(|v| tensor1::<B>(v, &device)).collect();
        let m = to_host(grid.membership(
            &[column(&x0), column(&x1)],
            &raws,
            tensor1::<B>(&[20.0, 7.0], &device),
        ));
        // Float64 re-computation from the boundaries.
        let b = grid.boundaries(&params);
        let logistic = |z: f64| 1.0 / (1.0 + (-z).exp());
        let bins = |x: f64, cuts: &[f64], k: f64| -> Vec<f64> {
            let above: Vec<f64> = cuts.iter().map(|c| logistic(k * (x - c))).collect();
            let mut out = vec![1.0 - above[0]];
            for i in 1..cuts.len() {
                out.push(above[i - 1] - above[i]);
            }
            out.push(above[cuts.len() - 1]);
            out
        };
        for e in 0..3 {
            let (m0, m1) = (bins(x0[e], &b[0], 20.0), bins(x1[e], &b[1], 7.0));
            let row = &m[e * 6..(e + 1) * 6];
            for c in 0..6 {
                let want = m0[c / 3] * m1[c % 3];
                assert!(
                    (row[c] - want).abs() < 1e-14,
                    "event {e}, cell {c}: {} vs {want}",
                    row[c]
                );
            }
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-14);
        }
    }
}
