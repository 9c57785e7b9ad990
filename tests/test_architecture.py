"""The agent's shape: its modules import one another without cycles, and load one of
their own later only where a start-up rule needs it (docs/architecture.md)."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "agent" / "sightline"

#: (importer, imported) -> why the import waits inside a function. Every other import of
#: the package's own modules, and of the standard library, is at the top of its module.
DEFERRED = {
    # `import sightline` loads neither OpenTelemetry (whose API reads OTEL_* variables on
    # import: init() checks them first, so importing never fails) nor the agent's modules
    # (start-up: `import sightline` within 40 ms).
    ("sightline", "sightline._agent"): "init() starts the agent",
    ("sightline", "sightline._tasks"): "task() loads the OpenTelemetry API",
    ("sightline", "sightline.integrations.asgi"): "instrument_app() loads it",
    ("sightline", "sightline.integrations.wsgi"): "instrument_app() loads it",
    # The launcher's bootstrap runs in every process `sightline run` starts.
    ("sightline._launcher", "sightline.integrations._served"): "only in a server's process",
    # init() loads only what the settings turn on.
    ("sightline._agent", "sightline.tracing"): "only with traces on",
    ("sightline._agent", "sightline._multiprocess"): "only in a server's process",
    ("sightline.tracing", "sightline._sdk"): "only when an SDK span is made",
    ("sightline._export", "sightline._transport"): "the first push loads the HTTP client",
    # `sightline run` starts in 150 ms: its module loads the launcher when it runs.
    ("sightline.cli", "sightline"): "run",
    ("sightline.cli", "sightline._launcher"): "run",
}

#: Standard-library modules loaded late to keep start-up within its budget.
DEFERRED_STDLIB = {
    ("sightline._settings", "ssl"): "only with a CA or client certificate set",
    ("sightline._settings", "importlib.metadata"): "only to name an entry point's package",
    ("sightline.integrations._base", "importlib.metadata"): "an integration's library's version",
    ("sightline._port", "http.client"): "only when the metrics port is found taken",
    ("sightline._scrape", "wsgiref.simple_server"): "the first scrape",
    ("sightline.cli", "importlib.metadata"): "commands other than `sightline run`",
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["sightline", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = modules()


def resolve(importer: str, node: ast.ImportFrom | ast.Import) -> Iterator[str]:
    """The modules an import statement loads (a package's submodule when it names one)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        package = importer.split(".")
        if MODULES[importer].name != "__init__.py":
            package.pop()
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, *([node.module] if node.module else [])])
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        yield submodule if submodule in MODULES else base


def loaded_by_name(importer: str, call: ast.Call) -> Iterator[str]:
    """Modules loaded by ``_fork.load("name")`` (or with ``f"{__package__}.name"``)."""
    func = call.func
    if not (isinstance(func, ast.Attribute) and func.attr == "load" and call.args):
        return
    if not (isinstance(func.value, ast.Name) and func.value.id == "_fork"):
        return
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        yield arg.value
    elif isinstance(arg, ast.JoinedStr):
        text = "".join(
            importer.rpartition(".")[0]
            if isinstance(part, ast.FormattedValue)
            else str(getattr(part, "value", ""))
            for part in arg.values
        )
        yield text


def imports(name: str) -> Iterator[tuple[str, bool]]:
    """(module imported, whether inside a function) for every import ``name`` makes at run
    time: not those under ``if TYPE_CHECKING:``."""

    def visit(node: ast.AST, in_function: bool) -> Iterator[tuple[str, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from ((m, in_function) for s in child.orelse for m, _ in visit(s, False))
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield from ((m, in_function) for m in resolve(name, child))
            elif isinstance(child, ast.Call):
                yield from ((m, True) for m in loaded_by_name(name, child))
            yield from visit(child, inner)

    yield from visit(ast.parse(MODULES[name].read_text()), False)


def graph() -> dict[str, set[str]]:
    """Each module's imports of the package's own modules, wherever they are made; the
    integrations package loads every integration by name."""
    edges = {name: {m for m, _ in imports(name) if m in MODULES and m != name} for name in MODULES}
    edges["sightline.integrations"] |= {
        m for m in MODULES if m.startswith("sightline.integrations.") and "._" not in m
    }
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_agents_modules_import_one_another_without_a_cycle() -> None:
    """No chain of imports, deferred ones and modules loaded by name included, leads a
    module of the package back to itself."""
    assert find_cycle(graph()) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: a graph with a loop is reported with the loop's path."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def deferred_imports() -> set[tuple[str, str]]:
    return {(name, m) for name in MODULES for m, late in imports(name) if late}


def test_only_the_named_imports_wait_inside_functions() -> None:
    """An import inside a function is of an optional third-party library, or one of the
    deferrals named in DEFERRED with its reason; every named deferral still exists."""
    stdlib = set(sys.stdlib_module_names)
    own = {(a, b) for a, b in deferred_imports() if b.split(".")[0] == "sightline"}
    library = {
        (a, b) for a, b in deferred_imports() if b.split(".")[0] in stdlib and b != "sightline"
    }
    assert own == set(DEFERRED)
    assert library == set(DEFERRED_STDLIB)


@pytest.mark.parametrize(
    ("module", "attribute"),
    [("_tasks", "tracked"), ("_agent", "current"), ("_agent", "lock")],
)
def test_the_running_agents_state_lives_in_one_module(module: str, attribute: str) -> None:
    """The running agent and the queues tracked for it are kept in ``_state`` alone, which
    imports nothing of the package's."""
    assert f"\n{attribute}" not in MODULES[f"sightline.{module}"].read_text()
    assert not {m for m, _ in imports("sightline._state") if m.startswith("sightline")}


def test_no_module_assigns_into_another_modules_names() -> None:
    """No module sets an attribute of another of the package's modules (``_safety.x =``,
    ``metrics.queues.queues[...] =``): state changes through its owner's functions."""
    offenders = []
    aliases_of = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        own = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level
            for alias in node.names
            if alias.name.startswith("_") or f"sightline.{alias.name}" in MODULES
        }
        aliases_of[name] = own
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            for target in targets:
                base = target
                while isinstance(base, (ast.Attribute, ast.Subscript)):
                    base = base.value
                if target is not base and isinstance(base, ast.Name) and base.id in own:
                    offenders.append(f"{name}: {ast.unparse(target)}")
    assert offenders == []


def test_the_agent_never_imports_the_appliance() -> None:
    """No module of the agent imports the appliance's package, which a production install
    does not have: its commands reach the agent's command through an entry point."""
    assert not {
        (name, m) for name in MODULES for m, _ in imports(name) if m.startswith("sightline_")
    }
