//! Replays a fuzz target's seeds and regressions (`fuzz/seeds/<target>/`,
//! `fuzz/regressions/<target>/`) through its oracle, for the `fuzz_regressions` tests.
//! A failing input is named by its file.

use std::path::Path;

/// Runs `check` on every input of `target`; returns how many there were.
pub fn replay(target: &str, check: fn(&[u8])) -> usize {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut inputs = 0;
    for kind in ["seeds", "regressions"] {
        let dir = fuzz.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths.iter().filter(|p| p.is_file()) {
            let data = std::fs::read(path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
            if outcome.is_err() {
                panic!(
                    "{target}: {} fails its oracle (see the panic above)",
                    path.display()
                );
            }
            inputs += 1;
        }
    }
    assert!(
        inputs > 0,
        "{target}: no seeds or regressions under {}",
        fuzz.display()
    );
    inputs
}
