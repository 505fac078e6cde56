//! CPU against CUDA on the built-in toys: the same pipeline trained on both
//! devices, hard Z compared (within 0.1 %), the written categories compared
//! event by event (at least 99.99 % equal), and a table of epoch and
//! end-to-end times.
//!
//! Needs the `cuda` feature and an NVIDIA GPU:
//!
//! ```text
//! cargo bench --features cuda --bench gpu -- [--sizes 10000000,100000000] [--epochs 20] [--device cuda:0]
//! ```
//!
//! For each size N, the 1D toy gets N/4 signal and 3N/4 background events
//! and is cut by sigmoids into K = 5 categories; the three-class toy gets
//! N/7 events per signal and 5N/7 background events and is split by a 2D
//! GMM with simplex means into K = 5 categories. Training keeps every
//! selected event in memory on the device (several GiB at 100M events).
//! Exits with status 1 when a comparison fails.

use std::path::{Path, PathBuf};
use std::time::Instant;

use gato::config::{GeneratorKind, Pipeline};
use gato::datafusion::arrow::array::{Array, Int32Array};
use gato::datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use gato::device::DeviceChoice;
use gato::run::{RunOptions, run_pipeline};
use gato::toy::{ToySpec, write_parquet};

struct Args {
    sizes: Vec<usize>,
    epochs: usize,
    device: DeviceChoice,
}

fn parse_args() -> Args {
    let mut args = Args {
        sizes: vec![10_000_000, 100_000_000],
        epochs: 20,
        device: DeviceChoice::Cuda(0),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--sizes" => {
                args.sizes = value()
                    .split(',')
                    .map(|s| s.parse().expect("--sizes: integers"))
                    .collect();
            }
            "--epochs" => args.epochs = value().parse().expect("--epochs: an integer"),
            "--device" => {
                args.device = value().parse().unwrap_or_else(|e: String| panic!("{e}"))
            }
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            other => panic!("unknown argument {other}; see the file's header"),
        }
    }
    args
}

fn pipeline_text(kind: GeneratorKind, input: &Path, epochs: usize) -> String {
    let (processes, model, columns) = match kind {
        GeneratorKind::Toy1d => (
            vec![
                ("signal", "signal"),
                ("bkg1", "background"),
                ("bkg2", "background"),
                ("bkg3", "background"),
                ("bkg4", "background"),
                ("bkg5", "background"),
            ],
            "model:\n  kind: sigmoid\n  categories: [5]\n",
            "score",
        ),
        GeneratorKind::ThreeClass | GeneratorKind::Resonance => (
            vec![
                ("signal1", "signal"),
                ("signal2", "signal"),
                ("bkg1", "background"),
                ("bkg2", "background"),
                ("bkg3", "background"),
                ("bkg4", "background"),
                ("bkg5", "background"),
            ],
            "model:\n  kind: gmm\n  categories: [5]\n  means: simplex\n  init: random\n",
            "score_signal1, score_signal2",
        ),
    };
    let mut text = format!(
        "name: gpu_bench\nseed: 7\nsources:\n  mc:\n    files: [\"{}\"]\n    process_column: process\nprocesses:\n",
        input.display()
    );
    for (name, role) in processes {
        text.push_str(&format!("  - {{ name: {name}, role: {role}, source: mc }}\n"));
    }
    text.push_str(&format!(
        "selection:\n  sql: SELECT {columns}, weight FROM events\n  discriminants: [{columns}]\n{model}\
         objective:\n  significance: asimov-gato\n\
         optimizer:\n  learning_rate: {{ schedule: cosine, initial: 0.05, final: 0.001 }}\n\
         training:\n  epochs: {epochs}\n  refine: false\n"
    ));
    text
}

fn categories(dir: &Path) -> Vec<Option<i32>> {
    let file = std::fs::read_dir(dir)
        .expect("run directory")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .expect("a categorised Parquet file");
    let reader = ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(file).expect("open"),
    )
    .expect("Parquet")
    .build()
    .expect("reader");
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.expect("batch");
        let c = batch.column_by_name("category").expect("category column");
        out.extend(c.as_any().downcast_ref::<Int32Array>().expect("Int32").iter());
    }
    out
}

struct Row {
    toy: &'static str,
    events: usize,
    device: String,
    epoch_ms: f64,
    total_s: f64,
    z: f64,
}

fn main() {
    let args = parse_args();
    gato::device::check(args.device).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2);
    });
    let work = tempfile::tempdir().expect("temporary directory");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for &n in &args.sizes {
        for (kind, toy) in
            [(GeneratorKind::Toy1d, "1d"), (GeneratorKind::ThreeClass, "three-class")]
        {
            let mut spec = ToySpec::new(kind, 11);
            (spec.signal, spec.background) = match kind {
                GeneratorKind::Toy1d => (n / 4, n - n / 4),
                GeneratorKind::ThreeClass | GeneratorKind::Resonance => {
                    (n / 7, n - 2 * (n / 7))
                }
            };
            let input = work.path().join(format!("{toy}_{n}.parquet"));
            write_parquet(&spec, &input).unwrap_or_else(|e| panic!("{e}"));
            let pipeline = Pipeline::from_text(
                &pipeline_text(kind, &input, args.epochs),
                "gpu_bench",
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let mut results = Vec::new();
            for device in [DeviceChoice::Cpu, args.device] {
                let out: PathBuf =
                    work.path().join(format!("{toy}_{n}_{device}").replace(':', "_"));
                let options = RunOptions {
                    output: Some(out.clone()),
                    device: Some(device),
                    ..Default::default()
                };
                let started = Instant::now();
                let summary = runtime
                    .block_on(run_pipeline(&pipeline, &options))
                    .unwrap_or_else(|e| panic!("{e}"));
                let run = &summary.runs[0];
                rows.push(Row {
                    toy,
                    events: n,
                    device: device.to_string(),
                    epoch_ms: 1000.0 * run.training_s / args.epochs as f64,
                    total_s: started.elapsed().as_secs_f64(),
                    z: run.table.z,
                });
                results.push((run.table.z, categories(&out.join(&run.name))));
            }
            let (cpu_z, cpu_cat) = &results[0];
            let (gpu_z, gpu_cat) = &results[1];
            let dz = (gpu_z - cpu_z).abs() / cpu_z;
            let same = cpu_cat.iter().zip(gpu_cat).filter(|(a, b)| a == b).count() as f64
                / cpu_cat.len() as f64;
            println!(
                "{toy}, {n} events: hard Z {cpu_z:.5} (cpu) vs {gpu_z:.5}; relative difference {dz:.2e}; same category for {:.4} % of events",
                100.0 * same
            );
            if dz > 1e-3 {
                failures.push(format!(
                    "{toy}, {n} events: hard Z differs by {:.3} %",
                    100.0 * dz
                ));
            }
            if same < 0.9999 || cpu_cat.len() != gpu_cat.len() {
                failures.push(format!(
                    "{toy}, {n} events: only {:.4} % of events in the same category",
                    100.0 * same
                ));
            }
        }
    }
    println!(
        "\n{:<12} {:>12} {:>8} {:>14} {:>14} {:>10}",
        "toy", "events", "device", "epoch [ms]", "end to end [s]", "hard Z"
    );
    for r in &rows {
        println!(
            "{:<12} {:>12} {:>8} {:>14.1} {:>14.1} {:>10.5}",
            r.toy, r.events, r.device, r.epoch_ms, r.total_s, r.z
        );
    }
    if !failures.is_empty() {
        eprintln!("\nCPU and GPU disagree:\n  {}", failures.join("\n  "));
        std::process::exit(1);
    }
}
