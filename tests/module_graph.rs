//! No import cycles between the top-level modules of any crate in the workspace (issue #11).
//!
//! Read from the sources, nothing built: for each crate root (`src/lib.rs`, `src/main.rs`) the
//! top-level modules are the `mod x;` it declares, and a module is the file `src/x.rs` or
//! `src/x/mod.rs` with every file below `src/x/`. Module `a` refers to `b` when its code names
//! `crate::b` (in a `use`, nested `use` groups included, or in an expression) or a `super::`
//! path that climbs to the crate root and then names `b`. Comments, doc comments and string
//! literals are skipped, so a doc link or an error message naming `crate::b` is no edge.
//!
//! `#[cfg(test)]` code counts. It is compiled into the same module tree, and a lower layer whose
//! tests import an upper one cannot be changed or moved without that upper one either; an edge
//! found only in test code is marked `(test code)` so it is easy to move the test instead.
//!
//! The strongly connected components (Tarjan) of that graph must all be single modules; a failure
//! prints each cycle as `a -> b -> c -> a` with the file and line of one use per edge.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// Lexing: Rust source to identifiers and punctuation, with comments and literals skipped.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

fn lex(src: &str) -> Vec<Token> {
    let b: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let at = |i: usize| b.get(i).copied().unwrap_or('\0');
    while i < b.len() {
        let c = b[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if c == '"' {
            i = skip_string(&b, i + 1, &mut line);
        } else if (c == 'r' || c == 'b' || c == 'c') && raw_or_prefixed_string(&b, i).is_some() {
            let (hashes, body) = raw_or_prefixed_string(&b, i).expect("checked");
            i = match hashes {
                None => skip_string(&b, body, &mut line),
                Some(n) => skip_raw(&b, body, n, &mut line),
            };
        } else if c == '\'' {
            // A char literal ('a', '\n', '\u{1F600}', '\'') or a lifetime/label ('a).
            if at(i + 1) == '\\' {
                // Past the quote, the backslash and the escaped char ('\'' and '\\' included).
                i += 3;
                while i < b.len() && b[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
                while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            let word: String = b[start..i].iter().collect();
            out.push(Token {
                tok: Tok::Ident(word),
                line,
            });
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_' || b[i] == '.') {
                // `1..2` is a range, not a number with two dots.
                if b[i] == '.' && at(i + 1) == '.' {
                    break;
                }
                i += 1;
            }
        } else if c == ':' && at(i + 1) == ':' {
            out.push(Token {
                tok: Tok::Path,
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                tok: Tok::Punct(c),
                line,
            });
            i += 1;
        }
    }
    out
}

/// At `i`, a prefixed string (`b"…"`, `c"…"`) or a raw one (`r#"…"#`, `br"…"`): `Some((None,
/// body))` for an escaped body starting at `body`, `Some((Some(hashes), body))` for a raw one.
fn raw_or_prefixed_string(b: &[char], i: usize) -> Option<(Option<usize>, usize)> {
    // Only at the start of a token: `attr"…"` is an identifier then a string, not a prefix.
    if i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_') {
        return None;
    }
    let mut j = i;
    if b.get(j) == Some(&'b') || b.get(j) == Some(&'c') {
        j += 1;
    }
    if b.get(j) == Some(&'r') {
        j += 1;
        let mut hashes = 0;
        while b.get(j) == Some(&'#') {
            hashes += 1;
            j += 1;
        }
        return (b.get(j) == Some(&'"')).then_some((Some(hashes), j + 1));
    }
    (j > i && b.get(j) == Some(&'"')).then_some((None, j + 1))
}

fn skip_string(b: &[char], mut i: usize, line: &mut usize) -> usize {
    while i < b.len() {
        match b[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            '\n' => {
                *line += 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    i
}

fn skip_raw(b: &[char], mut i: usize, hashes: usize, line: &mut usize) -> usize {
    while i < b.len() {
        if b[i] == '"' && (1..=hashes).all(|k| b.get(i + k) == Some(&'#')) {
            return i + 1 + hashes;
        }
        if b[i] == '\n' {
            *line += 1;
        }
        i += 1;
    }
    i
}

// ---------------------------------------------------------------------------------------------
// References: which top-level modules a file names.
// ---------------------------------------------------------------------------------------------

/// One reference from a file to a top-level module.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ref {
    module: String,
    line: usize,
    /// Inside a `#[cfg(test)]` item.
    test: bool,
}

/// The top-level modules that the code of a file refers to. `depth` is how many modules deep the
/// file is below the crate root (`src/a.rs` and `src/a/mod.rs`: 1, `src/a/b.rs`: 2), so a
/// `super::` chain of that length reaches the root.
fn references(src: &str, depth: usize) -> Vec<Ref> {
    let t = lex(src);
    let ident = |i: usize| match t.get(i).map(|t| &t.tok) {
        Some(Tok::Ident(s)) => Some(s.as_str()),
        _ => None,
    };
    let is = |i: usize, tok: Tok| t.get(i).map(|t| &t.tok) == Some(&tok);
    let mut refs = Vec::new();
    // Each open brace: whether it opened an inline `mod x {`, and whether a `#[cfg(test)]` item.
    let mut braces: Vec<(bool, bool)> = Vec::new();
    let mut inline_depth = 0;
    let mut tests_open = 0;
    // Set by `#[cfg(test)]` until the item it marks opens its brace or ends with `;`.
    let mut cfg_test_pending = false;
    let mut mod_pending = false;
    let mut i = 0;
    while i < t.len() {
        match &t[i].tok {
            Tok::Punct('#') if is(i + 1, Tok::Punct('[')) => {
                if ident(i + 2) == Some("cfg")
                    && is(i + 3, Tok::Punct('('))
                    && ident(i + 4) == Some("test")
                    && is(i + 5, Tok::Punct(')'))
                {
                    cfg_test_pending = true;
                }
                // Skip the attribute, so `#[doc = …]` or `#[path = …]` names nothing.
                let mut level = 0;
                i += 1;
                while i < t.len() {
                    match t[i].tok {
                        Tok::Punct('[') => level += 1,
                        Tok::Punct(']') => {
                            level -= 1;
                            if level == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            Tok::Ident(w) if w == "mod" && ident(i + 1).is_some() && is(i + 2, Tok::Punct('{')) => {
                mod_pending = true;
            }
            Tok::Punct('{') => {
                let opened_mod = std::mem::take(&mut mod_pending);
                let opened_test = std::mem::take(&mut cfg_test_pending);
                inline_depth += opened_mod as usize;
                tests_open += opened_test as usize;
                braces.push((opened_mod, opened_test));
            }
            Tok::Punct('}') => {
                if let Some((m, test)) = braces.pop() {
                    inline_depth -= m as usize;
                    tests_open -= test as usize;
                }
            }
            Tok::Punct(';') => {
                // `#[cfg(test)] const X: u8 = 1;` ends here: the mark applied to that one item.
                cfg_test_pending = false;
            }
            Tok::Ident(w) if w == "crate" && is(i + 1, Tok::Path) => {
                let test = tests_open > 0 || cfg_test_pending;
                i = root_path(&t, i + 2, test, &mut refs);
                if cfg_test_pending && is(i, Tok::Punct(';')) {
                    cfg_test_pending = false;
                }
                continue;
            }
            Tok::Ident(w) if w == "super" && is(i + 1, Tok::Path) && !after_path(&t, i) => {
                let mut k = 0;
                let mut j = i;
                while ident(j) == Some("super") && is(j + 1, Tok::Path) {
                    k += 1;
                    j += 2;
                }
                if k >= depth + inline_depth {
                    let test = tests_open > 0 || cfg_test_pending;
                    i = root_path(&t, j, test, &mut refs);
                } else {
                    i = j;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    refs
}

/// Is the token before `i` a `::`, so that `super` at `i` continues a path (`self::super::x`)
/// rather than starting one?
fn after_path(t: &[Token], i: usize) -> bool {
    i > 0 && t[i - 1].tok == Tok::Path
}

/// At `i` a path continues from the crate root: a module name, or a `{…}` group whose items
/// each start with one. Records them and returns where the path ends.
fn root_path(t: &[Token], i: usize, test: bool, refs: &mut Vec<Ref>) -> usize {
    match t.get(i).map(|t| &t.tok) {
        Some(Tok::Ident(name)) => {
            refs.push(Ref {
                module: name.clone(),
                line: t[i].line,
                test,
            });
            i + 1
        }
        Some(Tok::Punct('{')) => {
            // A group: the first name of each comma-separated item, at this level only.
            let mut j = i + 1;
            let mut item_start = true;
            let mut level = 0;
            while j < t.len() {
                match &t[j].tok {
                    Tok::Punct('{') => {
                        level += 1;
                        item_start = false;
                    }
                    Tok::Punct('}') if level == 0 => return j + 1,
                    Tok::Punct('}') => level -= 1,
                    Tok::Punct(',') if level == 0 => item_start = true,
                    Tok::Ident(name) if item_start => {
                        if name != "self" {
                            refs.push(Ref {
                                module: name.clone(),
                                line: t[j].line,
                                test,
                            });
                        }
                        item_start = false;
                    }
                    _ => item_start = false,
                }
                j += 1;
            }
            j
        }
        _ => i,
    }
}

// ---------------------------------------------------------------------------------------------
// Crates: roots, their modules and files, the graph.
// ---------------------------------------------------------------------------------------------

/// The modules a crate root declares with `mod x;` (inline `mod x { … }` bodies are the root's
/// own code, not a module file).
fn declared_modules(root_src: &str) -> Vec<String> {
    let t = lex(root_src);
    let mut out = Vec::new();
    let mut level = 0;
    for (i, tok) in t.iter().enumerate() {
        match &tok.tok {
            Tok::Punct('{') => level += 1,
            Tok::Punct('}') => level -= 1,
            Tok::Ident(w) if w == "mod" && level == 0 => {
                if let (Some(Tok::Ident(name)), Some(Tok::Punct(';'))) =
                    (t.get(i + 1).map(|t| &t.tok), t.get(i + 2).map(|t| &t.tok))
                {
                    out.push(name.clone());
                }
            }
            _ => {}
        }
    }
    out
}

/// The files of top-level module `name`, each with its depth below the crate root.
fn module_files(src: &Path, name: &str) -> Vec<(PathBuf, usize)> {
    let mut files = Vec::new();
    let file = src.join(format!("{name}.rs"));
    if file.is_file() {
        files.push((file, 1));
    }
    let dir = src.join(name);
    if dir.is_dir() {
        collect(&dir, 1, &mut files);
    }
    files
}

fn collect(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, usize)>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, depth + 1, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            // `x/mod.rs` is module `x` itself; `x/y.rs` is one deeper.
            let d = if p.file_name().is_some_and(|n| n == "mod.rs") {
                depth
            } else {
                depth + 1
            };
            out.push((p, d));
        }
    }
}

/// Where an edge was seen: the first use in non-test code if there is one.
#[derive(Debug, Clone)]
struct Site {
    file: String,
    line: usize,
    test_only: bool,
}

type Graph = BTreeMap<String, BTreeMap<String, Site>>;

/// The module graph of one crate root (`src/lib.rs` or `src/main.rs`).
fn graph_of(crate_dir: &Path, root: &str) -> Graph {
    let src = crate_dir.join("src");
    let root_src = std::fs::read_to_string(src.join(root))
        .unwrap_or_else(|e| panic!("cannot read {}/src/{root}: {e}", crate_dir.display()));
    let modules = declared_modules(&root_src);
    let known: BTreeSet<&str> = modules.iter().map(String::as_str).collect();
    let workspace = crate_dir.parent().expect("a crate has a workspace");
    let mut g = Graph::new();
    for m in &modules {
        let edges = g.entry(m.clone()).or_default();
        for (file, depth) in module_files(&src, m) {
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            let shown = file
                .strip_prefix(workspace)
                .unwrap_or(&file)
                .display()
                .to_string();
            for r in references(&text, depth) {
                if r.module == *m || !known.contains(r.module.as_str()) {
                    continue;
                }
                let site = Site {
                    file: shown.clone(),
                    line: r.line,
                    test_only: r.test,
                };
                match edges.get_mut(&r.module) {
                    Some(old) if old.test_only && !r.test => *old = site,
                    Some(_) => {}
                    None => {
                        edges.insert(r.module, site);
                    }
                }
            }
        }
    }
    g
}

/// Tarjan's strongly connected components; only those of more than one module are returned.
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let g = s.g;
        for w in g.get(v).into_iter().flat_map(|e| e.keys()) {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = s.stack.pop().expect("v is on the stack");
                s.on_stack.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                s.out.push(scc);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// The shortest cycle from `start` back to itself inside `scc` (breadth first).
fn shortest_cycle(g: &Graph, scc: &BTreeSet<&str>, start: &str) -> Vec<String> {
    let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in g[v].keys().map(String::as_str).filter(|w| scc.contains(w)) {
            if w == start {
                let mut path = vec![v.to_string()];
                let mut at = v;
                while at != start {
                    at = prev[at];
                    path.push(at.to_string());
                }
                path.reverse();
                path.push(start.to_string());
                return path;
            }
            if !prev.contains_key(w) && w != start {
                prev.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    unreachable!("{start} is in a strongly connected component")
}

/// Each cycle as `a -> b -> a` with one site per edge: per component, the shortest cycle through
/// each module that no cycle printed so far passes through.
fn report(g: &Graph, sccs: &[Vec<String>]) -> String {
    let mut out = String::new();
    for scc in sccs {
        let members: BTreeSet<&str> = scc.iter().map(String::as_str).collect();
        out.push_str(&format!(
            "\n{} modules import each other in a circle: {}\n",
            scc.len(),
            scc.join(", ")
        ));
        let mut covered = BTreeSet::new();
        for m in scc {
            if covered.contains(m.as_str()) {
                continue;
            }
            let cycle = shortest_cycle(g, &members, m);
            out.push_str(&format!("  {}\n", cycle.join(" -> ")));
            for pair in cycle.windows(2) {
                let site = &g[&pair[0]][&pair[1]];
                out.push_str(&format!(
                    "      {} -> {}: {}:{}{}\n",
                    pair[0],
                    pair[1],
                    site.file,
                    site.line,
                    if site.test_only { " (test code)" } else { "" }
                ));
                covered.insert(pair[0].clone());
            }
        }
    }
    out
}

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("common/ sits in the workspace")
        .to_path_buf()
}

/// Fails with every cycle of every root (lib and bin) of the crate in `dir`.
fn assert_acyclic(dir: &str, hint: &str) {
    let crate_dir = workspace_dir().join(dir);
    let mut problems = String::new();
    for root in ["lib.rs", "main.rs"] {
        if !crate_dir.join("src").join(root).is_file() {
            continue;
        }
        let g = graph_of(&crate_dir, root);
        let sccs = cycles(&g);
        if !sccs.is_empty() {
            problems.push_str(&format!("\n{dir}/src/{root}:{}", report(&g, &sccs)));
        }
    }
    assert!(
        problems.is_empty(),
        "import cycles between top-level modules (issue #11: the module graph must be a DAG; \
         break each circle by moving what the lower module needs below both){problems}{hint}"
    );
}

#[test]
fn common_has_no_module_cycle() {
    assert_acyclic("common", "");
}

#[test]
fn collector_has_no_module_cycle() {
    assert_acyclic("collector", "");
}

#[test]
fn extension_has_no_module_cycle() {
    assert_acyclic("extension", "");
}

#[test]
fn shipper_has_no_module_cycle() {
    assert_acyclic(
        "shipper",
        "\n(the shipper's circle is undone by the `pipeline` and `layers` branches of issue #11; \
         this fails on a branch without both merged)",
    );
}

/// A new crate is checked too: the tests above must name every workspace member.
#[test]
fn every_workspace_member_is_checked() {
    let manifest = std::fs::read_to_string(workspace_dir().join("Cargo.toml")).unwrap();
    let members_line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("the workspace lists its members on one line");
    let mut members: Vec<&str> = members_line
        .split('"')
        .skip(1)
        .step_by(2)
        .collect::<Vec<_>>();
    members.sort();
    assert_eq!(
        members,
        ["collector", "common", "extension", "shipper"],
        "add a *_has_no_module_cycle test for the new member"
    );
}

// ---------------------------------------------------------------------------------------------
// The parser on small inputs.
// ---------------------------------------------------------------------------------------------

fn names(src: &str, depth: usize) -> Vec<String> {
    references(src, depth)
        .into_iter()
        .map(|r| r.module)
        .collect()
}

#[test]
fn use_paths_and_nested_groups() {
    let src = "use crate::a::X;\n\
               use crate::{b, c::{D, e::F}, self as me, d::*};\n\
               pub(crate) use crate::g as h;\n";
    assert_eq!(names(src, 1), ["a", "b", "c", "d", "g"]);
}

#[test]
fn paths_in_expressions_and_types() {
    let src = "fn f(x: crate::a::T) -> Vec<crate::b::U> {\n\
               let y = crate::c::make(crate::d::K);\n\
               matches!(y, crate::e::E::V)\n}\n";
    assert_eq!(names(src, 1), ["a", "b", "c", "d", "e"]);
    let lines: Vec<usize> = references(src, 1).iter().map(|r| r.line).collect();
    assert_eq!(lines, [1, 1, 2, 2, 3]);
}

#[test]
fn comments_strings_and_attributes_name_nothing() {
    let src = r####"
        // use crate::a;
        /// See [`crate::b`].
        //! crate::c
        /* crate::d /* nested crate::e */ still crate::f */
        const S: &str = "crate::g \" crate::h";
        const R: &str = r#"crate::i "# ;
        const B: &[u8] = b"crate::j";
        const C: char = '"';
        const Q: [u8; 3] = [b'\'', b'\\', b'"'];
        const U: char = '\u{1F600}';
        const QC: [char; 2] = ['\'','"'];
        #[doc = "crate::k"]
        fn f<'a>(x: &'a str) -> &'a str { x }
        use crate::real;
    "####;
    assert_eq!(names(src, 1), ["real"]);
}

#[test]
fn super_counts_only_when_it_climbs_to_the_root() {
    // In src/a.rs (depth 1) `super` is the root.
    assert_eq!(names("use super::b::X;", 1), ["b"]);
    // In src/a/x.rs (depth 2) `super` is `a`, `super::super` the root.
    assert_eq!(
        names("use super::y; use super::super::{b, c};", 2),
        ["b", "c"]
    );
    // `mod tests { … }` inside src/a.rs is one deeper: `super::*` there is `a`, not the root.
    let src = "mod tests { use super::*; use super::super::b; }";
    assert_eq!(names(src, 1), ["b"]);
    // `self::super` continues a path; it does not start one at this file.
    assert!(names("use self::super::x;", 2).is_empty());
}

#[test]
fn test_code_is_counted_and_marked() {
    let src = "use crate::a;\n\
               #[cfg(test)]\n\
               mod tests {\n use crate::b;\n fn t() { crate::c::f(); }\n}\n\
               #[cfg(test)]\nuse crate::d;\n\
               fn g() { crate::e::f(); }\n";
    let refs = references(src, 1);
    let marked: Vec<(&str, bool)> = refs.iter().map(|r| (r.module.as_str(), r.test)).collect();
    assert_eq!(
        marked,
        [
            ("a", false),
            ("b", true),
            ("c", true),
            ("d", true),
            ("e", false)
        ]
    );
}

#[test]
fn roots_declare_modules_with_semicolons_only() {
    let src =
        "//! docs mod fake;\npub mod a;\nmod b;\n#[cfg(test)]\nmod c { }\npub(crate) mod d;\n";
    assert_eq!(declared_modules(src), ["a", "b", "d"]);
}

#[test]
fn tarjan_finds_the_circle_and_the_report_names_each_edge() {
    let site = |line| Site {
        file: "x.rs".into(),
        line,
        test_only: false,
    };
    let mut g = Graph::new();
    for (from, to, line) in [("a", "b", 1), ("b", "c", 2), ("c", "a", 3), ("c", "d", 4)] {
        g.entry(from.into())
            .or_default()
            .insert(to.into(), site(line));
    }
    g.entry("d".into()).or_default();
    let sccs = cycles(&g);
    assert_eq!(sccs, [vec!["a", "b", "c"]]);
    let text = report(&g, &sccs);
    assert!(text.contains("a -> b -> c -> a"), "{text}");
    assert!(text.contains("c -> a: x.rs:3"), "{text}");
    assert!(!text.contains(" d"), "{text}");
}
