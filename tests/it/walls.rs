//! The walls of ARCHITECTURE.md, read from the code's own paths (`use` lines and every
//! `crate::…`, `super::…`, `self::…`, `actors::…` path outside test code), so that no wall
//! rests on a promise:
//!
//! * the rooms of `actors/src` stand in the order ARCHITECTURE.md lists them (top floor
//!   first): a room imports only rooms listed below it, and every room is listed;
//! * no import circle between files, in either crate (a folder's `mod.rs` declaring its own
//!   children is a declaration, not an import);
//! * the HTTP edge and the wiring name no `store::` and reach no `Deps` field, and `Deps`'
//!   fields are private to `tenant/` (other rooms read them through its methods);
//! * `protocol/` imports neither actix, reqwest, redis, `config`, `store` nor `webex`;
//! * only `store/` holds Redis scripts, each a `.lua` file beside the Rust that loads it; only
//!   `telemetry.rs` registers metrics; the engine never imports `devkit`.
//!
//! Rerun alone: `cargo nextest run --test it -E 'test(/^walls::/)'`.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, as (path relative to the repository, text).
fn sources(dir: &str) -> Vec<(String, String)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &root().join(dir), &mut out);
    assert!(!out.is_empty(), "no sources under {dir}");
    out
}

/// The code of a file without comments, string and char literals (each replaced by a space),
/// and without items under `#[cfg(test)]`.
fn code(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if c == b'r'
            && matches!(b.get(i + 1), Some(b'"' | b'#'))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c as char);
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            i = j + close.len();
            out.push(' ');
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            let end = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..]
                    .iter()
                    .position(|&x| x == b'\'')
                    .map(|p| i + 2 + p)
            } else {
                let ch_len = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                (b.get(i + 1 + ch_len) == Some(&b'\'')).then_some(i + 1 + ch_len)
            };
            match end {
                Some(e) => {
                    i = e + 1;
                    out.push(' ');
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    without_tests(&out)
}

/// `code` without the items that follow `#[cfg(test)]` (a `mod tests { … }`, a `use`).
fn without_tests(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at + "#[cfg(test)]".len()..];
        let semi = item.find(';').unwrap_or(item.len());
        let brace = item.find('{').unwrap_or(item.len());
        let end = if semi < brace {
            semi + 1
        } else {
            let mut depth = 0usize;
            let mut end = item.len();
            for (k, ch) in item.char_indices().skip_while(|&(k, _)| k < brace) {
                match ch {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = k + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            end
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Sep,
    Open,
    Close,
    Comma,
    Other,
}

fn tokens(code: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut chars = code.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c.is_alphabetic() || c == '_' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_alphanumeric() || d == '_' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Tok::Ident(code[i..end].to_string()));
        } else if c == ':' && chars.peek().is_some_and(|&(_, d)| d == ':') {
            chars.next();
            out.push(Tok::Sep);
        } else if c == '{' {
            out.push(Tok::Open);
        } else if c == '}' {
            out.push(Tok::Close);
        } else if c == ',' {
            out.push(Tok::Comma);
        } else if !c.is_whitespace() {
            out.push(Tok::Other);
        }
    }
    out
}

/// Every path a file names: `use` trees expanded, and every other `a::b::c` sequence.
fn paths(code: &str) -> Vec<Vec<String>> {
    let toks = tokens(code);
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if toks[i] == Tok::Ident("use".into()) {
            i = use_tree(&toks, i + 1, &mut Vec::new(), &mut out);
            continue;
        }
        if let Tok::Ident(first) = &toks[i] {
            let mut path = vec![first.clone()];
            let mut j = i + 1;
            while toks.get(j) == Some(&Tok::Sep) {
                match toks.get(j + 1) {
                    Some(Tok::Ident(s)) => {
                        path.push(s.clone());
                        j += 2;
                    }
                    _ => break,
                }
            }
            if path.len() > 1 {
                out.push(path);
            }
            i = j.max(i + 1);
            continue;
        }
        i += 1;
    }
    out
}

/// Parses one use tree at `i` under `prefix`; returns the index after it.
fn use_tree(
    toks: &[Tok],
    mut i: usize,
    prefix: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let depth = prefix.len();
    loop {
        match toks.get(i) {
            Some(Tok::Ident(s)) => {
                if s != "as" {
                    prefix.push(s.clone());
                } else {
                    i += 1; // the alias
                }
                i += 1;
            }
            Some(Tok::Sep) => i += 1,
            Some(Tok::Open) => {
                i += 1;
                loop {
                    i = use_tree(toks, i, prefix, out);
                    match toks.get(i) {
                        Some(Tok::Comma) => i += 1,
                        Some(Tok::Close) => {
                            i += 1;
                            break;
                        }
                        _ => break,
                    }
                    if toks.get(i) == Some(&Tok::Close) {
                        i += 1;
                        break;
                    }
                }
                prefix.truncate(depth);
                return i;
            }
            _ => {
                if prefix.len() > depth {
                    out.push(prefix.clone());
                }
                prefix.truncate(depth);
                // `*` (a glob) and `;` end the tree; skip a glob's star.
                if toks.get(i) == Some(&Tok::Other) && toks.get(i + 1) == Some(&Tok::Other) {
                    i += 1;
                }
                return i;
            }
        }
    }
}

/// One crate's files by module path (`["store", "writer"]` for `store/writer.rs`).
struct Crate {
    files: BTreeMap<Vec<String>, String>,
}

impl Crate {
    fn new(src: &str, sources: &[(String, String)]) -> Self {
        let mut files = BTreeMap::new();
        for (path, _) in sources {
            let rel = path.strip_prefix(src).unwrap().trim_end_matches(".rs");
            let mut m: Vec<String> = rel.split('/').map(str::to_string).collect();
            if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                m.pop();
            }
            files.insert(m, path.clone());
        }
        Self { files }
    }

    /// The file a path (already made absolute in the crate) lands in: its longest module prefix.
    fn file_of(&self, path: &[String]) -> Option<&String> {
        (0..=path.len())
            .rev()
            .find_map(|n| self.files.get(&path[..n]))
    }
}

/// The module path of a file, and whether it is a folder's `mod.rs` (or the crate root).
fn module_of(krate: &Crate, file: &str) -> (Vec<String>, bool) {
    let m = krate
        .files
        .iter()
        .find(|(_, f)| *f == file)
        .unwrap()
        .0
        .clone();
    let folder =
        file.ends_with("/mod.rs") || file.ends_with("/lib.rs") || file.ends_with("/main.rs");
    (m, folder)
}

/// The files each file imports, inside its crate (`crate::`, `super::`, `self::`).
fn imports(src: &str, name: &str) -> BTreeMap<String, BTreeSet<String>> {
    // The binary's main.rs is a crate of its own (it names the library by its crate name).
    let sources: Vec<_> = sources(src)
        .into_iter()
        .filter(|(f, _)| f != "src/main.rs")
        .collect();
    let krate = Crate::new(src, &sources);
    let mut graph = BTreeMap::new();
    for (file, text) in &sources {
        let (module, folder) = module_of(&krate, file);
        // `super` is the parent module: of `a/b.rs` and of `a/b/mod.rs` alike, `a`.
        let base: Vec<String> = module[..module.len().saturating_sub(1)].to_vec();
        let mut to = BTreeSet::new();
        for p in paths(&code(text)) {
            let abs: Vec<String> = match p[0].as_str() {
                "crate" => p[1..].to_vec(),
                s if s == name => p[1..].to_vec(),
                "self" => module
                    .iter()
                    .cloned()
                    .chain(p[1..].iter().cloned())
                    .collect(),
                "super" => {
                    let mut b = base.clone();
                    let mut k = 1;
                    while p.get(k).is_some_and(|s| s == "super") {
                        b.pop();
                        k += 1;
                    }
                    b.into_iter().chain(p[k..].iter().cloned()).collect()
                }
                _ => continue,
            };
            if abs.is_empty() {
                continue;
            }
            let Some(target) = krate.file_of(&abs) else {
                continue;
            };
            let (tm, _) = module_of(&krate, target);
            // A folder's mod.rs naming its own children declares them; the crate root is a
            // table of contents.
            let own_child = folder && tm.len() > module.len() && tm.starts_with(&module);
            if target != file && !own_child && !tm.is_empty() {
                to.insert(target.clone());
            }
        }
        graph.insert(file.clone(), to);
    }
    graph
}

/// The import circles of a graph (strongly connected components of more than one file).
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan, iteratively small enough to recurse: a few hundred files.
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let l = t.low[w].min(t.low[v]);
                t.low.insert(v, l);
            } else if t.on.contains(w) {
                let l = t.index[w].min(t.low[v]);
                t.low.insert(v, l);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_import_circles_in_either_crate() {
    // At least this many imports are read (today about twice as many): fewer means the
    // reader is broken, not that the house got simpler.
    for (src, name, least) in [("actors/src/", "actors", 100), ("src/", "xapi_stream", 25)] {
        let graph = imports(src, name);
        let edges: usize = graph.values().map(BTreeSet::len).sum();
        assert!(
            edges >= least,
            "{src}: only {edges} imports read: the reader is broken"
        );
        eprintln!("{src}: {edges} imports between {} files", graph.len());
        let found = circles(&graph);
        assert!(found.is_empty(), "{src}: import circles: {found:#?}");
    }
}

/// The room of a file of `actors/src`: its top-level module (`store` for `store/writer.rs`).
fn room(file: &str) -> String {
    let rel = file.strip_prefix("actors/src/").unwrap();
    rel.split('/')
        .next()
        .unwrap()
        .trim_end_matches(".rs")
        .to_string()
}

/// The floors ARCHITECTURE.md lists under `actors/src/`, top floor first: each line of the map
/// names one or more rooms (`store/`, `auth.rs`, `telemetry.rs, secret.rs, shutdown.rs`).
fn documented_floors() -> Vec<Vec<String>> {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let mut lines = doc.lines().skip_while(|l| !l.starts_with("actors/src/"));
    assert!(lines.next().is_some_and(|l| l.contains("top floor first")));
    let mut floors = Vec::new();
    for line in lines {
        if !line.starts_with("  ") {
            break; // the next top-level entry of the map
        }
        if line.starts_with("   ") {
            continue; // a description running on
        }
        let names: Vec<String> = line
            .split_whitespace()
            .map(|w| w.trim_end_matches(','))
            .take_while(|w| w.ends_with(".rs") || w.ends_with('/'))
            .map(|w| w.trim_end_matches('/').trim_end_matches(".rs").to_string())
            .collect();
        if !names.is_empty() {
            floors.push(names);
        }
    }
    floors
}

#[test]
fn rooms_stand_in_the_documented_order() {
    let floors = documented_floors();
    let floor_of: BTreeMap<&str, usize> = floors
        .iter()
        .enumerate()
        .flat_map(|(n, f)| f.iter().map(move |r| (r.as_str(), n)))
        .collect();
    let graph = imports("actors/src/", "actors");
    let mut wrong = Vec::new();
    for (file, targets) in &graph {
        if file == "actors/src/lib.rs" {
            continue;
        }
        let from = room(file);
        let Some(&a) = floor_of.get(from.as_str()) else {
            wrong.push(format!(
                "{file}: room `{from}` is not in ARCHITECTURE.md's map"
            ));
            continue;
        };
        for t in targets {
            let to = room(t);
            if to == from {
                continue;
            }
            match floor_of.get(to.as_str()) {
                Some(&b) if b > a => {}
                _ => wrong.push(format!(
                    "{file} imports {t}: room `{from}` is not listed above `{to}`"
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "walls broken:\n{}", wrong.join("\n"));
}

/// The lines of `files` (code only) that contain `needle`.
fn hits(files: &[(String, String)], needle: &str) -> Vec<String> {
    files
        .iter()
        .flat_map(|(f, text)| {
            code(text)
                .lines()
                .filter(|l| l.contains(needle))
                .map(|l| format!("{f}: {}", l.trim()))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_edge_and_the_wiring_use_handles_only() {
    let edge: Vec<_> = sources("src/http")
        .into_iter()
        .chain(
            sources("src")
                .into_iter()
                .filter(|(f, _)| f == "src/engine.rs"),
        )
        .collect();
    assert!(edge.len() > 5);
    for needle in ["store::", ".store()", ".deps()", "deps.", "redis::"] {
        let found = hits(&edge, needle);
        assert!(
            found.is_empty(),
            "the edge reaches past its handles ({needle}): {found:#?}"
        );
    }
    // Outside the edge, the binary names only the store's key names (tail, and devkit).
    let named: Vec<_> = hits(&sources("src"), "actors::store::")
        .into_iter()
        .filter(|h| !h.starts_with("src/devkit/"))
        .filter(|h| h.contains("actors::store::") && !h.contains("actors::store::keys"))
        .collect();
    assert!(named.is_empty(), "{named:#?}");
}

#[test]
fn the_tenant_dependencies_are_read_not_reached_into() {
    // `Deps`' fields are private to tenant/: other rooms read what they use through methods.
    let text = std::fs::read_to_string(root().join("actors/src/tenant/deps.rs")).unwrap();
    let code = code(&text);
    let start = code.find("pub struct Deps {").expect("Deps");
    let body = &code[start..start + code[start..].find("\n}").unwrap()];
    let open: Vec<_> = body
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| l.starts_with("pub ") || l.starts_with("pub(crate)"))
        .collect();
    assert!(
        open.is_empty(),
        "Deps fields open outside tenant/: {open:#?}"
    );
}

#[test]
fn protocol_is_pure_and_scripts_and_metrics_have_one_home() {
    let protocol = sources("actors/src/protocol");
    for needle in [
        "actix",
        "reqwest",
        "redis::",
        "crate::config",
        "crate::store",
        "crate::webex",
        "tokio::",
    ] {
        let found = hits(&protocol, needle);
        assert!(
            found.is_empty(),
            "protocol/ is not pure ({needle}): {found:#?}"
        );
    }
    let actors = sources("actors/src");
    let engine: Vec<_> = sources("src")
        .into_iter()
        .filter(|(f, _)| !f.starts_with("src/devkit/"))
        .chain(actors.iter().cloned())
        .collect();
    let scripts: Vec<_> = hits(&engine, "Script::new")
        .into_iter()
        .filter(|h| !h.starts_with("actors/src/store/"))
        .collect();
    assert!(
        scripts.is_empty(),
        "Redis scripts outside store/: {scripts:#?}"
    );
    // Inside store/, every script is a .lua file beside the Rust that loads it (the one Lua
    // fragment in Rust is `NOW_MS_LUA`, which deadline scripts start with).
    let inline: Vec<_> = actors
        .iter()
        .filter(|(f, _)| f.starts_with("actors/src/store/"))
        .flat_map(|(f, text)| {
            without_tests(text)
                .lines()
                .filter(|l| l.contains("redis.call") || l.contains("redis.pcall"))
                .filter(|l| !l.contains("NOW_MS_LUA"))
                .map(|l| format!("{f}: {}", l.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(inline.is_empty(), "Lua held in Rust strings: {inline:#?}");
    let registered: Vec<_> = hits(&engine, ".register(")
        .into_iter()
        .filter(|h| !h.starts_with("actors/src/telemetry.rs"))
        .collect();
    assert!(
        registered.is_empty(),
        "metrics registered outside telemetry.rs: {registered:#?}"
    );
    let devkit: Vec<_> = hits(&engine, "devkit")
        .into_iter()
        .filter(|h| !h.starts_with("src/lib.rs") && !h.starts_with("src/cli.rs"))
        .collect();
    assert!(devkit.is_empty(), "the engine imports devkit: {devkit:#?}");
}

/// The reader itself, on code whose imports are known.
#[test]
fn the_reader_finds_use_trees_inline_paths_and_skips_tests_strings_and_comments() {
    let text = r##"
use super::{Conn, Store as S, keys::{self, Keys}};
use crate::a::b::*;
// use crate::commented::out;
fn f() { let _ = crate::c::d(); let s = "crate::in_string"; let r = r#"crate::raw"#; let c = '{'; }
#[cfg(test)]
mod tests { use crate::only_tests::x; fn g() { if true { } } }
fn h<'a>(x: &'a str) -> &'a str { crate::e::f(x) }
"##;
    let g: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]
        .into_iter()
        .fold(BTreeMap::new(), |mut g, (x, y)| {
            g.entry(x.to_string()).or_default().insert(y.to_string());
            g
        });
    assert_eq!(circles(&g), [["a", "b", "c"]]);
    let mut got: Vec<String> = paths(&code(text)).iter().map(|p| p.join("::")).collect();
    got.sort();
    assert_eq!(
        got,
        [
            "crate::a::b",
            "crate::c::d",
            "crate::e::f",
            "super::Conn",
            "super::Store",
            "super::keys::Keys",
            "super::keys::self",
        ]
    );
}
