"""The house rules of the source tree, checked: the streaming core never imports the CLI, the
development tools or the subscribers; decoding (pipeline/decode/) and the time helpers
(pipeline/times.py) sit below the rest of the core; detectors/ has no Kafka in it; everything
installs under the one name `latentwatch`; no import cycles among our modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ([p for p in (ROOT / "pipeline").glob("*.py")] + list((ROOT / "pipeline" / "kafka").glob("*.py"))
        + list((ROOT / "pipeline" / "decode").glob("*.py")) + list((ROOT / "pipeline" / "lifecycle").glob("*.py")))
OUTSIDE_CORE = ("latentwatch.pipeline.cli", "latentwatch.pipeline.devtools", "latentwatch.pipeline.subscribers")


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_the_core_imports_no_cli_devtools_or_subscribers():
    assert len(CORE) >= 10
    bad = {f"{p.relative_to(ROOT)}: {m}" for p in CORE for m in imports(p) if m.startswith(OUTSIDE_CORE)}
    assert not bad, bad


def test_decoding_and_times_sit_below_the_rest_of_the_core():
    # times.py: no imports of ours (every layer formats and parses times). decode/: bytes in,
    # arrays and reasons out; no Kafka, no metrics, no model: only itself and times.py.
    decode = list((ROOT / "pipeline" / "decode").glob("*.py"))
    assert len(decode) >= 5
    bad = {f"times.py: {m}" for m in imports(ROOT / "pipeline" / "times.py") if m.startswith("latentwatch")}
    bad |= {f"{p.relative_to(ROOT)}: {m}" for p in decode for m in imports(p)
            if m.startswith("confluent_kafka") or (m.startswith("latentwatch")
                                                   and not m.startswith(("latentwatch.pipeline.decode",
                                                                         "latentwatch.pipeline.times")))}
    assert not bad, bad


def test_detectors_have_no_kafka_and_no_pipeline():
    bad = {f"{p.relative_to(ROOT)}: {m}" for p in (ROOT / "detectors").glob("*.py") for m in imports(p)
           if m.startswith(("confluent_kafka", "latentwatch.pipeline"))}
    assert not bad, bad


def test_our_code_imports_itself_only_under_the_latentwatch_name():
    bad = set()
    for folder in ("pipeline", "detectors", "bench", "tests"):
        for p in (ROOT / folder).rglob("*.py"):
            for m in imports(p):
                if m.split(".")[0] in ("pipeline", "detectors", "bench"):
                    bad.add(f"{p.relative_to(ROOT)}: {m}")
    assert not bad, bad


# Import cycles among our modules (pipeline/, detectors/, bench/). An import anywhere in a module
# counts, a function-level one included: a lazy import hides a circle from Python, not from the
# reader, and the first refactor that hoists it turns it into an ImportError at start-up. So does
# `importlib.import_module`: its literal argument, and, when it imports a computed name (cli/main.py
# over COMMAND_MODULES), every module of ours the file names in a string. (A module name in a
# subprocess's command line, `python -m ...`, is another process: no edge.) An edge goes to the
# module named (`from a.b import c` -> a.b.c when that is a module of ours, else a.b);
# the parent packages Python also runs on the way (a.b's __init__) are not edges, or every
# package whose __init__ re-exports a submodule that imports a sibling would be a circle.
# Allowed edges: known circles left for another change; each says why. An entry that no longer
# exists fails the test, so the list only shrinks.
ALLOWED_CYCLE_EDGES: dict[str, str] = {}


def our_modules() -> dict[str, Path]:
    out = {}
    for folder in ("pipeline", "detectors", "bench"):
        for p in (ROOT / folder).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            out[".".join(("latentwatch", *(parts[:-1] if parts[-1] == "__init__" else parts)))] = p
    return out


def import_graph() -> dict[str, set[str]]:
    modules = our_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        named = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in modules}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
                arg = node.args[0]
                graph[name].update({arg.value} & modules.keys() if isinstance(arg, ast.Constant) else named)
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _is_import_module(func: ast.expr) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or \
        (isinstance(func, ast.Name) and func.id in ("import_module", "__import__"))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_cycle_finder_finds_a_hidden_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_our_modules():
    graph = import_graph()
    assert len(graph) >= 40
    stale = [e for e in ALLOWED_CYCLE_EDGES if e.split(" -> ")[1] not in graph.get(e.split(" -> ")[0], ())]
    assert not stale, f"allowed edges that no longer exist (remove them): {stale}"
    for edge in ALLOWED_CYCLE_EDGES:
        a, b = edge.split(" -> ")
        graph[a].discard(b)
    found = cycles(graph)
    detail = [" <-> ".join(c) + ": " + "; ".join(f"{a} -> {b}" for a in c for b in sorted(graph[a]) if b in c)
              for c in found]
    assert not found, "\n".join(detail)


TEST_PACKAGES = ("tests.unit", "tests.system", "tests.integration", "tests.artifacts")


def imports_of_test_modules(path: Path, source: str | None = None) -> set[str]:
    """`line: module` for each import in `path` (top level or inside a function, relative ones
    made absolute) that names a test module or a test package."""
    package = ".".join(path.relative_to(ROOT).parent.parts)
    out = set()
    for node in ast.walk(ast.parse(source if source is not None else path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.rsplit(".", node.level - 1)[0]
                module = f"{base}.{module}" if module else base
            names = [module, *(f"{module}.{a.name}" for a in node.names)]
        else:
            continue
        hits = [m for m in names if m in TEST_PACKAGES or m.startswith(tuple(f"{t}." for t in TEST_PACKAGES))]
        if hits:
            out.add(f"{node.lineno}: {hits[0]}")
    return out


def test_no_test_module_imports_another():
    """tests/conftest.py's rule: shared code lives in tests/support/ (plugins or plain modules),
    so no module under tests/ imports a test module."""
    here = ROOT / "tests" / "unit" / "test_x.py"
    assert imports_of_test_modules(here, "def f():\n    from tests.unit.test_scorer import reading\n")  # the check can fail
    assert imports_of_test_modules(here, "from .test_scorer import reading\n")
    assert imports_of_test_modules(here, "from ..system import test_swap\n")
    assert not imports_of_test_modules(here, "from tests.support.fakes import messages\nimport tests.support.skab\n")
    bad = {f"{p.relative_to(ROOT)}:{hit}" for p in (ROOT / "tests").rglob("*.py") for hit in imports_of_test_modules(p)}
    assert not bad, "\n".join(sorted(bad))
