//! Full-size comparison with gato-hep on its reference toys: the 1D toy
//! (250 epochs, K = 3, 5, 10, sigmoid and GMM) and the three-class toy
//! (2D GMM, 100 epochs, K = 5 and 10). Slow (minutes), so ignored by
//! default; run with
//! `cargo test --test it -- --ignored --nocapture reference_parity`.
//!
//! gato-hep's hard significances with its own Z rule, and the optimum of
//! 1000 equal bins found by dynamic programming, from the reference
//! README (gato-hep 0.2.1).

use gato::run::{RunOptions, run_pipeline};

use crate::common::reference;

/// (K, gato-hep sigmoid, gato-hep GMM, DP optimum on 1000 bins).
const GATO_HEP: [(usize, f64, f64, f64); 3] = [
    (3, 1.4701, 1.4593, 1.4780),
    (5, 1.6530, 1.5591, 1.6555),
    (10, 1.6988, 1.6444, 1.7058),
];

fn run(pipeline_file: &str) -> gato::report::Summary {
    // SAFETY: the parity tests are the only ones that read GATO_INPUT.
    unsafe { std::env::set_var("GATO_INPUT", reference("toy1d_seed42.parquet")) };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(pipeline_file);
    let pipeline = gato::config::Pipeline::load(&path).unwrap();
    let out = tempfile::tempdir().unwrap();
    let options = RunOptions {
        output: Some(out.path().to_path_buf()),
        print: true,
        ..Default::default()
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run_pipeline(&pipeline, &options)).unwrap()
}

#[test]
#[ignore = "full-size run; minutes"]
fn reference_parity_sigmoid() {
    let summary = run("pipelines/parquet_1d.yaml");
    for (run, (k, sigmoid, _, optimum)) in summary.runs.iter().zip(GATO_HEP) {
        assert_eq!(run.categories, k);
        let z = run.table.z;
        let dp = run.dp_optimum.as_ref().unwrap().optimum.z;
        assert!(
            (dp - optimum).abs() < 1e-3,
            "K = {k}: DP optimum {dp} vs gato-hep's {optimum}"
        );
        assert!(z >= sigmoid, "K = {k}: sigmoid Z {z} below gato-hep's {sigmoid}");
        assert!(
            z >= 0.995 * dp,
            "K = {k}: sigmoid Z {z} more than 0.5 % below the DP {dp}"
        );
    }
}

#[test]
#[ignore = "full-size run; minutes"]
fn reference_parity_gmm() {
    let summary = run("pipelines/parquet_1d_gmm.yaml");
    for (run, (k, _, gmm, _)) in summary.runs.iter().zip(GATO_HEP) {
        let z = run.table.z;
        let dp = run.dp_optimum.as_ref().unwrap().optimum.z;
        assert!(z >= gmm, "K = {k}: GMM Z {z} below gato-hep's {gmm}");
        assert!(z >= 0.98 * dp, "K = {k}: GMM Z {z} more than 2 % below the DP {dp}");
    }
}

/// (K, gato-hep's Z1, Z2) on the three-class toy after 100 epochs.
const GATO_HEP_THREE_CLASS: [(usize, f64, f64); 2] =
    [(5, 1.3476, 0.2177), (10, 1.4135, 0.2332)];

#[test]
#[ignore = "full-size run; minutes"]
fn reference_parity_three_class() {
    // SAFETY: the parity tests are the only ones that read GATO_INPUT.
    unsafe { std::env::set_var("GATO_INPUT", reference("toy3class_seed42.parquet")) };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines/parquet_three_class.yaml");
    let pipeline = gato::config::Pipeline::load(&path).unwrap();
    let out = tempfile::tempdir().unwrap();
    let options = RunOptions {
        output: Some(out.path().to_path_buf()),
        print: true,
        ..Default::default()
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let summary = runtime.block_on(run_pipeline(&pipeline, &options)).unwrap();
    for (run, (k, z1, z2)) in summary.runs.iter().zip(GATO_HEP_THREE_CLASS) {
        assert_eq!(run.categories, k);
        let z = &run.table.z_per_signal;
        println!(
            "K = {k}: Z1 {:.4}, Z2 {:.4} in {:.0} s (gato-hep {z1} / {z2})",
            z[0], z[1], run.training_s
        );
        assert!(z[0] >= z1, "K = {k}: Z1 {} below gato-hep's {z1}", z[0]);
        assert!(z[1] >= z2, "K = {k}: Z2 {} below gato-hep's {z2}", z[1]);
        // Both beat the argmax baseline with the same K.
        let argmax = run.argmax.as_ref().unwrap();
        assert!(
            z[0] > argmax.z_per_signal[0],
            "K = {k}: Z1 {} vs argmax {}",
            z[0],
            argmax.z_per_signal[0]
        );
        assert!(
            z[1] > argmax.z_per_signal[1],
            "K = {k}: Z2 {} vs argmax {}",
            z[1],
            argmax.z_per_signal[1]
        );
    }
}
