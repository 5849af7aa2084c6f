//! TOML examples: every ```toml block and `<<'TOML'` here-document in README.md and docs/
//! passes `tidegate check-config`, unless marked as deliberately not a whole configuration.

use crate::{check_config, markdown_files};

/// The marker that exempts the TOML block right after it from `check-config`.
const SKIP_MARKER: &str = "<!-- docs-test: skip,";

/// A TOML example: where it starts, its text, and the reason when it is marked skipped.
struct Example {
    line: usize,
    text: String,
    skip: Option<String>,
}

/// The ```toml blocks of a Markdown text, and the `<<'TOML'` here-documents of its shell
/// blocks (the configurations the quick start and worked examples write).
fn toml_examples(text: &str) -> Vec<Example> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        let end = if line.starts_with("```toml") {
            "```"
        } else if line.contains("<<'TOML'") {
            "TOML"
        } else {
            i += 1;
            continue;
        };
        let skip = (i > 0)
            .then(|| lines[i - 1].trim())
            .and_then(|l| l.strip_prefix(SKIP_MARKER))
            .map(|r| r.trim_end_matches("-->").trim().to_string());
        let first = i + 1;
        let mut j = first;
        while j < lines.len() && lines[j].trim() != end {
            j += 1;
        }
        out.push(Example {
            line: first + 1,
            text: lines[first..j.min(lines.len())].join("\n") + "\n",
            skip,
        });
        i = j + 1;
    }
    out
}

#[test]
fn every_toml_example_in_the_docs_passes_check_config() {
    let mut bad = Vec::new();
    let mut checked = 0;
    for (path, text) in markdown_files() {
        for example in toml_examples(&text) {
            let at = format!("{}:{}", path.display(), example.line);
            match example.skip {
                Some(reason) => assert!(
                    !reason.is_empty(),
                    "{at}: a skipped TOML block must say why (`{SKIP_MARKER} REASON -->`)"
                ),
                None => {
                    checked += 1;
                    let out = check_config(&example.text);
                    if !out.status.success() {
                        bad.push(format!(
                            "{at}: tidegate check-config refuses the block:\n{}\n{}",
                            example.text,
                            String::from_utf8_lossy(&out.stderr)
                        ));
                    }
                }
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    assert!(checked > 0, "no TOML example found in README.md or docs/");
}
