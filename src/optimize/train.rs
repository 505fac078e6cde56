//! [`Trainer`]: the training loop of one model, one K and one start.

use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use super::Optimizer;
use crate::config::{Checkpoint, ModelKind, Pipeline};
use crate::error::{Error, Result};
use crate::evaluate::{CategoryTable, CategoryYields, evaluate};
use crate::model::{CategoryModel, Params, tensor1, to_host};
use crate::objective::{EventTensors, Objective, SoftYields};
use crate::select::Events;
use crate::store::EventSet;

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

/// Trains one model.
pub struct Trainer<'a, B: AutodiffBackend> {
    /// The pipeline.
    pub pipeline: &'a Pipeline,
    /// The training events on the host, for exact evaluation.
    pub events: &'a EventSet,
    /// The same events resident on the device; `None` copies each chunk
    /// of `events` to the device when it is needed.
    pub tensors: Option<&'a EventTensors<B>>,
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
    /// Exact evaluation of the hard categories.
    table: CategoryTable,
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
    /// Calls `f` with each chunk of `chunk` events on the device, and on
    /// the host when the events are not resident.
    fn for_each_part(
        &self,
        chunk: usize,
        f: &mut dyn FnMut(&EventTensors<B>, Option<&Events>) -> Result<()>,
    ) -> Result<()> {
        match self.tensors {
            Some(tensors) => {
                let n = tensors.len();
                for start in (0..n).step_by(chunk.max(1)) {
                    f(&tensors.chunk(start..(start + chunk).min(n)), None)?;
                }
                Ok(())
            }
            None => self.events.for_each_chunk(|events| {
                let tensors = EventTensors::new(events, self.pipeline, &self.device);
                f(&tensors, Some(events))
            }),
        }
    }

    /// Computes the loss and its gradient at `params`, and evaluates the
    /// hard categories exactly: in one pass over the resident events, or
    /// in two passes over chunks of events (`training.chunk_events`, or
    /// events that are not resident).
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
    ) -> Result<Step> {
        let device = &self.device;
        let k = model.categories();
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
        // Exact evaluation of resident events on the host.
        let resident_table = || -> Option<CategoryTable> {
            let events = self.events.in_memory()?;
            let assign = model.assign(params, &events.discriminants);
            Some(evaluate(self.pipeline, events, &assign, k, None, factors))
        };
        let n = self.events.len();
        let chunk = self.pipeline.training.chunk_events.filter(|&c| c < n);
        if let (Some(tensors), None) = (self.tensors, chunk) {
            let leaves = leaves();
            let m =
                model.membership(&tensors.columns, &leaves, tensor1::<B>(anneal, device));
            let parts = objective.compute(m, tensors, factors);
            let grads = parts.loss.backward();
            return Ok(Step {
                gradients: gradient_of(&leaves, &grads),
                loss: scalar(parts.loss),
                soft_z: scalar(parts.significance),
                low_background: scalar(parts.low_background),
                mc_uncertainty: scalar(parts.mc_uncertainty),
                table: resident_table()
                    .ok_or_else(|| Error::Internal("resident tensors without events".into()))?,
            });
        }
        let chunk = chunk.unwrap_or(n);

        // Pass 1: the yields of all events, without a graph, and the hard
        // categories of events that are not resident.
        let constants: Vec<Tensor<B, 1>> =
            params.values.iter().map(|v| tensor1::<B>(v, device)).collect();
        let signals = self.pipeline.signal_indices().len();
        let mut totals = HostYields {
            signals: vec![vec![0.0; k]; signals],
            background: vec![0.0; k],
            background2: vec![0.0; k],
        };
        let mut hard = CategoryYields::new(self.pipeline, k);
        self.for_each_part(chunk, &mut |part, host| {
            let m =
                model.membership(&part.columns, &constants, tensor1::<B>(anneal, device));
            totals.add(Objective::yields(m, part, factors));
            if let Some(events) = host {
                hard.add(events, &model.assign(params, &events.discriminants));
            }
            Ok(())
        })?;
        let table = match resident_table() {
            Some(table) => table,
            None => hard.table(self.pipeline, None, factors),
        };

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
        self.for_each_part(chunk, &mut |part, _| {
            let tensors = leaves();
            let m =
                model.membership(&part.columns, &tensors, tensor1::<B>(anneal, device));
            let y = Objective::yields(m, part, factors);
            let mut surrogate = (y.background * g_background.clone()).sum()
                + (y.background2 * g_background2.clone()).sum();
            for (s, gs) in y.signals.into_iter().zip(&g_signals) {
                surrogate = surrogate + (s * gs.clone()).sum();
            }
            let grads = surrogate.backward();
            for (total, part) in gradients.iter_mut().zip(gradient_of(&tensors, &grads)) {
                total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
            }
            Ok(())
        })?;
        Ok(Step {
            gradients,
            loss: scalar(parts.loss),
            soft_z: scalar(parts.significance),
            low_background: scalar(parts.low_background),
            mc_uncertainty: scalar(parts.mc_uncertainty),
            table,
        })
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
            // The factors are refitted from the hard categories of events
            // in memory.
            let events = self.events.in_memory();
            if let (Some(current), Some(events)) = (factors.as_mut(), events) {
                let assign = model.assign(&params, &events.discriminants);
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
            let step = self.step(model, &objective, &params, &anneal, factors.as_deref())?;
            let Step { loss, soft_z, low_background, mc_uncertainty, gradients, table } = step;
            if !loss.is_finite() || gradients.iter().flatten().any(|g| !g.is_finite()) {
                return Err(Error::Train(format!(
                    "the loss or its gradient is not finite at epoch {epoch} (loss {loss}); \
                     check the weights for extreme values and for categories whose \
                     background yield can turn negative (negative weights), or lower \
                     the learning rate"
                )));
            }

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
