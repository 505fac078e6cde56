//! Runs a small sigmoid-cut pipeline on the built-in 1D toy from Rust and
//! prints the learnt boundaries against equal-width bins.
//!
//! `cargo run --release --example small_toy`

use gato::config::Pipeline;
use gato::run::{RunOptions, run_pipeline};

const PIPELINE: &str = "
name: small_toy
sources:
  toy:
    generator: { kind: toy-1d, signal: 20000, background: 60000 }
processes:
  - { name: signal, role: signal, source: toy }
  - { name: bkg1, role: background, source: toy }
  - { name: bkg2, role: background, source: toy }
  - { name: bkg3, role: background, source: toy }
  - { name: bkg4, role: background, source: toy }
  - { name: bkg5, role: background, source: toy }
selection:
  sql: SELECT score, weight FROM events
  discriminants: [score]
model:
  kind: sigmoid
  categories: [4]
training:
  epochs: 100
";

fn main() -> anyhow::Result<()> {
    let pipeline = Pipeline::from_text(PIPELINE, "small_toy")?;
    let out = tempfile::tempdir()?;
    let options =
        RunOptions { output: Some(out.path().to_path_buf()), ..Default::default() };
    let runtime = tokio::runtime::Runtime::new()?;
    let summary = runtime.block_on(run_pipeline(&pipeline, &options))?;
    for run in &summary.runs {
        println!(
            "K = {}: boundaries {:?}",
            run.categories,
            run.boundaries.as_deref().unwrap_or(&[])
        );
        println!(
            "  learnt Z = {:.4}, equal bins Z = {:.4}",
            run.table.z, run.equidistant.z
        );
    }
    Ok(())
}
