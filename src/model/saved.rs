//! [`SavedModel`]: a trained category model as a JSON file, which
//! `gato apply` loads to categorise other files.
//!
//! The file records the model kind, K, the discriminant columns it expects,
//! their ranges, the fixed settings and the raw parameters in float64. JSON
//! numbers are written with round-trip precision, so a loaded model assigns
//! exactly the categories of the run that saved it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{CategoryModel, GaussianMixture, Params, SigmoidCuts, SigmoidGrid};
use crate::config::{GmmInit, ModelKind};
use crate::error::{Error, Result};

/// Value of the `format` field.
pub const FORMAT: &str = "gato-category-model";
/// Layout version this gato writes and reads.
pub const VERSION: u32 = 1;

/// A trained model as stored in `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedModel {
    /// Always `gato-category-model`.
    pub format: String,
    /// Layout version, [`VERSION`].
    pub version: u32,
    /// `sigmoid` or `gmm`.
    pub kind: ModelKind,
    /// Number of categories K.
    pub categories: usize,
    /// Columns the model reads, in order.
    pub discriminants: Vec<String>,
    /// `[low, high]` per discriminant.
    pub ranges: Vec<[f64; 2]>,
    /// GMM means on the simplex (GMM only).
    pub simplex: bool,
    /// GMM base width (GMM only).
    pub sigma_base: f64,
    /// GMM off-diagonal factor (GMM only).
    pub damping: f64,
    /// Sigmoid cut positions, for reading only; `parameters` defines them.
    pub boundaries: Option<Vec<f64>>,
    /// Bins per discriminant of a sigmoid model on several discriminants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bins: Option<Vec<usize>>,
    /// Cut positions per discriminant of such a grid, for reading only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid_boundaries: Option<Vec<Vec<f64>>>,
    /// Raw parameters.
    pub parameters: Params,
}

impl SavedModel {
    /// Describes `model` with `params`, reading `discriminants`.
    pub fn new(
        model: &CategoryModel,
        params: &Params,
        discriminants: &[String],
    ) -> SavedModel {
        let (kind, ranges, simplex, sigma_base, damping, boundaries) = match model {
            CategoryModel::Sigmoid(m) => (
                ModelKind::Sigmoid,
                vec![[m.low, m.high]],
                false,
                0.0,
                0.0,
                Some(m.boundaries(params)),
            ),
            CategoryModel::Grid(m) => (
                ModelKind::Sigmoid,
                m.axes.iter().map(|a| [a.low, a.high]).collect(),
                false,
                0.0,
                0.0,
                None,
            ),
            CategoryModel::Gmm(m) => (
                ModelKind::Gmm,
                m.ranges.iter().map(|r| [r.0, r.1]).collect(),
                m.simplex,
                m.sigma_base,
                m.damping,
                None,
            ),
        };
        SavedModel {
            format: FORMAT.into(),
            version: VERSION,
            kind,
            categories: model.categories(),
            discriminants: discriminants.to_vec(),
            ranges,
            simplex,
            sigma_base,
            damping,
            boundaries,
            bins: matches!(model, CategoryModel::Grid(_)).then(|| model.bins()),
            grid_boundaries: match model {
                CategoryModel::Grid(m) => Some(m.boundaries(params)),
                _ => None,
            },
            parameters: params.clone(),
        }
    }

    /// Writes the model as pretty JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Internal(format!("serialising the model: {e}")))?;
        crate::atomic::write(path, json.as_bytes())
    }

    /// Reads and checks a model file.
    pub fn load(path: &Path) -> Result<SavedModel> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| model_error(path, format!("cannot read it: {e}")))?;
        Self::from_json(&text, path)
    }

    /// Parses and checks the text of a model file; `path` names it in
    /// messages.
    pub fn from_json(text: &str, path: &Path) -> Result<SavedModel> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| model_error(path, format!("not JSON: {e}")))?;
        if value["format"] != FORMAT {
            return Err(model_error(
                path,
                format!(
                    "not a gato model: `format` is {}, expected \"{FORMAT}\"",
                    value["format"]
                ),
            ));
        }
        if value["version"] != VERSION {
            return Err(model_error(
                path,
                format!(
                    "version {} is not supported; this gato reads version \
                     {VERSION}, so retrain the model or use the gato that wrote it",
                    value["version"]
                ),
            ));
        }
        let saved: SavedModel = serde_json::from_value(value)
            .map_err(|e| model_error(path, format!("invalid: {e}")))?;
        saved
            .check()
            .map_err(|message| model_error(path, format!("invalid: {message}")))?;
        Ok(saved)
    }

    /// Checks that the fields fit together.
    fn check(&self) -> Result<(), String> {
        let (k, d) = (self.categories, self.discriminants.len());
        if k < 2 {
            return Err(format!("`categories` must be at least 2, got {k}"));
        }
        if d == 0 || self.ranges.len() != d {
            return Err(format!(
                "{d} discriminants but {} ranges; give one range per discriminant",
                self.ranges.len()
            ));
        }
        if let Some(r) = self
            .ranges
            .iter()
            .find(|r| !(r[0].is_finite() && r[1].is_finite() && r[0] < r[1]))
        {
            return Err(format!("range [{}, {}] is empty or not finite", r[0], r[1]));
        }
        let names: Vec<String>;
        let expected: Vec<(&str, usize)> = match (self.kind, &self.bins) {
            (ModelKind::Sigmoid, None) if d != 1 => {
                return Err(format!(
                    "a sigmoid model on {d} discriminants needs `bins`, one number per discriminant"
                ));
            }
            (ModelKind::Sigmoid, None) => vec![("raw", k - 1)],
            (ModelKind::Sigmoid, Some(bins)) => {
                if bins.len() != d || bins.iter().any(|&b| b < 2) {
                    return Err(format!(
                        "`bins` must give at least 2 bins for each of the {d} discriminants, got {bins:?}"
                    ));
                }
                if bins.iter().try_fold(1usize, |a, &b| a.checked_mul(b)) != Some(k) {
                    return Err(format!(
                        "`bins` {bins:?} do not multiply to `categories` = {k}"
                    ));
                }
                names = (0..d).map(|j| format!("raw_{j}")).collect();
                names.iter().zip(bins).map(|(n, b)| (n.as_str(), b - 1)).collect()
            }
            (ModelKind::Gmm, Some(_)) => {
                return Err("`bins` applies to sigmoid models only".into());
            }
            (ModelKind::Gmm, None) => {
                vec![("logits", k), ("means", k * d), ("scale", k * d * d)]
            }
        };
        let p = &self.parameters;
        if p.names.len() != expected.len() || p.values.len() != expected.len() {
            return Err(format!(
                "expected the parameters {:?}",
                expected.iter().map(|e| e.0).collect::<Vec<_>>()
            ));
        }
        for ((name, len), (got_name, values)) in
            expected.iter().zip(p.names.iter().zip(&p.values))
        {
            if got_name != name || values.len() != *len {
                return Err(format!(
                    "parameter `{got_name}` with {} values where `{name}` with {len} values is expected",
                    values.len()
                ));
            }
            if values.iter().any(|v| !v.is_finite()) {
                return Err(format!("parameter `{name}` has a non-finite value"));
            }
        }
        if self.kind == ModelKind::Gmm
            && !(self.sigma_base.is_finite() && self.sigma_base > 0.0)
        {
            return Err(format!(
                "`sigma_base` must be positive, got {}",
                self.sigma_base
            ));
        }
        if let Some((i, name)) = self
            .discriminants
            .iter()
            .enumerate()
            .find(|(i, n)| self.discriminants[..*i].contains(n))
        {
            return Err(format!(
                "discriminant `{name}` is listed twice (entry {})",
                i + 1
            ));
        }
        for ((name, shape), values) in p.names.iter().zip(&p.shapes).zip(&p.values) {
            if shape.iter().product::<usize>() != values.len() {
                return Err(format!(
                    "parameter `{name}` has shape {shape:?} but {} values",
                    values.len()
                ));
            }
        }
        // The cut positions are written for reading; they must agree with
        // the parameters, which define the model.
        let model = self.model();
        let written: Option<Vec<Vec<f64>>> =
            match (&self.boundaries, &self.grid_boundaries) {
                (Some(b), None) => Some(vec![b.clone()]),
                (None, Some(g)) => Some(g.clone()),
                (None, None) => None,
                (Some(_), Some(_)) => {
                    return Err("give `boundaries` or `grid_boundaries`, not both".into());
                }
            };
        let expected = model.cuts(&self.parameters);
        match (written, expected) {
            (None, None) => {}
            (Some(w), Some(e)) => {
                let same = w.len() == e.len()
                    && w.iter().zip(&e).all(|(a, b)| {
                        a.len() == b.len()
                            && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-9 * (1.0 + y.abs()))
                    });
                if !same {
                    return Err(format!(
                        "the cut positions {w:?} do not match the parameters, which put them at \
                         {e:?}; the parameters define the model, so remove the positions or \
                         restore the file"
                    ));
                }
            }
            (None, Some(_)) => {
                return Err("a sigmoid model needs its cut positions (`boundaries` or `grid_boundaries`)".into())
            }
            (Some(_), None) => return Err("only sigmoid models have cut positions".into()),
        }
        Ok(())
    }

    /// Builds the model this file describes.
    pub fn model(&self) -> CategoryModel {
        match self.kind {
            ModelKind::Sigmoid if self.bins.is_some() => {
                let bins = self.bins.as_deref().unwrap_or_default();
                let axes: Vec<(usize, f64, f64)> = bins
                    .iter()
                    .zip(&self.ranges)
                    .map(|(&b, r)| (b, r[0], r[1]))
                    .collect();
                CategoryModel::Grid(SigmoidGrid::new(&axes))
            }
            ModelKind::Sigmoid => CategoryModel::Sigmoid(SigmoidCuts::new(
                self.categories,
                self.ranges[0][0],
                self.ranges[0][1],
            )),
            ModelKind::Gmm => {
                let mut m = GaussianMixture::new(
                    self.categories,
                    self.ranges.iter().map(|r| (r[0], r[1])).collect(),
                    self.simplex,
                    Some(self.sigma_base),
                    GmmInit::Random,
                );
                m.damping = self.damping;
                CategoryModel::Gmm(m)
            }
        }
    }
}

fn model_error(path: &Path, message: String) -> Error {
    Error::Model { path: path.to_path_buf(), message }
}
