//! The server's modules import one way: no cycle between the files of `src/`, read from
//! their `use crate::…`, `super::…` and `self::…` paths. A parent declaring or using its
//! own submodules is structure, not an import; a child importing its parent is an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`ledger::service::write`) -> its source, unit tests left out.
fn modules() -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    collect(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut Vec::new(),
        &mut found,
    );
    found
}

fn collect(directory: &Path, prefix: &mut Vec<String>, found: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(directory)
        .expect("src/ is readable")
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .expect("a UTF-8 file name")
            .to_owned();
        if path.is_dir() {
            if name == "bin" {
                continue;
            }
            prefix.push(name);
            collect(&path, prefix, found);
            prefix.pop();
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            let mut module = prefix.clone();
            if !matches!(name.as_str(), "mod" | "lib" | "main") {
                module.push(name);
            }
            let source = std::fs::read_to_string(&path).expect("a source file");
            let without_tests = match source.find("#[cfg(test)]\nmod tests") {
                Some(start) => source[..start].to_owned(),
                None => source,
            };
            found.insert(module.join("::"), without_tests);
        }
    }
}

fn is_identifier(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// Every path that starts at `crate`, `super` or `self`, with `{…}` groups expanded.
fn paths_in(source: &str) -> Vec<Vec<String>> {
    let bytes = source.as_bytes();
    let mut paths = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        let starts_path = [&b"crate::"[..], b"super::", b"self::"]
            .iter()
            .any(|root| bytes[index..].starts_with(root));
        let preceded = index > 0 && (is_identifier(bytes[index - 1]) || bytes[index - 1] == b':');
        if starts_path && !preceded {
            let (found, end) = parse_path(source, index);
            paths.extend(found);
            index = end.max(index + 1);
        } else {
            index += 1;
        }
    }
    paths
}

/// Parses `a::b::{c, d::e}` from `start`; returns the expanded paths and where it ended.
fn parse_path(source: &str, start: usize) -> (Vec<Vec<String>>, usize) {
    let bytes = source.as_bytes();
    let mut segments = Vec::new();
    let mut index = start;
    loop {
        let begin = index;
        while index < bytes.len() && is_identifier(bytes[index]) {
            index += 1;
        }
        if index == begin {
            break;
        }
        segments.push(source[begin..index].to_owned());
        if !bytes[index..].starts_with(b"::") {
            return (vec![segments], index);
        }
        index += 2;
        if bytes[index..].starts_with(b"{") {
            let mut paths = Vec::new();
            index += 1;
            loop {
                while index < bytes.len()
                    && (bytes[index].is_ascii_whitespace() || bytes[index] == b',')
                {
                    index += 1;
                }
                if index >= bytes.len() || bytes[index] == b'}' {
                    return (paths, index + 1);
                }
                let (inner, end) = parse_path(source, index);
                for tail in inner {
                    paths.push(segments.iter().cloned().chain(tail).collect());
                }
                // Skip what the item may carry after its path (`as name`).
                index = end.max(index + 1);
                while index < bytes.len() && !matches!(bytes[index], b',' | b'}') {
                    index += 1;
                }
            }
        }
    }
    (vec![segments], index)
}

/// The module a path points into, seen from `module`: its longest prefix naming one.
fn target(module: &[String], path: &[String], known: &BTreeMap<String, String>) -> Option<String> {
    let (mut base, mut rest): (Vec<String>, &[String]) = match path.first()?.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (module.to_vec(), &path[1..]),
        "super" => (
            module[..module.len().saturating_sub(1)].to_vec(),
            &path[1..],
        ),
        _ => return None,
    };
    while rest.first().is_some_and(|segment| segment == "super") {
        base.pop();
        rest = &rest[1..];
    }
    (0..=rest.len())
        .rev()
        .map(|length| {
            base.iter()
                .chain(&rest[..length])
                .cloned()
                .collect::<Vec<_>>()
                .join("::")
        })
        .find(|candidate| known.contains_key(candidate))
}

fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let known = modules();
    let mut graph = BTreeMap::new();
    for (module, source) in &known {
        let own: Vec<String> = if module.is_empty() {
            Vec::new()
        } else {
            module.split("::").map(str::to_owned).collect()
        };
        let mut edges = BTreeSet::new();
        for path in paths_in(source) {
            let Some(target) = target(&own, &path, &known) else {
                continue;
            };
            let is_own_submodule = target.starts_with(&format!("{module}::"))
                || (module.is_empty() && !target.is_empty());
            if target != *module && !target.is_empty() && !is_own_submodule {
                edges.insert(target);
            }
        }
        graph.insert(module.clone(), edges);
    }
    graph
}

/// A cycle through `graph`, if there is one, as the modules it passes.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(position) = stack.iter().position(|open| open == node) {
            let mut cycle = stack[position..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

#[test]
fn paths_are_read_with_their_groups() {
    let paths = paths_in(
        "use crate::{auth, graphql::types::{Account, Payment as P}};\nlet x = super::super::db::connect();",
    );
    let joined: Vec<String> = paths.iter().map(|path| path.join("::")).collect();
    assert_eq!(
        joined,
        [
            "crate::auth",
            "crate::graphql::types::Account",
            "crate::graphql::types::Payment",
            "super::super::db::connect"
        ]
    );
}

#[test]
fn a_cycle_is_found_when_there_is_one() {
    let graph = BTreeMap::from([
        ("config".to_owned(), BTreeSet::from(["db".to_owned()])),
        ("db".to_owned(), BTreeSet::from(["ledger".to_owned()])),
        ("ledger".to_owned(), BTreeSet::from(["config".to_owned()])),
        ("error".to_owned(), BTreeSet::new()),
    ]);
    assert_eq!(
        find_cycle(&graph),
        Some(vec![
            "config".into(),
            "db".into(),
            "ledger".into(),
            "config".into()
        ])
    );
}

#[test]
fn src_has_no_import_cycle() {
    let graph = import_graph();
    assert!(graph.len() > 30, "the walk found the modules: {graph:?}");
    assert!(
        graph["config"].is_empty(),
        "configuration is a leaf, but imports {:?}",
        graph["config"]
    );
    assert!(graph["ledger::service::batch"].contains("ledger::service::write"));
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}
