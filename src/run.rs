//! [`run_pipeline`]: the whole pipeline, from sources to summary.json.
//!
//! Output layout under the output directory:
//! `summary.json`, and per run (`<model>_k<K>/`) `history.json` and one
//! Parquet file per input with the `category` column.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::{EventStorage, ModelKind, Pipeline, Role};
use crate::device::DeviceChoice;
use crate::error::{Error, Result};
use crate::evaluate::{ArgmaxYields, CategoryYields, DpHistogram, equidistant_edges};
use crate::model::{CategoryModel, GaussianMixture, SigmoidCuts, SigmoidGrid};
use crate::objective::EventTensors;
use crate::optimize::{TrainOutcome, Trainer};
use crate::report::{
    Baseline, DpSummary, OutputFile, Penalties, Penalty, ProcessSummary, RestartSummary,
    RunSummary, SidebandSummary, Summary, Timings, format_comparison, format_run,
    write_history,
};
use crate::select::{Binner, Events, Keep};
use crate::store::EventSet;
use crate::source::Sources;

/// The CPU training backend: burn-ndarray in float64 with autodiff.
pub type CpuBackend = Autodiff<NdArray<f64>>;

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Output directory; the pipeline's `output` when `None`.
    pub output: Option<PathBuf>,
    /// Replace the outputs of an earlier run.
    pub overwrite: bool,
    /// Show progress bars.
    pub progress: bool,
    /// Print the tables on standard output.
    pub print: bool,
    /// Training device; the pipeline's `device` when `None`.
    pub device: Option<DeviceChoice>,
    /// Memory budget in MiB, half the machine's memory when `None`. It
    /// decides where the selected events are kept (`selection.events:
    /// auto`), and between the one-pass and the two-pass gradient when
    /// `training.chunk_events` is not set.
    pub memory_limit_mib: Option<f64>,
}

/// Estimated bytes of gradient graph per event and per category and
/// discriminant (plus one) in a one-pass gradient: sixteen float64 tensors
/// of the events' shape.
// NOTE: an estimate from the number of intermediate [N, K] tensors the
// models build; it has not been measured against the allocator.
const GRAPH_BYTES: f64 = 16.0 * 8.0;

/// Events per chunk of the two-pass gradient that keeps the estimated
/// gradient graph of `events` events within half of `limit_mib`, or
/// `None` when one pass fits. At least 10 000 events per chunk.
pub fn chunk_for_memory(
    events: usize,
    k: usize,
    dims: usize,
    limit_mib: f64,
) -> Option<usize> {
    let per_event = GRAPH_BYTES * (k * (dims + 1)) as f64;
    let budget = limit_mib * 1024.0 * 1024.0 / 2.0;
    if events as f64 * per_event <= budget {
        return None;
    }
    Some(((budget / per_event) as usize).max(10_000))
}

/// Estimated bytes per selected event kept in memory: gato's columns, 12
/// more while they are put in order, and the resident training tensors.
fn memory_bytes_per_event(dims: usize, mass: bool) -> f64 {
    let columns = 8.0 * (dims + 1 + usize::from(mass)) as f64 + 16.0;
    columns + 12.0 + 8.0 * (dims + 2) as f64
}

/// Largest chunk of events on disk.
const MAX_DISK_CHUNK: usize = 1 << 20;

/// Decides where the selection keeps the events of `rows` input rows under
/// a memory budget of `limit_mib`. `selection.events` decides, and `auto`
/// means on disk when keeping them in memory would take more than half the
/// budget, except with a sideband fit, which needs them in memory. Chunks
/// on disk have `training.chunk_events` events, or as many as keep the
/// gradient graph of a chunk within half the budget.
pub fn keep_for(pipeline: &Pipeline, rows: u64, k: usize, limit_mib: f64) -> Keep {
    let dims = pipeline.selection.discriminants.len();
    let per_event = memory_bytes_per_event(dims, pipeline.selection.mass.is_some());
    let budget = limit_mib * 1024.0 * 1024.0;
    let disk = match pipeline.selection.events {
        EventStorage::Memory => false,
        EventStorage::Disk => true,
        EventStorage::Auto => {
            let large = rows as f64 * per_event > budget / 2.0;
            if large && pipeline.objective.sideband.is_some() {
                tracing::warn!(
                    rows,
                    limit_mib,
                    "the events would take more than half of --memory-limit, but they stay \
                     in memory because objective.sideband_fit refits from every event's mass"
                );
            }
            large && pipeline.objective.sideband.is_none()
        }
    };
    if !disk {
        return Keep::Memory;
    }
    let chunk = pipeline.training.chunk_events.unwrap_or_else(|| {
        chunk_for_memory(usize::MAX, k, dims, limit_mib)
            .unwrap_or(MAX_DISK_CHUNK)
            .min(MAX_DISK_CHUNK)
    });
    Keep::Disk { chunk, sort_bytes: ((budget / 8.0) as usize).clamp(32 << 20, 1 << 30) }
}

/// Makes glibc's malloc give every block of 4 MiB or more back to the
/// system when it is freed.
///
/// By default glibc raises this threshold to the size of the largest block
/// freed so far, and then keeps freed chunk buffers in its heaps. A run
/// that streams thousands of chunks from disk then grows with the number
/// of chunks instead of staying at the size of a few.
fn return_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tuning parameter of glibc's malloc.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// Caps the number of glibc malloc arenas at the number of cores, between
/// 2 and 8; call it before any thread starts.
///
/// By default glibc gives threads up to eight arenas per core, and each
/// arena keeps the blocks freed in it for its own threads. The selection,
/// the chunk readers and the compute thread allocate and free on different
/// threads, so memory freed by one stage stayed out of reach of the next.
/// With the events on disk, a 50M-event run then peaked 40 to 70 MiB
/// higher in the refinement than with two arenas, and the peak varied from
/// run to run.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = cores.clamp(2, 8) as libc::c_int;
        // SAFETY: mallopt only changes a tuning parameter of glibc's malloc.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Gives the memory that the selection's sort has freed back to the
/// system, so that the stages after it start from the memory they use.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Half of the machine's memory in MiB (from /proc/meminfo), or 4096 where
/// it is not known.
fn default_memory_limit_mib() -> f64 {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?.to_string();
        line.split_whitespace().nth(1)?.parse::<f64>().ok()
    });
    total.map_or(4096.0, |kib| kib / 1024.0 / 2.0)
}

/// A trainer on one of the backends this binary has.
enum Engine<'a> {
    Cpu(Trainer<'a, CpuBackend>),
    #[cfg(feature = "cuda")]
    Cuda(Trainer<'a, crate::device::CudaBackend>),
}

/// Runs `pipeline` and returns its summary, also written to
/// `summary.json`.
pub async fn run_pipeline(pipeline: &Pipeline, options: &RunOptions) -> Result<Summary> {
    let output = options.output.clone().unwrap_or_else(|| pipeline.output.clone());
    if let Some(url) = output.to_str().filter(|t| crate::remote::is_remote(t)) {
        return run_to_object_store(pipeline, options, url).await;
    }
    check_output(pipeline, &output, options.overwrite)?;
    let result = run_checked(pipeline, options, &output).await;
    if result.is_err() {
        // A failed run leaves no staged files behind; earlier outputs stay.
        let staging = output.join(".gato-staging");
        if staging.is_dir() {
            let _ = std::fs::remove_dir_all(&staging);
        }
    }
    result
}

/// [`run_pipeline`] with the output on an object store: the run writes to
/// a temporary directory, and when it is complete every file is uploaded
/// under the prefix `url`, `summary.json` last. The paths in the summary
/// name the uploaded objects.
async fn run_to_object_store(
    pipeline: &Pipeline,
    options: &RunOptions,
    url: &str,
) -> Result<Summary> {
    crate::remote::check_writable(url)?;
    let url = url.trim_end_matches('/');
    let summary_url = format!("{url}/summary.json");
    if !options.overwrite && crate::remote::exists(&summary_url)? {
        return Err(Error::output(
            Path::new(url),
            "already holds the summary.json of an earlier run; pass --overwrite to \
             replace it, or choose another output",
        ));
    }
    let local = tempfile::Builder::new().prefix("gato-output-").tempdir().map_err(|e| {
        Error::output(
            Path::new(url),
            format!("cannot create a temporary directory for the outputs: {e}; set TMPDIR"),
        )
    })?;
    let tracked = crate::interrupt::Tracked::new(local.path());
    let dir = local.path().join("out");
    let local_options = RunOptions { output: Some(dir.clone()), ..options.clone() };
    Box::pin(run_pipeline(pipeline, &local_options)).await?;
    // The summary names the objects, not the temporary files.
    let summary_path = dir.join("summary.json");
    let text = std::fs::read_to_string(&summary_path)
        .map_err(|e| Error::output(&summary_path, format!("cannot read back: {e}")))?;
    let local_prefix = serde_json::to_string(&dir.display().to_string())
        .map_err(|e| Error::Internal(e.to_string()))?;
    let text = text.replace(local_prefix.trim_matches('"'), url);
    crate::atomic::write(&summary_path, text.as_bytes())?;
    if let Err(error) = crate::remote::upload_dir(&dir, url, "summary.json") {
        // The run is complete: keep its outputs for a later upload.
        drop(tracked);
        let outputs = local.keep().join("out");
        return Err(Error::output(
            Path::new(url),
            format!(
                "{error}; the outputs of the run are kept in {}, copy them there when \
                 the store can be written",
                outputs.display()
            ),
        ));
    }
    tracing::info!(output = url, "uploaded the outputs");
    Summary::read(&summary_path)
}

/// [`run_pipeline`] after the output directory passed its checks.
async fn run_checked(
    pipeline: &Pipeline,
    options: &RunOptions,
    output: &Path,
) -> Result<Summary> {
    let started = Instant::now();
    let output = output.to_path_buf();
    let device = options.device.unwrap_or(pipeline.device);
    crate::device::check(device)?;

    let sources = Sources::open(pipeline)?;
    let limit = options.memory_limit_mib.unwrap_or_else(default_memory_limit_mib);
    let largest_k = pipeline
        .model
        .bins
        .iter()
        .map(|b| b.iter().product::<usize>())
        .max()
        .unwrap_or(2);
    let keep = keep_for(pipeline, sources.rows(), largest_k, limit);
    if let Keep::Disk { chunk, .. } = keep {
        return_large_blocks();
        tracing::info!(
            rows = sources.rows(),
            chunk,
            limit_mib = limit,
            "keeping the selected events on disk"
        );
    }
    let reading = spinner(
        options.progress,
        "selecting events: {human_pos} events ({per_sec}, {elapsed})",
    );
    let events = crate::select::select_into(pipeline, &sources, keep, &reading).await?;
    let context = Context { options, output, device, sources, keep, limit, largest_k, started };
    on_compute_thread(|| optimise_and_write(pipeline, context, events))
}

/// The state of [`run_checked`] before the events are selected.
struct Context<'a> {
    options: &'a RunOptions,
    output: PathBuf,
    device: DeviceChoice,
    sources: Sources,
    keep: Keep,
    /// `--memory-limit` in MiB.
    limit: f64,
    /// Largest number of categories among the runs.
    largest_k: usize,
    started: Instant,
}

/// Runs `work` on a thread of its own and waits for it, so that training
/// and evaluation stay off the tokio workers.
///
/// On a multi-threaded runtime the waiting worker hands its other tasks to
/// the rest, and on a current-thread runtime nothing else runs meanwhile.
fn on_compute_thread<T: Send>(work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let wait = || {
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("gato-compute".into())
                .spawn_scoped(scope, work)
                .map_err(|e| Error::Internal(format!("starting the compute thread: {e}")))?;
            worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    };
    let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
    match flavor {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
        _ => wait(),
    }
}

/// Trains, evaluates and applies every run of `pipeline` on the selected
/// `events`, then publishes the outputs and draws the report.
fn optimise_and_write(
    pipeline: &Pipeline,
    context: Context,
    mut events: EventSet,
) -> Result<Summary> {
    let Context { options, output, device, sources, keep, limit, largest_k, started } =
        context;
    if matches!(keep, Keep::Disk { .. }) {
        release_free_memory();
    }
    // The plots show every selected event, signal outside the window too.
    let histograms = crate::plot::Histograms::new(pipeline, &events)?;
    if let EventSet::Memory(events) = &mut events {
        count_signal_in_window(pipeline, events);
    }
    let mut timings =
        Timings { select: started.elapsed().as_secs_f64(), ..Timings::default() };
    let processes = process_summaries(pipeline, &events)?;
    warn_outside_range(pipeline, &events)?;
    for p in &processes {
        tracing::info!(process = %p.name, role = %p.role, events = p.events, event_yield = p.event_yield, "selected");
    }
    log_peak("selection");

    std::fs::create_dir_all(&output).map_err(|e| {
        Error::output(&output, format!("cannot create the output directory: {e}"))
    })?;
    // Runs are written under a staging directory and moved into place at the
    // end, so a failed run leaves the outputs of the last good run intact.
    let staging = output.join(".gato-staging");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| {
            Error::output(
                &staging,
                format!("cannot remove a stale staging directory: {e}"),
            )
        })?;
    }
    std::fs::create_dir_all(&staging)
        .map_err(|e| Error::output(&staging, format!("cannot create directory: {e}")))?;
    // Until the runs are published, an interruption removes the staging
    // directory.
    let staging_guard = crate::interrupt::Tracked::new(&staging);
    histograms.write(&staging.join("histograms.json"))?;
    // Binned statistics: epochs sum over filled cells instead of events.
    let binned = match pipeline.training.statistics_bins {
        Some(bins) => {
            let mut binner =
                Binner::new(&pipeline.model.ranges, bins, pipeline.processes.len());
            events.for_each_chunk(|chunk| {
                binner.add(chunk);
                Ok(())
            })?;
            let binned = binner.finish();
            tracing::info!(
                events = events.len(),
                cells = binned.len(),
                bins,
                "binned the events for training"
            );
            log_peak("binning");
            Some(EventSet::Memory(binned))
        }
        None => None,
    };
    let train_events = binned.as_ref().unwrap_or(&events);
    // Without `training.chunk_events`, the memory budget decides whether
    // the gradient takes one pass or two passes over chunks. Events on
    // disk take two passes over their chunks.
    let mut tuned = pipeline.clone();
    if tuned.training.chunk_events.is_none() {
        tuned.training.chunk_events = match (keep, train_events) {
            (Keep::Disk { chunk, .. }, EventSet::Disk(_)) => Some(chunk),
            _ => chunk_for_memory(train_events.len(), largest_k, events.dims(), limit),
        };
        if let Some(chunk) = tuned.training.chunk_events {
            if matches!(train_events, EventSet::Disk(_)) {
                tracing::info!(
                    chunk,
                    "the events are on disk; computing the gradient in two passes over chunks"
                );
            } else {
                tracing::info!(
                    chunk,
                    limit_mib = limit,
                    "the gradient graph would exceed the memory budget; computing it in two passes over chunks"
                );
            }
        }
    }
    let pipeline = &tuned;
    let cpu_tensors;
    #[cfg(feature = "cuda")]
    let cuda_tensors;
    let engine = match device {
        DeviceChoice::Cpu => {
            cpu_tensors = train_events.in_memory().map(|events| {
                EventTensors::<CpuBackend>::new(events, pipeline, &Default::default())
            });
            Engine::Cpu(Trainer {
                pipeline,
                events: train_events,
                tensors: cpu_tensors.as_ref(),
                device: Default::default(),
            })
        }
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda(index) => {
            let cuda = burn_cuda::CudaDevice::new(index);
            cuda_tensors = train_events.in_memory().map(|events| {
                EventTensors::<crate::device::CudaBackend>::new(events, pipeline, &cuda)
            });
            Engine::Cuda(Trainer {
                pipeline,
                events: train_events,
                tensors: cuda_tensors.as_ref(),
                device: cuda,
            })
        }
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda(_) => {
            return Err(Error::Internal(
                "a CUDA device passed the check without the `cuda` feature".into(),
            ));
        }
    };
    tracing::info!(%device, "training device");

    let mut runs = Vec::new();
    for bins in &pipeline.model.bins {
        let model = build_model(pipeline, bins);
        let k = model.categories();
        let name = run_name(&model);
        let run_dir = staging.join(&name);
        std::fs::create_dir_all(&run_dir).map_err(|e| {
            Error::output(&run_dir, format!("cannot create directory: {e}"))
        })?;

        let train_started = Instant::now();
        let (outcomes, restarts) = match &engine {
            Engine::Cpu(trainer) => train_restarts(
                pipeline,
                trainer,
                &model,
                &events,
                &name,
                options.progress,
            ),
            #[cfg(feature = "cuda")]
            Engine::Cuda(trainer) => train_restarts(
                pipeline,
                trainer,
                &model,
                &events,
                &name,
                options.progress,
            ),
        }?;
        let training_s = train_started.elapsed().as_secs_f64();
        timings.train += training_s;
        log_peak("training");
        write_history(
            &run_dir.join("history.json"),
            &outcomes.iter().map(|o| o.history.clone()).collect::<Vec<_>>(),
        )?;

        let eval_started = Instant::now();
        let best_restart = best_restart(&restarts);
        let mut outcome = outcomes[best_restart].clone();
        let trained_z = outcome.history[outcome.kept_epoch].hard_z;
        let refined = refine(pipeline, &events, &model, &mut outcome)?;
        log_peak("refinement");
        let mut run =
            evaluate_run(pipeline, &events, &model, &outcome, k, name, training_s)?;
        run.trained_z = trained_z;
        run.refined = refined;
        run.soft_hard_bias = if trained_z > 0.0 {
            (outcome.soft_z - trained_z) / trained_z
        } else {
            f64::NAN
        };
        if refined {
            tracing::info!(run = %run.name, trained_z, refined_z = run.table.z, "refined the cuts on hard categories");
        }
        run.restarts = restarts;
        run.best_restart = best_restart;
        timings.evaluate += eval_started.elapsed().as_secs_f64();
        run.meets_constraints = run.table.meets_constraints(pipeline);
        warn_about_categories(pipeline, &run);

        let saved = crate::model::SavedModel::new(
            &model,
            &outcome.params,
            &pipeline.selection.discriminants,
        );
        saved.save(&run_dir.join("model.json"))?;
        run.model_file = output.join(&run.name).join("model.json").display().to_string();

        let apply_started = Instant::now();
        let writing = spinner(
            options.progress,
            &format!("{}: writing the categorised inputs ({{elapsed}})", run.name),
        );
        let written = crate::apply::apply(
            &sources,
            &events,
            |discriminants| model.assign(&outcome.params, discriminants),
            &run_dir,
        );
        writing.finish_and_clear();
        let written = written?;
        run.outputs = written
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let file = p.file_name().unwrap_or_default();
                let output = output.join(&run.name).join(file);
                OutputFile {
                    input: sources.input(i).label(),
                    output: output.display().to_string(),
                }
            })
            .collect();
        timings.apply += apply_started.elapsed().as_secs_f64();
        log_peak("evaluation and apply");
        if options.print {
            println!("{}", format_run(&run, &processes));
        }
        runs.push(run);
    }
    timings.total = started.elapsed().as_secs_f64();
    if options.print {
        println!("{}", format_comparison(&runs));
    }
    let summary = Summary {
        schema_version: crate::report::SCHEMA_VERSION,
        versions: Default::default(),
        pipeline: pipeline.name.clone(),
        pipeline_origin: pipeline.origin.clone(),
        pipeline_text: pipeline.text.clone(),
        seed: pipeline.seed,
        device: device.to_string(),
        event_storage: match events {
            EventSet::Memory(_) => "memory".into(),
            EventSet::Disk(_) => "disk".into(),
        },
        engine: if crate::select::uses_polars(pipeline) { "polars" } else { "datafusion" }
            .into(),
        processes,
        runs,
        penalties: Penalties {
            low_background: pipeline
                .objective
                .low_background
                .map(|(threshold, weight)| Penalty { threshold, weight }),
            mc_uncertainty: pipeline
                .objective
                .mc_uncertainty
                .map(|(threshold, weight)| Penalty { threshold, weight }),
        },
        report: pipeline.report.clone(),
        timings_s: timings,
        peak_rss_mib: crate::report::peak_rss_mib(),
        warnings: crate::warnings::recorded(),
    };
    drop(staging_guard);
    publish(&output, &staging, &summary, options.overwrite)?;
    let path = output.join("summary.json");
    tracing::info!(summary = %path.display(), "run finished");
    // The results are in place; a plot that cannot be drawn does not undo
    // them, and `gato report` can draw it again.
    let drawing = Instant::now();
    match crate::plot::draw_report(&output) {
        Ok(files) => {
            for failure in &files.failures {
                tracing::warn!("not drawn: {failure}");
            }
            tracing::info!(
                report = %files.html.display(),
                plots = files.plots.len(),
                seconds = drawing.elapsed().as_secs_f64(),
                "report drawn"
            );
        }
        Err(e) => {
            // A report.html of an earlier run would describe other results.
            let _ = std::fs::remove_file(output.join("report.html"));
            tracing::warn!(
                "the plots and report.html were not drawn: {e}; run `gato report {}` to \
                 draw them",
                output.display()
            );
        }
    }
    Ok(summary)
}

/// Sets the weight of signal events outside the mass window to 0, so that
/// signal yields count only the window (`objective.sideband_fit` only).
fn count_signal_in_window(pipeline: &Pipeline, events: &mut Events) {
    let (Some(spec), Some(mass)) =
        (pipeline.objective.sideband.as_ref(), events.mass.as_ref())
    else {
        return;
    };
    let (lo, hi) = spec.window;
    let mut outside = 0usize;
    for (p, range) in events.process_ranges.iter().enumerate() {
        if pipeline.processes[p].role != Role::Signal {
            continue;
        }
        for i in range.clone() {
            if !(lo..=hi).contains(&mass[i]) {
                events.weight[i] = 0.0;
                outside += 1;
            }
        }
    }
    tracing::info!(outside, window = ?spec.window, "signal counted in the mass window only");
}

/// Builds the model of one entry of `model.categories`: `bins` is `[K]`,
/// or the bins per discriminant of a sigmoid grid.
pub fn build_model(pipeline: &Pipeline, bins: &[usize]) -> CategoryModel {
    let ranges = &pipeline.model.ranges;
    let k: usize = bins.iter().product();
    match pipeline.model.kind {
        ModelKind::Sigmoid if ranges.len() > 1 => {
            let axes: Vec<(usize, f64, f64)> =
                bins.iter().zip(ranges).map(|(&b, &(lo, hi))| (b, lo, hi)).collect();
            CategoryModel::Grid(SigmoidGrid::new(&axes))
        }
        ModelKind::Sigmoid => {
            CategoryModel::Sigmoid(SigmoidCuts::new(k, ranges[0].0, ranges[0].1))
        }
        ModelKind::Gmm => CategoryModel::Gmm(GaussianMixture::new(
            k,
            ranges.clone(),
            pipeline.model.means == crate::config::MeanMapping::Simplex,
            pipeline.model.sigma_base,
            pipeline.model.init,
        )),
    }
}

/// `sigmoid` or `gmm`.
fn model_name(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Sigmoid => "sigmoid",
        ModelKind::Gmm => "gmm",
    }
}

/// Name of a run's directory: `sigmoid_k5`, `gmm_k10`, or for a sigmoid
/// grid the bins per discriminant, `sigmoid_3x4`.
pub fn run_name(model: &CategoryModel) -> String {
    match model {
        CategoryModel::Sigmoid(m) => format!("sigmoid_k{}", m.categories),
        CategoryModel::Grid(m) => {
            format!(
                "sigmoid_{}",
                m.bins().iter().map(|b| b.to_string()).collect::<Vec<_>>().join("x")
            )
        }
        CategoryModel::Gmm(m) => format!("gmm_k{}", m.components),
    }
}

/// Trains every start of one K.
fn train_restarts<B: burn::tensor::backend::AutodiffBackend>(
    pipeline: &Pipeline,
    trainer: &Trainer<'_, B>,
    model: &CategoryModel,
    events: &EventSet,
    name: &str,
    progress: bool,
) -> Result<(Vec<TrainOutcome>, Vec<RestartSummary>)> {
    let signal = signal_points(pipeline, events)?;
    let mut outcomes = Vec::new();
    let mut summaries = Vec::new();
    for restart in 0..pipeline.training.restarts {
        let mut rng = ChaCha8Rng::seed_from_u64(pipeline.seed);
        rng.set_stream(((model.categories() as u64) << 20) | restart as u64);
        let init = model.init(&mut rng, restart, &signal);
        let bar = progress_bar(
            progress,
            pipeline.training.epochs,
            &format!("{name} start {restart}"),
        );
        let started = Instant::now();
        let k = model.categories();
        // With a sideband fit, the background factors are refitted every
        // `every` epochs from the hard categories, starting before epoch 0.
        let mut update = |epoch: usize, assign: &[u32]| -> Option<Vec<f64>> {
            let spec = pipeline.objective.sideband.as_ref()?;
            if epoch % spec.every != 0 {
                return None;
            }
            let events = events.in_memory()?;
            Some(crate::sideband::category_factors(pipeline, events, assign, k, spec))
        };
        let outcome = trainer.train_with(model, init, &mut update, &mut |record| {
            bar.set_message(format!("Z {:.4}", record.hard_z));
            bar.inc(1);
        })?;
        bar.finish_and_clear();
        let hard_z = outcome.history[outcome.kept_epoch].hard_z;
        tracing::info!(
            run = name,
            restart,
            hard_z,
            kept_epoch = outcome.kept_epoch,
            "trained"
        );
        summaries.push(RestartSummary {
            restart,
            kept_epoch: outcome.kept_epoch,
            hard_z,
            training_s: started.elapsed().as_secs_f64(),
        });
        outcomes.push(outcome);
    }
    Ok((outcomes, summaries))
}

/// Bins of the first discriminant that stand in for the signal events on
/// disk when the model's starting point is drawn.
const SIGNAL_POINT_BINS: usize = 20_000;

/// Fine 1D binned statistics of the first discriminant.
fn binned_first(pipeline: &Pipeline, events: &EventSet, bins: usize) -> Result<Events> {
    let mut binner =
        Binner::new(&pipeline.model.ranges[..1], bins, pipeline.processes.len());
    events.for_each_chunk(|chunk| {
        binner.add(chunk);
        Ok(())
    })?;
    Ok(binner.finish())
}

/// (first discriminant, weight) of the signal events, from which the GMM
/// draws its starting means: every event in memory, or for events on disk
/// the filled cells of [`SIGNAL_POINT_BINS`] bins at their mean position.
fn signal_points(pipeline: &Pipeline, events: &EventSet) -> Result<Vec<(f64, f64)>> {
    let binned;
    let events = match events.in_memory() {
        Some(events) => events,
        None => {
            binned = binned_first(pipeline, events, SIGNAL_POINT_BINS)?;
            &binned
        }
    };
    Ok(events
        .process_ranges
        .iter()
        .enumerate()
        .filter(|(p, _)| pipeline.processes[*p].role == Role::Signal)
        .flat_map(|(_, r)| {
            r.clone().map(|i| (events.discriminants[0][i], events.weight[i]))
        })
        .collect())
}

fn best_restart(restarts: &[RestartSummary]) -> usize {
    let mut best = 0;
    for (i, r) in restarts.iter().enumerate() {
        if r.hard_z > restarts[best].hard_z {
            best = i;
        }
    }
    best
}

/// Refines 1D sigmoid cuts on the exact hard significance if
/// `training.refine` is set, and returns whether the cuts were refined.
///
/// Events on disk are refined in bounded memory by
/// [`crate::optimize::disk_refine::refine`].
fn refine(
    pipeline: &Pipeline,
    events: &EventSet,
    model: &CategoryModel,
    outcome: &mut TrainOutcome,
) -> Result<bool> {
    let CategoryModel::Sigmoid(cuts_model) = model else {
        return Ok(false);
    };
    // The refinement counts background without the reweighting factors.
    if !pipeline.training.refine || pipeline.objective.reweight.is_some() {
        return Ok(false);
    }
    let mut cuts = cuts_model.boundaries(&outcome.params);
    let (low, high) = (cuts_model.low, cuts_model.high);
    match events.in_memory() {
        Some(events) => {
            let Some(sorted) = crate::optimize::SortedEvents::new(pipeline, events) else {
                return Ok(false);
            };
            sorted.refine(&mut cuts, low, high);
        }
        None if events.dims() == 1 => {
            if !crate::optimize::disk_refine::refine(pipeline, events, &mut cuts, low, high)? {
                return Ok(false);
            }
        }
        None => return Ok(false),
    }
    outcome.params.values[0] = cuts_model.raw_from_boundaries(&cuts);
    Ok(true)
}

/// Logs the peak resident memory so far, at debug level, after `stage`.
fn log_peak(stage: &str) {
    if let Some(peak_mib) = crate::report::peak_rss_mib() {
        tracing::debug!(stage, peak_mib, "peak resident memory so far");
    }
}

/// Evaluates the kept parameters exactly, with the baselines.
fn evaluate_run(
    pipeline: &Pipeline,
    events: &EventSet,
    model: &CategoryModel,
    outcome: &TrainOutcome,
    k: usize,
    name: String,
    training_s: f64,
) -> Result<RunSummary> {
    let (lo, hi) = pipeline.model.ranges[0];
    let boundaries = match model {
        CategoryModel::Sigmoid(m) => Some(m.boundaries(&outcome.params)),
        _ => None,
    };
    let edges = boundaries.as_ref().map(|b| {
        let mut e = vec![lo];
        e.extend(b);
        e.push(hi);
        e
    });
    // Equal bins per discriminant: for one discriminant, or for the grid of
    // a sigmoid model with the same bins per discriminant.
    let grid_edges: Option<Vec<Vec<f64>>> = match model {
        CategoryModel::Grid(grid) => Some(
            grid.axes
                .iter()
                .map(|a| equidistant_edges(a.categories, a.low, a.high))
                .collect(),
        ),
        _ => None,
    };
    let equal_edges = (grid_edges.is_none() && events.dims() == 1)
        .then(|| equidistant_edges(k, lo, hi));
    // One pass over the events fills every table and baseline.
    let mut learnt = CategoryYields::new(pipeline, k);
    let mut equal = CategoryYields::new(pipeline, k);
    let mut dp = (events.dims() == 1 && pipeline.signal_indices().len() == 1)
        .then(|| DpHistogram::new(pipeline.evaluation.dp_bins));
    let mut argmax =
        pipeline.evaluation.argmax_low.map(|low| ArgmaxYields::new(pipeline, k, low));
    events.for_each_chunk(|chunk| {
        learnt.add(chunk, &model.assign(&outcome.params, &chunk.discriminants));
        if let (CategoryModel::Grid(grid), Some(edges)) = (model, &grid_edges) {
            let mut assign = vec![0u32; chunk.len()];
            for ((axis, e), values) in
                grid.axes.iter().zip(edges).zip(&chunk.discriminants)
            {
                let inner = &e[1..axis.categories];
                for (c, &x) in assign.iter_mut().zip(values) {
                    *c =
                        *c * axis.categories as u32 + crate::model::category_of(inner, x);
                }
            }
            equal.add(chunk, &assign);
        } else if let Some(edges) = &equal_edges {
            let assign: Vec<u32> = chunk.discriminants[0]
                .iter()
                .map(|&x| crate::model::category_of(&edges[1..k], x))
                .collect();
            equal.add(chunk, &assign);
        }
        if let Some(dp) = dp.as_mut() {
            dp.add(pipeline, chunk);
        }
        if let Some(argmax) = argmax.as_mut() {
            argmax.add(pipeline, chunk);
        }
        Ok(())
    })?;
    // With a sideband fit, the final categories get their own fits.
    let sideband = match (&pipeline.objective.sideband, events.in_memory()) {
        (None, _) => None,
        (Some(spec), Some(events)) => {
            let assign = model.assign(&outcome.params, &events.discriminants);
            Some(SidebandSummary {
                window: [spec.window.0, spec.window.1],
                range: [spec.range.0, spec.range.1],
                edges: crate::sideband::spectrum_edges(spec),
                categories: crate::sideband::category_spectra(
                    pipeline, events, &assign, k, spec,
                ),
            })
        }
        (Some(_), None) => {
            return Err(Error::Internal("a sideband fit with the events on disk".into()));
        }
    };
    let factors = match &sideband {
        Some(s) => Some(s.categories.iter().map(|c| c.factor).collect::<Vec<_>>()),
        None => outcome.factors.clone(),
    };
    let mut table = learnt.table(pipeline, edges.as_deref(), factors.as_deref());
    if let CategoryModel::Grid(grid) = model {
        for (row, cell) in table.categories.iter_mut().zip(grid.cells(&outcome.params)) {
            row.cell = Some(cell);
        }
    }
    let equidistant = match (grid_edges, equal_edges) {
        (Some(grid_edges), _) => {
            let t = equal.table(pipeline, None, None);
            Baseline {
                edges: Vec::new(),
                grid_edges: Some(grid_edges),
                z: t.z,
                z_per_signal: t.z_per_signal,
            }
        }
        (None, Some(edges)) => {
            let t = equal.table(pipeline, Some(&edges), None);
            Baseline { edges, grid_edges: None, z: t.z, z_per_signal: t.z_per_signal }
        }
        (None, None) => Baseline {
            edges: Vec::new(),
            grid_edges: None,
            z: f64::NAN,
            z_per_signal: Vec::new(),
        },
    };
    let dp = dp
        .and_then(|dp| dp.optimum(pipeline, k))
        .map(|optimum| DpSummary { gap: (optimum.z - table.z) / optimum.z, optimum });
    let argmax = argmax.map(|a| a.baseline(pipeline));
    let soft_hard_bias =
        if table.z > 0.0 { (outcome.soft_z - table.z) / table.z } else { f64::NAN };
    Ok(RunSummary {
        name,
        model: model_name(pipeline.model.kind).into(),
        categories: k,
        bins: matches!(model, CategoryModel::Grid(_)).then(|| model.bins()),
        significance_formula: match pipeline.objective.significance {
            crate::config::SignificanceKind::Asimov => "asimov".into(),
            crate::config::SignificanceKind::AsimovGato => "asimov-gato".into(),
        },
        combine: match pipeline.objective.combine {
            crate::config::CombineRule::Geometric => "geometric mean".into(),
            crate::config::CombineRule::Arithmetic => "arithmetic mean".into(),
            crate::config::CombineRule::Minimum => "minimum".into(),
            crate::config::CombineRule::Quadrature => "weighted sum in quadrature".into(),
        },
        restarts: Vec::new(),
        best_restart: 0,
        trained_z: f64::NAN,
        refined: false,
        meets_constraints: true,
        kept_epoch: outcome.kept_epoch,
        boundaries,
        grid_boundaries: match model {
            CategoryModel::Grid(m) => Some(m.boundaries(&outcome.params)),
            _ => None,
        },
        background_factors: factors,
        sideband,
        parameters: outcome.params.clone(),
        soft_z: outcome.soft_z,
        soft_hard_bias,
        table,
        equidistant,
        dp_optimum: dp,
        argmax,
        outputs: Vec::new(),
        model_file: String::new(),
        training_s,
    })
}

fn process_summaries(pipeline: &Pipeline, events: &EventSet) -> Result<Vec<ProcessSummary>> {
    let yields = events.process_yields()?;
    Ok(pipeline
        .processes
        .iter()
        .enumerate()
        .map(|(i, p)| ProcessSummary {
            name: p.name.clone(),
            role: match p.role {
                Role::Signal => "signal".into(),
                Role::Background => "background".into(),
            },
            events: events.process_ranges()[i].len(),
            event_yield: yields[i],
        })
        .collect())
}

/// Number of background MC events in a category below which a warning
/// calls its background estimate unreliable.
const MIN_BACKGROUND_EVENTS: usize = 10;

/// Logs warnings about categories a physicist should look at.
fn warn_about_categories(pipeline: &Pipeline, run: &RunSummary) {
    let table = &run.table;
    let low_background = pipeline.objective.low_background.is_some();
    let mc_uncertainty = pipeline.objective.mc_uncertainty.is_some();
    if table.nonpositive_background > 0 {
        tracing::warn!(
            run = %run.name,
            "{} of the categories have zero or negative background yield and score Z = 0",
            table.nonpositive_background
        );
    }
    if !run.meets_constraints {
        tracing::warn!(
            run = %run.name,
            "no epoch met the penalties' limits (minimum background yield or maximum \
             relative MC uncertainty) in every category; the kept categories break them, \
             so raise the penalty weights or relax the limits"
        );
    }
    let empty = table.categories.iter().filter(|c| c.events == 0).count();
    if empty > 0 {
        tracing::warn!(run = %run.name, "{empty} of the categories contain no selected event");
    }
    let sparse: Vec<String> = table
        .categories
        .iter()
        .filter(|c| c.events > 0 && c.background_events < MIN_BACKGROUND_EVENTS)
        .map(|c| format!("{} ({} events)", c.category, c.background_events))
        .collect();
    if !sparse.is_empty() {
        tracing::warn!(
            run = %run.name,
            "categories [{}] have fewer than {MIN_BACKGROUND_EVENTS} background MC events, \
             so their background yield and Z are unreliable; {}",
            sparse.join(", "),
            match (low_background, mc_uncertainty) {
                (false, false) => "add a `low_background` or `mc_uncertainty` penalty",
                (true, false) => {
                    "raise `low_background.threshold` or its weight, or add an \
                     `mc_uncertainty` penalty"
                }
                (false, true) => "lower `mc_uncertainty.max_relative` or raise its weight",
                (true, true) => "tighten the penalties' limits or raise their weights",
            }
        );
    }
    let uncertain: Vec<String> = table
        .categories
        .iter()
        .filter(|c| c.relative_mc_uncertainty.is_some_and(|u| u > 1.0))
        .map(|c| {
            format!(
                "{} ({:.0} %)",
                c.category,
                100.0 * c.relative_mc_uncertainty.unwrap_or(0.0)
            )
        })
        .collect();
    if !uncertain.is_empty() {
        tracing::warn!(
            run = %run.name,
            "categories [{}] have a relative MC uncertainty √Σw²/B above 100 % (negative \
             weights cancelling, or a few large weights), so their Z is meaningless; {}",
            uncertain.join(", "),
            if mc_uncertainty {
                "lower `mc_uncertainty.max_relative` or raise its weight"
            } else {
                "add an `mc_uncertainty` penalty"
            }
        );
    }
}

/// Warns when events fall outside the model range: they count in the
/// first or last category.
fn warn_outside_range(pipeline: &Pipeline, events: &EventSet) -> Result<()> {
    let ranges = &pipeline.model.ranges;
    let mut outside = vec![0usize; ranges.len()];
    events.for_each_chunk(|chunk| {
        for ((count, &(lo, hi)), values) in
            outside.iter_mut().zip(ranges).zip(&chunk.discriminants)
        {
            *count += values.iter().filter(|&&x| x < lo || x > hi).count();
        }
        Ok(())
    })?;
    let names = pipeline.selection.discriminants.iter().zip(ranges);
    for ((name, &(lo, hi)), &outside) in names.zip(&outside) {
        if outside > 0 {
            tracing::warn!(
                "{outside} selected events have `{name}` outside the range [{lo}, {hi}]; \
                 they count in the first or last category (widen `model.range` if that \
                 is not meant)"
            );
        }
    }
    Ok(())
}

/// Moves the staged runs into `output`, writes summary.json, and removes
/// the run directories of an earlier summary that this run does not
/// replace.
fn publish(
    output: &Path,
    staging: &Path,
    summary: &Summary,
    overwrite: bool,
) -> Result<()> {
    // NOTE: the run directories are renamed one at a time, so a process killed
    // between two renames leaves some new and some old run directories (each
    // whole) beside the old summary.json.
    let previous = if overwrite { previous_run_names(output) } else { Vec::new() };
    let mut replaced = Vec::new();
    for run in &summary.runs {
        let target = output.join(&run.name);
        // The earlier run is moved aside in one rename and removed only once
        // the new one is in place, so the run directory is missing for as
        // short a time as possible.
        let aside = output.join(format!(".gato-old-{}", run.name));
        if aside.exists() {
            std::fs::remove_dir_all(&aside).map_err(|e| {
                Error::output(&aside, format!("cannot remove a stale earlier run: {e}"))
            })?;
        }
        if target.is_dir() {
            std::fs::rename(&target, &aside).map_err(|e| {
                Error::output(&target, format!("cannot move the earlier run aside: {e}"))
            })?;
            replaced.push(aside);
        } else if target.exists() {
            std::fs::remove_file(&target).map_err(|e| {
                Error::output(
                    &target,
                    format!("cannot remove the file in the run's place: {e}"),
                )
            })?;
        }
        std::fs::rename(staging.join(&run.name), &target).map_err(|e| {
            Error::output(&target, format!("cannot move the run into place: {e}"))
        })?;
    }
    let histograms = output.join("histograms.json");
    std::fs::rename(staging.join("histograms.json"), &histograms).map_err(|e| {
        Error::output(&histograms, format!("cannot move the histograms into place: {e}"))
    })?;
    summary.write(&output.join("summary.json"))?;
    for aside in replaced {
        std::fs::remove_dir_all(&aside).map_err(|e| {
            Error::output(&aside, format!("cannot remove the earlier run: {e}"))
        })?;
    }
    for name in previous {
        let dir = output.join(&name);
        if !summary.runs.iter().any(|r| r.name == name) && dir.is_dir() {
            std::fs::remove_dir_all(&dir).map_err(|e| {
                Error::output(&dir, format!("cannot remove the earlier run: {e}"))
            })?;
        }
    }
    std::fs::remove_dir_all(staging).map_err(|e| {
        Error::output(staging, format!("cannot remove the staging directory: {e}"))
    })
}

/// Names of the runs listed in the summary.json of an earlier run, limited
/// to plain directory names.
fn previous_run_names(output: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(output.join("summary.json")) else {
        return Vec::new();
    };
    let Ok(previous) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    let runs = previous["runs"].as_array().cloned().unwrap_or_default();
    runs.iter()
        .filter_map(|r| r["name"].as_str())
        .filter(|n| !n.is_empty() && !n.contains(['/', '\\']) && !n.starts_with('.'))
        .map(String::from)
        .collect()
}

/// Rejects an output directory that is a file or an input, an input that
/// lies where the run writes or removes files, and existing outputs unless
/// `overwrite`.
fn check_output(pipeline: &Pipeline, output: &Path, overwrite: bool) -> Result<()> {
    if output.is_file() {
        return Err(Error::output(output, "is a file; give a directory for the outputs"));
    }
    let new_runs: Vec<String> =
        pipeline.model.bins.iter().map(|b| run_name(&build_model(pipeline, b))).collect();
    // Everything the run may replace or remove under the output directory.
    let mut touched: Vec<PathBuf> =
        [".gato-staging", "summary.json", "histograms.json", "plots", "report.html"]
            .iter()
            .map(|n| output.join(n))
            .collect();
    touched.extend(new_runs.iter().map(|n| output.join(n)));
    touched.extend(new_runs.iter().map(|n| output.join(format!(".gato-old-{n}"))));
    if overwrite {
        touched.extend(previous_run_names(output).iter().map(|n| output.join(n)));
    }
    let canonical_out = output.canonicalize().ok();
    let touched: Vec<PathBuf> =
        touched.iter().filter_map(|p| p.canonicalize().ok()).collect();
    for input in pipeline.input_paths() {
        let Ok(canonical_in) = input.canonicalize() else { continue };
        if canonical_out.as_ref() == Some(&canonical_in) {
            return Err(Error::output(
                output,
                format!(
                    "is the input {}; choose another output directory",
                    input.display()
                ),
            ));
        }
        if let Some(place) = touched.iter().find(|t| canonical_in.starts_with(t)) {
            return Err(Error::output(
                output,
                format!(
                    "the input {} lies in {}, which this run writes or removes; move the \
                     input or choose another output directory",
                    input.display(),
                    place.display()
                ),
            ));
        }
    }
    if overwrite {
        return Ok(());
    }
    if output.join("summary.json").exists() {
        return Err(Error::output(
            output,
            "already holds the outputs of a run; pass --overwrite to replace them or \
             choose another directory with --out",
        ));
    }
    if let Some(existing) = new_runs.iter().map(|n| output.join(n)).find(|p| p.exists()) {
        return Err(Error::output(
            output,
            format!(
                "{} already exists and this run would replace it; pass --overwrite to \
                 replace it or choose another directory with --out",
                existing.display()
            ),
        ));
    }
    Ok(())
}

/// Starts a spinner with `template` on the terminal, or returns a hidden bar.
fn spinner(enabled: bool, template: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template(&format!("{{spinner}} {template}")) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

fn progress_bar(enabled: bool, epochs: usize, label: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(epochs as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} epochs {msg} ({eta})",
        )
        .expect("template is valid")
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_budget_chooses_chunks() {
        // K = 5 on one discriminant: 16·8·5·2 = 1280 bytes per event. A
        // 1024 MiB limit leaves 512 MiB = 536 870 912 bytes for the graph:
        // 419 430 events.
        assert_eq!(chunk_for_memory(400_000, 5, 1, 1024.0), None);
        assert_eq!(chunk_for_memory(1_000_000, 5, 1, 1024.0), Some(419_430));
        // Never fewer than 10 000 events per chunk.
        assert_eq!(chunk_for_memory(1_000_000, 5, 1, 1.0), Some(10_000));
    }
}
