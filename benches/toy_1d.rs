//! Times the full `pipelines/toy_1d.yaml` run (generation, selection,
//! training for K = 3, 5, 10, exact evaluation, apply) and prints a table.
//!
//! Run with `cargo bench --bench toy_1d`. Set `GATO_BENCH_PIPELINE` to time
//! another pipeline.

use std::path::PathBuf;
use std::time::Instant;

use gato::config::Pipeline;
use gato::run::{RunOptions, run_pipeline};

fn main() {
    let pipeline_path =
        std::env::var("GATO_BENCH_PIPELINE").map(PathBuf::from).unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pipelines/toy_1d.yaml")
        });
    let pipeline = Pipeline::load(&pipeline_path).unwrap_or_else(|e| panic!("{e}"));
    let out = tempfile::tempdir().expect("temporary directory");
    let options =
        RunOptions { output: Some(out.path().to_path_buf()), ..Default::default() };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();

    let started = Instant::now();
    let summary = runtime
        .block_on(run_pipeline(&pipeline, &options))
        .unwrap_or_else(|e| panic!("{e}"));
    let wall = started.elapsed().as_secs_f64();

    let events: usize = summary.processes.iter().map(|p| p.events).sum();
    let epochs = pipeline.training.epochs * pipeline.training.restarts;
    println!(
        "pipeline: {} ({} events, {} epochs per K)",
        pipeline_path.display(),
        events,
        epochs
    );
    println!(
        "{:<14} {:>10} {:>14} {:>10}",
        "stage", "time [s]", "per epoch [ms]", "hard Z"
    );
    println!(
        "{:<14} {:>10.2} {:>14} {:>10}",
        "select", summary.timings_s.select, "-", "-"
    );
    for run in &summary.runs {
        println!(
            "{:<14} {:>10.2} {:>14.1} {:>10.4}",
            run.name,
            run.training_s,
            1000.0 * run.training_s / epochs as f64,
            run.table.z
        );
    }
    println!(
        "{:<14} {:>10.2} {:>14} {:>10}",
        "evaluate", summary.timings_s.evaluate, "-", "-"
    );
    println!("{:<14} {:>10.2} {:>14} {:>10}", "apply", summary.timings_s.apply, "-", "-");
    println!("{:<14} {:>10.2} {:>14} {:>10}", "total", wall, "-", "-");
}
