"""The import rules, in code: which part of the tree may depend on which.

Static half: every .py file under kernels/, candidate_svc/, ranking_svc/, training/ and
recsys/ is parsed with `ast` and every import is collected, module-level or inside a
function, absolute or relative (plus `importlib.import_module("...")` with a literal
name). Runtime half: the serving side imports and builds the CLI parser in a fresh
interpreter where `import torch` raises ImportError.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("kernels", "candidate_svc", "ranking_svc", "training", "recsys")
OURS = frozenset({"recsys", "candidate_svc", "ranking_svc", "training", "evaluation", "kernels"})

# The command line wires everything together, but only lazily, per subcommand.
CLI_FILES = frozenset({"recsys/cli.py", "recsys/demo.py"})
# torch: the trainer's model file; pipeline.py only to record versions in `_software`.
TORCH_ANYWHERE = frozenset({"training/two_tower.py", "training/text_encoder_export.py"})
TORCH_IN_FUNCTION = {"training/pipeline.py": "_software"}


@dataclass(frozen=True)
class Import:
    path: str  # relative to the repo root, with forward slashes
    line: int
    module: str  # the full dotted name as resolved ("" never: relative ones are resolved)
    relative: bool
    functions: tuple[str, ...]  # enclosing function names, outermost first; () = module level

    @property
    def top(self) -> str:
        return self.module.split(".")[0]

    def __str__(self) -> str:
        where = f" in {'.'.join(self.functions)}()" if self.functions else " at module level"
        kind = "relative import of" if self.relative else "import"
        return f"{self.path}:{self.line}: {kind} {self.module!r}{where}"


class _Collector(ast.NodeVisitor):
    def __init__(self, path: str, package: str) -> None:
        self.path = path
        self.package = package  # dotted package this file is in, for relative imports
        self.stack: list[str] = []
        self.found: list[Import] = []

    def _add(self, node: ast.AST, module: str, relative: bool = False) -> None:
        self.found.append(Import(self.path, node.lineno, module, relative, tuple(self.stack)))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        # decorators and defaults run at definition time, i.e. in the enclosing scope
        for expr in [*node.decorator_list, *node.args.defaults, *node.args.kw_defaults]:
            if expr is not None:
                self.visit(expr)
        self.stack.append(node.name)
        for stmt in node.body:
            self.visit(stmt)
        self.stack.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0:
            self._add(node, node.module or "")
            return
        parts = self.package.split(".")
        base = parts[: len(parts) - (node.level - 1)] if node.level - 1 < len(parts) else []
        if not base:
            # above the top-level package: record it so a rule can flag it
            self._add(node, "." * node.level + (node.module or ""), relative=True)
            return
        target = ".".join(base + ([node.module] if node.module else []))
        self._add(node, target, relative=True)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if (name in ("import_module", "__import__") and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            self._add(node, node.args[0].value)
        self.generic_visit(node)


def collect_imports(source: str, path: str) -> list[Import]:
    package = ".".join(Path(path).parts[:-1])  # a module's package; for __init__.py, itself
    collector = _Collector(path, package)
    collector.visit(ast.parse(source, filename=path))
    return collector.found


def scanned_files() -> list[str]:
    files = []
    for top in SCANNED:
        files += [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / top).rglob("*.py"))]
    return files


_IMPORTS: dict[str, list[Import]] = {}


def imports_of(path: str) -> list[Import]:
    if path not in _IMPORTS:
        _IMPORTS[path] = collect_imports((ROOT / path).read_text(encoding="utf-8"), path)
    return _IMPORTS[path]


def all_imports(under: str | None = None) -> list[Import]:
    return [imp for f in scanned_files() if under is None or f.startswith(under + "/")
            for imp in imports_of(f)]


def report(violations: list[Import], rule: str) -> str:
    return rule + ":\n  " + "\n  ".join(str(v) for v in violations)


# ------------------------------------------------------------------------------ the scanner


def test_collector_finds_every_kind_of_import():
    source = textwrap.dedent("""
        import os, numpy.linalg as la
        from a.b import c
        from . import sibling
        from .sub.mod import thing
        from .. import parent_thing
        if True:
            import in_if
        class K:
            import in_class
            def method(self):
                from deep.inside import x
        def outer(arg=__import__("in_default")):
            def inner():
                import torch.nn
            importlib.import_module("lazy.mod")
        try:
            import maybe
        except ImportError:
            pass
    """)
    got = {(i.module, i.relative, i.functions) for i in collect_imports(source, "pkg/sub2/m.py")}
    assert got == {
        ("os", False, ()),
        ("numpy.linalg", False, ()),
        ("a.b", False, ()),
        ("pkg.sub2", True, ()),
        ("pkg.sub2.sub.mod", True, ()),
        ("pkg", True, ()),
        ("in_if", False, ()),
        ("in_class", False, ()),
        ("deep.inside", False, ("method",)),
        ("in_default", False, ()),
        ("torch.nn", False, ("outer", "inner")),
        ("lazy.mod", False, ("outer",)),
        ("maybe", False, ()),
    }


def test_relative_import_in_package_init_resolves_to_the_package():
    (imp,) = collect_imports("from .topk import top_k\n", "kernels/__init__.py")
    assert (imp.module, imp.top, imp.relative) == ("kernels.topk", "kernels", True)


def test_scan_sees_the_tree():
    files = scanned_files()
    for expected in ("kernels/topk.py", "candidate_svc/server.py", "ranking_svc/events.py",
                     "training/two_tower.py", "recsys/cli.py", "recsys/demo.py"):
        assert expected in files
    # the known imports are found, so an empty scan cannot pass the rules vacuously
    assert any(i.top == "torch" and not i.functions for i in imports_of("training/two_tower.py"))
    assert any(i.top == "training" and i.functions for i in imports_of("recsys/cli.py"))
    assert any(i.top == "numba" for i in imports_of("kernels/topk.py"))


# ------------------------------------------------------------------------------ the rules


def test_kernels_import_none_of_our_packages():
    bad = [i for i in all_imports("kernels")
           if (i.top in OURS and not i.relative) or (i.relative and i.top != "kernels")]
    assert not bad, report(bad, "kernels/ is pure compute: no imports of our packages "
                                "(its own modules only relatively)")


SERVICE_RULES = {
    "candidate_svc": {"ranking_svc", "training", "evaluation", "torch"},
    "ranking_svc": {"candidate_svc", "training", "evaluation", "torch"},
    "training": {"candidate_svc", "ranking_svc", "evaluation"},
}


@pytest.mark.parametrize("package", sorted(SERVICE_RULES))
def test_package_import_rules(package):
    forbidden = SERVICE_RULES[package]
    bad = [i for i in all_imports(package) if i.top in forbidden]
    assert not bad, report(bad, f"{package}/ must not import {sorted(forbidden)}")


RECSYS_FORBIDDEN = {"training", "evaluation", "candidate_svc", "ranking_svc", "torch"}


def test_recsys_is_only_the_shared_contract():
    bad = [i for i in all_imports("recsys")
           if i.top in RECSYS_FORBIDDEN and i.path not in CLI_FILES]
    assert not bad, report(bad, f"recsys/ (the shared contract) must not import "
                                f"{sorted(RECSYS_FORBIDDEN)}; only recsys/cli.py and "
                                f"recsys/demo.py may, inside functions")


@pytest.mark.parametrize("path", sorted(CLI_FILES))
def test_command_line_imports_services_and_trainer_lazily(path):
    bad = [i for i in imports_of(path) if i.top in RECSYS_FORBIDDEN and not i.functions]
    assert not bad, report(bad, f"{path} may import {sorted(RECSYS_FORBIDDEN)} only inside "
                                f"a function body, not at module level")


def test_only_the_trainer_imports_torch():
    bad = []
    for i in all_imports():
        if i.top != "torch" or i.path in TORCH_ANYWHERE:
            continue
        allowed_function = TORCH_IN_FUNCTION.get(i.path)
        if allowed_function is not None and i.functions == (allowed_function,):
            continue
        bad.append(i)
    assert not bad, report(bad, "only training/two_tower.py imports torch "
                                "(and training/pipeline.py inside _software())")


# ------------------------------------------------------------------------------ at runtime

NO_TORCH_SCRIPT = """
import sys
sys.modules["torch"] = None  # now `import torch` raises ImportError
import candidate_svc.server
import ranking_svc.server
import recsys.bundle
import recsys.cli
parser = recsys.cli.build_parser()
args = parser.parse_args(["serve", "ranking", "--port", "0"])
assert args.service == "ranking", args
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("torch was importable despite the None entry")
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("training", "evaluation"))
if leaked:
    raise SystemExit(f"serving imported the trainer/evaluator: {leaked}")
print("ok")
"""


def test_serving_side_imports_without_torch():
    env = dict(os.environ)
    env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))
    proc = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (
        f"serving imports need torch or the trainer (rc={proc.returncode}):\n"
        f"{proc.stdout}\n{proc.stderr}"
    )
