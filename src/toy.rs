//! Built-in toy generators, the physics of gato-hep's examples.
//!
//! Seven 3D Gaussians share one covariance (1 on the diagonal, 0.2 off it):
//! two signals and five backgrounds. Each drawn point has every coordinate
//! multiplied by its own N(1, 0.3) factor, and the scores are computed from
//! the noiseless Gaussians' densities at the noisy point, so they are good
//! but not perfect classifiers. Event weights are cross-section × luminosity
//! / events of the process, with luminosity 100, so the yields are signal 50
//! (and signal2 10) and background 26 000 whatever the event counts.
//!
//! The resonance toy is the three-class toy with noise 0.2 and a `mass`
//! column in GeV. The signals peak as N(125, σ_m) clipped to [100, 180].
//! Each background falls as a truncated exponential e^(−λm) on [100, 180]
//! with its own λ. The mass is drawn independently of the scores.
//!
//! [`ToySpec`] describes one sample; [`generate`] draws it as Arrow record
//! batches with columns `process`, `weight`, the score columns and, for the
//! resonance toy, `mass`.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, StandardNormal};

use crate::config::GeneratorKind;
use crate::config::file::GeneratorFile;

/// Integrated luminosity of the toys.
pub const LUMINOSITY: f64 = 100.0;
/// Standard deviation of the multiplicative noise on each coordinate.
pub const NOISE: f64 = 0.3;
/// The same for the resonance toy.
pub const RESONANCE_NOISE: f64 = 0.2;
/// Mass of the resonance, GeV.
pub const RESONANCE_MASS: f64 = 125.0;
/// Mass range of the resonance toy, GeV.
pub const MASS_RANGE: (f64, f64) = (100.0, 180.0);
/// Decay constant λ (per GeV) of each background's e^(−λm) mass spectrum.
pub const BACKGROUND_MASS_SLOPES: [f64; 5] = [0.05, 0.04, 0.035, 0.03, 0.025];
/// Rows per generated record batch.
pub const BATCH_ROWS: usize = 65_536;

/// One Gaussian component of the toy: name, mean and cross-section.
#[derive(Debug, Clone, Copy)]
pub struct Component {
    pub name: &'static str,
    pub mean: [f64; 3],
    pub cross_section: f64,
}

/// The two signals.
pub const SIGNALS: [Component; 2] = [
    Component { name: "signal1", mean: [1.5, -1.0, -1.0], cross_section: 0.5 },
    Component { name: "signal2", mean: [-1.0, 1.5, -1.0], cross_section: 0.1 },
];

/// The five backgrounds.
pub const BACKGROUNDS: [Component; 5] = [
    Component { name: "bkg1", mean: [-0.5, -0.5, 1.0], cross_section: 100.0 },
    Component { name: "bkg2", mean: [0.5, -0.5, 0.8], cross_section: 80.0 },
    Component { name: "bkg3", mean: [0.5, 0.5, -0.6], cross_section: 50.0 },
    Component { name: "bkg4", mean: [-0.5, 1.0, -0.4], cross_section: 20.0 },
    Component { name: "bkg5", mean: [-0.5, 0.5, -0.2], cross_section: 10.0 },
];

/// A toy sample to generate.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ToySpec {
    /// Which toy.
    pub kind: GeneratorKind,
    /// Seed of the random stream.
    pub seed: u64,
    /// Events per signal process.
    pub signal: usize,
    /// Background events in total.
    pub background: usize,
    /// Mass resolution σ_m of the signal peak, GeV (resonance toy only).
    pub mass_resolution: f64,
}

impl ToySpec {
    /// Builds the default sample of `kind`: 100 000 signal and 300 000 background
    /// events (1D), or 100 000 per signal and 500 000 background
    /// (three-class).
    pub fn new(kind: GeneratorKind, seed: u64) -> ToySpec {
        let background = match kind {
            GeneratorKind::Toy1d => 300_000,
            GeneratorKind::ThreeClass => 500_000,
            GeneratorKind::Resonance => 1_000_000,
        };
        ToySpec { kind, seed, signal: 100_000, background, mass_resolution: 1.5 }
    }

    /// Builds the spec of a pipeline's generator source.
    pub fn from_config(
        file: &GeneratorFile,
        pipeline_seed: u64,
    ) -> Result<ToySpec, String> {
        let mut spec = ToySpec::new(file.kind, file.seed.unwrap_or(pipeline_seed));
        if let Some(n) = file.signal {
            spec.signal = n;
        }
        if let Some(n) = file.background {
            spec.background = n;
        }
        if let Some(sigma) = file.mass_resolution {
            if file.kind != GeneratorKind::Resonance {
                return Err(
                    "`mass_resolution` applies to the `resonance` generator only".into(),
                );
            }
            spec.mass_resolution = sigma;
        }
        spec.check()?;
        Ok(spec)
    }

    /// Checks that every process gets at least one event.
    pub fn check(&self) -> Result<(), String> {
        if !(self.mass_resolution.is_finite()
            && self.mass_resolution > 0.0
            && self.mass_resolution <= 20.0)
        {
            return Err(format!(
                "`mass_resolution` must be in (0, 20] GeV, got {}",
                self.mass_resolution
            ));
        }
        if self.signal == 0 {
            return Err("`signal` must be at least 1".into());
        }
        if let Some((name, _)) = self.counts().iter().find(|(_, n)| *n == 0) {
            return Err(format!(
                "background {} leaves process {name} without events; give at least 26",
                self.background
            ));
        }
        Ok(())
    }

    /// Names of the processes, in generation order.
    pub fn process_names(&self) -> Vec<&'static str> {
        self.components().iter().map(|(c, _)| c.name).collect()
    }

    /// Events per process. Backgrounds share `background` in proportion to
    /// their cross-sections, rounded down, with the remainder going to the
    /// last one.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        self.components().iter().map(|(c, n)| (c.name, *n)).collect()
    }

    fn components(&self) -> Vec<(Component, usize)> {
        let mut out = Vec::new();
        match self.kind {
            GeneratorKind::Toy1d => {
                out.push((Component { name: "signal", ..SIGNALS[0] }, self.signal));
            }
            GeneratorKind::ThreeClass | GeneratorKind::Resonance => {
                out.push((SIGNALS[0], self.signal));
                out.push((SIGNALS[1], self.signal));
            }
        }
        let total_xs: f64 = BACKGROUNDS.iter().map(|b| b.cross_section).sum();
        let mut assigned = 0;
        for (i, b) in BACKGROUNDS.iter().enumerate() {
            let n = if i + 1 == BACKGROUNDS.len() {
                self.background - assigned
            } else {
                (self.background as f64 * b.cross_section / total_xs) as usize
            };
            assigned += n;
            out.push((*b, n));
        }
        out
    }

    /// Score columns of this toy.
    pub fn score_columns(&self) -> Vec<&'static str> {
        match self.kind {
            GeneratorKind::Toy1d => vec!["score"],
            GeneratorKind::ThreeClass | GeneratorKind::Resonance => {
                vec!["score_signal1", "score_signal2", "score_bkg"]
            }
        }
    }

    /// Returns whether the sample has a `mass` column.
    pub fn has_mass(&self) -> bool {
        self.kind == GeneratorKind::Resonance
    }

    /// Arrow schema of the generated batches.
    pub fn schema(&self) -> SchemaRef {
        let mut fields = vec![
            Field::new("process", DataType::Utf8, false),
            Field::new("weight", DataType::Float64, false),
        ];
        for name in self.score_columns() {
            fields.push(Field::new(name, DataType::Float64, false));
        }
        if self.has_mass() {
            fields.push(Field::new("mass", DataType::Float64, false));
        }
        Arc::new(Schema::new(fields))
    }
}

/// The shared covariance's inverse and normalisation of the Gaussian pdf.
struct Density {
    inverse: [[f64; 3]; 3],
    log_norm: f64,
    cholesky: [[f64; 3]; 3],
}

impl Density {
    fn new() -> Density {
        let cov = |i: usize, j: usize| if i == j { 1.0 } else { 0.2 };
        // Σ = aI + bJ with a = 0.8, b = 0.2: Σ⁻¹ = (I − b/(a + 3b)·J)/a and
        // det Σ = a²(a + 3b).
        let (a, b) = (0.8, 0.2);
        let mut inverse = [[0.0; 3]; 3];
        for (i, row) in inverse.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                let identity = if i == j { 1.0 } else { 0.0 };
                *v = (identity - b / (a + 3.0 * b)) / a;
            }
        }
        let det: f64 = a * a * (a + 3.0 * b);
        let log_norm = -0.5 * (3.0 * (2.0 * std::f64::consts::PI).ln() + det.ln());
        let mut l = [[0.0; 3]; 3];
        for i in 0..3 {
            for j in 0..=i {
                let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
                l[i][j] = if i == j {
                    (cov(i, i) - s).sqrt()
                } else {
                    (cov(i, j) - s) / l[j][j]
                };
            }
        }
        Density { inverse, log_norm, cholesky: l }
    }

    fn pdf(&self, x: &[f64; 3], mean: &[f64; 3]) -> f64 {
        let d = [x[0] - mean[0], x[1] - mean[1], x[2] - mean[2]];
        let mut q = 0.0;
        for i in 0..3 {
            for j in 0..3 {
                q += d[i] * self.inverse[i][j] * d[j];
            }
        }
        (self.log_norm - 0.5 * q).exp()
    }

    fn sample(&self, mean: &[f64; 3], rng: &mut ChaCha8Rng) -> [f64; 3] {
        let z: [f64; 3] = std::array::from_fn(|_| StandardNormal.sample(rng));
        std::array::from_fn(|i| {
            mean[i] + (0..=i).map(|k| self.cholesky[i][k] * z[k]).sum::<f64>()
        })
    }
}

/// Generates the sample as record batches of at most [`BATCH_ROWS`] rows,
/// processes in the order of [`ToySpec::process_names`].
///
/// Each process draws from its own ChaCha8 stream (stream number = process
/// index), so the events of one process do not depend on the counts of the
/// others.
pub fn generate(spec: &ToySpec) -> Vec<RecordBatch> {
    let density = Density::new();
    let width =
        if spec.kind == GeneratorKind::Resonance { RESONANCE_NOISE } else { NOISE };
    let noise = Normal::new(1.0, width).expect("noise width is finite and positive");
    let total_bkg_xs: f64 = BACKGROUNDS.iter().map(|b| b.cross_section).sum();
    let background_pdf = |x: &[f64; 3]| -> f64 {
        BACKGROUNDS
            .iter()
            .map(|b| b.cross_section / total_bkg_xs * density.pdf(x, &b.mean))
            .sum()
    };
    let schema = spec.schema();
    let mut batches = Vec::new();
    for (index, (component, count)) in spec.components().into_iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
        rng.set_stream(index as u64);
        let weight = component.cross_section * LUMINOSITY / count as f64;
        // The mass has its own stream, so the scores match the three-class
        // toy's draws apart from the noise width.
        let mut mass_rng = ChaCha8Rng::seed_from_u64(spec.seed);
        mass_rng.set_stream(1000 + index as u64);
        let mass_slope = BACKGROUNDS
            .iter()
            .position(|b| b.name == component.name)
            .map(|i| BACKGROUND_MASS_SLOPES[i]);
        let mut start = 0;
        while start < count {
            let rows = BATCH_ROWS.min(count - start);
            let mut scores: Vec<Vec<f64>> =
                vec![Vec::with_capacity(rows); spec.score_columns().len()];
            for _ in 0..rows {
                let clean = density.sample(&component.mean, &mut rng);
                let x: [f64; 3] =
                    std::array::from_fn(|i| clean[i] * noise.sample(&mut rng));
                let p1 = density.pdf(&x, &SIGNALS[0].mean);
                let pb = background_pdf(&x);
                match spec.kind {
                    GeneratorKind::Toy1d => {
                        let lr = p1 / (pb + 1e-12);
                        scores[0].push(lr / (1.0 + lr));
                    }
                    GeneratorKind::ThreeClass | GeneratorKind::Resonance => {
                        let p2 = density.pdf(&x, &SIGNALS[1].mean);
                        let total = p1 + p2 + pb + 1e-12;
                        scores[0].push(p1 / total);
                        scores[1].push(p2 / total);
                        scores[2].push(pb / total);
                    }
                }
            }
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(vec![component.name; rows])),
                Arc::new(Float64Array::from(vec![weight; rows])),
            ];
            columns.extend(
                scores.into_iter().map(|s| Arc::new(Float64Array::from(s)) as ArrayRef),
            );
            if spec.has_mass() {
                let masses: Vec<f64> = (0..rows)
                    .map(|_| match mass_slope {
                        Some(lambda) => {
                            truncated_exponential(lambda, MASS_RANGE, &mut mass_rng)
                        }
                        None => {
                            let z: f64 = StandardNormal.sample(&mut mass_rng);
                            (RESONANCE_MASS + spec.mass_resolution * z)
                                .clamp(MASS_RANGE.0, MASS_RANGE.1)
                        }
                    })
                    .collect();
                columns.push(Arc::new(Float64Array::from(masses)));
            }
            batches.push(
                RecordBatch::try_new(schema.clone(), columns)
                    .expect("columns match the schema"),
            );
            start += rows;
        }
    }
    batches
}

/// Draws m from e^(−λm) truncated to `range`, by inverting its CDF.
fn truncated_exponential(lambda: f64, range: (f64, f64), rng: &mut ChaCha8Rng) -> f64 {
    let u: f64 = rand::Rng::random(rng);
    let span = range.1 - range.0;
    range.0 - (-u * (-(-lambda * span).exp_m1())).ln_1p() / lambda
}

/// Generates the sample and writes it to `path` as Parquet, through a
/// temporary file in the same directory.
pub fn write_parquet(spec: &ToySpec, path: &std::path::Path) -> crate::Result<()> {
    use crate::Error;
    let temp = crate::atomic::temp_file_for(path)?;
    let file = temp.reopen().map_err(|e| Error::output(temp.path(), e.to_string()))?;
    let mut writer =
        datafusion::parquet::arrow::ArrowWriter::try_new(file, spec.schema(), None)
            .map_err(|e| Error::output(path, e.to_string()))?;
    for batch in generate(spec) {
        writer.write(&batch).map_err(|e| Error::output(path, e.to_string()))?;
    }
    writer.close().map_err(|e| Error::output(path, e.to_string()))?;
    crate::atomic::persist(temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_split_background_by_cross_section() {
        let spec = ToySpec::new(GeneratorKind::Toy1d, 1);
        let counts = spec.counts();
        let expected = [
            ("signal", 100_000),
            ("bkg1", 115_384),
            ("bkg2", 92_307),
            ("bkg3", 57_692),
            ("bkg4", 23_076),
            ("bkg5", 11_541),
        ];
        assert_eq!(counts, expected);
    }

    #[test]
    fn density_matches_hand_value_at_mean() {
        // At the mean, pdf = (2π)^(-3/2) det(Σ)^(-1/2) with det Σ = 0.896.
        let d = Density::new();
        let expected = (2.0 * std::f64::consts::PI).powf(-1.5) / 0.896f64.sqrt();
        let got = d.pdf(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]);
        assert!((got - expected).abs() < 1e-15, "{got} vs {expected}");
    }

    #[test]
    fn cholesky_reproduces_covariance() {
        let l = Density::new().cholesky;
        for i in 0..3 {
            for j in 0..3 {
                let v: f64 = (0..3).map(|k| l[i][k] * l[j][k]).sum();
                let expected = if i == j { 1.0 } else { 0.2 };
                assert!((v - expected).abs() < 1e-14);
            }
        }
    }

    #[test]
    fn check_rejects_tiny_background() {
        let mut spec = ToySpec::new(GeneratorKind::Toy1d, 1);
        spec.background = 10;
        assert!(spec.check().unwrap_err().contains("bkg"));
    }
}
