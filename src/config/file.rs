//! Serde structs that mirror the pipeline YAML key for key.
//!
//! Every struct rejects unknown keys. Defaults live here; checks that need
//! more than one key live in [`super::Pipeline::from_file`]. `docs/pipeline.md`
//! documents each key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

/// The whole pipeline file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// Name used in reports and in the default output directory.
    pub name: String,
    /// Seed for toy generation, initialisation and restarts.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Named event sources that processes refer to.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceFile>,
    /// The physics processes, each a signal or a background.
    pub processes: Vec<Spanned<ProcessFile>>,
    /// The event selection and weighting.
    pub selection: SelectionFile,
    /// The category model.
    pub model: Spanned<ModelFile>,
    /// The quantity that training maximises.
    #[serde(default)]
    pub objective: ObjectiveFile,
    /// The gradient-descent optimiser.
    #[serde(default)]
    pub optimizer: OptimizerFile,
    /// Epochs, restarts and checkpoints.
    #[serde(default)]
    pub training: TrainingFile,
    /// Exact evaluation and baselines.
    #[serde(default)]
    pub evaluation: EvaluationFile,
    /// Output directory; `gato run --out` overrides it.
    #[serde(default)]
    pub output: Option<String>,
    /// Training device: `cpu`, `cuda` or `cuda:N`; `gato run --device`
    /// overrides it.
    #[serde(default)]
    pub device: Option<String>,
    /// Plot settings.
    #[serde(default)]
    pub report: ReportFile,
}

fn default_seed() -> u64 {
    42
}

/// A named source of events: Parquet files or a built-in generator.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    /// Parquet paths or glob patterns.
    #[serde(default)]
    pub files: Option<Vec<String>>,
    /// Column whose value names the process of each row.
    #[serde(default)]
    pub process_column: Option<String>,
    /// A built-in toy generator instead of files.
    #[serde(default)]
    pub generator: Option<GeneratorFile>,
}

/// Settings of a built-in toy generator.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorFile {
    /// `toy-1d`, `three-class` or `resonance`.
    pub kind: GeneratorKind,
    /// Seed of the generator; the pipeline seed when absent.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Events per signal process.
    #[serde(default)]
    pub signal: Option<usize>,
    /// Background events in total, split by cross-section.
    #[serde(default)]
    pub background: Option<usize>,
    /// Mass resolution σ_m of the signal peak in GeV (`resonance` only;
    /// 1.5 when absent).
    #[serde(default)]
    pub mass_resolution: Option<f64>,
}

/// The built-in toy generators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GeneratorKind {
    /// One signal, five backgrounds, one likelihood-ratio score.
    #[serde(rename = "toy-1d")]
    Toy1d,
    /// Two signals, five backgrounds, three softmax-like scores.
    ThreeClass,
    /// The three-class toy with noise 0.2 and a diphoton-like `mass`
    /// column: a peak at 125 GeV for the signals, falling exponentials for
    /// the backgrounds.
    Resonance,
}

/// One physics process.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessFile {
    /// Process name, as it appears in the `process` column of `events`.
    pub name: String,
    /// `signal` or `background`.
    pub role: Role,
    /// Name of an entry under `sources`.
    #[serde(default)]
    pub source: Option<String>,
    /// Parquet paths or globs whose rows all belong to this process.
    #[serde(default)]
    pub files: Option<Vec<String>>,
    /// Value of the source's process column for this process; the name when
    /// absent.
    #[serde(default)]
    pub process_value: Option<String>,
    /// Normalisation of the selected weights.
    #[serde(default)]
    pub scale: Option<ScaleFile>,
}

/// Whether a process is signal or background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Signal,
    Background,
}

/// Per-process normalisation: weights are multiplied by
/// cross-section × luminosity / sum of generated weights.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleFile {
    /// Cross-section, in the unit whose inverse `luminosity` uses (e.g. pb).
    pub cross_section: f64,
    /// Integrated luminosity (e.g. pb⁻¹).
    pub luminosity: f64,
    /// Sum of the generator weights of the process before any selection.
    pub sum_generated_weights: f64,
}

/// The selection query and the columns it returns.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionFile {
    /// Path of a SQL file (relative to the working directory).
    #[serde(default)]
    pub sql_file: Option<String>,
    /// Inline SQL.
    #[serde(default)]
    pub sql: Option<String>,
    /// Output columns of the query that the model cuts on.
    pub discriminants: Vec<String>,
    /// Output column holding the event weight.
    #[serde(default = "default_weight")]
    pub weight: String,
    /// Handling of NaN or ±inf in a discriminant or the weight.
    #[serde(default)]
    pub non_finite: NonFinitePolicy,
    /// Output column holding the invariant mass, for `objective.sideband_fit`.
    #[serde(default)]
    pub mass: Option<String>,
    /// Storage of the selected events.
    #[serde(default)]
    pub events: EventStorage,
    /// Query engine that runs the SQL.
    #[serde(default)]
    pub engine: SelectEngine,
}

/// Query engine of the selection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SelectEngine {
    /// Apache DataFusion.
    #[default]
    DataFusion,
    /// Polars, with its SQL dialect.
    Polars,
}

/// Storage of the selected events between the stages of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStorage {
    /// In memory when they fit in half the memory budget, else on disk.
    #[default]
    Auto,
    /// In memory.
    Memory,
    /// On disk, read back chunk by chunk by every stage.
    Disk,
}

fn default_weight() -> String {
    "weight".into()
}

/// Handling of NaN and ±inf values after selection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NonFinitePolicy {
    /// Stop with the counts per process.
    #[default]
    Reject,
    /// Drop the events, with a warning giving the counts.
    Drop,
}

/// The category model.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// `sigmoid` or `gmm`.
    pub kind: ModelKind,
    /// One training run per entry: a number of categories K, or for the
    /// sigmoid model on several discriminants the bins per discriminant.
    pub categories: Spanned<Vec<CategoriesEntry>>,
    /// Range of the discriminants: one `[low, high]` for all, or one per
    /// discriminant; `[0, 1]` when absent.
    #[serde(default)]
    pub range: Option<Spanned<RangeFile>>,
    /// Sigmoid steepness schedule (sigmoid model only): one for all
    /// discriminants, or a list with one per discriminant.
    #[serde(default)]
    pub steepness: Option<Spanned<OneOrMany<ScheduleFile>>>,
    /// Softmax temperature schedule (GMM only).
    #[serde(default)]
    pub temperature: Option<Spanned<ScheduleFile>>,
    /// Base width of the GMM components; the volume-based default when
    /// absent.
    #[serde(default)]
    pub sigma_base: Option<f64>,
    /// Start of the GMM means; `quantiles` when absent.
    #[serde(default)]
    pub init: Option<GmmInit>,
    /// Mapping of raw GMM means onto the discriminant space.
    #[serde(default)]
    pub means: MeanMapping,
}

/// One entry of `model.categories`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum CategoriesEntry {
    /// K categories.
    Count(usize),
    /// Bins per discriminant of a sigmoid grid; K is their product.
    Bins(Vec<usize>),
}

impl<'de> Deserialize<'de> for CategoriesEntry {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = CategoriesEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of categories, or a list of bins per discriminant")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                usize::try_from(v).map(CategoriesEntry::Count).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                usize::try_from(v).map(CategoriesEntry::Count).map_err(|_| {
                    E::custom(format!(
                        "a number of categories cannot be negative, got {v}"
                    ))
                })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut bins = Vec::new();
                while let Some(b) = seq.next_element::<usize>()? {
                    bins.push(b);
                }
                Ok(CategoriesEntry::Bins(bins))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `model.range`: one `[low, high]` for every discriminant, or one per
/// discriminant.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RangeFile {
    /// The same range for every discriminant.
    One([f64; 2]),
    /// One range per discriminant.
    PerAxis(Vec<[f64; 2]>),
}

impl<'de> Deserialize<'de> for RangeFile {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Self, D::Error> {
        enum Item {
            Number(f64),
            Pair([f64; 2]),
        }
        impl<'de> Deserialize<'de> for Item {
            fn deserialize<D: serde::Deserializer<'de>>(
                deserializer: D,
            ) -> Result<Self, D::Error> {
                struct ItemVisitor;
                impl<'de> serde::de::Visitor<'de> for ItemVisitor {
                    type Value = Item;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a number or a [low, high] pair")
                    }
                    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Item, E> {
                        Ok(Item::Number(v))
                    }
                    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Item, E> {
                        Ok(Item::Number(v as f64))
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Item, E> {
                        Ok(Item::Number(v as f64))
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(
                        self,
                        mut seq: A,
                    ) -> Result<Item, A::Error> {
                        let mut values = Vec::new();
                        while let Some(v) = seq.next_element::<f64>()? {
                            values.push(v);
                        }
                        match values[..] {
                            [lo, hi] => Ok(Item::Pair([lo, hi])),
                            _ => Err(serde::de::Error::custom(format!(
                                "a range is [low, high], got {} numbers",
                                values.len()
                            ))),
                        }
                    }
                }
                deserializer.deserialize_any(ItemVisitor)
            }
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RangeFile;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "[low, high], or a list of [low, high] with one per discriminant",
                )
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Item>()? {
                    items.push(item);
                }
                match items.as_slice() {
                    [Item::Number(lo), Item::Number(hi)] => {
                        Ok(RangeFile::One([*lo, *hi]))
                    }
                    _ if !items.is_empty()
                        && items.iter().all(|i| matches!(i, Item::Pair(_))) =>
                    {
                        Ok(RangeFile::PerAxis(
                            items
                                .iter()
                                .filter_map(|i| {
                                    if let Item::Pair(p) = i { Some(*p) } else { None }
                                })
                                .collect(),
                        ))
                    }
                    _ => Err(serde::de::Error::custom(
                        "expected [low, high], or a list of [low, high] with one per discriminant",
                    )),
                }
            }
        }
        deserializer.deserialize_seq(Visitor)
    }
}

/// A value given once for every discriminant, or as a list with one entry
/// per discriminant.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// The same value for every discriminant.
    One(T),
    /// One value per discriminant.
    Many(Vec<T>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping, or a list of mappings with one per discriminant")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(OneOrMany::One)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<T>()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }
        deserializer.deserialize_any(Visitor(std::marker::PhantomData))
    }
}

/// Mapping of raw GMM means onto the discriminant space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MeanMapping {
    /// A sigmoid per dimension into `range`.
    #[default]
    Range,
    /// Softmax over d + 1 logits (the last fixed at 0), keeping the first d:
    /// for the outputs of a softmax classifier.
    Simplex,
}

/// The category models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Ordered sigmoid cuts on one discriminant.
    Sigmoid,
    /// Gaussian mixture with temperature-softmax assignment.
    Gmm,
}

/// Initialisation of the GMM means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GmmInit {
    /// Raw means drawn from N(0, 2), as gato-hep does.
    Random,
    /// Means at the weighted quantiles of the signal discriminant, so every
    /// component starts with an equal share of the signal.
    #[default]
    Quantiles,
}

/// A value that changes over the epochs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFile {
    /// `constant`, `cosine` or `exponential`.
    #[serde(default)]
    pub schedule: ScheduleKind,
    /// Value at the first epoch.
    pub initial: f64,
    /// Value at the last epoch; `initial` when absent.
    #[serde(default, rename = "final")]
    pub final_value: Option<f64>,
}

/// Shapes of a schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    #[default]
    Constant,
    Cosine,
    Exponential,
}

/// The objective.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveFile {
    /// The per-category significance formula.
    #[serde(default)]
    pub significance: SignificanceKind,
    /// Penalties subtracted from the significance.
    #[serde(default)]
    pub penalties: PenaltiesFile,
    /// Combination of the significances of several signals into one.
    #[serde(default)]
    pub combine: CombineRule,
    /// Weight of each signal, in the order of the processes, for
    /// `combine: quadrature`; 1 for every signal when absent.
    #[serde(default)]
    pub signal_weights: Option<Vec<f64>>,
    /// Per-category factors on the yields of some background processes.
    #[serde(default)]
    pub background_reweight: Option<ReweightFile>,
    /// Signal counted in a mass window, background in it estimated by a
    /// fit to each category's mass spectrum.
    #[serde(default)]
    pub sideband_fit: Option<SidebandFile>,
}

/// The mass-window settings of a resonance search.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SidebandFile {
    /// Signal mass window `[low, high]`.
    pub window: [f64; 2],
    /// Fit range of the background mass spectrum `[low, high]`.
    #[serde(default = "default_mass_range")]
    pub range: [f64; 2],
    /// Bins of the fitted spectrum.
    #[serde(default = "default_sideband_bins")]
    pub bins: usize,
    /// Epochs between two fits (a fit also runs before the first epoch).
    #[serde(default = "default_sideband_every")]
    pub every: usize,
}

fn default_mass_range() -> [f64; 2] {
    [100.0, 180.0]
}

fn default_sideband_bins() -> usize {
    10
}

fn default_sideband_every() -> usize {
    50
}

/// Per-category reweighting of a subset of the background processes: in
/// category k their yield is multiplied by f_k and their Σw² by f_k².
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReweightFile {
    /// Names of the background processes that are scaled.
    pub processes: Vec<String>,
    /// One factor for every category, or a list with one per category
    /// (only with a single entry in `model.categories`). 1 when absent.
    #[serde(default)]
    pub factors: Option<Factors>,
}

/// Reweighting factors: one for all categories, or one per category.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Factors {
    /// The same factor in every category.
    Uniform(f64),
    /// One factor per category.
    PerCategory(Vec<f64>),
}

impl<'de> Deserialize<'de> for Factors {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Factors;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number, or a list of numbers with one per category")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Factors, E> {
                Ok(Factors::Uniform(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Factors, E> {
                Ok(Factors::Uniform(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Factors, E> {
                Ok(Factors::Uniform(v as f64))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Factors, A::Error> {
                let mut values = Vec::new();
                while let Some(v) = seq.next_element::<f64>()? {
                    values.push(v);
                }
                Ok(Factors::PerCategory(values))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Combination of per-signal significances Z_i.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CombineRule {
    /// (Π Z_i)^(1/n): gato-hep's three-class objective −√(Z₁Z₂).
    #[default]
    Geometric,
    /// Σ Z_i / n.
    Arithmetic,
    /// min Z_i.
    Minimum,
    /// √(Σ w_i Z_i²) with the `signal_weights` w_i.
    Quadrature,
}

/// Per-category significance formulas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignificanceKind {
    /// The Asimov formula, evaluated stably.
    #[default]
    Asimov,
    /// gato-hep's rule: s/√b where s/b < 0.1, Asimov otherwise, b ≥ 1e-9.
    AsimovGato,
}

/// The penalties of the objective.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PenaltiesFile {
    /// λ·Σ relu(threshold − B_k)².
    #[serde(default)]
    pub low_background: Option<LowBackgroundFile>,
    /// λ·Σ relu(√Σw²_k / B_k − max_relative)².
    #[serde(default)]
    pub mc_uncertainty: Option<McUncertaintyFile>,
}

/// The low-background-yield penalty.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LowBackgroundFile {
    /// Background yield below which a category is penalised.
    pub threshold: f64,
    /// Weight λ of the penalty.
    #[serde(default = "one")]
    pub weight: f64,
}

/// The relative-MC-uncertainty penalty.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct McUncertaintyFile {
    /// Largest tolerated √Σw² / B per category.
    pub max_relative: f64,
    /// Weight λ of the penalty.
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// The optimiser.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerFile {
    /// `rmsprop` or `adam`.
    #[serde(default)]
    pub kind: OptimizerKind,
    /// Learning-rate schedule; cosine from 0.1 to 0.001 when absent.
    #[serde(default)]
    pub learning_rate: Option<Spanned<ScheduleFile>>,
}

/// The optimisers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// RMSprop with ρ = 0.9 and ε = 1e-7 (Keras's defaults).
    #[default]
    Rmsprop,
    /// Adam with β₁ = 0.9, β₂ = 0.999 and ε = 1e-7.
    Adam,
}

/// Epochs, restarts and which parameters are kept.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingFile {
    /// Gradient steps per run.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Independent initialisations per number of categories; the best is kept.
    #[serde(default = "default_restarts")]
    pub restarts: usize,
    /// `best` keeps the epoch with the highest hard significance, `last` the
    /// final epoch.
    #[serde(default)]
    pub checkpoint: Checkpoint,
    /// After training, move each 1D sigmoid cut to the position between two
    /// events that maximises the exact hard significance.
    #[serde(default = "yes")]
    pub refine: bool,
    /// Sums of each epoch: over every event, or over fine bins of the
    /// discriminants per process.
    #[serde(default)]
    pub statistics: Statistics,
    /// Bins per discriminant of binned statistics; by default 4000, 300 or
    /// 60 for one, two or three discriminants.
    #[serde(default)]
    pub statistics_bins: Option<usize>,
    /// Events per chunk of the two-pass gradient; by default all events
    /// in one pass.
    #[serde(default)]
    pub chunk_events: Option<usize>,
}

/// Statistics that each training epoch sums over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Statistics {
    /// Every selected event.
    #[default]
    Events,
    /// Σw and Σw² per process in fine bins of the discriminants, built in one
    /// pass. An epoch then costs O(bins), while the final evaluation stays
    /// on the events.
    Binned,
}

impl Default for TrainingFile {
    fn default() -> Self {
        TrainingFile {
            epochs: default_epochs(),
            restarts: default_restarts(),
            checkpoint: Checkpoint::default(),
            refine: true,
            statistics: Statistics::default(),
            statistics_bins: None,
            chunk_events: None,
        }
    }
}

fn yes() -> bool {
    true
}

fn default_epochs() -> usize {
    250
}

fn default_restarts() -> usize {
    1
}

/// Rule for the epoch whose parameters a run keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Checkpoint {
    /// The epoch whose hard categories have the highest significance.
    #[default]
    Best,
    /// The final epoch.
    Last,
}

/// Exact evaluation settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationFile {
    /// Bins of the histogram the dynamic-programming optimum searches.
    #[serde(default = "default_dp_bins")]
    pub dp_bins: usize,
    /// Let the DP optimum use groups whose background yield is zero or
    /// negative (they score Z = 0).
    #[serde(default)]
    pub dp_allow_zero_background: bool,
    /// Lower edge of the argmax baseline's bins, or no argmax baseline.
    #[serde(default)]
    pub argmax_low: Option<f64>,
}

impl Default for EvaluationFile {
    fn default() -> Self {
        EvaluationFile {
            dp_bins: default_dp_bins(),
            dp_allow_zero_background: false,
            argmax_low: None,
        }
    }
}

fn default_dp_bins() -> usize {
    1000
}

/// Plot settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReportFile {
    /// Logarithmic yield axes on the stacked plots.
    #[serde(default = "default_log_y")]
    pub log_y: bool,
    /// Factor on the signal lines of the stacked plots; chosen from the
    /// yields when absent.
    #[serde(default)]
    pub signal_scale: Option<f64>,
    /// Bins of the discriminant and mass histograms.
    #[serde(default = "default_report_bins")]
    pub bins: usize,
}

impl Default for ReportFile {
    fn default() -> Self {
        ReportFile {
            log_y: default_log_y(),
            signal_scale: None,
            bins: default_report_bins(),
        }
    }
}

fn default_log_y() -> bool {
    true
}

fn default_report_bins() -> usize {
    50
}
