//! The layer map of docs/DESIGN.md, enforced: a module of `src/` may use only modules listed
//! before it in `LAYERS`. Read from the source text (`crate::name` paths), so a new upward
//! import, or a new top-level module missing from the list, fails here.

use std::collections::BTreeSet;
use std::path::Path;

/// Bottom to top.
const LAYERS: &[&str] = &[
    "error", "say", "oom", "rng", "ir", "io", "blas", "gpu", "data", "ops", "schedule", "lower", "plan", "model",
    "export", "backend", "train", "verify", "cmd",
];

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a source text names through `crate::` (brace lists included).
fn uses(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            let end = list.find('}').unwrap_or(list.len());
            for item in list[..end].split(',') {
                found.insert(ident(item.trim()));
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|m| !m.is_empty() && m != "Error" && m != "Result");
    found
}

#[test]
fn every_import_points_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    rust_files(&src, &mut files);
    let mut violations = vec![];
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let rank = LAYERS.iter().position(|&l| l == module);
        let Some(rank) = rank else {
            violations.push(format!("{}: module {module} is not in the layer list", rel.display()));
            continue;
        };
        for used in uses(&std::fs::read_to_string(&file).unwrap()) {
            match LAYERS.iter().position(|&l| l == used) {
                Some(r) if r < rank || used == module => {}
                Some(_) => violations.push(format!("{}: {module} uses {used}, a layer above it", rel.display())),
                None => violations.push(format!("{}: uses crate::{used}, not in the layer list", rel.display())),
            }
        }
    }
    assert!(violations.is_empty(), "imports that do not point down:\n{}", violations.join("\n"));
}

#[test]
fn the_scanner_sees_paths_and_brace_lists() {
    let text = "use crate::ops::Op;\nuse crate::{ir, plan::Program};\nlet x = crate::Error::Msg(s);";
    let got: Vec<String> = uses(text).into_iter().collect();
    assert_eq!(got, ["ir", "ops", "plan"]);
}
