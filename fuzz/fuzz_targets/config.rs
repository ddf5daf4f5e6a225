//! Fuzzes the configuration loader: any input must give a config or errors, never a panic, and
//! every error must carry a position inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(errors) = seawall_config::parse(text, "fuzz.toml") {
        let lines = text.lines().count().max(1);
        for e in &errors.0 {
            assert!(e.line <= lines + 1, "error points past the input: {e}");
        }
    }
});
