#!/usr/bin/env python3
"""Fails when the modules of one crate depend on each other in a circle.

Each file under a crate's `src/` is a module (`lib.rs`/`main.rs` are the crate root and
`src/bin/` holds other crates, so neither is a node). A module depends on another when it
names it through `crate::a::b…` or `super::…` outside its `#[cfg(test)] mod tests`; the
longest module path named is the one it depends on. A module may use what its ancestors
define (a directory's `mod.rs` is the facade its children build on), so edges to an ancestor
do not count; every other edge does, the parent's uses of its children included.

Why not `cargo modules dependencies --acyclic` (cargo-modules 0.27, the last one that builds
with this workspace's Rust 1.95): it checks the item graph, where every method depends on its
own type, so it reports `Error` <-> `Error::is_transient` and fails on every crate; and it
takes eight minutes to build.

Usage: ci/module-cycles.py [WORKSPACE_DIR]   (exit 1 and the cycles on stdout when any)
       ci/module-cycles.py --self-test        (checks that a planted cycle is found)
"""
import os
import re
import sys
import tempfile

PATH = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
TESTS = re.compile(r"#\[cfg\(test\)\]\s*mod tests\s*\{.*", re.S)
COMMENT = re.compile(r"//[^\n]*")


def modules(src):
    """Module path ("a::b") -> file, for every .rs file of one crate's src/."""
    found = {}
    for d, dirs, files in os.walk(src):
        dirs[:] = [x for x in dirs if not (d == src and x == "bin")]
        for f in files:
            if not f.endswith(".rs") or (d == src and f in ("lib.rs", "main.rs")):
                continue
            rel = os.path.relpath(os.path.join(d, f), src)[:-3].replace(os.sep, "::")
            found[rel[:-5] if rel.endswith("::mod") else rel] = os.path.join(d, f)
    return found


def edges(mods):
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        with open(path, encoding="utf-8", errors="replace") as f:
            text = COMMENT.sub("", TESTS.sub("", f.read()))
        # The module `super` names: the parent of a file module, the parent of a directory's
        # mod.rs's own module as well.
        parent = m.rsplit("::", 1)[0] if "::" in m else ""
        for root, rest in PATH.findall(text):
            parts = [p for p in rest.split("::") if p]
            base = [] if root == "crate" else ([parent] if parent else [])
            while parts and parts[0] == "super":  # super::super::x
                parts.pop(0)
                base = base[0].rsplit("::", 1)[:1] if base and "::" in base[0] else []
            full = [*("::".join(base).split("::") if base else []), *parts]
            for k in range(len(full), 0, -1):
                target = "::".join(full[:k])
                if target in mods:
                    if target != m and not m.startswith(target + "::"):
                        graph[m].add(target)
                    break
    return graph


def cycles(graph):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def check(workspace):
    report = []
    for d, dirs, _ in os.walk(workspace):
        dirs[:] = [x for x in dirs if x not in ("target", ".git") and not x.startswith(".")]
        if os.path.basename(d) == "src" and os.path.exists(os.path.join(d, "..", "Cargo.toml")):
            for comp in cycles(edges(modules(d))):
                crate = os.path.relpath(os.path.dirname(d), workspace)
                report.append(f"{crate}: " + " <-> ".join(comp))
    return report


def self_test():
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "c", "src")
        os.makedirs(os.path.join(src, "a"))
        open(os.path.join(tmp, "c", "Cargo.toml"), "w").close()
        files = {
            "lib.rs": "mod a; mod b;",
            "a/mod.rs": "pub use inner::X; mod inner;",
            "a/inner.rs": "use super::Y; use crate::b::Z;",  # to its parent: allowed
            "b.rs": "use crate::a::inner::X;\n// crate::nothing::here\n",
        }
        for name, text in files.items():
            with open(os.path.join(src, name), "w") as f:
                f.write(text)
        found = check(tmp)
        assert found == ["c: a::inner <-> b"], found
        with open(os.path.join(src, "b.rs"), "w") as f:
            f.write("pub struct Z;\n#[cfg(test)]\nmod tests { use crate::a::inner::X; }\n")
        assert check(tmp) == [], check(tmp)
    print("module-cycles self-test: a planted cycle is found, a test-only use is not")


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        sys.exit(0)
    found = check(sys.argv[1] if len(sys.argv) > 1 else ".")
    for line in found:
        print(f"module cycle in {line}")
    sys.exit(1 if found else 0)
