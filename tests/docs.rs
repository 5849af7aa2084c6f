//! The documentation kept true by the build: every configuration key the code accepts (and
//! every key of the shipped example, `deploy/tidegate.toml`) is documented in
//! `docs/configuration.md` with the default the code fills in, every key documented there is
//! one the code accepts, every TOML example in README.md and docs/ passes
//! `tidegate check-config`, every relative link and anchor in them points at something
//! that exists, and so does every source path they name.
//!
//! The unit test in `src/config` keeps `deploy/tidegate.toml` in sync with the code's
//! defaults; this test extends that to the documentation, through the built binary, as an
//! operator would check a file.
//!
//! A TOML block that is deliberately not a whole tidegate configuration (a credentials
//! file, a fragment) is preceded by the line `<!-- docs-test: skip, REASON -->`.
//!
//! One file per check under `tests/docs/`:
//! - [`config_keys`]: the configuration keys, in the code, the example and the docs;
//! - [`defaults`]: the documented defaults against the ones the code fills in;
//! - [`toml_examples`]: every TOML example passes `tidegate check-config`;
//! - [`links`]: relative links and anchors, and the README linking every docs page;
//! - [`paths`]: the source paths the docs name.
//!
//! This file holds what they share: the repository, its Markdown files and running
//! `check-config`.

#[path = "docs/config_keys.rs"]
mod config_keys;
#[path = "docs/defaults.rs"]
mod defaults;
#[path = "docs/links.rs"]
mod links;
#[path = "docs/paths.rs"]
mod paths;
#[path = "docs/toml_examples.rs"]
mod toml_examples;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// README.md and every docs/*.md, as (path relative to the repository, text).
fn markdown_files() -> Vec<(PathBuf, String)> {
    let mut files = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("a readable docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .map(|p| {
            p.strip_prefix(root())
                .expect("under the repository")
                .to_path_buf()
        })
        .collect();
    docs.sort();
    files.extend(docs);
    files
        .into_iter()
        .map(|p| (p.clone(), read(&root().join(p))))
        .collect()
}

/// Runs `tidegate check-config` on `toml` written to a temporary file.
fn check_config(toml: &str) -> Output {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("tidegate.toml");
    std::fs::write(&path, toml).expect("write the config");
    Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run tidegate check-config")
}
