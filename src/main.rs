//! The `gato` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use gato::config::{GeneratorKind, Pipeline};
use gato::run::{RunOptions, run_pipeline};
use gato::toy::ToySpec;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Learn event categories that maximise the expected significance.
#[derive(Parser)]
#[command(name = "gato", version, about, long_about = None)]
struct Cli {
    /// Print no progress bars and no log lines below warnings. Results
    /// (the tables, the written files) still go to standard output.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// More log output: -v for debug, -vv for trace. RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: select, train, evaluate and write categorised outputs.
    ///
    /// Writes summary.json, histograms.json, report.html and plots/, and
    /// per number of categories a directory with history.json, model.json,
    /// plots/ and one Parquet file per input carrying the `category`
    /// column. Inputs are never modified.
    Run {
        /// Pipeline YAML file.
        pipeline: PathBuf,
        /// Output directory (default: the pipeline's `output`, else
        /// runs/NAME).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Replace the outputs of an earlier run in the output directory.
        #[arg(long)]
        overwrite: bool,
        /// Training device: cpu, cuda or cuda:N (default: the pipeline's
        /// `device`, else cpu). CUDA needs a binary built with
        /// `--features cuda`.
        #[arg(long, value_name = "DEVICE")]
        device: Option<gato::device::DeviceChoice>,
        /// Memory budget in MiB (default: half the machine's memory). When
        /// the estimated gradient graph of all events exceeds half of it,
        /// each epoch's gradient is computed in two passes over chunks of
        /// events, as with `training.chunk_events`.
        #[arg(long, value_name = "MIB")]
        memory_limit: Option<f64>,
    },
    /// Categorise Parquet files with a model saved by `gato run`.
    ///
    /// Writes one file per input into DIR, named like the input, with every
    /// row and column plus `category`. The model's discriminant columns
    /// (listed in its model.json) must be in each input; rows where one is
    /// null, NaN or infinite get a null category. The model, the inputs and
    /// DIR may be s3:// or gs:// URLs. Objects are copied to a temporary
    /// directory first, and outputs are uploaded when all are written.
    Apply {
        /// model.json of a run (OUT/<model>_k<K>/model.json).
        #[arg(long, value_name = "FILE")]
        model: PathBuf,
        /// Output directory, or an s3:// or gs:// prefix.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Replace existing output files.
        #[arg(long)]
        overwrite: bool,
        /// Parquet files to categorise. The key of an s3:// or gs:// URL
        /// may contain a glob pattern.
        #[arg(required = true, value_name = "INPUT")]
        inputs: Vec<PathBuf>,
    },
    /// Redraw the plots and report.html of an output directory.
    ///
    /// Reads summary.json, histograms.json and each run's history.json and
    /// model.json; trains nothing and reads no events. Writes OUT/plots/,
    /// OUT/<run>/plots/ (every plot as SVG and PNG) and OUT/report.html.
    Report {
        /// Output directory of `gato run`.
        output: PathBuf,
    },
    /// Check a pipeline without training: YAML, keys, types, settings, input
    /// files, and the selection's SQL and output columns.
    ///
    /// Reads every input file's schema and plans the SQL, but reads no
    /// events from files, so problems in the data itself (non-finite values,
    /// processes without events) show only when the pipeline runs. A
    /// generator source is generated in full, to get its columns. Checks that
    /// the pipeline's `device` is usable.
    Validate {
        /// Pipeline YAML file.
        pipeline: PathBuf,
    },
    /// Write a built-in toy sample to a Parquet file.
    ///
    /// Columns: process, weight, and score (toy-1d) or score_signal1,
    /// score_signal2, score_bkg (three-class), plus mass (resonance).
    Generate {
        /// Which toy.
        kind: ToyKind,
        /// Output Parquet file.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Seed of the random stream.
        #[arg(long, default_value_t = 42, value_name = "N")]
        seed: u64,
        /// Events per signal process (default 100000).
        #[arg(long, value_name = "N")]
        signal: Option<usize>,
        /// Background events in total, split by cross-section (default
        /// 300000 for toy-1d, 500000 for three-class, 1000000 for
        /// resonance).
        #[arg(long, value_name = "N")]
        background: Option<usize>,
        /// Replace FILE if it exists.
        #[arg(long)]
        overwrite: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ToyKind {
    /// One signal and five backgrounds with one score.
    #[value(name = "toy-1d")]
    Toy1d,
    /// Two signals and five backgrounds with three scores.
    ThreeClass,
    /// The three-class toy (noise 0.2) with a `mass` column in GeV.
    Resonance,
}

fn main() -> ExitCode {
    // Before any thread starts: threads get their malloc arenas as they
    // first allocate, and inherit the blocked signals.
    gato::run::limit_malloc_arenas();
    gato::interrupt::install();
    let cli = Cli::parse();
    init_logging(cli.quiet, cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { pipeline, out, overwrite, device, memory_limit } => {
            // `--out` takes the same forms as the pipeline's `output`.
            let out = match out {
                Some(path) => Some(
                    gato::remote::local_path(&path.to_string_lossy())
                        .map_err(|m| anyhow::anyhow!("--out {m}"))?,
                ),
                None => None,
            };
            if let Some(limit) = memory_limit
                && !(limit.is_finite() && limit > 0.0)
            {
                anyhow::bail!(
                    "--memory-limit must be a positive number of MiB, got {limit}"
                );
            }
            let pipeline = Pipeline::load(&pipeline)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let options = RunOptions {
                output: out,
                overwrite,
                progress: !cli.quiet
                    && std::io::IsTerminal::is_terminal(&std::io::stderr()),
                print: true,
                device,
                memory_limit_mib: memory_limit,
            };
            runtime.block_on(run_pipeline(&pipeline, &options))?;
            Ok(())
        }
        Command::Apply { model, out, overwrite, inputs } => {
            apply_command(&model, &out, &inputs, overwrite)
        }
        Command::Report { output } => {
            let files = gato::plot::draw_report(&output)?;
            println!(
                "{}: {} plot files and {}",
                output.display(),
                files.plots.len(),
                files.html.display()
            );
            if !files.failures.is_empty() {
                anyhow::bail!(
                    "{} plots or runs could not be drawn:\n  {}",
                    files.failures.len(),
                    files.failures.join("\n  ")
                );
            }
            Ok(())
        }
        Command::Validate { pipeline } => {
            let pipeline = Pipeline::load(&pipeline)?;
            gato::device::check(pipeline.device)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let sources = gato::source::Sources::open(&pipeline)?;
            runtime.block_on(gato::select::check(&pipeline, &sources))?;
            println!(
                "{}: valid; {} processes, {} input(s), K = {:?}",
                pipeline.origin,
                pipeline.processes.len(),
                pipeline.inputs.len(),
                pipeline.model.categories
            );
            Ok(())
        }
        Command::Generate { kind, out, seed, signal, background, overwrite } => {
            local_only("gato generate", "--out", &out)?;
            if out.exists() && !overwrite {
                anyhow::bail!(
                    "{} already exists; pass --overwrite to replace it or choose another --out",
                    out.display()
                );
            }
            let kind = match kind {
                ToyKind::Toy1d => GeneratorKind::Toy1d,
                ToyKind::ThreeClass => GeneratorKind::ThreeClass,
                ToyKind::Resonance => GeneratorKind::Resonance,
            };
            let mut spec = ToySpec::new(kind, seed);
            spec.signal = signal.unwrap_or(spec.signal);
            spec.background = background.unwrap_or(spec.background);
            spec.check().map_err(anyhow::Error::msg)?;
            gato::toy::write_parquet(&spec, &out)?;
            println!(
                "wrote {} ({} events)",
                out.display(),
                spec.counts().iter().map(|c| c.1).sum::<usize>()
            );
            Ok(())
        }
    }
}

/// An input of `gato apply`.
struct ApplyInput {
    /// The file that is read: the input itself or its copy from the store.
    local: PathBuf,
    /// The input as the user gave it, for messages; a URL for an object.
    label: String,
    /// File name of the input and of its output.
    name: String,
    /// Whether the input is an object, copied to `local` before reading.
    remote: bool,
}

/// Runs `gato apply`: inputs and the model may be local files or objects
/// (glob patterns allowed), and `out` a directory or an object prefix.
/// Objects are copied to a temporary directory first, and outputs for an
/// object store are uploaded once all are written.
fn apply_command(
    model: &Path,
    out: &Path,
    inputs: &[PathBuf],
    overwrite: bool,
) -> anyhow::Result<()> {
    let location = |option: &str, path: &Path| {
        gato::remote::local_path(&path.to_string_lossy())
            .map_err(|m| anyhow::anyhow!("{option} {m}"))
    };
    let url_of = |path: &Path| {
        path.to_str().filter(|t| gato::remote::is_remote(t)).map(String::from)
    };
    let model = location("--model", model)?;
    let out = location("--out", out)?;

    // Inputs, outputs and the store are checked before anything is copied.
    let mut files = Vec::new();
    for input in inputs {
        let pattern = location("input", input)?;
        match url_of(&pattern) {
            Some(text) => {
                for url in gato::remote::expand(&text).map_err(anyhow::Error::msg)? {
                    let name = url.rsplit('/').next().unwrap_or(&url).to_string();
                    files.push(ApplyInput {
                        local: PathBuf::new(),
                        label: url,
                        name,
                        remote: true,
                    });
                }
            }
            None => {
                let name = pattern
                    .file_name()
                    .with_context(|| format!("{} names no file", pattern.display()))?
                    .to_string_lossy()
                    .into_owned();
                let label = pattern.display().to_string();
                files.push(ApplyInput { local: pattern, label, name, remote: false });
            }
        }
    }
    let mut names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        anyhow::bail!(
            "two inputs are named {}; their outputs in {} would collide, so apply \
             them in separate calls with different --out",
            w[0],
            out.display()
        );
    }
    let out_url = url_of(&out).map(|u| u.trim_end_matches('/').to_string());
    if let Some(url) = &out_url {
        gato::remote::check_writable(url)?;
        for file in &files {
            let target = format!("{url}/{}", file.name);
            let same = gato::remote::normalized(&target);
            if file.remote && gato::remote::normalized(&file.label) == same {
                anyhow::bail!(
                    "output {target}: is the input object; choose another --out prefix"
                );
            }
            if !overwrite && gato::remote::exists(&target)? {
                anyhow::bail!(
                    "{target} already exists; pass --overwrite to replace it or choose \
                     another --out"
                );
            }
        }
    }

    let remote_model = url_of(&model);
    let staging = if remote_model.is_some()
        || out_url.is_some()
        || files.iter().any(|f| f.remote)
    {
        let dir = tempfile::Builder::new()
            .prefix("gato-apply-")
            .tempdir()
            .context("cannot create a temporary directory for the objects; set TMPDIR")?;
        let tracked = gato::interrupt::Tracked::new(dir.path());
        Some((dir, tracked))
    } else {
        None
    };
    let staged = |relative: &str| -> anyhow::Result<PathBuf> {
        let dir = staging.as_ref().map(|s| s.0.path()).context("no staging directory")?;
        let path = dir.join(relative);
        std::fs::create_dir_all(path.parent().unwrap_or(dir))
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(path)
    };
    let saved = match &remote_model {
        Some(url) => {
            let copy = staged("model.json")?;
            let model_error = |e: gato::Error| {
                let text = e.to_string().replace(&copy.display().to_string(), url);
                anyhow::anyhow!(
                    "{}",
                    text.replacen(
                        &format!("input {url}"),
                        &format!("model file {url}"),
                        1
                    )
                )
            };
            gato::remote::download(url, &copy).map_err(model_error)?;
            gato::model::SavedModel::load(&copy).map_err(model_error)?
        }
        None => gato::model::SavedModel::load(&model)?,
    };
    for (index, file) in files.iter_mut().enumerate() {
        if file.remote {
            file.local = staged(&format!("in/{index}/{}", file.name))?;
            gato::remote::download(&file.label, &file.local)?;
        }
    }

    let Some(url) = out_url else {
        // A directory made here is removed again if nothing was written.
        let created = !out.exists();
        std::fs::create_dir_all(&out).with_context(|| {
            format!("cannot create the output directory {}", out.display())
        })?;
        let out_label = out.display().to_string();
        let result = apply_all(&saved, &files, &out, overwrite, &out_label, true);
        if result.is_err() && created {
            let _ = std::fs::remove_dir(&out);
        }
        return result.map(|_| ());
    };
    let dir = staged("out/")?;
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let lines = apply_all(&saved, &files, &dir, true, &url, false)?;
    if let Err(error) = gato::remote::upload_dir(&dir, &url, "") {
        // The outputs are complete: keep them for a later upload.
        let kept_dir = staging.map(|(dir, tracked)| {
            drop(tracked);
            dir.keep().join("out")
        });
        anyhow::bail!(
            "{error}; the outputs are kept_dir in {}, copy them there when the store can be \
             written",
            kept_dir.unwrap_or(dir).display()
        );
    }
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// Categorises each input with `saved` into the directory `out`, which
/// messages call `out_label`. Returns a line per output for the terminal,
/// unless `print` has them printed as each output is written.
fn apply_all(
    saved: &gato::model::SavedModel,
    inputs: &[ApplyInput],
    out: &Path,
    overwrite: bool,
    out_label: &str,
    print: bool,
) -> anyhow::Result<Vec<String>> {
    let out_label = out_label.trim_end_matches('/');
    // Messages name the inputs and outputs as the user gave them, not
    // their temporary copies.
    let relabel = |input: &ApplyInput, e: gato::Error| {
        let text =
            e.to_string().replace(&input.local.display().to_string(), &input.label);
        anyhow::anyhow!("{}", text.replace(&out.display().to_string(), out_label))
    };
    // Every input and output is checked before the first output is written.
    for input in inputs {
        gato::apply::check_model_columns(saved, &input.local)
            .map_err(|e| relabel(input, e))?;
        let output = out.join(&input.name);
        gato::apply::check_not_input(&input.local, &output)?;
        if output.exists() && !overwrite {
            anyhow::bail!(
                "{} already exists; pass --overwrite to replace it or choose another --out",
                output.display()
            );
        }
    }
    let mut lines = Vec::with_capacity(inputs.len());
    for input in inputs {
        let output = out.join(&input.name);
        let applied = gato::apply::apply_model(saved, &input.local, &output)
            .map_err(|e| relabel(input, e))?;
        let line = format!(
            "{} -> {out_label}/{} ({} rows, {} without a category)",
            input.label, input.name, applied.rows, applied.uncategorised
        );
        if print {
            println!("{line}");
        } else {
            lines.push(line);
        }
        let ranges = saved.discriminants.iter().zip(&saved.ranges);
        for ((name, [low, high]), &outside) in ranges.zip(&applied.outside_range) {
            if outside > 0 {
                tracing::warn!(
                    "{}: {outside} rows have `{name}` outside the model's range [{low}, \
                     {high}]; they are in the first or last category",
                    input.label
                );
            }
        }
    }
    Ok(lines)
}

/// Rejects a URL where `command` reads or writes local files only.
fn local_only(command: &str, option: &str, path: &Path) -> anyhow::Result<()> {
    let text = path.to_string_lossy();
    if let Some((scheme, _)) = text.split_once("://") {
        anyhow::bail!(
            "{option} {text}: {command} reads and writes local files only, not {scheme}:// \
             URLs; copy the files to or from the object store with its own tools (for \
             example `aws s3 cp`), or use `gato run`, which reads and writes s3:// and gs://"
        );
    }
    Ok(())
}

fn init_logging(quiet: bool, verbose: u8) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("gato={level}")));
    let terminal = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter);
    let collector = gato::warnings::Collector.with_filter(LevelFilter::WARN);
    tracing_subscriber::registry().with(terminal).with(collector).init();
}
