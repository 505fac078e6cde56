//! [`Trainer`]: the training loop of one model, one K and one start.

use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use super::Optimizer;
use crate::config::{Checkpoint, ModelKind, Pipeline};
use crate::error::{Error, Result};
use crate::evaluate::evaluate;
use crate::model::{CategoryModel, Params, tensor1, to_host};
use crate::objective::{EventTensors, Objective, SoftYields};
use crate::select::Events;

/// Record of one epoch.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct EpochRecord {
    /// Epoch index, from 0.
    pub epoch: usize,
    /// Loss that was minimised.
    #[serde(deserialize_with = "crate::report::number_or_nan")]
    pub loss: f64,
    /// Soft (differentiable) significance.
    #[serde(deserialize_with = "crate::report::number_or_nan")]
    pub soft_z: f64,
    /// Hard significance of the same parameters, evaluated exactly.
    #[serde(deserialize_with = "crate::report::number_or_nan")]
    pub hard_z: f64,
    /// Low-background penalty, λ included.
    #[serde(deserialize_with = "crate::report::number_or_nan")]
    pub low_background_penalty: f64,
    /// MC-uncertainty penalty, λ included.
    #[serde(deserialize_with = "crate::report::number_or_nan")]
    pub mc_uncertainty_penalty: f64,
    /// Learning rate of the step taken after this epoch.
    #[serde(deserialize_with = "crate::report::number_or_nan")]
    pub learning_rate: f64,
    /// Steepness (sigmoid) or temperature (GMM).
    #[serde(deserialize_with = "crate::report::number_or_nan")]
    pub anneal: f64,
    /// Boundaries of 1D sigmoid cuts.
    pub boundaries: Option<Vec<f64>>,
    /// Cuts per discriminant of a sigmoid grid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid_boundaries: Option<Vec<Vec<f64>>>,
    /// Steepness per discriminant of a sigmoid grid (`anneal` is the
    /// first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steepness: Option<Vec<f64>>,
    /// Background reweighting factors per category used in this epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background_factors: Option<Vec<f64>>,
}

/// Result of one training run.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Parameters kept by the checkpoint rule.
    pub params: Params,
    /// Epoch whose parameters were kept.
    pub kept_epoch: usize,
    /// Soft significance at the kept epoch.
    pub soft_z: f64,
    /// Steepness or temperature at the kept epoch.
    pub anneal: f64,
    /// Background reweighting factors at the kept epoch.
    pub factors: Option<Vec<f64>>,
    /// Every epoch.
    pub history: Vec<EpochRecord>,
}

/// Trains one model on resident event tensors.
pub struct Trainer<'a, B: AutodiffBackend> {
    /// The pipeline.
    pub pipeline: &'a Pipeline,
    /// The selected events on the host, for exact evaluation.
    pub events: &'a Events,
    /// The same events on the device.
    pub tensors: &'a EventTensors<B>,
    /// The device.
    pub device: B::Device,
}

/// Stage that changes the background reweighting factors between epochs.
///
/// Before each epoch it gets the epoch index and the hard category of every
/// event under the current parameters, and returns new factors (one per
/// category) or `None` to keep the current ones.
pub type FactorUpdate<'a> = dyn FnMut(usize, &[u32]) -> Option<Vec<f64>> + 'a;

/// Loss, its parts and the gradient of one epoch.
struct Step {
    loss: f64,
    soft_z: f64,
    low_background: f64,
    mc_uncertainty: f64,
    /// Gradient of the loss per parameter tensor.
    gradients: Vec<Vec<f64>>,
}

/// Soft yields copied to the host.
struct HostYields {
    signals: Vec<Vec<f64>>,
    background: Vec<f64>,
    background2: Vec<f64>,
}

impl HostYields {
    fn add<B: burn::tensor::backend::Backend>(&mut self, y: SoftYields<B>) {
        let add = |total: &mut Vec<f64>, part: Vec<f64>| {
            total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
        };
        for (total, part) in self.signals.iter_mut().zip(y.signals) {
            add(total, to_host(part));
        }
        add(&mut self.background, to_host(y.background));
        add(&mut self.background2, to_host(y.background2));
    }
}

impl<B: AutodiffBackend> Trainer<'_, B> {
    /// Computes the loss and its gradient at `params`: in one pass over the
    /// resident events, or with `training.chunk_events` in two passes over
    /// chunks of events.
    ///
    /// The loss depends on the events only through the soft yields Y, which
    /// are sums over events. The first pass adds up Y chunk by chunk without
    /// gradients and gets g = ∂L/∂Y on the small yield tensors; the second
    /// differentiates ⟨g, Y_chunk⟩ chunk by chunk and adds the results,
    /// which by the chain rule is ∂L/∂θ. Only one chunk's graph is held at a
    /// time.
    fn step(
        &self,
        model: &CategoryModel,
        objective: &Objective,
        params: &Params,
        anneal: &[f64],
        factors: Option<&[f64]>,
    ) -> Step {
        let device = &self.device;
        let scalar = |t: Tensor<B, 1>| to_host(t)[0];
        let gradient_of = |tensors: &[Tensor<B, 1>],
                           grads: &B::Gradients|
         -> Vec<Vec<f64>> {
            tensors
                .iter()
                .map(|t| {
                    t.grad(grads).map(to_host).unwrap_or_else(|| vec![0.0; t.dims()[0]])
                })
                .collect()
        };
        let leaves = || -> Vec<Tensor<B, 1>> {
            params.values.iter().map(|v| tensor1::<B>(v, device).require_grad()).collect()
        };
        let n = self.tensors.len();
        let chunk = self.pipeline.training.chunk_events.filter(|&c| c < n);
        let Some(chunk) = chunk else {
            let tensors = leaves();
            let m = model.membership(
                &self.tensors.columns,
                &tensors,
                tensor1::<B>(anneal, device),
            );
            let parts = objective.compute(m, self.tensors, factors);
            let grads = parts.loss.backward();
            return Step {
                gradients: gradient_of(&tensors, &grads),
                loss: scalar(parts.loss),
                soft_z: scalar(parts.significance),
                low_background: scalar(parts.low_background),
                mc_uncertainty: scalar(parts.mc_uncertainty),
            };
        };
        let chunks: Vec<std::ops::Range<usize>> =
            (0..n).step_by(chunk).map(|start| start..(start + chunk).min(n)).collect();
        let k = model.categories();

        // Pass 1: the yields of all events, without a graph.
        let constants: Vec<Tensor<B, 1>> =
            params.values.iter().map(|v| tensor1::<B>(v, device)).collect();
        let signals = self
            .tensors
            .roles
            .iter()
            .filter(|r| **r == crate::config::Role::Signal)
            .count();
        let mut totals = HostYields {
            signals: vec![vec![0.0; k]; signals],
            background: vec![0.0; k],
            background2: vec![0.0; k],
        };
        for rows in &chunks {
            let part = self.tensors.chunk(rows.clone());
            let m =
                model.membership(&part.columns, &constants, tensor1::<B>(anneal, device));
            totals.add(Objective::yields(m, &part, factors));
        }

        // g = ∂L/∂Y on leaf yield tensors.
        let leaf = |v: &[f64]| tensor1::<B>(v, device).require_grad();
        let yields = SoftYields {
            signals: totals.signals.iter().map(|v| leaf(v)).collect(),
            background: leaf(&totals.background),
            background2: leaf(&totals.background2),
        };
        let parts = objective.from_yields(yields.clone());
        let grads = parts.loss.clone().backward();
        let g = |t: &Tensor<B, 1>| -> Tensor<B, 1> {
            let values = t.grad(&grads).map(to_host).unwrap_or_else(|| vec![0.0; k]);
            tensor1::<B>(&values, device)
        };
        let g_signals: Vec<Tensor<B, 1>> = yields.signals.iter().map(g).collect();
        let (g_background, g_background2) =
            (g(&yields.background), g(&yields.background2));

        // Pass 2: ∂⟨g, Y_chunk⟩/∂θ, added over the chunks.
        let mut gradients: Vec<Vec<f64>> =
            params.values.iter().map(|v| vec![0.0; v.len()]).collect();
        for rows in &chunks {
            let tensors = leaves();
            let part = self.tensors.chunk(rows.clone());
            let m =
                model.membership(&part.columns, &tensors, tensor1::<B>(anneal, device));
            let y = Objective::yields(m, &part, factors);
            let mut surrogate = (y.background * g_background.clone()).sum()
                + (y.background2 * g_background2.clone()).sum();
            for (s, gs) in y.signals.into_iter().zip(&g_signals) {
                surrogate = surrogate + (s * gs.clone()).sum();
            }
            let grads = surrogate.backward();
            for (total, part) in gradients.iter_mut().zip(gradient_of(&tensors, &grads)) {
                total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
            }
        }
        Step {
            gradients,
            loss: scalar(parts.loss),
            soft_z: scalar(parts.significance),
            low_background: scalar(parts.low_background),
            mc_uncertainty: scalar(parts.mc_uncertainty),
        }
    }

    /// Runs every epoch from `init`, calling `tick` after each.
    pub fn train(
        &self,
        model: &CategoryModel,
        init: Params,
        tick: &mut dyn FnMut(&EpochRecord),
    ) -> Result<TrainOutcome> {
        self.train_with(model, init, &mut |_, _| None, tick)
    }

    /// [`Trainer::train`] with a stage that updates the background
    /// reweighting factors (see [`FactorUpdate`]); the update is ignored
    /// unless the pipeline has `objective.background_reweight`.
    pub fn train_with(
        &self,
        model: &CategoryModel,
        init: Params,
        update: &mut FactorUpdate<'_>,
        tick: &mut dyn FnMut(&EpochRecord),
    ) -> Result<TrainOutcome> {
        let pipeline = self.pipeline;
        let epochs = pipeline.training.epochs;
        let k = model.categories();
        let objective = Objective::new(pipeline.objective.clone());
        let mut params = init;
        let mut optimizer = Optimizer::new(pipeline.optimizer.kind, &params);
        let mut history = Vec::new();
        let mut factors = pipeline.objective.reweight.as_ref().map(|r| r.initial(k));
        // (meets constraints, hard Z, epoch, parameters, soft Z, anneal, factors)
        type KeptEpoch = (bool, f64, usize, Params, f64, f64, Option<Vec<f64>>);
        let mut kept: Option<KeptEpoch> = None;

        for epoch in 0..epochs {
            let learning_rate = pipeline.optimizer.learning_rate.value(epoch, epochs);
            let anneal: Vec<f64> = match pipeline.model.kind {
                ModelKind::Sigmoid => pipeline
                    .model
                    .steepness
                    .iter()
                    .map(|s| s.value(epoch, epochs))
                    .collect(),
                ModelKind::Gmm => vec![pipeline.model.temperature.value(epoch, epochs)],
            };
            let assign = model.assign(&params, &self.events.discriminants);
            if let Some(current) = factors.as_mut() {
                if let Some(new) = update(epoch, &assign) {
                    if new.len() != k || new.iter().any(|f| !(f.is_finite() && *f >= 0.0))
                    {
                        return Err(Error::Train(format!(
                            "the background reweighting factors at epoch {epoch} must be {k} \
                             finite, non-negative numbers, got {new:?}"
                        )));
                    }
                    tracing::info!(epoch, factors = ?new, "updated the background reweighting factors");
                    *current = new;
                }
            }

            // Forward and backward on the device.
            let step = self.step(model, &objective, &params, &anneal, factors.as_deref());
            let Step { loss, soft_z, low_background, mc_uncertainty, gradients } = step;
            if !loss.is_finite() || gradients.iter().flatten().any(|g| !g.is_finite()) {
                return Err(Error::Train(format!(
                    "the loss or its gradient is not finite at epoch {epoch} (loss {loss}); \
                     check the weights for extreme values and for categories whose \
                     background yield can turn negative (negative weights), or lower \
                     the learning rate"
                )));
            }

            // Exact evaluation of the current parameters.
            let table =
                evaluate(pipeline, self.events, &assign, k, None, factors.as_deref());
            let cuts = model.cuts(&params);
            let record = EpochRecord {
                epoch,
                loss,
                soft_z,
                hard_z: table.z,
                low_background_penalty: low_background,
                mc_uncertainty_penalty: mc_uncertainty,
                learning_rate,
                anneal: anneal[0],
                boundaries: match (model, &cuts) {
                    (CategoryModel::Sigmoid(_), Some(c)) => Some(c[0].clone()),
                    _ => None,
                },
                grid_boundaries: if matches!(model, CategoryModel::Grid(_)) {
                    cuts
                } else {
                    None
                },
                steepness: matches!(model, CategoryModel::Grid(_))
                    .then(|| anneal.clone()),
                background_factors: factors.clone(),
            };
            let feasible = table.meets_constraints(pipeline);
            let better = match (&kept, pipeline.training.checkpoint) {
                (_, Checkpoint::Last) | (None, Checkpoint::Best) => true,
                (Some((kept_feasible, best, ..)), Checkpoint::Best) => {
                    (feasible, table.z) > (*kept_feasible, *best)
                }
            };
            if better {
                kept = Some((
                    feasible,
                    table.z,
                    epoch,
                    params.clone(),
                    soft_z,
                    anneal[0],
                    factors.clone(),
                ));
            }
            tick(&record);
            tracing::trace!(epoch, loss, soft_z, hard_z = table.z, "epoch");
            history.push(record);

            optimizer.step(&mut params, &gradients, learning_rate);
        }
        let (_, _, kept_epoch, params, soft_z, anneal, factors) =
            kept.ok_or_else(|| Error::Internal("no epoch was recorded".into()))?;
        Ok(TrainOutcome { params, kept_epoch, soft_z, anneal, factors, history })
    }
}
