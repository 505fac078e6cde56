//! Replays inputs kept from fuzzing (`tests/fuzz_regressions/`) through the
//! same entry points as the fuzz targets in `fuzz/`: each must end in a
//! value or an error, never in a panic.

use std::path::Path;

fn files(dir: &str) -> Vec<std::path::PathBuf> {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions").join(dir);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    out.sort();
    out
}

#[test]
fn pipeline_inputs_end_without_panic() {
    let inputs = files("pipeline");
    assert!(!inputs.is_empty());
    for path in inputs {
        let bytes = std::fs::read(&path).unwrap();
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let outcome = std::panic::catch_unwind(|| {
                gato::config::Pipeline::from_text(text, "fuzz.yaml").err()
            });
            assert!(outcome.is_ok(), "{} panics", path.display());
        }
    }
}

#[test]
fn model_inputs_end_without_panic() {
    let inputs = files("model_json");
    assert!(!inputs.is_empty());
    for path in inputs {
        let bytes = std::fs::read(&path).unwrap();
        let Ok(text) = std::str::from_utf8(&bytes) else { continue };
        let outcome = std::panic::catch_unwind(|| {
            let Ok(saved) =
                gato::model::SavedModel::from_json(text, Path::new("fuzz.json"))
            else {
                return;
            };
            let columns: Vec<Vec<f64>> = (0..saved.discriminants.len())
                .map(|j| vec![0.0, 0.5 + j as f64, -3.0, 1e300])
                .collect();
            let categories = saved.model().assign(&saved.parameters, &columns);
            assert!(categories.iter().all(|&c| (c as usize) < saved.categories));
        });
        assert!(outcome.is_ok(), "{} panics", path.display());
    }
}
