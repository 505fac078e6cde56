//! Feeds arbitrary text to the model-file loader; a model it accepts must
//! also categorise a few events without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(saved) = gato::model::SavedModel::from_json(text, std::path::Path::new("fuzz.json")) else {
        return;
    };
    let model = saved.model();
    let columns: Vec<Vec<f64>> =
        (0..saved.discriminants.len()).map(|j| vec![0.0, 0.5 + j as f64, -3.0, 1e300]).collect();
    let categories = model.assign(&saved.parameters, &columns);
    assert!(categories.iter().all(|&c| (c as usize) < saved.categories));
});
