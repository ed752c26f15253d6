//! Replays every file of the fuzz corpus (`fuzz/corpus/<target>/`) through the function
//! its target calls, on stable: an input that once crashed payd, or that fuzzing found
//! worth keeping, is checked by every `cargo test`, without nightly or libFuzzer.

use std::path::Path;

/// The body of a fuzz target: arbitrary bytes in, a panic on a bug.
type Target = fn(&[u8]);

/// Each fuzz target and the library function it runs.
const TARGETS: &[(&str, Target)] = &[
    ("http_request", payd::fuzzing::http_request),
    ("create_body", payd::fuzzing::create_body),
    ("signature_headers", payd::fuzzing::signature_headers),
    ("wal_record", payd::fuzzing::wal_record),
    ("wal_recovery", payd::fuzzing::wal_recovery),
    ("acquirer_response", payd::fuzzing::acquirer_response),
    ("webhook_response", payd::fuzzing::webhook_response),
    ("request_target", payd::fuzzing::request_target),
    ("websocket_frames", payd::fuzzing::websocket_frames),
];

#[test]
fn every_corpus_file_replays_without_a_panic() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for &(target, run) in TARGETS {
        let dir = corpus.join(target);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("corpus of {target} at {}: {error}", dir.display()));
        let mut replayed = 0;
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let input = std::fs::read(&path).expect("read corpus file");
            // A panic names the file through this message, for `cargo fuzz run` to replay.
            eprintln!("replaying {}", path.display());
            run(&input);
            replayed += 1;
        }
        assert!(replayed > 0, "the corpus of {target} is empty");
    }
}
