//! The architecture test: every module of `gateway/src` imports only modules listed
//! below it in `lib.rs` (which lists them top to bottom), so the layering stays true
//! without anyone checking by hand.
//!
//! It reads the sources: the order of `pub mod` lines in `lib.rs`, then every
//! `crate::<module>` path (in `use` items and in code, `use crate::{a, b}` groups
//! included) outside comments. A reference from a module to one listed above it is a
//! violation, unless it is in [`ALLOWED`] with its reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Upward references that are allowed, as (from, to, reason).
const ALLOWED: &[(&str, &str, &str)] = &[];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Top-level modules in `lib.rs` order (index 0 is the top layer).
fn layers() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("read lib.rs");
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|l| l.trim_end_matches(';').trim().to_string())
        .collect()
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a source file belongs to (`store/writer.rs` → `store`).
fn owner(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// Code without `//` comments (line and doc comments) and without string literals'
/// contents, so prose mentioning `crate::x` is not an import.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = '\0';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if !in_str && c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' {
                in_str = !in_str;
                prev = c;
                continue;
            }
            if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// Top-level modules named after `crate::` in `code`, including `crate::{a, b::c}` groups.
fn referenced(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            for item in split_top_level(&group[..end]) {
                if let Some(name) = ident(item.trim()) {
                    found.push(name);
                }
            }
        } else if let Some(name) = ident(rest) {
            found.push(name);
        }
    }
    found
}

fn ident(s: &str) -> Option<String> {
    let name: String = s
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 1;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    s.len()
}

fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let layers = layers();
    assert!(
        layers.len() >= 10,
        "lib.rs lists its modules as `pub mod x;` lines: {layers:?}"
    );
    let rank: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut violations = Vec::new();
    for file in &files {
        let Some(from) = owner(file) else { continue };
        let Some(&from_rank) = rank.get(from.as_str()) else {
            continue; // lib.rs, main.rs
        };
        let text = std::fs::read_to_string(file).expect("read source");
        for to in referenced(&code_of(&text)) {
            let Some(&to_rank) = rank.get(to.as_str()) else {
                continue;
            };
            let allowed = ALLOWED.iter().any(|(f, t, _)| *f == from && *t == to);
            if to_rank < from_rank && !allowed {
                violations.push(format!(
                    "{} ({from}) imports crate::{to}, a layer above it",
                    file.display()
                ));
            }
        }
    }
    violations.sort();
    violations.dedup();
    assert!(
        violations.is_empty(),
        "layering broken (lib.rs order, top to bottom: {layers:?}):\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_inline_paths_but_not_comments() {
    let code = code_of(
        "use crate::{store::Store, model};\n// crate::admin in a comment\nlet x = crate::pipeline::f(\"crate::cli\");\n",
    );
    assert_eq!(referenced(&code), vec!["store", "model", "pipeline"]);
}
