"""The house rules, checked from the source text (issue 16).

- No import cycle between the modules of ``src/`` at module level, whether or not the imports
  under ``if TYPE_CHECKING:`` count (a cycle held apart by ``TYPE_CHECKING`` is still a cycle
  in the design).
- No function over 70 lines, no module over 500 lines (``src/`` and ``strategies/``).
- No block of six or more lines written twice in the product code.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
PRODUCT = [SRC, REPO / "strategies"]
MAX_FUNCTION_LINES = 70
MAX_MODULE_LINES = 500
REPEAT_LINES = 6


def _python_files() -> list[Path]:
    return sorted(p for root in PRODUCT for p in root.rglob("*.py"))


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC if path.is_relative_to(SRC) else REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(tree: ast.Module, *, type_checking: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: the top level and the bodies of
    top-level ``if``/``try`` blocks (``if TYPE_CHECKING:`` only when asked), not functions."""
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if _is_type_checking(node.test) and not type_checking:
                stack.extend(node.orelse)
            else:
                stack.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                stack.extend(handler.body)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(*, type_checking: bool) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in _python_files()}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        for node in _module_level_imports(tree, type_checking=type_checking):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                target = _resolve(name, is_package, node)
                # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one
                targets = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                           for alias in node.names]
            for target in targets:
                # importing a.b.c runs a/__init__, a/b/__init__ and a/b/c
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    prefix = ".".join(parts[:i])
                    if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                        graph[name].add(prefix)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()
    for start in sorted(graph):
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, Iterator[str]]] = []

        def push(node: str, path: list[str] = path, on_path: set[str] = on_path,
                 stack: list[tuple[str, Iterator[str]]] = stack) -> None:
            path.append(node)
            on_path.add(node)
            stack.append((node, iter(sorted(graph.get(node, ())))))

        if start in done:
            continue
        push(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif child in on_path:
                return path[path.index(child):] + [child]
            elif child not in done:
                push(child)
    return None


@pytest.mark.parametrize("type_checking", [False, True], ids=["runtime", "with-TYPE_CHECKING"])
def test_no_import_cycle(type_checking: bool) -> None:
    cycle = find_cycle(import_graph(type_checking=type_checking))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_functions_and_modules_are_short() -> None:
    too_long = []
    for path in _python_files():
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(REPO)
        if (lines := len(text.splitlines())) > MAX_MODULE_LINES:
            too_long.append(f"{rel}: module of {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{rel}:{node.lineno}: {node.name}() of {length} lines")
    assert not too_long, "\n".join(too_long)


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines that carry code: no blanks, comments, imports,
    lone brackets or docstring-only punctuation; white space folded."""
    kept = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = " ".join(raw.split())
        if not line or line.startswith("#") or line.startswith(("import ", "from ")):
            continue
        if len(line.strip("()[]{},:;")) == 0:
            continue
        kept.append((number, line))
    return kept


def test_no_block_is_written_twice() -> None:
    seen: dict[tuple[str, ...], tuple[Path, int]] = {}
    repeats = []
    for path in _python_files():
        lines = _code_lines(path)
        for i in range(len(lines) - REPEAT_LINES + 1):
            window = tuple(text for _, text in lines[i:i + REPEAT_LINES])
            where = (path, lines[i][0])
            first = seen.setdefault(window, where)
            if first != where and (first[0] != path or first[1] + REPEAT_LINES <= where[1]):
                repeats.append(f"{where[0].relative_to(REPO)}:{where[1]} repeats "
                               f"{first[0].relative_to(REPO)}:{first[1]}")
    assert not repeats, "\n".join(repeats[:20])


# Who may import whom: a module imports only from its own layer or the layers below it
# (docs/architecture.md draws the same picture). Names are prefixes of dotted module names
# under ``photogate``; the longest prefix decides.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("photogate", "models", "errors", "jsonbody", "fields", "config", "config_fields", "access_config",
                    "audit", "identity", "allowlist", "netutil", "imagecheck", "segments", "webpcheck", "resultcheck",
                    "listen", "logsetup", "devmode", "nodeio", "health", "health.rule", "metrics",
                    "metrics.events", "wechat", "wechat.config")),
    ("storage", ("storage", "wechat.records", "apikeys")),
    ("core", ("dispatch", "registry", "registry_redis", "health.monitor", "balancing", "estimates", "blobs",
              "imagechecker", "runtime", "access", "metrics.live", "apikeys.service")),
    ("wiring", ("gateway", "lifecycle", "storage.factory")),
    ("http", ("app", "cli", "__main__", "api", "admin_api", "ui", "webhook", "ratelimit", "bodies", "fleetops",
              "adminauth", "taskview", "keys", "protocol_errors", "metrics.http", "wechat.access", "wechat.app",
              "wechat.legacy", "wechat.login", "wechat.pay", "wechat.routes", "wechat.service",
              "apikeys.app", "apikeys.routes")),
]
#: photogate-admin talks to a gateway over HTTP: of the gateway's code it reads only the config's
#: list of secret fields.
ADMINCLI_MAY_IMPORT = ("photogate", "photogate.config", "photogate.config_fields", "photogate.wechat",
                       "photogate.wechat.config")


def layer_of(module: str) -> int | None:
    name = module.removeprefix("photogate.") if module != "photogate" else "photogate"
    best: tuple[int, int] | None = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), rank)
    return None if best is None else best[1]


def test_layers_import_only_downwards() -> None:
    wrong, unplaced = [], []
    for module, targets in import_graph(type_checking=True).items():
        if not module.startswith("photogate") or module.startswith("photogate.admincli"):
            continue
        rank = layer_of(module)
        if rank is None:
            unplaced.append(module)
            continue
        for target in targets:
            other = layer_of(target) if target.startswith("photogate") else None
            if other is not None and other > rank:
                wrong.append(f"{module} ({LAYERS[rank][0]}) imports {target} ({LAYERS[other][0]})")
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"
    assert not wrong, "\n".join(sorted(wrong))


def test_the_admin_cli_needs_nothing_of_the_gateway_but_its_config() -> None:
    reached = {target for module, targets in import_graph(type_checking=True).items()
               if module.startswith("photogate.admincli") for target in targets
               if target.startswith("photogate") and not target.startswith("photogate.admincli")}
    assert reached <= set(ADMINCLI_MAY_IMPORT), sorted(reached - set(ADMINCLI_MAY_IMPORT))


def test_the_node_imports_nothing_of_the_gateway() -> None:
    reached = {target for module, targets in import_graph(type_checking=True).items()
               if module.startswith("gpunode") for target in targets if target.startswith("photogate")}
    assert not reached, sorted(reached)
