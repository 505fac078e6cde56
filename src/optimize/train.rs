//! [`Trainer`]: the training loop of one model, one K and one start.

use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use super::Optimizer;
use crate::config::{Checkpoint, ModelKind, Pipeline};
use crate::error::{Error, Result};
use crate::evaluate::evaluate;
use crate::model::{CategoryModel, Params, tensor1, to_host};
use crate::objective::{EventTensors, Objective};
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

impl<B: AutodiffBackend> Trainer<'_, B> {
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
            let tensors: Vec<Tensor<B, 1>> = params
                .values
                .iter()
                .map(|v| tensor1::<B>(v, &self.device).require_grad())
                .collect();
            let m = model.membership(
                &self.tensors.columns,
                &tensors,
                tensor1::<B>(&anneal, &self.device),
            );
            let parts = objective.compute(m, self.tensors, factors.as_deref());
            let grads = parts.loss.backward();
            let gradients: Vec<Vec<f64>> = tensors
                .iter()
                .map(|t| {
                    t.grad(&grads).map(to_host).unwrap_or_else(|| vec![0.0; t.dims()[0]])
                })
                .collect();
            let scalar = |t: Tensor<B, 1>| to_host(t)[0];
            let loss = scalar(parts.loss);
            let soft_z = scalar(parts.significance);
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
                low_background_penalty: scalar(parts.low_background),
                mc_uncertainty_penalty: scalar(parts.mc_uncertainty),
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
