//! Feeds arbitrary text to the pipeline parser and validator: every input
//! must end in a pipeline or an error, never in a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = gato::config::Pipeline::from_text(text, "fuzz.yaml");
    }
});
