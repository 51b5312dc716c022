//! `cargo xtask layers`: checks the gateway's module imports against one written layer order.
//! A module may use only modules below its own layer, or files of its own layer that do not
//! use it back: no import runs upward and no files import each other in a circle. Tests are not
//! read: `tests.rs` files and everything from a `#[cfg(test)]` line on.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

use anyhow::{Context, Result, bail};

/// The gateway's layers, lowest first. A module belongs to the longest entry that prefixes its
/// path; it may use what belongs to entries before its own.
pub const LAYERS: &[&str] = &[
    // Vocabulary every layer shares.
    "config::values",
    "vocabulary",
    "patterns",
    "kubernetes::selector",
    "kubernetes::request_info",
    "kubernetes::client",
    "sse",
    "cgroup",
    "kubelet",
    "identity",
    "telemetry",
    "tokens",
    "interception_ca",
    // Engines that know nothing of connections.
    "masking",
    "policy",
    "recording",
    "sinks",
    "approvals",
    // One client connection, from bytes to protocol inspectors.
    "protocols::target",
    "protocols::error",
    "protocols::copy",
    "protocols::l7",
    "protocols::http",
    "protocols::kubernetes",
    "protocols::mcp",
    "protocols",
    // The node: configuration, kernel, node mode, listeners, control, CLI.
    "kubernetes::config",
    "config",
    "ebpf",
    "kubernetes",
    "proxy",
    "admin",
    "commands",
    "main",
    "lib",
];

pub fn check(src: &Path) -> Result<()> {
    let files = module_files(src)?;
    let modules: BTreeSet<&str> = files.keys().map(String::as_str).collect();
    // A set: a module that uses one upward path twice is one problem.
    let mut problems = BTreeSet::new();
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (module, text) in &files {
        let Some(rank) = layer_of(module) else {
            problems.insert(format!(
                "module `{module}` is in no layer: add it to LAYERS in xtask/src/layers.rs"
            ));
            continue;
        };
        for path in imports(module, text) {
            let Some(used) = deepest_module(&modules, &path) else {
                continue;
            };
            if used == module {
                continue;
            }
            let used_rank = layer_of(used).unwrap_or(usize::MAX);
            if used_rank > rank {
                problems.insert(format!(
                    "`{module}` (layer {}) uses `{path}` from layer {}: an import that runs upward",
                    LAYERS[rank],
                    LAYERS[used_rank.min(LAYERS.len() - 1)]
                ));
            }
            edges.entry(module).or_default().insert(used);
        }
    }
    for circle in circles(&edges) {
        problems.insert(format!("import circle: {}", circle.join(" -> ")));
    }
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("  {problem}");
        }
        bail!(
            "{} layering problem(s) in {}: the layer order is LAYERS in xtask/src/layers.rs",
            problems.len(),
            src.display()
        );
    }
    println!(
        "{} modules, {} layers: no upward import, no circle",
        files.len(),
        LAYERS.len()
    );
    Ok(())
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .enumerate()
        .filter(|(_, layer)| module == **layer || module.starts_with(&format!("{layer}::")))
        .max_by_key(|(_, layer)| layer.len())
        .map(|(rank, _)| rank)
}

/// Module path → source text without tests, for every file under `src`.
fn module_files(src: &Path) -> Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.ends_with(".rs") || name == "tests.rs" {
                continue;
            }
            let relative = path.strip_prefix(src)?.with_extension("");
            let mut parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let text = fs::read_to_string(&path)?;
            let code = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
            files.insert(parts.join("::"), code);
        }
    }
    Ok(files)
}

/// The crate paths a file uses, resolved from `crate::` and `super::`, comments skipped.
fn imports(module: &str, text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut paths = Vec::new();
    // `use` trees, braces expanded: a statement starts a line and runs to its `;`.
    let mut rest = code.as_str();
    while let Some(at) = rest.find("use ") {
        let line_start = rest[..at].rfind('\n').map_or(0, |n| n + 1);
        let lead = rest[line_start..at].trim();
        let statement_end = rest[at..].find(';').map_or(rest.len(), |n| at + n);
        if lead.is_empty() || lead.starts_with("pub") {
            let tree = without_renames(&rest[at + 4..statement_end]);
            for path in expand(&tree) {
                paths.extend(resolve(module, &path));
            }
        }
        rest = &rest[(statement_end + 1).min(rest.len())..];
    }
    // Paths written out in code: `crate::a::b`, `super::a`.
    for (at, _) in code.match_indices("crate::") {
        if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let path: String = code[at..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        // The head of a use tree (`crate::a::{…}`) names no item: the tree was read above.
        if code[at + path.len()..].starts_with('{') {
            continue;
        }
        paths.extend(resolve(module, path.trim_end_matches(':')));
    }
    paths
}

/// A use tree with its whitespace and its `as` renames taken out.
fn without_renames(statement: &str) -> String {
    let mut tree = String::new();
    let mut words = statement.split_whitespace();
    while let Some(word) = words.next() {
        if word == "as" {
            // The new name goes; what is glued after it (`,` or `}`) stays.
            let renamed = words.next().unwrap_or("");
            tree.extend(
                renamed
                    .chars()
                    .filter(|c| !(c.is_alphanumeric() || *c == '_')),
            );
        } else {
            tree.push_str(word);
        }
    }
    tree
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        return vec![tree.to_string()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut from) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[from..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(expand)
        .map(|path| match path.as_str() {
            "self" => prefix.trim_end_matches("::").to_string(),
            _ => format!("{prefix}{path}"),
        })
        .collect()
}

/// A used path as a path from the crate root; None for other crates.
fn resolve(module: &str, path: &str) -> Option<String> {
    let mut base: Vec<&str> = module.split("::").collect();
    let mut rest = path;
    if let Some(tail) = rest.strip_prefix("crate::") {
        return Some(tail.to_string());
    }
    if rest.starts_with("self::") {
        rest = &rest[6..];
        return Some(format!("{module}::{rest}"));
    }
    if !rest.starts_with("super::") {
        return None;
    }
    while let Some(tail) = rest.strip_prefix("super::") {
        base.pop();
        rest = tail;
    }
    base.push(rest);
    Some(base.join("::"))
}

/// The module file a path names, or names an item of.
fn deepest_module<'m>(modules: &BTreeSet<&'m str>, path: &str) -> Option<&'m str> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("::"))
        .find_map(|candidate| modules.get(candidate.as_str()).copied())
}

/// Every circle of files, each once, as its path of modules.
fn circles<'a>(edges: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<Vec<&'a str>> {
    let mut found: BTreeSet<Vec<&'a str>> = BTreeSet::new();
    for start in edges.keys() {
        let mut stack = vec![(*start, vec![*start])];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for next in edges.get(node).into_iter().flatten() {
                if next == start {
                    let mut circle = path.clone();
                    // One spelling per circle: rotated to start at its least module.
                    let least = (0..circle.len()).min_by_key(|i| circle[*i]).unwrap_or(0);
                    circle.rotate_left(least);
                    let first = circle[0];
                    circle.push(first);
                    found.insert(circle);
                } else if seen.insert(*next) {
                    let mut longer = path.clone();
                    longer.push(next);
                    stack.push((next, longer));
                }
            }
        }
    }
    found.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_trees_expand_and_resolve() {
        let text = "use crate::{a::{B as Z, c::D}, e};\nuse super::{f, g::H};\n\
                    use crate::m::{n, o::{self, P}};\nlet x = crate::k::L;";
        let got = imports("x::y", text);
        assert_eq!(
            got,
            [
                "a::B", "a::c::D", "e", "x::f", "x::g::H", "m::n", "m::o", "m::o::P", "k::L"
            ]
        );
    }

    #[test]
    fn layers_take_the_longest_entry() {
        assert_eq!(layer_of("config::values"), Some(0));
        assert_eq!(LAYERS[layer_of("config").unwrap()], "config");
        assert_eq!(
            LAYERS[layer_of("protocols::http::driver").unwrap()],
            "protocols::http"
        );
        assert_eq!(layer_of("nowhere"), None);
    }

    #[test]
    fn circles_are_found_once() {
        let mut edges = BTreeMap::new();
        edges.insert("a", BTreeSet::from(["b"]));
        edges.insert("b", BTreeSet::from(["c"]));
        edges.insert("c", BTreeSet::from(["a"]));
        assert_eq!(circles(&edges), vec![vec!["a", "b", "c", "a"]]);
    }
}
