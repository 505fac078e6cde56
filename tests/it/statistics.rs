//! Binned statistics: the cells keep every process's Σw, Σw² and event
//! count, tables of cuts on bin edges equal those of the events, and
//! training on cells ends at the same hard significance as training on
//! events.

use std::path::Path;

use gato::evaluate::evaluate;
use serde_json::Value;

use crate::common::{
    pipeline, select_events, three_class_processes, toy_1d_processes,
};

fn one_d(statistics: &str) -> String {
    format!(
        "name: s\nseed: 9\nsources:\n  toy:\n    generator: {{ kind: toy-1d, signal: 20000, \
         background: 60000 }}\n{}selection:\n  sql: SELECT score, weight FROM events\n  \
         discriminants: [score]\n  weight: weight\nmodel:\n  kind: sigmoid\n  \
         categories: [3, 5]\nobjective:\n  penalties:\n    low_background: {{ threshold: 5, \
         weight: 1 }}\ntraining:\n  epochs: 60\n{statistics}output: out\n",
        toy_1d_processes("toy")
    )
}

#[test]
fn binned_cells_keep_process_sums() {
    let p = pipeline(&one_d(""));
    let (_, events) = select_events(&p);
    let binned = events.binned(&p.model.ranges, 100);
    assert!(binned.len() <= 6 * 100);
    let w2 = binned.weight2.as_ref().unwrap();
    let n = binned.count.as_ref().unwrap();
    for (range, cells) in events.process_ranges.iter().zip(&binned.process_ranges) {
        let sumw: f64 = events.weight[range.clone()].iter().sum();
        let sumw2: f64 = events.weight[range.clone()].iter().map(|w| w * w).sum();
        let got: f64 = binned.weight[cells.clone()].iter().sum();
        let got2: f64 = w2[cells.clone()].iter().sum();
        let count: u32 = n[cells.clone()].iter().sum();
        assert!((got - sumw).abs() <= 1e-9 * sumw.abs(), "{got} vs {sumw}");
        assert!((got2 - sumw2).abs() <= 1e-9 * sumw2, "{got2} vs {sumw2}");
        assert_eq!(count as usize, range.len());
    }

    // Cuts on bin edges: every cell falls on one side, so the table is the
    // events' table.
    let cuts = [0.3, 0.7, 0.95];
    let category = |x: f64| cuts.iter().filter(|&&c| x >= c).count() as u32;
    let on_events: Vec<u32> =
        events.discriminants[0].iter().map(|&x| category(x)).collect();
    let on_cells: Vec<u32> =
        binned.discriminants[0].iter().map(|&x| category(x)).collect();
    let exact = evaluate(&p, &events, &on_events, 4, None, None);
    let from_cells = evaluate(&p, &binned, &on_cells, 4, None, None);
    for (a, b) in exact.categories.iter().zip(&from_cells.categories) {
        assert_eq!(a.events, b.events);
        assert_eq!(a.background_events, b.background_events);
        assert!((a.background - b.background).abs() <= 1e-9 * a.background);
        assert!(
            (a.background_sumw2 - b.background_sumw2).abs() <= 1e-9 * a.background_sumw2
        );
        assert!((a.signal[0] - b.signal[0]).abs() <= 1e-9 * a.signal[0]);
    }
    assert!((exact.z - from_cells.z).abs() <= 1e-9 * exact.z);
}

fn run(text: &str, dir: &Path) -> Value {
    crate::common::run_pipeline(text, dir, &[]).0
}

/// Final hard Z per run of a pipeline trained on events and on cells.
fn agree_within(events_text: &str, binned_text: &str, tolerance: f64) {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let on_events = run(events_text, a.path());
    let on_cells = run(binned_text, b.path());
    for (x, y) in on_events["runs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(on_cells["runs"].as_array().unwrap())
    {
        let (zx, zy) =
            (x["table"]["z"].as_f64().unwrap(), y["table"]["z"].as_f64().unwrap());
        println!("{}: events {zx:.5}, cells {zy:.5}", x["name"]);
        assert!((zx - zy).abs() <= tolerance * zx, "{}: {zx} vs {zy}", x["name"]);
    }
}

#[test]
fn binned_training_matches_events_1d() {
    agree_within(
        &one_d(""),
        &one_d("  statistics: binned\n  statistics_bins: 1000\n"),
        1e-3,
    );
}

#[test]
fn binned_training_matches_events_three_class() {
    let processes = three_class_processes("toy");
    let text = |statistics: &str| {
        format!(
            "name: t\nseed: 5\nsources:\n  toy:\n    generator:\n      kind: three-class\n      \
             signal: 20000\n      background: 100000\n{processes}\
             selection:\n  sql: SELECT score_signal1, score_signal2, weight FROM events\n  \
             discriminants: [score_signal1, score_signal2]\n  weight: weight\n\
             model:\n  kind: gmm\n  categories: [4]\n  means: simplex\n  init: random\n\
             objective:\n  combine: geometric\ntraining:\n  epochs: 30\n{statistics}output: out\n"
        )
    };
    agree_within(
        &text(""),
        &text("  statistics: binned\n  statistics_bins: 200\n"),
        1e-3,
    );
}

/// Trains `epochs` epochs of the three-class GMM (both penalties on) with
/// `chunk_events`, with the events resident or (`on_disk`) read from disk
/// chunk by chunk, and returns the history and the final parameters.
fn train_three_class(
    chunk_events: Option<usize>,
    on_disk: bool,
) -> (Vec<gato::optimize::EpochRecord>, Vec<f64>) {
    use gato::model::CategoryModel;
    use gato::select::{Keep, select_into};
    use gato::store::EventSet;
    use indicatif::ProgressBar;
    use gato::objective::EventTensors;
    use gato::optimize::Trainer;
    use gato::run::{CpuBackend, build_model};
    let processes = three_class_processes("toy");
    let text = format!(
        "name: c\nseed: 2\nsources:\n  toy:\n    generator:\n      kind: three-class\n      \
                signal: 3000\n      background: 9000\n{processes}\
                selection:\n  sql: SELECT score_signal1, score_signal2, weight FROM events\n  \
                discriminants: [score_signal1, score_signal2]\n  weight: weight\n\
                model:\n  kind: gmm\n  categories: [4]\n  means: simplex\n  init: random\n\
                objective:\n  combine: geometric\n  penalties:\n    \
                low_background: {{ threshold: 50, weight: 0.1 }}\n    \
                mc_uncertainty: {{ max_relative: 0.01, weight: 1 }}\n\
                training:\n  epochs: 5\n"
    );

    let mut p = pipeline(&text);
    p.training.chunk_events = chunk_events;
    let (sources, events) = select_events(&p);
    let tensors = EventTensors::<CpuBackend>::new(&events, &p, &Default::default());
    // On disk, the chunks are read back from the file in every pass.
    let set = match (on_disk, chunk_events) {
        (true, Some(chunk)) => {
            let keep = Keep::Disk { chunk, sort_bytes: 64 << 20 };
            let runtime =
                tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
            let set = runtime
                .block_on(select_into(&p, &sources, keep, &ProgressBar::hidden()))
                .unwrap();
            match &set {
                EventSet::Disk(disk) => {
                    assert_eq!(disk.chunks(), events.len().div_ceil(chunk));
                }
                EventSet::Memory(_) => panic!("the events stayed in memory"),
            }
            set
        }
        _ => EventSet::Memory(events),
    };
    let trainer = Trainer {
        pipeline: &p,
        events: &set,
        tensors: if on_disk { None } else { Some(&tensors) },
        device: Default::default(),
    };

    let model: CategoryModel = build_model(&p, &p.model.bins[0]);
    let init = model.init(
        &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(4),
        0,
        &[],
    );
    let outcome = trainer.train(&model, init, &mut |_| {}).unwrap();
    (outcome.history, outcome.params.values.concat())
}

#[test]
fn chunked_and_disk_gradients_equal_resident_gradient() {
    let (resident, resident_params) = train_three_class(None, false);
    // 1000 events per chunk: chunks cut across process boundaries.
    for on_disk in [false, true] {
        let (chunked, chunked_params) = train_three_class(Some(1000), on_disk);
        assert_eq!(chunked.len(), resident.len());
        for (a, b) in resident.iter().zip(&chunked) {
            assert!(
                (a.loss - b.loss).abs() <= 1e-10 * a.loss.abs(),
                "on disk {on_disk}, epoch {}: {} vs {}",
                a.epoch,
                a.loss,
                b.loss
            );
            assert!((a.soft_z - b.soft_z).abs() <= 1e-10 * a.soft_z);
            assert!(
                (a.mc_uncertainty_penalty - b.mc_uncertainty_penalty).abs()
                    <= 1e-10 * a.mc_uncertainty_penalty.abs().max(1e-12)
            );
            // The hard table adds the same events in the same order.
            assert!((a.hard_z - b.hard_z).abs() <= 1e-12 * a.hard_z, "{a:?} vs {b:?}");
        }
        // Five optimiser steps from the same start end at the same
        // parameters only if every gradient agreed.
        for (a, b) in resident_params.iter().zip(&chunked_params) {
            assert!((a - b).abs() <= 1e-9 * a.abs().max(1.0), "{a} vs {b}");
        }
    }
    assert!(
        resident.iter().any(|r| r.mc_uncertainty_penalty > 0.0),
        "the penalty is active"
    );
}
