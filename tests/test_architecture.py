"""The package's shape: layers without import cycles, no private name imported across modules,
argument parsers only in ``dsekit.cli``, sibling imports at module top, modules of a readable size."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dsekit"
MODULES = sorted(p for p in SRC.rglob("*.py"))
MAX_LINES = 700


def _name(path: Path) -> str:
    parts = ["dsekit", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``import from`` statement of ``path`` reads."""
    if node.level == 0:
        return node.module or ""
    base = _name(path).split(".")
    if not _is_package(path):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _top_level_imports(tree: ast.Module) -> list[ast.stmt]:
    """Import statements run when the module is imported (module body, including ``if``/``try`` blocks,
    excluding ``if TYPE_CHECKING:``)."""
    out: list[ast.stmt] = []

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.append(node)
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    walk(node.body)
                    walk(node.orelse)
            elif isinstance(node, ast.Try):
                walk(node.body)
                for h in node.handlers:
                    walk(h.body)

    walk(tree.body)
    return out


def _graph() -> dict[str, set[str]]:
    """Module -> the dsekit modules its import runs (a ``from pkg import name`` of a submodule counts)."""
    known = {_name(p) for p in MODULES}
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        deps: set[str] = set()
        for node in _top_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("dsekit"))
                continue
            mod = _resolve(path, node)
            if not mod.startswith("dsekit"):
                continue
            deps.add(mod)
            deps.update(f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known)
        me = _name(path)
        # importing a submodule runs its parent packages first
        graph[me] = {d for d in deps if d in known and d != me and not me.startswith(d + ".")}
    return graph


def test_there_are_modules_to_check():
    names = {_name(p) for p in MODULES}
    assert {"dsekit.scan", "dsekit.probe", "dsekit.sweep", "dsekit.runtime", "dsekit.cli"} <= names


def test_no_import_cycle_between_modules():
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    # a package importing its own submodules is how packages work; a cycle through two modules is not
    real = [c for c in cycles if not all(c[0].startswith(m) or m.startswith(c[0]) for m in c)]
    assert not real, "import cycles: " + "; ".join(" -> ".join(c) for c in real)


def test_no_module_imports_a_private_name_from_another():
    bad = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("dsekit")):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        bad.append(
                            f"{path.relative_to(SRC)}:{node.lineno} imports {a.name} from {_resolve(path, node)}"
                        )
    assert not bad, "\n".join(bad)


_PARSER_CALLS = {"ArgumentParser", "add_argument", "add_parser", "add_subparsers", "add_argument_group"}


def test_argument_parsers_live_only_in_the_cli_package():
    bad = []
    for path in MODULES:
        if _name(path).startswith("dsekit.cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                fn = node.func
                name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                if name in _PARSER_CALLS:
                    bad.append(f"{path.relative_to(SRC)}:{node.lineno} calls {name}")
    assert not bad, "\n".join(bad)


def test_sibling_modules_are_imported_at_module_top():
    """Library modules import their siblings at the top; the command line (``dsekit.cli``) is the
    exception: its handlers import the work, so that its parsers answer without it."""
    bad = []
    for path in MODULES:
        if _name(path).startswith("dsekit.cli"):
            continue
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("dsekit")):
                    bad.append(
                        f"{path.relative_to(SRC)}:{node.lineno} imports {_resolve(path, node)} inside {fn.name}()"
                    )
                elif isinstance(node, ast.Import) and any(a.name.startswith("dsekit") for a in node.names):
                    bad.append(f"{path.relative_to(SRC)}:{node.lineno} imports dsekit inside {fn.name}()")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_module_is_at_most_700_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(SRC)} has {n} lines"


def test_the_library_runs_without_the_command_line():
    code = (
        "import sys, dsekit, dsekit.scan, dsekit.probe, dsekit.report, dsekit.demo, dsekit.train.ssl; "
        "print(sorted(m for m in sys.modules if m.startswith('dsekit.cli')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_command_has_a_parser_and_a_handler():
    from dsekit.cli import build_parser
    from dsekit.cli.probe import run_probe
    from dsekit.cli.scan import run_scan
    from dsekit.cli.train import run_train

    parser = build_parser()
    cases = {
        ("scan", "RUN", "--method", "dino"): run_scan,
        ("probe", "RUN", "--method", "dino", "--dataset", "scenes"): run_probe,
        ("train", "--method", "dino", "--out", "OUT"): run_train,
    }
    for argv, handler in cases.items():
        args = parser.parse_args(list(argv))
        assert args.func is handler, argv
    for argv in (["dse", "f.npy"], ["report", "RUN"], ["demo", "--quick"], ["data", "scenes", "OUT"]):
        assert callable(parser.parse_args(argv).func), argv
    with pytest.raises(SystemExit):
        parser.parse_args(["scan", "RUN", "--method", "dino", "--num-images", "0"])  # positive_int refuses 0


def test_the_command_line_starts_without_torch_numpy_or_the_data_packages():
    """``dsekit --help``, ``--version`` and an argument error need nothing heavy: building the
    parsers and parsing imports neither torch, numpy, timm, torchvision nor the data packages."""
    code = (
        "import sys; from dsekit.cli import build_parser; p = build_parser(); "
        "p.parse_args(['scan', 'RUN', '--method', 'dino', '--layers', 'all']); "
        "heavy = [m for m in ('torch', 'numpy', 'timm', 'torchvision', 'sklearn', 'skimage', 'transformers', 'rich') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
