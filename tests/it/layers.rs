//! The layer map of docs/DESIGN.md, enforced: a module of `src/` may use only modules listed
//! before it in `LAYERS`. Read from the source text (`crate::name` paths), so a new upward
//! import, or a new top-level module missing from the list, fails here.

use std::collections::BTreeSet;
use std::path::Path;

/// Bottom to top.
const LAYERS: &[&str] = &[
    "error",
    "say",
    "oom",
    "rng",
    "ir",
    "io",
    "blas",
    "gpu",
    "data",
    "ops",
    "schedule",
    "lower",
    "plan",
    "model",
    "fit",
    "model_file",
    "export",
    "backend",
    "dist",
    "train",
    "measure",
    "verify",
    "cmd",
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

/// The top-level modules a source text names through `crate::`: paths, brace lists, nested
/// brace lists (`crate::{error::{Error, Result}, train::Run}` names `error` and `train`), and
/// statements over several lines (the text is read whole, not line by line).
fn uses(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = text[i + "crate::".len()..].trim_start();
        match rest.strip_prefix('{') {
            Some(list) => found.extend(top_level_items(list).into_iter().map(ident)),
            None => {
                found.insert(ident(rest));
            }
        }
    }
    found.retain(|m| !m.is_empty() && m != "Error" && m != "Result");
    found
}

/// The leading identifier of a path (`train::Run` gives `train`).
fn ident(s: &str) -> String {
    s.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// The items of a brace list that `list` starts inside of, up to its closing brace: split at
/// the commas outside inner braces, so an item may hold a brace list of its own.
fn top_level_items(list: &str) -> Vec<&str> {
    let (mut items, mut depth, mut start) = (vec![], 0usize, 0);
    for (i, c) in list.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&list[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&list[start..]);
    items
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
        let text = std::fs::read_to_string(&file).unwrap();
        violations.extend(upward(&module, &text).into_iter().map(|v| format!("{}: {v}", rel.display())));
    }
    assert!(violations.is_empty(), "imports that do not point down:\n{}", violations.join("\n"));
}

/// What in `text`, a source file of top-level module `module`, does not point down the layers.
fn upward(module: &str, text: &str) -> Vec<String> {
    let Some(rank) = LAYERS.iter().position(|&l| l == module) else {
        return vec![format!("module {module} is not in the layer list")];
    };
    let mut violations = vec![];
    for used in uses(text) {
        match LAYERS.iter().position(|&l| l == used) {
            Some(r) if r < rank || used == module => {}
            Some(_) => violations.push(format!("{module} uses {used}, a layer above it")),
            None => violations.push(format!("uses crate::{used}, not in the layer list")),
        }
    }
    violations
}

#[test]
fn the_scanner_sees_paths_and_brace_lists() {
    let text = "use crate::ops::Op;\nuse crate::{ir, plan::Program};\nlet x = crate::Error::Msg(s);";
    let got: Vec<String> = uses(text).into_iter().collect();
    assert_eq!(got, ["ir", "ops", "plan"]);
}

/// The import that once passed unseen: a brace list after a nested one.
#[test]
fn the_scanner_sees_every_module_of_a_nested_brace_list() {
    let got: Vec<String> = uses("use crate::{error::{Error, Result}, train::Run};").into_iter().collect();
    assert_eq!(got, ["error", "train"]);
}

#[test]
fn the_scanner_sees_use_statements_over_several_lines() {
    let text = "use crate::{
    backend::{cpu::CpuBackend, Execute},
    io::{
        checkpoint,
        metrics::{self, EpochMetrics},
    },
    train,
};
use crate::
    verify::reference;";
    let got: Vec<String> = uses(text).into_iter().collect();
    assert_eq!(got, ["backend", "io", "train", "verify"]);
}

/// Fed to the layer check as a line of `ops`, the nested import of `train` is caught.
#[test]
fn a_nested_brace_import_of_a_higher_layer_is_caught() {
    let line = "use crate::{error::{Error, Result}, train::Run};";
    assert_eq!(upward("ops", line), ["ops uses train, a layer above it"]);
    assert!(upward("cmd", line).is_empty());
}
