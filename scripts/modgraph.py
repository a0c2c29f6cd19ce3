#!/usr/bin/env python3
"""The crate's import graph, read from its source: which module uses which.

    scripts/modgraph.py            # the graph, the circles, and the layer check
    scripts/modgraph.py --check    # only the verdict: exit 1 on a circle or an upward import
    scripts/modgraph.py --why A B  # the paths that make module A import module B

A node is a module file (`src/store/cache.rs` is `store::cache`). An edge A -> B
means A names an item of B: in a `use` line, or in code as `crate::…`,
`super::…`, `self::…` or `child::…`. A name re-exported by a `pub use` is
followed to the module that defines it, so importing through a facade counts
as importing the module below it. `mod child;` is a declaration, not an
import. Test modules (`#[cfg(test)] mod … { … }` at a file's end) are left out:
tests may reach anywhere.

The layers are those drawn in the book's "How it works"
(docs/src/internals/how-it-works.md), top to bottom; a module may only
import modules in its own layer or below, and no import may close a
circle. A module not named by a layer is in the layer of its nearest named
ancestor.
"""

import re
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

# Top to bottom. A layer may import itself (without circles) and what is below.
LAYERS = [
    ["main", "cli"],
    ["app"],
    ["api", "connections"],
    ["metrics", "telemetry"],
    # The store: its facade and the calls it serves...
    ["store", "store::service", "store::maintenance", "store::replicas", "store::scan"],
    # ...on the state they share...
    ["store::handle"],
    # ...which is shards, each written by one writer, and a cache...
    ["store::shard", "store::writer", "store::status", "store::faults", "store::feed", "store::cache", "store::ids",
     "store::ops", "store::patch", "store::following"],
    # ...checking documents with the schema and query languages...
    ["store::error", "store::schema", "store::query", "store::index"],
    # ...over an engine that knows SQL and files...
    ["store::engine"],
    # ...and plain types every layer shares.
    ["store::document", "store::placement", "store::options", "stats", "config"],
    ["domain", "clock", "durable"],
]

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_of(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts.pop()
    if parts in (["lib"],):
        return "crate"
    if parts == ["main"]:
        return "main"
    return "::".join(parts)


def strip_tests(text: str) -> str:
    """Drops a trailing `#[cfg(test)] mod … { … }` and comments."""
    m = re.search(r"\n#\[cfg\(test\)\]\s*\n\s*(pub(\([a-z]+\))? )?mod \w+ \{", text)
    if m:
        text = text[: m.start()]
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"pub\(in [^)]*\)", "pub", text)  # a visibility, not an import
    text = re.sub(r'"(\\.|[^"\\])*"', '""', text)
    return text


def expand_use_tree(tree: str) -> list[str]:
    """`a::{b, c::{d, e as f}, self}` -> [`a::b`, `a::c::d`, `a::c::e`, `a`]."""
    tree = re.sub(r"\s+as\s+", "@", tree)
    tree = re.sub(r"\s+", "", tree)
    out = []

    def walk(prefix: str, s: str):
        # split s at top-level commas
        depth, start, parts = 0, 0, []
        for i, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(s[start:i])
                start = i + 1
        parts.append(s[start:])
        for p in parts:
            if not p:
                continue
            if "{" in p:
                head, rest = p.split("{", 1)
                walk(prefix + head, rest[: rest.rindex("}")])
            else:
                p = p.split("@", 1)[0]
                if p == "self":
                    out.append(prefix.rstrip(":"))
                else:
                    out.append(prefix + p)

    walk("", tree)
    return out


def main() -> int:
    check_only = "--check" in sys.argv
    files = {module_of(p): p for p in sorted(SRC.rglob("*.rs"))}
    mods = set(files)
    children = defaultdict(set)
    for m in mods:
        if "::" in m:
            parent, child = m.rsplit("::", 1)
            children[parent].add(child)
        elif m not in ("crate", "main"):
            children["crate"].add(m)

    texts = {m: strip_tests(p.read_text()) for m, p in files.items()}

    # The items each module defines itself.
    defined = {
        m: set(re.findall(r"\b(?:struct|enum|fn|trait|type|const|static|union|macro_rules!)\s+(\w+)", text))
        for m, text in texts.items()
    }

    # Re-exports: (module, name) -> absolute path; globs: module -> [absolute module paths]
    reexports, globs = {}, defaultdict(list)
    uses = {}
    for m, text in texts.items():
        found = []
        for um in re.finditer(r"\b(pub(\([^)]*\))?\s+)?use\s+([^;]+);", text):
            is_pub = um.group(1) is not None
            for path in expand_use_tree(um.group(3)):
                absolute = absolutize(m, path, children)
                if absolute is None:
                    continue
                found.append(absolute)
                if is_pub:
                    if absolute.endswith("::*"):
                        globs[m].append(absolute[:-3])
                    else:
                        reexports[(m, absolute.rsplit("::", 1)[-1])] = absolute
        # inline paths
        code = re.sub(r"\b(pub(\([^)]*\))?\s+)?use\s+[^;]+;", "", text)
        for pm in re.finditer(r"(?<![:\w])((crate|super|self|" + IDENT + r")(::" + IDENT + r")+)", code):
            path = pm.group(1)
            first = path.split("::", 1)[0]
            if first in ("crate", "super", "self") or first in children[m]:
                absolute = absolutize(m, path, children)
                if absolute is not None:
                    found.append(absolute)
        uses[m] = found

    def resolve(path: str, seen=None) -> str | None:
        """The module that defines what `path` names."""
        seen = seen or set()
        if path in seen:
            return None
        seen.add(path)
        segs = path.split("::")
        if segs[0] != "crate":
            return None
        cur = "crate"
        i = 1
        while i < len(segs):
            nxt = segs[i] if cur == "crate" else f"{cur}::{segs[i]}"
            if nxt in mods:
                cur = nxt
                i += 1
            else:
                break
        if i < len(segs):
            name = segs[i]
            if name in defined.get(cur, ()):
                return cur
            if (cur, name) in reexports:
                target = reexports[(cur, name)] + ("::" + "::".join(segs[i + 1 :]) if i + 1 < len(segs) else "")
                r = resolve(target, seen)
                if r:
                    return r
            for g in globs.get(cur, []):
                module = g.removeprefix("crate::")
                if name in defined.get(module, ()) or (module, name) in reexports or globs.get(module):
                    r = resolve(g + "::" + "::".join(segs[i:]), seen)
                    if r:
                        return r
        return cur

    edges, why = defaultdict(set), defaultdict(set)
    for m, found in uses.items():
        for path in found:
            target = resolve(path.removesuffix("::*"))
            if target and target != m and target != "crate":
                edges[m].add(target)
                why[(m, target)].add(path)

    if "--why" in sys.argv:
        # scripts/modgraph.py --why A B: the paths that make A import B
        a, b = sys.argv[sys.argv.index("--why") + 1 : sys.argv.index("--why") + 3]
        print("\n".join(sorted(why[(a, b)])))
        return 0

    sccs = tarjan(mods, edges)
    circles = [sorted(c) for c in sccs if len(c) > 1]
    inside = {n: i for i, c in enumerate(circles) for n in c}
    back = [(a, b) for a in sorted(edges) for b in sorted(edges[a]) if a in inside and inside.get(b) == inside[a]]

    upward = []
    for a in sorted(edges):
        for b in sorted(edges[a]):
            la, lb = layer_of(a), layer_of(b)
            if la is not None and lb is not None and lb < la:
                upward.append((a, b))

    if not check_only:
        print(f"# {len(mods)} modules, {sum(len(v) for v in edges.values())} imports between them\n")
        for a in sorted(edges):
            print(f"{a} -> {', '.join(sorted(edges[a]))}")
        print()
    for c in circles:
        print(f"circle of {len(c)} modules: {', '.join(c)}")
    if circles:
        print(f"{len(back)} imports run inside circles:")
        for a, b in back:
            print(f"  {a} -> {b}")
    for a, b in upward:
        print(f"upward import: {a} (layer {layer_name(a)}) -> {b} (layer {layer_name(b)})")
    if not circles and not upward:
        print("no circles, no upward imports")
        return 0
    return 1


def absolutize(module: str, path: str, children) -> str | None:
    segs = path.split("::")
    if segs[0] == "crate":
        return path
    base = [] if module == "crate" else module.split("::")
    if segs[0] in ("self", "super"):
        while segs and segs[0] in ("self", "super"):
            if segs[0] == "super":
                if not base:
                    return None
                base.pop()
            segs.pop(0)
        return "::".join(["crate"] + base + segs)
    if segs[0] in children[module]:
        return "::".join(["crate"] + base + segs)
    if module == "main" and segs[0] == "exdaas":
        return "::".join(["crate"] + segs[1:])
    return None


def layer_of(m: str):
    probe = m
    while True:
        for i, layer in enumerate(LAYERS):
            if probe in layer:
                return i
        if "::" not in probe:
            return None
        probe = probe.rsplit("::", 1)[0]


def layer_name(m: str) -> str:
    i = layer_of(m)
    return "?" if i is None else "/".join(LAYERS[i])


def tarjan(nodes, edges):
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    sys.setrecursionlimit(10000)

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
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
            out.append(comp)

    for v in sorted(nodes):
        if v not in index:
            strong(v)
    return out


if __name__ == "__main__":
    sys.exit(main())
