"""The layering contract of design.md, checked on the source: who may import whom.

    errors, bundle -> codec, runtime, exits core, estimators -> profile, policy, split,
    transport -> engine, server -> bench -> cli        (an arrow: "may be imported by")

Every `import` and `from ... import` in edgesdk/ counts, at module level or inside a
function (a lazy import is still a dependency), type-checking imports included. On top of
the layers: the transport knows only edgesdk.errors (never the codec), the engine imports
only what the device needs, and only edgesdk.cli parses arguments. Two subprocess tests
check what actually loads: the protocol without zmq, the engine without server, CLI or
plotting code, the CLI without its command modules.

A failure names each offending import as `importer -> imported (file:line)`.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

import edgesdk

PACKAGE = Path(edgesdk.__file__).resolve().parent

# The offline half of edgesdk.exits (the rest of the package is its numpy core).
EXITS_OFFLINE = {"data", "collect", "training", "calibration", "report", "tools"}
UTIL = {"_fs", "_table", "_native", "_progress"}  # leaf helpers that import nothing of edgesdk's

# Lowest first. A component may import its own layer's and lower layers' components,
# except that a component may import a peer in its own layer only if PEERS allows it.
LAYERS = [
    {"errors", "util", "plot"},
    {"bundle", "models", "signing"},
    {"codec", "runtime", "exits", "estimators"},
    {"profile", "policy", "split", "transport", "exits.tools"},
    {"engine", "server"},
    {"bench"},
    {"cli"},
]
PEERS = {
    ("bundle", "models"), ("models", "bundle"),
    ("bundle", "signing"),  # Bundle.sign / check_signature, on first use
    ("exits", "runtime"),  # exits.runner opens model-provided exit branches
    ("split", "profile"),  # seeded inputs to verify a split
    ("exits.tools", "profile"),  # the profile a calibration reads saved time from
}
# What each of these may import at all (besides its own component).
ONLY = {
    "transport": {"errors"},  # it moves opaque frames: no codec, no runtime, no numpy
    "engine": {"errors", "bundle", "codec", "runtime", "exits", "estimators", "policy",
               "profile", "transport.protocol", "transport.route",
               "transport.client"},
    "api": {"errors", "engine"},  # edgesdk/__init__.py: the errors, the Engine lazily
}


@dataclass(frozen=True)
class Edge:
    importer: str  # module name
    imported: str  # module name (an edgesdk module, or a top-level third-party one)
    where: str  # file:line

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} ({self.where})"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def component(module: str) -> str:
    """The layering unit a module belongs to: its subpackage (transport: the transport
    module too, exits: core or offline tools), "api" for edgesdk itself."""
    parts = module.split(".")
    if len(parts) == 1:
        return "api"
    top = parts[1]
    if top == "__main__":
        return "cli"
    if top in UTIL:
        return "util"
    if top == "_plot":
        return "plot"
    if top == "exits" and len(parts) > 2 and parts[2] in EXITS_OFFLINE:
        return "exits.tools"
    if top == "transport" and len(parts) > 2:
        return f"transport.{parts[2]}"
    return top


def family(comp: str) -> str:
    return "transport" if comp.startswith("transport") else comp


def layer(comp: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if family(comp) in names)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))
            if "__pycache__" not in p.parts}


@cache
def edges() -> tuple[Edge, ...]:
    """Every import of every edgesdk module, resolved to module names."""
    known = modules()
    found = []
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            where = f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                found += [Edge(name, a.name, where) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.append(Edge(name, sub if sub in known else target, where))
    return tuple(found)


def internal_edges() -> list[Edge]:
    return [e for e in edges() if e.imported.split(".")[0] == "edgesdk"
            and e.imported != e.importer]


def check_layers(edge_list: list[Edge]) -> list[str]:
    """The edges that break the layering, as text."""
    bad = []
    for e in edge_list:
        a, b = component(e.importer), component(e.imported)
        if family(a) == family(b) or b == "api":
            continue  # within a component; `from edgesdk import __version__` is free
        if a in ONLY or family(a) in ONLY:
            allowed = ONLY.get(a, ONLY.get(family(a)))
            if b not in allowed:
                bad.append(f"{e}: {a} may import only {sorted(allowed)}")
            continue
        la, lb = layer(a), layer(b)
        if lb > la or (lb == la and (a, b) not in PEERS):
            bad.append(f"{e}: {a} (layer {la}) may not import {b} (layer {lb})")
    return bad


@pytest.mark.slow
def test_the_graph_is_read():
    """The checks below are only as good as the parser: it sees the known imports."""
    got = {(component(e.importer), component(e.imported)) for e in internal_edges()}
    for edge in [("engine", "codec"), ("engine", "transport.client"), ("server", "codec"),
                 ("cli", "api"), ("transport.broker", "transport.worker"),
                 ("exits.tools", "exits")]:
        assert edge in got, edge
    assert all(component(m) in {c for names in LAYERS for c in names} | {"api"}
               or family(component(m)) == "transport" for m in modules())


@pytest.mark.slow  # >= 1 s on this VM
def test_every_import_points_down_the_layers():
    bad = check_layers(internal_edges())
    assert not bad, "layering broken:\n" + "\n".join(bad)


@pytest.mark.parametrize("edge", [
    ("edgesdk.codec._codec", "edgesdk.cli"),  # the codec reaching for the command line
    ("edgesdk.transport.client", "edgesdk.codec"),  # transport knows no codec
    ("edgesdk.engine.core", "edgesdk.server.tail"),  # the device importing the server
    ("edgesdk.engine.device", "edgesdk.exits.tools"),  # ... or the offline exit tools
    ("edgesdk.bundle", "edgesdk.runtime"),  # the bottom importing its upper neighbour
    ("edgesdk.server.tail", "edgesdk.engine.core"),  # peers at the top are independent
])
def test_a_back_edge_is_caught(edge):
    """The check is not vacuous: adding any of these imports would fail it."""
    added = Edge(edge[0], edge[1], "added")
    assert check_layers([added]), edge


def test_argparse_only_in_the_cli():
    bad = [str(e) for e in edges() if e.imported.split(".")[0] == "argparse"
           and component(e.importer) != "cli"]
    assert not bad, "argparse outside edgesdk.cli:\n" + "\n".join(bad)


def test_transport_imports_no_numpy():
    bad = [str(e) for e in edges() if family(component(e.importer)) == "transport"
           and e.imported.split(".")[0] in ("numpy", "onnxruntime")]
    assert not bad, "\n".join(bad)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tempfile.gettempdir())


def loaded_after(statement: str, prefixes: tuple[str, ...], block: str = "") -> list[str]:
    """The modules starting with one of `prefixes` that `statement` loads in a fresh
    interpreter (after `block`, e.g. making zmq unimportable)."""
    code = (f"import sys, json\n{block}\n{statement}\n"
            f"print(json.dumps(sorted(m for m, v in sys.modules.items() "
            f"if v is not None and m.startswith({prefixes!r}))))")
    out = run_python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])  # the last line: after any --help


def test_the_protocol_imports_without_zmq():
    loaded = loaded_after("import edgesdk.transport.protocol as p; p.unpack",
                          ("zmq", "edgesdk.transport.", "edgesdk.codec", "numpy"),
                          block="sys.modules['zmq'] = None  # an ImportError on import")
    assert loaded == ["edgesdk.transport.protocol"]


def test_the_engine_loads_no_server_cli_or_plotting_code():
    loaded = loaded_after("import edgesdk.engine", (
        "edgesdk.server", "edgesdk.cli", "edgesdk.bench", "edgesdk.split",
        "edgesdk.transport.broker", "edgesdk.transport.worker", "edgesdk.transport.metrics",
        "edgesdk.transport.dispatch", "edgesdk.exits.tools", "edgesdk.exits.report",
        "edgesdk.exits.calibration", "edgesdk.exits.training", "edgesdk.exits.data",
        "edgesdk._plot", "matplotlib", "argparse", "http.server", "multiprocessing"))
    assert loaded == []


def test_the_cli_imports_only_the_chosen_command():
    assert loaded_after("import edgesdk.cli", ("edgesdk.cli.", "numpy")) == []
    loaded = loaded_after("from edgesdk.cli import main\n"
                          "try:\n    main(['keys', 'gen', '--help'])\n"
                          "except SystemExit:\n    pass", ("edgesdk.cli.",))
    assert loaded == ["edgesdk.cli.keys"]
