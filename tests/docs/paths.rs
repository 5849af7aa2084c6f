//! Source paths: every repository path the docs name in backquotes (`src/…`, `tests/…`)
//! exists, so a moved file cannot leave the docs pointing at nothing.

use crate::{markdown_files, root};

/// Where a backquoted path of the repository may start (`src/journal/trouble.rs`).
const REPO_DIRS: &[&str] = &[
    "src/",
    "tests/",
    "deploy/",
    "scripts/",
    "benches/",
    "firmware-sim/",
    "framing/",
];

#[test]
fn every_source_path_the_docs_name_exists() {
    let mut gone = Vec::new();
    for (path, text) in markdown_files() {
        for (n, line) in text.lines().enumerate() {
            for code in line.split('`').skip(1).step_by(2) {
                let named = code.trim_end_matches([',', '.', ')']);
                if REPO_DIRS.iter().any(|d| named.starts_with(d))
                    && !named.contains(['*', ' ', '<', '…'])
                    && !root().join(named).exists()
                {
                    gone.push(format!("{}:{}: {named}", path.display(), n + 1));
                }
            }
        }
    }
    assert!(
        gone.is_empty(),
        "the docs name files that do not exist (moved?):\n{}",
        gone.join("\n")
    );
}
