"""The layer rule, enforced: the tree is the architecture only while imports respect it.

The protocol core (and config) must stay pure so the simulator and the node run the same code:
no asyncio, no sockets, no clocks of their own, no Docker, no mDNS. The core takes its Timings
(mesh.protocol.timings), never the operator's Config: config sits above the protocol, not below.
The I/O packages may use the core but not each other upwards (the engine adapter knows nothing of
peers, the peer API nothing of the node that wires it). No module imports one that imports it
back, not even for type hints: a part that needs another's object names what it uses in a Protocol.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mesh"

# For each part, the mesh parts it may import. Anything not listed is forbidden.
ALLOWED = {
    # Text forms of values (host:port; sizes, durations and the like): leaves anything may read.
    "hostport": set(),
    "values": set(),
    "allocator": set(),  # the process's malloc settings, for the entry point
    "protocol": {"protocol"},
    "config": {"protocol"},  # only for the Timings it carries (see below)
    # The option table: flags and env vars into a validated Config, for the command line.
    "options": {"config", "hostport", "values"},
    "engine": {"config", "protocol", "engine"},
    "net": {"config", "protocol", "engine", "net", "hostport"},
    "discovery": {"discovery", "hostport"},
    "registry": {"config", "protocol", "net", "registry", "ui"},
    "node": {"config", "protocol", "engine", "net", "discovery", "registry", "node", "ui"}
    | {"hostport", "values"},
    "ui": {"config", "protocol", "ui", "values"},
    "sim": {"config", "protocol", "engine", "sim"},
    # `cachemesh doctor` asks the engine and the node's status page from the command line.
    "doctor": {"engine", "doctor", "hostport"},
    # The lab runs whole nodes and engines for the demo and the tests: it may use every part.
    "lab": {"config", "protocol", "engine", "net", "discovery", "registry", "node", "ui", "sim", "lab"}
    | {"doctor", "cli", "hostport", "values", "options"},
}
# Third-party and standard-library modules that mean I/O: never in the pure parts.
IO_MODULES = {
    "asyncio", "aiohttp", "docker", "zeroconf", "uvloop", "socket", "selectors", "subprocess", "threading",
    "ssl", "urllib.request", "http", "requests", "prometheus_client", "rich",
}  # fmt: skip
PURE = {"config", "protocol", "hostport", "values", "options"}


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "mesh":  # `from mesh import x` names a part
                found += [(node.lineno, f"mesh.{alias.name}") for alias in node.names]
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if _part(p) in ALLOWED)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_respects_its_layer(path: Path) -> None:
    part = _part(path)
    problems = []
    for line, module in _imports(path):
        top = module.split(".")[0]
        if top == "mesh":
            target = module.split(".")[1] if "." in module else None
            if target in ("__version__", None):
                continue
            if target not in ALLOWED[part]:
                problems.append(f"line {line}: {part} may not import mesh.{target}")
        elif part in PURE and (module in IO_MODULES or top in IO_MODULES):
            problems.append(f"line {line}: the pure part {part} imports {module}")
    assert not problems, f"{path.relative_to(PACKAGE)}: " + "; ".join(problems)


def test_config_takes_only_the_timings_from_the_protocol() -> None:
    """Config carries the core's Timings; the rest of the core is none of its business."""
    config = PACKAGE / "config.py"
    used = {module for _, module in _imports(config) if module.startswith("mesh.protocol")}
    assert used == {"mesh.protocol.timings"}


def test_every_part_is_classified() -> None:
    """A new folder must take its place in the table above, or the rule silently stops covering it."""
    parts = {_part(p) for p in PACKAGE.rglob("*.py")} - {"__init__", "__main__", "cli"}
    assert parts <= set(ALLOWED), f"unclassified parts: {parts - set(ALLOWED)}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """mesh module -> the mesh modules it imports, those only type checkers see included: a cycle
    hidden behind TYPE_CHECKING still ties the two modules into one."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pkg import mod`
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_no_module_imports_itself_back() -> None:
    graph = _import_graph()
    cycles = []
    for start in sorted(graph):
        # Depth-first from each module, looking for a path back to it.
        stack, seen = [(start, [start])], set()
        while stack:
            name, path = stack.pop()
            for target in sorted(graph[name]):
                if target == start and start == min(path):  # each cycle once, from its first module
                    cycles.append(" -> ".join([*path, start]))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, [*path, target]))
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_the_registrys_parts_see_the_service_only_through_protocols() -> None:
    """The router and the status section are given the service; they name what they need of it
    (RegistryApi, RegistryFacts) instead of importing it."""
    graph = _import_graph()
    importers = sorted(m for m, targets in graph.items() if "mesh.registry.service" in targets)
    assert [m for m in importers if m.startswith("mesh.registry.")] == []
