//! The differentiable objective: soft yields per category, Asimov
//! significance per signal, and penalties.
//!
//! For membership m [N, K] and event weights w, the soft yield of process p
//! in category k is Σ_{i∈p} w_i·m_ik and its sum of weights squared
//! Σ_{i∈p} w_i²·m_ik. Each signal's significance counts the other signals as
//! background; several signals' combined significances √(Σ_k Z_k²) are
//! combined by the pipeline's rule (geometric mean by default). The loss is
//! −Z + λ_low·Σ_k relu(t − B_k)² + λ_mc·Σ_k relu(√Σw²_k / B_k − r)².
//!
//! With `objective.background_reweight`, the chosen background processes
//! enter category k with their yield times f_k and their Σw² times f_k².
//! The factors are an input of [`Objective::compute`], so a stage that
//! estimates them (from a sideband fit, say) can change them between
//! epochs.

use std::ops::Range;

use burn::tensor::Tensor;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;

use crate::config::{CombineRule, ObjectiveSpec, Pipeline, Role, SignificanceKind};
use crate::model::tensor1;
use crate::select::Events;

/// Events as constant tensors on one device, sorted by process.
#[derive(Debug, Clone)]
pub struct EventTensors<B: Backend> {
    /// One [N, 1] tensor per discriminant.
    pub columns: Vec<Tensor<B, 2>>,
    /// Weights, [N, 1].
    pub weight: Tensor<B, 2>,
    /// Squared weights, [N, 1].
    pub weight2: Tensor<B, 2>,
    /// Event range of each process.
    pub ranges: Vec<Range<usize>>,
    /// Role of each process.
    pub roles: Vec<Role>,
    /// Whether each process is scaled by the reweighting factors.
    pub scaled: Vec<bool>,
}

impl<B: Backend> EventTensors<B> {
    /// Copies the events to `device`.
    pub fn new(events: &Events, pipeline: &Pipeline, device: &B::Device) -> Self {
        let n = events.len();
        let column = |v: &[f64]| tensor1::<B>(v, device).reshape([n, 1]);
        let squared: Vec<f64> = match &events.weight2 {
            Some(w2) => w2.clone(),
            None => events.weight.iter().map(|w| w * w).collect(),
        };
        EventTensors {
            columns: events.discriminants.iter().map(|d| column(d)).collect(),
            weight: column(&events.weight),
            weight2: column(&squared),
            ranges: events.process_ranges.clone(),
            roles: pipeline.processes.iter().map(|p| p.role).collect(),
            scaled: match &pipeline.objective.reweight {
                Some(r) => r.scaled.clone(),
                None => vec![false; pipeline.processes.len()],
            },
        }
    }
}

impl<B: Backend> EventTensors<B> {
    /// Returns the events in `rows`, with the process ranges cut to them
    /// and shifted to start at 0.
    pub fn chunk(&self, rows: Range<usize>) -> EventTensors<B> {
        let slice = |t: &Tensor<B, 2>| t.clone().slice([rows.clone(), 0..1]);
        EventTensors {
            columns: self.columns.iter().map(slice).collect(),
            weight: slice(&self.weight),
            weight2: slice(&self.weight2),
            ranges: self
                .ranges
                .iter()
                .map(|r| {
                    let start = r.start.clamp(rows.start, rows.end);
                    let end = r.end.clamp(rows.start, rows.end);
                    start - rows.start..end - rows.start
                })
                .collect(),
            roles: self.roles.clone(),
            scaled: self.scaled.clone(),
        }
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Returns whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The loss and its parts, each of shape [1].
#[derive(Debug, Clone)]
pub struct LossParts<B: Backend> {
    /// Value to minimise.
    pub loss: Tensor<B, 1>,
    /// Objective significance (geometric mean over signals).
    pub significance: Tensor<B, 1>,
    /// Low-background penalty, λ included.
    pub low_background: Tensor<B, 1>,
    /// MC-uncertainty penalty, λ included.
    pub mc_uncertainty: Tensor<B, 1>,
}

/// Soft yields per category, each of shape [K].
#[derive(Debug, Clone)]
pub struct SoftYields<B: Backend> {
    /// Yield of each signal process.
    pub signals: Vec<Tensor<B, 1>>,
    /// Total background yield.
    pub background: Tensor<B, 1>,
    /// Total background Σw².
    pub background2: Tensor<B, 1>,
}

/// Computes the loss from soft memberships.
#[derive(Debug, Clone)]
pub struct Objective {
    /// The validated settings.
    pub spec: ObjectiveSpec,
}

impl Objective {
    /// Builds the objective.
    pub fn new(spec: ObjectiveSpec) -> Objective {
        Objective { spec }
    }

    /// Loss and parts for membership `m` [N, K]. `factors` [K] scales the
    /// reweighted background processes; `None` leaves them as they are.
    pub fn compute<B: Backend>(
        &self,
        m: Tensor<B, 2>,
        events: &EventTensors<B>,
        factors: Option<&[f64]>,
    ) -> LossParts<B> {
        self.from_yields(Self::yields(m, events, factors))
    }

    /// Computes the soft yields of membership `m` [N, K] of `events`: per
    /// signal, and of the background with its Σw², each [K]. `factors` scale the
    /// reweighted background processes as in [`Objective::compute`].
    ///
    /// Yields add up over disjoint sets of events, so the yields of all
    /// events are the sum of the yields of chunks of them.
    pub fn yields<B: Backend>(
        m: Tensor<B, 2>,
        events: &EventTensors<B>,
        factors: Option<&[f64]>,
    ) -> SoftYields<B> {
        let k = m.dims()[1];
        let device = m.device();
        let weighted = m.clone() * events.weight.clone();
        let weighted2 = m * events.weight2.clone();
        let sum_rows = |t: &Tensor<B, 2>, r: &Range<usize>| -> Tensor<B, 1> {
            if r.is_empty() {
                return Tensor::<B, 1>::zeros([k], &device);
            }
            t.clone().slice([r.clone(), 0..k]).sum_dim(0).reshape([k])
        };
        let mut signals = Vec::new();
        let mut background = Tensor::<B, 1>::zeros([k], &device);
        let mut background2 = Tensor::<B, 1>::zeros([k], &device);
        let factors = factors.map(|f| {
            let squared: Vec<f64> = f.iter().map(|x| x * x).collect();
            (tensor1::<B>(f, &device), tensor1::<B>(&squared, &device))
        });
        for ((range, role), scaled) in
            events.ranges.iter().zip(&events.roles).zip(&events.scaled)
        {
            match (role, &factors) {
                (Role::Signal, _) => signals.push(sum_rows(&weighted, range)),
                (Role::Background, Some((f, f2))) if *scaled => {
                    background = background + sum_rows(&weighted, range) * f.clone();
                    background2 = background2 + sum_rows(&weighted2, range) * f2.clone();
                }
                (Role::Background, _) => {
                    background = background + sum_rows(&weighted, range);
                    background2 = background2 + sum_rows(&weighted2, range);
                }
            }
        }
        SoftYields { signals, background, background2 }
    }

    /// Loss and parts from soft yields.
    pub fn from_yields<B: Backend>(&self, yields: SoftYields<B>) -> LossParts<B> {
        let SoftYields { signals, background, background2 } = yields;
        let device = background.device();
        let mut totals: Vec<Tensor<B, 1>> = Vec::with_capacity(signals.len());
        for (i, s) in signals.iter().enumerate() {
            let mut b = background.clone();
            for (j, other) in signals.iter().enumerate() {
                if j != i {
                    b = b + other.clone();
                }
            }
            let z = category_z_tensor(self.spec.significance, s.clone(), b);
            totals.push(z.powi_scalar(2).sum().clamp_min(1e-30).sqrt());
        }
        let significance = self.combine(totals);

        let zero = Tensor::<B, 1>::zeros([1], &device);
        let low_background = match self.spec.low_background {
            Some((threshold, lambda)) => {
                relu(background.clone().neg().add_scalar(threshold)).powi_scalar(2).sum()
                    * lambda
            }
            None => zero.clone(),
        };
        let mc_uncertainty = match self.spec.mc_uncertainty {
            Some((max_relative, lambda)) => {
                let relative =
                    background2.clamp_min(1e-30).sqrt() / background.clamp_min(1e-9);
                relu(relative.sub_scalar(max_relative)).powi_scalar(2).sum() * lambda
            }
            None => zero,
        };
        let loss =
            significance.clone().neg() + low_background.clone() + mc_uncertainty.clone();
        LossParts { loss, significance, low_background, mc_uncertainty }
    }
}

impl Objective {
    /// Combines per-signal significances, each of shape [1], by the
    /// pipeline's rule; one signal gives its own value under every rule.
    fn combine<B: Backend>(&self, totals: Vec<Tensor<B, 1>>) -> Tensor<B, 1> {
        let n = totals.len();
        if n == 1 {
            return totals.into_iter().next().expect("one signal");
        }
        let z = Tensor::cat(totals, 0);
        match self.spec.combine {
            CombineRule::Geometric => (z.log().sum() / n as f64).exp(),
            CombineRule::Arithmetic => z.sum() / n as f64,
            CombineRule::Minimum => z.min(),
            CombineRule::Quadrature => {
                let w = tensor1::<B>(&self.spec.signal_weights, &z.device());
                (z.powi_scalar(2) * w).sum().sqrt()
            }
        }
    }
}

/// Per-category significance on tensors, shape [K].
///
/// Both formulas clamp b at 1e-9 so the gradient stays finite. The branch
/// that is not taken gets a harmless placeholder argument, because its
/// gradient would otherwise turn into NaN.
pub fn category_z_tensor<B: Backend>(
    kind: SignificanceKind,
    s: Tensor<B, 1>,
    b: Tensor<B, 1>,
) -> Tensor<B, 1> {
    let b = b.clamp_min(1e-9);
    let r = s.clone() / b.clone();
    match kind {
        SignificanceKind::AsimovGato => {
            let small = r.clone().lower_elem(0.1);
            let approx = s.clone() / b.clone().sqrt();
            let u = ((s.clone() + b) * r.log1p() - s).mul_scalar(2.0);
            u.mask_fill(small.clone(), 1.0).sqrt().mask_where(small, approx)
        }
        SignificanceKind::Asimov => {
            let small = r.clone().lower_elem(1e-3);
            let series = (s.clone().powi_scalar(2) / b.clone())
                * (r.clone().mul_scalar(-1.0 / 3.0)
                    + r.clone().powi_scalar(2).mul_scalar(1.0 / 6.0)
                    - r.clone().powi_scalar(3).mul_scalar(0.1))
                .add_scalar(1.0);
            let direct = ((s.clone() + b) * r.clone().log1p() - s).mul_scalar(2.0);
            let z2 = direct.mask_where(small, series);
            z2.clamp_min(1e-30).sqrt()
        }
    }
}
