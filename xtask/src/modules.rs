//! `cargo xtask modules`: the import graph of each crate's modules, drawn from the code (`use`
//! lines and `crate::`/`super::`/`self::` paths in it), and a check that it has no loop: no
//! module may reach a module that reaches it back. A folder's `pub use` of its children counts
//! as an edge, so a child that imports a sibling through its parent's re-export closes a loop:
//! children name their siblings directly. Run by `cargo xtask lint`, so by CI.
//!
//! Written out rather than taken from a crate: what is checked is a property of this
//! workspace's own source layout, and a few dozen lines of path handling cover it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A module path inside one crate, e.g. `["method", "lora", "config"]` (the root is `[]`).
type ModulePath = Vec<String>;

/// The module graph of one crate: every module and the modules it uses.
pub struct Graph {
    /// The crate's name, for messages.
    pub name: String,
    /// Edges from each module to the modules it imports.
    pub edges: BTreeMap<ModulePath, BTreeSet<ModulePath>>,
}

/// Checks every crate under `root/crates` (and the root package); prints the loops and fails
/// if there is one. With `print`, also prints every edge.
pub fn check(root: &Path, print: bool) -> Result<()> {
    let mut loops = Vec::new();
    for src in crate_sources(root)? {
        let graph = Graph::read(&src)?;
        if print {
            for (from, targets) in &graph.edges {
                for to in targets {
                    println!("{}: {} -> {}", graph.name, show(from), show(to));
                }
            }
        }
        loops.extend(graph.loops().into_iter().map(|l| (graph.name.clone(), l)));
    }
    if loops.is_empty() {
        println!("modules: no import loop in any crate");
        return Ok(());
    }
    for (name, cycle) in &loops {
        let names: Vec<String> = cycle.iter().map(|m| show(m)).collect();
        eprintln!("{name}: import loop {}", names.join(" -> "));
    }
    bail!("{} import loop(s) between modules", loops.len())
}

fn show(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// The `src` folders of the workspace's crates.
fn crate_sources(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![root.join("src")];
    let crates = root.join("crates");
    for entry in std::fs::read_dir(&crates).with_context(|| crates.display().to_string())? {
        let src = entry?.path().join("src");
        if src.is_dir() {
            out.push(src);
        }
    }
    out.push(root.join("xtask/src"));
    out.sort();
    Ok(out)
}

impl Graph {
    /// Reads every `.rs` file under `src`.
    pub fn read(src: &Path) -> Result<Self> {
        let mut files = Vec::new();
        collect_files(src, &mut files)?;
        let modules: BTreeSet<ModulePath> = files.iter().map(|f| module_of(src, f)).collect();
        let mut edges = BTreeMap::new();
        for file in &files {
            let from = module_of(src, file);
            let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
            let targets: BTreeSet<ModulePath> = referenced_paths(&text)
                .into_iter()
                .filter_map(|path| resolve(&from, &path, &modules))
                .filter(|to| *to != from)
                .collect();
            edges.insert(from, targets);
        }
        let name = src
            .parent()
            .and_then(|p| p.file_name())
            .map_or("?".into(), |n| n.to_string_lossy().into_owned());
        Ok(Self { name, edges })
    }

    /// Every loop, as the modules along it (first one repeated at the end); each loop once.
    pub fn loops(&self) -> Vec<Vec<ModulePath>> {
        let mut found: Vec<Vec<ModulePath>> = Vec::new();
        let mut seen_sets: BTreeSet<BTreeSet<ModulePath>> = BTreeSet::new();
        for start in self.edges.keys() {
            let mut stack = vec![start.clone()];
            self.walk(start, &mut stack, &mut found, &mut seen_sets);
        }
        found
    }

    fn walk(
        &self,
        start: &ModulePath,
        stack: &mut Vec<ModulePath>,
        found: &mut Vec<Vec<ModulePath>>,
        seen: &mut BTreeSet<BTreeSet<ModulePath>>,
    ) {
        let Some(last) = stack.last().cloned() else {
            return;
        };
        for next in self.edges.get(&last).into_iter().flatten() {
            if next == start {
                let set: BTreeSet<ModulePath> = stack.iter().cloned().collect();
                if seen.insert(set) {
                    let mut cycle = stack.clone();
                    cycle.push(start.clone());
                    found.push(cycle);
                }
            } else if !stack.contains(next) && next > start {
                // Only loops through modules after `start` in order: each loop is walked from
                // its smallest module once.
                stack.push(next.clone());
                self.walk(start, stack, found, seen);
                stack.pop();
            }
        }
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; `lib.rs` and `main.rs` are the root.
fn module_of(src: &Path, file: &Path) -> ModulePath {
    let relative = file.strip_prefix(src).unwrap_or(file);
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if !matches!(stem, "mod" | "lib" | "main") {
            parts.push(stem.to_string());
        }
    }
    parts
}

/// Every path the code names from `crate`, `$crate`, `super`, `self` or a child module, with `use` groups
/// expanded: `use crate::a::{b, c::d}` gives `crate::a::b` and `crate::a::c::d`. Comments and
/// the unit tests at the end of a file (from `#[cfg(test)]` on) are left out: a test module's
/// `super` is the file's own module.
fn referenced_paths(text: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = text.lines().collect();
    let tests_start = lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod tests {"))
        .unwrap_or(lines.len());
    let code: String = lines[..tests_start]
        .iter()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    for (i, statement) in code.split(';').enumerate() {
        // A `use` item starts a line; "…; use --flag" inside a string literal does not.
        let lead = &statement[..statement.len() - statement.trim_start().len()];
        let starts_line = i == 0 || lead.contains('\n');
        if let Some(tree) = statement.trim().split("use ").nth(1).filter(|_| {
            let s = statement.trim_start();
            starts_line
                && (s.starts_with("use ")
                    || s.starts_with("pub use ")
                    || s.starts_with("pub(crate) use "))
        }) {
            expand(&[], tree.trim(), &mut out);
        }
    }
    // Paths written inline in code: `crate::files::write_atomic(...)`.
    let tokens = code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '$'));
    for token in tokens {
        let parts: Vec<String> = token.split("::").map(str::to_string).collect();
        if parts.len() > 1 {
            out.push(parts);
        }
    }
    out
}

/// Expands one `use` tree onto `prefix`.
fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let close = tree.rfind('}').filter(|&c| c > open).unwrap_or(tree.len());
        let inner = tree[open + 1..close].trim();
        let mut base = prefix.to_vec();
        base.extend(head);
        for item in split_top_level(inner) {
            expand(&base, item, out);
        }
        return;
    }
    let name = tree.split(" as ").next().unwrap_or(tree);
    let mut path = prefix.to_vec();
    path.extend(name.split("::").map(|s| s.trim().to_string()));
    out.push(path);
}

/// Splits `a, b::{c, d}, e` at the commas outside braces.
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// The module a path from module `from` lands in (the longest prefix that is a module), if
/// the path is a crate-local one.
fn resolve(
    from: &ModulePath,
    path: &[String],
    modules: &BTreeSet<ModulePath>,
) -> Option<ModulePath> {
    let first = path.first()?;
    let child: ModulePath = from.iter().chain([first]).cloned().collect();
    let (mut base, mut rest): (ModulePath, &[String]) = match first.as_str() {
        "crate" | "$crate" => (Vec::new(), &path[1..]),
        "self" | "super" => (from.clone(), &path[1..]),
        // `use config::X` in a folder's `mod.rs` names its child module.
        _ if modules.contains(&child) => (from.clone(), path),
        _ => return None,
    };
    if path[0] == "super" {
        base.pop();
        while rest.first().is_some_and(|s| s == "super") {
            base.pop();
            rest = &rest[1..];
        }
    }
    let mut best = base.clone();
    for segment in rest {
        base.push(segment.clone());
        if modules.contains(&base) {
            best = base.clone();
        }
    }
    Some(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &str)]) -> Graph {
        let mut map: BTreeMap<ModulePath, BTreeSet<ModulePath>> = BTreeMap::new();
        let path = |s: &str| s.split("::").map(str::to_string).collect::<Vec<_>>();
        for (a, b) in edges {
            map.entry(path(a)).or_default().insert(path(b));
            map.entry(path(b)).or_default();
        }
        Graph {
            name: "test".into(),
            edges: map,
        }
    }

    #[test]
    fn use_groups_expand_and_resolve_to_the_deepest_module() {
        let text = "use crate::method::{api::MethodConfig, common};\nuse super::x as y;\nfn f() { crate::files::write_atomic(); }";
        let paths = referenced_paths(text);
        let modules: BTreeSet<ModulePath> = [
            vec!["method".to_string()],
            vec!["method".into(), "api".into()],
            vec!["method".into(), "common".into()],
            vec!["files".into()],
            vec!["a".into(), "x".into()],
        ]
        .into_iter()
        .collect();
        let from = vec!["a".to_string(), "b".to_string()];
        let resolved: BTreeSet<ModulePath> = paths
            .iter()
            .filter_map(|p| resolve(&from, p, &modules))
            .collect();
        assert!(resolved.contains(&vec!["method".to_string(), "api".to_string()]));
        assert!(resolved.contains(&vec!["method".to_string(), "common".to_string()]));
        assert!(resolved.contains(&vec!["files".to_string()]));
        assert!(resolved.contains(&vec!["a".to_string(), "x".to_string()]));
    }

    /// "…; use --dtype f32 there" inside a string is not a `use` item (it made the scan slice
    /// past the end of a brace group: `{dtype:?}` after it).
    #[test]
    fn a_use_inside_a_string_literal_is_not_an_item() {
        let text = "fn f() {\n    bail!(\"no bf16; use --dtype f32 {}\", format!(\"{d:?}\"));\n}\nuse crate::files;";
        let paths = referenced_paths(text);
        assert_eq!(paths, vec![vec!["crate".to_string(), "files".to_string()]]);
    }

    #[test]
    fn a_loop_is_found_once_and_a_chain_is_not_a_loop() {
        let looped = graph(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]);
        assert_eq!(looped.loops().len(), 1);
        let chain = graph(&[("a", "b"), ("b", "c"), ("a", "c")]);
        assert!(chain.loops().is_empty());
    }
}
