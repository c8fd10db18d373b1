//! The module structure `ARCHITECTURE.md` promises, checked on the source: no import cycles
//! between the files of `src/`, and the layers below everything import nothing above them.
//!
//! Every `crate::…` and `super::…` path in a file's code (not its comments, nor its
//! `#[cfg(test)]` part, which is by convention at its end) is an edge to the file that defines that module. A file naming
//! items of its own parent module (`super::X` from `a/b.rs` to `a/mod.rs`) is not an edge:
//! a parent module is the interface of its children.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`api::chunk`) → the module paths it imports.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn module_of(path: &Path) -> String {
    let relative = path.strip_prefix("src").unwrap().with_extension("");
    let parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p != "mod" && p != "lib")
        .collect();
    parts.join("::")
}

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("main.rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            out.push((module_of(&path), without_comments(code)));
        }
    }
}

/// The code without its `//` comments (doc links name modules they do not import).
fn without_comments(code: &str) -> String {
    code.lines()
        .map(|line| {
            let cut = line
                .match_indices("//")
                .find(|(at, _)| {
                    line[..*at]
                        .chars()
                        .next_back()
                        .is_none_or(char::is_whitespace)
                })
                .map_or(line.len(), |(at, _)| at);
            &line[..cut]
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers of the path that starts at `at` (`a::b::{c, d}` → [a, b, {c, d}]).
fn path_at(code: &str, at: usize) -> Vec<Vec<String>> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut segments = Vec::new();
    let mut rest = &code[at..];
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            segments.push(inner.split(',').map(|s| ident(s.trim())).collect());
            return segments;
        }
        let name = ident(rest);
        if name.is_empty() {
            return segments;
        }
        rest = &rest[name.len()..];
        segments.push(vec![name]);
        match rest.strip_prefix("::") {
            Some(next) => rest = next,
            None => return segments,
        }
    }
}

/// The longest known module `base::segments…` names, for each item of a final group.
fn resolve(modules: &BTreeSet<String>, base: &[String], segments: &[Vec<String>]) -> Vec<String> {
    let mut current: Vec<String> = base.to_vec();
    let mut found = current.join("::");
    for (i, segment) in segments.iter().enumerate() {
        if segment.len() > 1 || i + 1 == segments.len() {
            return segment
                .iter()
                .map(|item| {
                    let candidate = [current.join("::"), item.clone()]
                        .into_iter()
                        .filter(|p| !p.is_empty())
                        .collect::<Vec<_>>()
                        .join("::");
                    if modules.contains(&candidate) {
                        candidate
                    } else {
                        found.clone()
                    }
                })
                .collect();
        }
        current.push(segment[0].clone());
        let joined = current.join("::");
        if modules.contains(&joined) {
            found = joined;
        } else {
            return vec![found];
        }
    }
    vec![found]
}

fn graph() -> Graph {
    let mut files = Vec::new();
    sources(Path::new("src"), &mut files);
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut graph = Graph::new();
    for (module, code) in &files {
        let own: Vec<String> = module.split("::").map(str::to_owned).collect();
        let parent = &own[..own.len().saturating_sub(1)];
        let edges = graph.entry(module.clone()).or_default();
        for (prefix, base) in [("crate::", &[][..]), ("super::", parent)] {
            for (at, _) in code.match_indices(prefix) {
                let before = code[..at].chars().next_back().unwrap_or(' ');
                if before.is_alphanumeric() || before == '_' || before == ':' {
                    continue;
                }
                let segments = path_at(code, at + prefix.len());
                for target in resolve(&modules, base, &segments) {
                    let own_parent = prefix == "super::" && target == parent.join("::");
                    if target != *module && !target.is_empty() && !own_parent {
                        edges.insert(target);
                    }
                }
            }
        }
    }
    graph
}

/// A cycle through `start`, if there is one.
fn cycle_from(graph: &Graph, start: &str) -> Option<Vec<String>> {
    fn walk(
        graph: &Graph,
        node: &str,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(node).into_iter().flatten() {
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, next, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_owned()];
    walk(graph, start, start, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn there_are_no_import_cycles() {
    let graph = graph();
    assert!(graph.len() > 40, "the source was read: {:?}", graph.keys());
    assert!(
        graph["pipeline::resilience"].contains("pipeline::dispatch"),
        "edges are found"
    );
    for module in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, module) {
            panic!("import cycle: {} -> {module}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_wire_types_and_providers_sit_below_the_pipeline() {
    let graph = graph();
    let allowed = |module: &str, below: &[&str]| {
        for target in &graph[module] {
            let top = target.split("::").next().unwrap_or_default();
            assert!(
                below.contains(&top),
                "{module} imports {target}, which is not below it ({below:?})"
            );
        }
    };
    for (module, _) in graph.iter().filter(|(m, _)| m.starts_with("api")) {
        allowed(module, &["api", "error", "usage", "clock", "headers"]);
    }
    for (module, _) in graph.iter().filter(|(m, _)| m.starts_with("providers")) {
        allowed(
            module,
            &[
                "providers",
                "api",
                "error",
                "usage",
                "clock",
                "headers",
                "config",
                "sse",
            ],
        );
    }
    allowed("error", &["headers"]);
    allowed("clock", &[]);
}
