//! The crate's layers, checked from its source: every `use crate::…` / `super::…` line and every
//! path written inline (`crate::a::b`) is an edge from the module it is written in to the module
//! it names. The test fails on an import from a lower layer into a higher one, and on any import
//! circle between modules, printing the offending `file -> module: names` lines.
//!
//! A module here is a top-level module of the library (`crate::pubsub`, `crate::cluster` with all
//! its files), or an app (`crate::apps::chat`); what lies inside one may use itself freely.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest first: a module may use its own layer and those before it, never one after it.
///
/// The engine is given as the steps it is built in, each a layer of its own, so that its order
/// is checked and not only the absence of circles: the leaves every module may count on
/// (limits, counters, a socket's budget); topics (PubSub, and Presence on it); one client's
/// connection and the `Endpoint` handle (`hub`) that holds them all; the cluster link, which
/// reaches the engine through that handle and the traits PubSub defines; the app-facing
/// channels, the socket definitions mounted on an endpoint and the per-socket protocol; the
/// transports and the HTTP server (with `/metrics`, which reads the endpoint) on top.
const LAYERS: &[(&str, &[&str])] = &[
    ("wire", &["protocol", "etf"]),
    (
        "engine: limits, counters and counted tasks",
        &["config", "metrics", "budget", "task"],
    ),
    ("engine: topics", &["pubsub", "presence"]),
    (
        "engine: connections and the endpoint's hub",
        &["connection", "hub"],
    ),
    ("engine: cluster link", &["cluster"]),
    (
        "engine: channels and sockets",
        &["channel", "endpoint", "socket"],
    ),
    ("engine: transports and HTTP", &["transport", "server"]),
    (
        "store, recorded history and sign-in",
        &["store", "history", "auth", "accounts"],
    ),
    (
        "apps: what they share, and channel kinds standing alone",
        &[
            "apps::state",
            "apps::api",
            "apps::rules",
            "apps::proxy",
            "apps::realtime",
        ],
    ),
    (
        "apps",
        &[
            "apps::account",
            "apps::feed",
            "apps::chat",
            "apps::collections",
            "apps::server_api",
        ],
    ),
    ("apps: mounted on the socket and the routes", &["apps"]),
    ("binary", &["demo", "inspector", "config_file"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// The source with comments, strings and character literals blanked out (lengths kept).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, s: &[u8]| {
        out.extend(s.iter().map(|&c| if c == b'\n' { b'\n' } else { b' ' }))
    };
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"/*") {
            let (mut depth, mut j) = (0usize, 0usize);
            while j < rest.len() {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &rest[..j]);
            i += j;
        } else if rest[0] == b'r'
            && (rest.starts_with(b"r\"") || rest.starts_with(b"r#"))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            let hashes = rest[1..].iter().take_while(|&&c| c == b'#').count();
            if rest.get(1 + hashes) != Some(&b'"') {
                out.push(rest[0]);
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let body = 2 + hashes;
            let end = rest[body..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(rest.len(), |p| body + p + close.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'\'' {
            // A char literal ('a', '\n', '\u{..}'), not a lifetime ('a).
            let end = if rest.get(1) == Some(&b'\\') {
                rest[2..].iter().position(|&c| c == b'\'').map(|p| p + 3)
            } else if rest.get(2) == Some(&b'\'') {
                Some(3)
            } else {
                std::str::from_utf8(rest)
                    .ok()
                    .and_then(|s| s[1..].chars().next())
                    .filter(|c| !c.is_ascii())
                    .map(|c| 1 + c.len_utf8() + 1)
                    .filter(|&e| rest.get(e - 1) == Some(&b'\''))
            };
            match end {
                Some(e) => {
                    blank(&mut out, &rest[..e]);
                    i += e;
                }
                None => {
                    out.push(b'\'');
                    i += 1;
                }
            }
        } else {
            out.push(rest[0]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every path a piece of code names that starts at `crate`, `super` or `self`, as segments,
/// with the inline modules (`mod tests { … }`) it is written in. `use` trees with braces are
/// expanded; inline paths are read as written.
fn paths(code: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    // Child modules declared here (`mod x;`): `x::…` is `self::x::…`.
    let children: Vec<String> = code
        .split(';')
        .filter_map(|stmt| {
            let words: Vec<&str> = stmt.split_whitespace().collect();
            match words.as_slice() {
                [.., "mod", name] if name.chars().all(is_ident) => Some(format!("{name}::")),
                _ => None,
            }
        })
        .collect();
    // Inline modules open around `i`: (name, brace depth inside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '{' => depth += 1,
            '}' => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            'm' if chars[i..].starts_with(&['m', 'o', 'd', ' '])
                && (i == 0 || !is_ident(chars[i - 1])) =>
            {
                let name: String = chars[i + 4..]
                    .iter()
                    .take_while(|c| is_ident(**c))
                    .collect();
                let after = chars[i + 4 + name.chars().count()..]
                    .iter()
                    .find(|c| !c.is_whitespace());
                if after == Some(&'{') {
                    inline.push((name, depth + 1));
                }
            }
            _ => {}
        }
        let starts = ["crate::", "super::", "self::"]
            .iter()
            .map(|p| p.to_string())
            .chain(children.iter().cloned())
            .find(|p| chars[i..].iter().take(p.len()).copied().eq(p.chars()));
        let boundary = i == 0 || !(is_ident(chars[i - 1]) || chars[i - 1] == ':');
        match starts {
            Some(start) if boundary => {
                let end = tree_end(&chars, i);
                let mut text: String = chars[i..end].iter().collect();
                if children.contains(&start) {
                    text.insert_str(0, "self::");
                }
                let mut found = Vec::new();
                expand(&without_renames(&text), &[], &mut found);
                let nesting: Vec<String> = inline.iter().map(|(n, _)| n.clone()).collect();
                out.extend(found.into_iter().map(|p| (p, nesting.clone())));
                i = end;
            }
            _ => i += 1,
        }
    }
    out
}

/// A `use` tree without whitespace and without its `as` renames.
fn without_renames(tree: &str) -> String {
    let words: Vec<&str> = tree.split_whitespace().collect();
    let mut out = String::new();
    let mut k = 0;
    while k < words.len() {
        if words[k] == "as" && k + 1 < words.len() {
            // Keep what follows the new name (`,` or `}`).
            let rest = words[k + 1].trim_start_matches(is_ident);
            out.push_str(rest);
            k += 2;
        } else {
            out.push_str(words[k]);
            k += 1;
        }
    }
    out
}

/// Where a path (or `use` tree) starting at `i` ends.
fn tree_end(chars: &[char], mut i: usize) -> usize {
    let mut depth = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            depth += 1;
        } else if c == '}' {
            if depth == 0 {
                break;
            }
            depth -= 1;
        } else {
            // Outside braces a path is identifiers and `::`; inside, lists of them too.
            let in_path = is_ident(c) || c == ':';
            let in_list = c == ',' || c == '*' || c.is_whitespace();
            if !(in_path || depth > 0 && in_list) {
                break;
            }
        }
        i += 1;
    }
    i
}

/// Expands `a::b::{c, d::{e}}` into its paths.
fn expand(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let tree = tree.trim_end_matches("::");
    match tree.find('{') {
        None => {
            let mut p = prefix.to_vec();
            p.extend(
                tree.split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
            out.push(p);
        }
        Some(open) => {
            let head = &tree[..open];
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let mut p = prefix.to_vec();
            p.extend(
                head.split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
            let (mut depth, mut start) = (0, 0);
            let items: Vec<&str> = {
                let mut v = Vec::new();
                for (k, c) in inner.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            v.push(&inner[start..k]);
                            start = k + 1;
                        }
                        _ => {}
                    }
                }
                v.push(&inner[start..]);
                v
            };
            for item in items.into_iter().filter(|s| !s.is_empty()) {
                if item == "self" {
                    out.push(p.clone());
                } else {
                    expand(item, &p, out);
                }
            }
        }
    }
}

/// The module a file is, as segments below `crate` (`src/apps/chat/room.rs` is apps::chat::room).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut segs: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if segs.last().is_some_and(|s| s == "mod" || s == "lib") {
        segs.pop();
    }
    segs
}

/// The module a path falls in (see the file's doc), given the crate's module tree.
fn unit(path: &[String], apps: &BTreeSet<String>) -> Option<String> {
    let first = path.first()?;
    if first == "apps" {
        return Some(match path.get(1) {
            Some(app) if apps.contains(app) => format!("apps::{app}"),
            _ => "apps".to_owned(),
        });
    }
    Some(first.clone())
}

/// What `lib.rs` re-exports at the crate root (`pub use channel::{Channel, …}`): name -> module.
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let code = code_only(lib);
    let mut out = BTreeMap::new();
    for stmt in code.split(';') {
        let Some(tree) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let mut found = Vec::new();
        expand(&without_renames(tree), &[], &mut found);
        for path in found {
            if let (Some(module), Some(name)) = (path.first(), path.last()) {
                out.insert(name.clone(), module.clone());
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

struct Edge {
    file: String,
    names: BTreeSet<String>,
}

#[test]
fn imports_run_down_the_layers_and_never_in_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files.retain(|f| f.file_name().is_some_and(|n| n != "main.rs"));
    let apps: BTreeSet<String> = std::fs::read_dir(src.join("apps"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let stem = p.file_stem()?.to_string_lossy().into_owned();
            (p.is_dir() || stem != "mod").then_some(stem)
        })
        .collect();

    let reexports = reexports(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_path(&src, f).first().cloned())
        .collect();
    // from -> to -> (file, names)
    let mut edges: BTreeMap<String, BTreeMap<String, Vec<Edge>>> = BTreeMap::new();
    let mut unknown = BTreeSet::new();
    for file in &files {
        let here = module_path(&src, file);
        let Some(from) = unit(&here, &apps) else {
            continue; // lib.rs: it declares the modules and re-exports their API
        };
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        for (path, nesting) in paths(&code) {
            let mut target = Vec::new();
            let mut segs = path.iter().peekable();
            // `super` of the module `a::b` (the file `a/b.rs` or `a/b/mod.rs`) is `a`.
            let mut base = here.clone();
            base.extend(nesting);
            match segs.peek().map(|s| s.as_str()) {
                Some("crate") => {
                    segs.next();
                }
                Some("self") => {
                    segs.next();
                    target = base.clone();
                }
                Some("super") => {
                    while segs.peek().is_some_and(|s| *s == "super") {
                        segs.next();
                        base.pop();
                    }
                    target = base.clone();
                }
                _ => continue,
            }
            target.extend(segs.cloned());
            // The crate root's re-exports name their modules' items.
            if target.first().is_some_and(|t| !modules.contains(t)) {
                match reexports.get(&target[0]).filter(|m| modules.contains(*m)) {
                    Some(module) => target.insert(0, module.clone()),
                    None => continue, // re-exported from another crate
                }
            }
            let Some(to) = unit(&target, &apps) else {
                continue;
            };
            if to == from {
                continue;
            }
            for m in [&from, &to] {
                if layer_of(m).is_none() {
                    unknown.insert(m.clone());
                }
            }
            let rel = file.strip_prefix(&src).unwrap().display().to_string();
            let list = edges
                .entry(from.clone())
                .or_default()
                .entry(to)
                .or_default();
            let name = target.join("::");
            match list.iter_mut().find(|e| e.file == rel) {
                Some(e) => {
                    e.names.insert(name);
                }
                None => list.push(Edge {
                    file: rel,
                    names: BTreeSet::from([name]),
                }),
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules missing from the LAYERS table of tests/layers.rs: {unknown:?}"
    );

    let show = |from: &str, to: &str| -> Vec<String> {
        edges[from][to]
            .iter()
            .map(|e| {
                let names: Vec<&str> = e.names.iter().map(String::as_str).collect();
                format!("  src/{} -> {to}: {}", e.file, names.join(", "))
            })
            .collect()
    };
    let mut problems = Vec::new();
    for (from, tos) in &edges {
        for to in tos.keys() {
            let (lf, lt) = (layer_of(from).unwrap(), layer_of(to).unwrap());
            if lt > lf {
                problems.push(format!(
                    "{from} ({}) imports {to} ({}), a layer above it:",
                    LAYERS[lf].0, LAYERS[lt].0
                ));
                problems.extend(show(from, to));
            }
        }
    }
    for cycle in cycles(&edges) {
        problems.push(format!("import circle: {}", cycle.join(" -> ")));
        for pair in cycle.windows(2) {
            problems.extend(show(&pair[0], &pair[1]));
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

/// One circle through each strongly connected group of modules, closed (`a -> b -> a`).
fn cycles(edges: &BTreeMap<String, BTreeMap<String, Vec<Edge>>>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges
        .iter()
        .flat_map(|(f, tos)| std::iter::once(f).chain(tos.keys()))
        .collect();
    let reach = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(n) = stack.pop() {
            for to in edges.get(&n).into_iter().flat_map(|t| t.keys()) {
                if seen.insert(to.clone()) {
                    stack.push(to.clone());
                }
            }
        }
        seen
    };
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for n in nodes {
        if done.contains(n) || !reach(n).contains(n) {
            continue;
        }
        // A shortest way back to `n`, breadth first.
        let mut prev: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([n.clone()]);
        'search: while let Some(cur) = queue.pop_front() {
            for to in edges.get(&cur).into_iter().flat_map(|t| t.keys()) {
                if to == n {
                    prev.insert(format!("{n}#end"), cur.clone());
                    break 'search;
                }
                if !prev.contains_key(to) {
                    prev.insert(to.clone(), cur.clone());
                    queue.push_back(to.clone());
                }
            }
        }
        let mut cycle = vec![n.clone()];
        let mut cur = prev[&format!("{n}#end")].clone();
        while &cur != n {
            cycle.push(cur.clone());
            cur = prev[&cur].clone();
        }
        cycle.push(n.clone());
        let last = cycle.len() - 1;
        cycle[1..last].reverse();
        for m in &cycle {
            done.insert(m.clone());
        }
        out.push(cycle);
    }
    out
}

/// The reader itself: what it must find, and what it must not take for a path.
#[test]
fn the_reader_finds_every_path_and_nothing_else() {
    let src = r#"
use crate::{a::{b, c as d}, e};
use super::f::G as H;
// use crate::commented::Out;
let s = "crate::in_a_string";
let c = 'c'; fn x<'a>(v: &'a str) {}
let y = crate::inline::call();
mod tests {
    use super::I;
}
mod child;
let z = child::f();
"#;
    let code = code_only(src);
    let found: Vec<(String, Vec<String>)> = paths(&code)
        .into_iter()
        .map(|(p, nesting)| (p.join("::"), nesting))
        .collect();
    let none = Vec::<String>::new;
    assert_eq!(
        found,
        [
            ("crate::a::b".to_owned(), none()),
            ("crate::a::c".to_owned(), none()),
            ("crate::e".to_owned(), none()),
            ("super::f::G".to_owned(), none()),
            ("crate::inline::call".to_owned(), none()),
            ("super::I".to_owned(), vec!["tests".to_owned()]),
            ("self::child::f".to_owned(), none()),
        ]
    );
}
