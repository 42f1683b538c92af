//! The layout rules ARCHITECTURE.md states, checked on the sources: engine modules import each other
//! without loops, no source file of either crate is over 800 lines, no function over 100.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 800;
const MAX_FN_LINES: usize = 100;

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn crate_dirs() -> [PathBuf; 2] {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    [root.join("src"), root.join("../harness/src")]
}

/// The top-level module a file belongs to (`gpu/decoder.rs` is in `gpu`); `None` for the crate root.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// Edges `module -> crate::other` between top-level modules, from the text of each file. Items of the
/// crate root (`crate::Decoder`, `crate::Result`) are the crate's facade and are not modules.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files = sources(src);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(src, f)).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(from) = top_module(src, f) else {
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        let entry = g.entry(from.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + 7..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name != from && modules.contains(&name) {
                entry.insert(name);
            }
        }
        // `use crate::{a, b::X}` lists modules inside braces.
        for (i, _) in text.match_indices("crate::{") {
            let inner = &text[i + 8..];
            let inner = &inner[..inner.find('}').unwrap_or(0)];
            for part in inner.split(',') {
                let name = part.trim().split("::").next().unwrap_or("").to_string();
                if name != from && modules.contains(&name) {
                    entry.insert(name);
                }
            }
        }
    }
    g
}

/// A cycle in `g`, as the modules along it, if there is one.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(c) = visit(n, g, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn engine_modules_import_without_loops() {
    let src = &crate_dirs()[0];
    let g = module_graph(src);
    assert!(
        g.contains_key("gpu") && g["gpu"].contains("forward"),
        "{g:?}"
    );
    if let Some(c) = find_cycle(&g) {
        panic!("import loop: {}", c.join(" -> "));
    }
}

#[test]
fn the_cycle_finder_finds_a_loop() {
    // The check above can fail: the loop the restructuring removed is found when put back.
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in [
        ("bench", "gpu"),
        ("gpu", "cache"),
        ("cache", "scenario"),
        ("scenario", "bench"),
    ] {
        g.entry(a.into()).or_default().insert(b.into());
    }
    let c = find_cycle(&g).expect("a loop");
    assert_eq!(c.first(), c.last());
    assert_eq!(c.len(), 5, "{c:?}");
}

/// Functions longer than the limit in `text`: (name, first line, lines). A function ends at the first
/// line that closes its indentation level.
fn long_functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let indent = l.len() - t.len();
        let t = t
            .trim_start_matches("pub ")
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("async ");
        let Some(rest) = t.strip_prefix("fn ") else {
            continue;
        };
        if l.trim_end().ends_with(';') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let close = " ".repeat(indent) + "}";
        let end = lines[i + 1..]
            .iter()
            .position(|x| x.starts_with(&close) && !x[indent..].starts_with("} else"))
            .map_or(lines.len(), |j| i + 1 + j);
        let n = end - i + 1;
        if n > MAX_FN_LINES {
            out.push((name, i + 1, n));
        }
    }
    out
}

#[test]
fn files_and_functions_stay_short() {
    let mut over = Vec::new();
    for dir in crate_dirs() {
        for f in sources(&dir) {
            let text = std::fs::read_to_string(&f).unwrap();
            let n = text.lines().count();
            if n > MAX_FILE_LINES {
                over.push(format!("{}: {n} lines", f.display()));
            }
            for (name, at, len) in long_functions(&text) {
                over.push(format!("{}:{at} fn {name}: {len} lines", f.display()));
            }
        }
    }
    assert!(
        over.is_empty(),
        "over {MAX_FILE_LINES} lines a file or {MAX_FN_LINES} a function:\n{}",
        over.join("\n")
    );
}

#[test]
fn the_length_check_sees_a_long_function() {
    let body = "    let x = 1;\n".repeat(MAX_FN_LINES);
    let text = format!("fn short() {{\n}}\n\npub fn long() {{\n{body}}}\n");
    let found = long_functions(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "long");
    assert_eq!(found[0].2, MAX_FN_LINES + 2);
}
