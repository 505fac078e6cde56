//! The training modes side by side on generated 1D toys of several sizes:
//! events resident in one pass, the two-pass gradient over chunks
//! (`training.chunk_events`), binned statistics (`training.statistics:
//! binned`), and both of the last two with the events kept on disk
//! (`selection.events: disk`), and binned statistics after a selection on
//! the Polars engine, in memory and on disk (`selection.engine: polars`).
//! For each size and mode it runs `gato run`
//! in its own process. It prints selection and apply throughput, the
//! time of one epoch, the peak resident memory and the final hard Z, then
//! checks that the modes agree on hard Z within 0.1 %.
//!
//! ```text
//! cargo bench --bench modes -- [--sizes 1000000,10000000,50000000] [--epochs 5]
//!     [--modes resident,chunked,binned,disk,disk-binned,polars,polars-disk]
//!     [--repeats 1]
//! ```
//!
//! Each size N gets N/4 signal and 3N/4 background events, written once by
//! `gato generate toy-1d` into a temporary directory, and K = 5 sigmoid
//! cuts. The resident mode runs with an unbounded `--memory-limit`, the
//! other in-memory modes with 4096 MiB and the disk modes with 1024 MiB.
//! For each size it also times DataFusion's own `COPY (SELECT * FROM t) TO
//! 'out.parquet'` of the input and prints how fast the slowest apply stage
//! is against it. With `--repeats R` every run and every COPY happens R
//! times, one round after the other. The table then shows medians, and
//! the `peak` column also shows the largest of the R peaks in brackets.
//! With two or more sizes, the last lines give each mode's median peak at
//! the largest size over that at the smallest. Exits with status 1 when
//! the modes disagree.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Args {
    sizes: Vec<usize>,
    epochs: usize,
    modes: Vec<String>,
    repeats: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        sizes: vec![1_000_000, 10_000_000, 50_000_000],
        epochs: 5,
        modes: MODES.iter().map(|m| m.name.to_string()).collect(),
        repeats: 1,
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
            "--modes" => {
                args.modes = value().split(',').map(str::to_string).collect();
                for m in &args.modes {
                    assert!(
                        MODES.iter().any(|mode| mode.name == m),
                        "--modes: unknown mode {m}"
                    );
                }
            }
            "--repeats" => {
                args.repeats = value().parse().expect("--repeats: an integer");
                assert!(args.repeats > 0, "--repeats: at least 1");
            }
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            other => panic!("unknown argument {other}; see the file's header"),
        }
    }
    args
}

/// One way of running the same pipeline.
struct Mode {
    name: &'static str,
    /// Lines added to `selection:`.
    selection: &'static str,
    /// Lines added to `training:`.
    training: &'static str,
    /// `--memory-limit` in MiB.
    budget: &'static str,
}

const MODES: [Mode; 7] = [
    // An unbounded budget, so that gato does not switch to chunks itself.
    Mode { name: "resident", selection: "", training: "", budget: "1e12" },
    Mode {
        name: "chunked",
        selection: "",
        training: "  chunk_events: 1000000\n",
        budget: "4096",
    },
    Mode {
        name: "binned",
        selection: "",
        training: "  statistics: binned\n",
        budget: "4096",
    },
    Mode { name: "disk", selection: "  events: disk\n", training: "", budget: "1024" },
    Mode {
        name: "disk-binned",
        selection: "  events: disk\n",
        training: "  statistics: binned\n",
        budget: "1024",
    },
    // The Polars engine, with binned statistics so that the selection and
    // apply stages dominate.
    Mode {
        name: "polars",
        selection: "  engine: polars\n",
        training: "  statistics: binned\n",
        budget: "4096",
    },
    Mode {
        name: "polars-disk",
        selection: "  engine: polars\n  events: disk\n",
        training: "  statistics: binned\n",
        budget: "1024",
    },
];

fn gato() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gato"))
}

fn pipeline_text(input: &Path, epochs: usize, mode: &Mode) -> String {
    let mut text = format!(
        "name: modes\nseed: 7\nsources:\n  mc:\n    files: [\"{}\"]\n    process_column: process\nprocesses:\n",
        input.display()
    );
    text.push_str("  - { name: signal, role: signal, source: mc }\n");
    for b in 1..=5 {
        text.push_str(&format!("  - {{ name: bkg{b}, role: background, source: mc }}\n"));
    }
    text.push_str(&format!(
        "selection:\n  sql: SELECT score, weight FROM events\n  discriminants: [score]\n  \
         weight: weight\n{}model:\n  kind: sigmoid\n  categories: [5]\nobjective:\n  \
         penalties:\n    low_background: {{ threshold: 10, weight: 1 }}\n\
         training:\n  epochs: {epochs}\n{}",
        mode.selection, mode.training
    ));
    text
}

/// Seconds DataFusion takes for `COPY (SELECT * FROM t) TO 'out'` of the
/// Parquet file `input`: the reference that `gato run`'s apply stage, which
/// copies every row and adds a column, is compared with.
fn copy_seconds(input: &Path, out: &Path) -> f64 {
    use gato::datafusion::prelude::{ParquetReadOptions, SessionContext};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let ctx = SessionContext::new();
        ctx.register_parquet(
            "t",
            input.to_str().expect("UTF-8 path"),
            ParquetReadOptions::default(),
        )
        .await
        .expect("register the input");
        let started = std::time::Instant::now();
        ctx.sql(&format!(
            "COPY (SELECT * FROM t) TO '{}' STORED AS PARQUET",
            out.display()
        ))
        .await
        .expect("plan COPY")
        .collect()
        .await
        .expect("run COPY");
        started.elapsed().as_secs_f64()
    })
}

fn number(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Returns the median of `values`: the mean of the two middle ones for an
/// even count.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 { sorted[n / 2] } else { 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]) }
}

/// Measurements of one `gato run`.
struct Measured {
    select_s: f64,
    epoch_s: f64,
    apply_s: f64,
    peak_mib: f64,
    z: f64,
}

/// Runs `gato run` on `pipeline` with `mode`'s budget and reads its
/// summary.
fn run_once(
    pipeline: &Path,
    out: &Path,
    mode: &Mode,
    epochs: usize,
    n: usize,
) -> Measured {
    let status = gato()
        .args(["-q", "run", "--memory-limit", mode.budget])
        .arg(pipeline)
        .arg("--out")
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("gato run");
    assert!(status.success(), "gato run failed for {} at {n} events", mode.name);
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("summary.json")).expect("summary.json"),
    )
    .expect("JSON");
    std::fs::remove_dir_all(out).ok();
    let t = &summary["timings_s"];
    let run = &summary["runs"][0];
    Measured {
        select_s: number(&t["select"]),
        epoch_s: number(&run["training_s"]) / epochs as f64,
        apply_s: number(&t["apply"]),
        peak_mib: number(&summary["peak_rss_mib"]),
        z: number(&run["table"]["z"]),
    }
}

fn main() {
    let args = parse_args();
    let dir = tempfile::tempdir().expect("temporary directory");
    println!(
        "{:>11} {:<11} {:>14} {:>10} {:>14} {:>10} {:>9}",
        "events",
        "mode",
        "select [ev/s]",
        "epoch [s]",
        "apply [ev/s]",
        "peak [MiB]",
        "hard Z"
    );
    let modes: Vec<&Mode> =
        MODES.iter().filter(|m| args.modes.iter().any(|a| a == m.name)).collect();
    // Median peak per mode, for each size in order.
    let mut peaks: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];

    let mut failed = false;
    for &n in &args.sizes {
        let input = dir.path().join(format!("toy_{n}.parquet"));
        let status = gato()
            .args(["-q", "generate", "toy-1d", "--out"])
            .arg(&input)
            .args([
                "--signal",
                &(n / 4).to_string(),
                "--background",
                &(n - n / 4).to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("gato generate");
        assert!(status.success(), "gato generate failed");
        for mode in &modes {
            let pipeline = dir.path().join(format!("{}.yaml", mode.name));
            std::fs::write(&pipeline, pipeline_text(&input, args.epochs, mode))
                .expect("write");
        }
        let mut measured: Vec<Vec<Measured>> = modes.iter().map(|_| Vec::new()).collect();
        let mut copies = Vec::new();
        for _ in 0..args.repeats {
            for (mode, runs) in modes.iter().zip(&mut measured) {
                let pipeline = dir.path().join(format!("{}.yaml", mode.name));
                let out: PathBuf = dir.path().join(format!("out_{n}_{}", mode.name));
                runs.push(run_once(&pipeline, &out, mode, args.epochs, n));
            }
            let copy = dir.path().join(format!("copy_{n}.parquet"));
            copies.push(copy_seconds(&input, &copy));
            std::fs::remove_file(&copy).ok();
        }
        let mut zs = Vec::new();
        let mut applies = Vec::new();
        for ((mode, runs), mode_peaks) in modes.iter().zip(&measured).zip(&mut peaks) {
            let med =
                |f: fn(&Measured) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
            let peak = med(|m| m.peak_mib);
            let max_peak =
                runs.iter().map(|m| m.peak_mib).fold(f64::NEG_INFINITY, f64::max);
            let z = med(|m| m.z);
            // Every run of a mode has the same seed, so the same Z.
            zs.extend(runs.iter().map(|m| m.z));
            applies.push(med(|m| m.apply_s));
            mode_peaks.push(peak);
            let peak_text = if args.repeats > 1 {
                format!("{peak:.0} ({max_peak:.0})")
            } else {
                format!("{peak:.0}")
            };
            println!(
                "{:>11} {:<11} {:>14.3e} {:>10.3} {:>14.3e} {:>10} {:>9.4}",
                n,
                mode.name,
                n as f64 / med(|m| m.select_s),
                med(|m| m.epoch_s),
                n as f64 / med(|m| m.apply_s),
                peak_text,
                z
            );
        }
        let copy = median(&copies);
        println!(
            "{:>11} {:<11} DataFusion COPY of the input: {:.3e} ev/s; apply reaches {:.0} %",
            n,
            "",
            n as f64 / copy,
            100.0 * applies.iter().map(|a| copy / a).fold(f64::INFINITY, f64::min)
        );
        let spread = zs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            - zs.iter().copied().fold(f64::INFINITY, f64::min);
        if spread > 1e-3 * zs[0] {
            println!("{n} events: the modes disagree on hard Z by {spread:.5}");
            failed = true;
        }
    }
    if args.sizes.len() > 1 {
        let (first, last) = (args.sizes[0], args.sizes[args.sizes.len() - 1]);
        for (mode, mode_peaks) in modes.iter().zip(&peaks) {
            println!(
                "peak at {last} over peak at {first} events, {}: {:.2}",
                mode.name,
                mode_peaks[mode_peaks.len() - 1] / mode_peaks[0]
            );
        }
    }
    if failed {
        std::process::exit(1);
    }
}
