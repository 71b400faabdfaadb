//! The shape of the code, checked from its sources (issue 24): every `crate::…` path a module names is
//! an import arrow; the arrows form no circle, none runs up the layers `src/lib.rs`'s module map
//! states, and that map names every top-level module there is. (Doc comments and `mod tests` do not
//! count: they are not what the module needs to build.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers of `src/lib.rs`'s module map, top first: a module may use its own layer and those below.
const LAYERS: [&str; 9] = ["edge", "gateway", "ops", "http", "limiter", "store", "policy", "identity", "json"];

/// Every module under `src/` (`store::decision`, `limiter`, …) and its source.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).unwrap().with_extension("");
                let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                if parts.last().is_some_and(|p| p == "mod") {
                    parts.pop();
                }
                if parts != ["lib"] {
                    out.insert(parts.join("::"), std::fs::read_to_string(&path).unwrap());
                }
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

/// The code a module needs to build: without its unit tests and its comments.
fn code(source: &str) -> String {
    let source = source.split("#[cfg(test)]\nmod tests {").next().unwrap();
    source.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n")
}

/// The modules each module uses (children and parents aside: a folder's `mod.rs` and its files).
fn arrows() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let resolve = |path: &str| {
        let segments: Vec<&str> = path.split("::").collect();
        (1..=segments.len()).rev().map(|n| segments[..n].join("::")).find(|m| modules.contains_key(m))
    };
    let mut out = BTreeMap::new();
    for (name, source) in &modules {
        let code = code(source);
        let mut uses = BTreeSet::new();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
            if let Some(used) = resolve(rest[..end].trim_end_matches(':')) {
                let related =
                    used == *name || used.starts_with(&format!("{name}::")) || name.starts_with(&format!("{used}::"));
                if !related {
                    uses.insert(used);
                }
            }
        }
        out.insert(name.clone(), uses);
    }
    out
}

fn layer(module: &str) -> usize {
    let top = module.split("::").next().unwrap();
    LAYERS.iter().position(|l| *l == top).unwrap_or_else(|| panic!("{module}: a top-level module no layer names"))
}

#[test]
fn no_import_runs_up_the_layers() {
    let arrows = arrows();
    assert!(arrows.len() > 20, "the sources were found: {:?}", arrows.keys());
    let upward: Vec<String> = arrows
        .iter()
        .flat_map(|(from, to)| to.iter().filter(|t| layer(t) < layer(from)).map(move |t| format!("{from} -> {t}")))
        .collect();
    assert!(upward.is_empty(), "imports running up the layers: {upward:#?}");
}

#[test]
fn no_import_circle() {
    let arrows = arrows();
    // Depth-first search; a module met again while still on the path closes a circle.
    fn visit(
        m: &str,
        arrows: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut circle = path[i..].to_vec();
            circle.push(m.to_string());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for next in &arrows[m] {
            if let Some(c) = visit(next, arrows, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in arrows.keys() {
        if let Some(circle) = visit(m, &arrows, &mut Vec::new(), &mut done) {
            panic!("an import circle: {}", circle.join(" -> "));
        }
    }
}

#[test]
fn the_module_map_names_every_top_level_module_and_its_files() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let map: String = lib.lines().filter(|l| l.starts_with("//!")).collect::<Vec<_>>().join("\n");
    for m in modules().keys() {
        let mut parts = m.split("::");
        let top = parts.next().unwrap();
        let folder = format!("`{top}/`");
        match parts.next() {
            None => assert!(map.contains(&folder) || map.contains(&format!("`{top}`")), "{top} is not in the map"),
            Some(file) => {
                assert!(map.contains(&folder), "{top}/ is not in the map");
                assert!(map.contains(&format!("`{file}`")), "{m} is not in the map");
            }
        }
    }
    for l in LAYERS {
        assert!(map.contains(&format!("`{l}")), "the layer {l} is not in the map");
    }
}

/// The check itself can fail: an arrow up the layers is seen.
#[test]
fn an_arrow_up_the_layers_would_be_seen() {
    assert!(layer("policy::config") > layer("limiter"), "policy lies below the limiter");
    let source =
        "use crate::limiter::Limiter; // crate::edge in a comment\n#[cfg(test)]\nmod tests {\n use crate::gateway;\n}";
    let code = code(source);
    assert!(code.contains("crate::limiter") && !code.contains("crate::edge") && !code.contains("crate::gateway"));
}
