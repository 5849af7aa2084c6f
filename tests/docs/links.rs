//! Links: every relative link and anchor in README.md and docs/ points at something that
//! exists, and the README stays short and links every docs page.

use std::collections::BTreeSet;
use std::path::Path;

use crate::{markdown_files, read, root};

/// The text outside fenced code blocks, with inline code removed, line by line.
fn prose_lines(text: &str) -> Vec<(usize, String)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join("");
        out.push((n + 1, prose));
    }
    out
}

/// The targets of the Markdown links `[label](target)` of a line.
fn link_targets(line: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            targets.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    targets
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown text's headings.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_points_at_something() {
    let mut bad = Vec::new();
    for (path, text) in markdown_files() {
        let dir = path.parent().unwrap_or(Path::new(""));
        for (n, line) in prose_lines(&text) {
            for target in link_targets(&line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (file, fragment) = match target.split_once('#') {
                    Some((f, a)) => (f, Some(a)),
                    None => (target.as_str(), None),
                };
                let resolved = if file.is_empty() {
                    path.clone()
                } else {
                    dir.join(file)
                };
                let at = format!("{}:{n}: ({target})", path.display());
                if !root().join(&resolved).exists() {
                    bad.push(format!("{at}: no file {}", resolved.display()));
                    continue;
                }
                if let Some(fragment) = fragment {
                    if resolved.extension().is_some_and(|x| x == "md")
                        && !anchors(&read(&root().join(&resolved))).contains(fragment)
                    {
                        bad.push(format!(
                            "{at}: {} has no heading #{fragment}",
                            resolved.display()
                        ));
                    }
                }
            }
        }
    }
    assert!(bad.is_empty(), "broken links:\n{}", bad.join("\n"));
}

#[test]
fn the_readme_stays_short_and_links_every_docs_page() {
    let readme = read(&root().join("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines; move detail to docs/ (at most 250)"
    );
    for (path, _) in markdown_files().into_iter().skip(1) {
        let link = format!("]({})", path.display());
        assert!(
            readme.contains(&link),
            "README.md does not link {}",
            path.display()
        );
    }
}
