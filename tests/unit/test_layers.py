"""The layers of docs/architecture.md, checked on the source: every import of a project module,
at the top of a file or inside a function (``if TYPE_CHECKING:`` blocks, which never run, aside),
plus the stage registry's import targets."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import ExperimentConfig
from app.stages import REGISTRY

ROOT = Path(__file__).resolve().parents[2]

FOUNDATION = {"app.errors", "app.sections", "app.secrets"}  # import nothing from the app
TOP = {"app.stages", "app.entry", "app.pipeline"}  # with app.cli.*: above the stages; nothing under them imports these
STAGE_PACKAGES = {"data", "train", "eval", "serving", "prepare", "quantize", "ab", "bench"}
# Which stage may use which other stage's modules (a DAG; see docs/architecture.md).
STAGE_USES = {"data": {"serving"}, "eval": {"data", "serving"}, "train": {"eval"}, "serving": set(), "prepare": set(),
              "quantize": {"train", "eval", "serving"}, "ab": {"eval", "serving"},
              "bench": {"ab", "eval", "serving"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in (ROOT / "app").rglob("*.py")}


def resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imports_of(module: str) -> set[str]:
    """Project modules ``module`` imports, anywhere in the file."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "app" or name.startswith("app."):
                target = resolve(name)
                if target and target != module and not (target == "app" and name != "app"):
                    found.add(target)
    if module == "app.stages":  # the registry imports each stage's module when it runs
        found |= {resolve(t) for t in re.findall(r'"(app\.[\w.]+):\w+"', path.read_text())}
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def layer(module: str) -> str:
    parts = module.split(".")
    if module in FOUNDATION:
        return "foundation"
    if module == "app.config" or (len(parts) == 3 and parts[1] in STAGE_PACKAGES and parts[2] == "config"):
        return "config"
    if module in TOP or module == "app.cli" or module.startswith("app.cli."):
        return "top"
    if len(parts) >= 2 and parts[1] in STAGE_PACKAGES:
        return "stage"
    return "shared"  # app/*.py: model store, tracking, endpoint client, datasets, db, web, ...


def test_no_import_cycle():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in sorted(GRAPH):
        if m not in index:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


def test_nothing_under_the_top_imports_the_registry_the_cli_or_the_job_entry():
    upward = {m: sorted(t for t in GRAPH[m] if layer(t) == "top") for m in GRAPH if layer(m) != "top"}
    assert not {m: t for m, t in upward.items() if t}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) != "top"))
def test_each_module_imports_only_its_own_layer_or_below(module):
    allowed = {
        "foundation": {"foundation"},
        "config": {"foundation", "config"},
        "shared": {"foundation", "config", "shared"},
        "stage": {"foundation", "config", "shared", "stage"},
    }[layer(module)]
    if layer(module) == "foundation":
        assert not GRAPH[module]
    wrong = sorted(t for t in GRAPH[module] if layer(t) not in allowed)
    assert not wrong, f"{module} ({layer(module)}) imports {wrong}"
    if layer(module) == "config" and module != "app.config":  # a stage's section: only the base and errors
        assert GRAPH[module] <= FOUNDATION, GRAPH[module]
    if layer(module) == "stage":
        own = module.split(".")[1]
        others = {t.split(".")[1] for t in GRAPH[module] if layer(t) == "stage"} - {own}
        assert others <= STAGE_USES[own], f"{module} uses stage(s) {sorted(others - STAGE_USES[own])}"


def test_the_stage_dependency_table_is_acyclic():
    seen: set[str] = set()

    def walk(pkg: str, path: tuple[str, ...]) -> None:
        assert pkg not in path, f"stage cycle {path + (pkg,)}"
        for dep in STAGE_USES[pkg]:
            walk(dep, path + (pkg,))
        seen.add(pkg)

    for pkg in STAGE_USES:
        walk(pkg, ())
    assert seen == STAGE_PACKAGES


FIELDS = set(ExperimentConfig.model_fields)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_the_registry_declares_every_config_section_a_stage_reads(name):
    """A resumable pipeline keys a stage's cache on its declared sections: one the code reads but the
    registry leaves out would let a changed setting reuse a stale result."""
    stage = REGISTRY[name]
    start = stage.target.partition(":")[0]
    package = ".".join(start.split(".")[:2])
    todo, modules = [start], set()
    while todo:  # the stage's module and what it uses of its own package
        m = todo.pop()
        if m in modules:
            continue
        modules.add(m)
        todo += [t for t in GRAPH[m] if t.startswith(package + ".")]
    read = set()
    for m in modules:
        read |= set(re.findall(r"\bcfg\.(\w+)", MODULES[m].read_text())) & FIELDS
    # Where things are stored and tracked, and who may log in: not what the stage computes.
    read -= {"paths", "tracking", "accounts"}
    assert read <= set(stage.reads), f"{name} reads {sorted(read - set(stage.reads))} but does not declare them"
    assert set(stage.reads) <= FIELDS


def test_app_help_loads_no_stage_dependency():
    """`app --help` stays fast: the CLI imports stage modules inside its commands only."""
    heavy = ["ray", "torch", "pandas", "vllm", "mlflow", "sklearn", "transformers", "sqlalchemy", "fastapi"]
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom app.cli import app\n"
            "assert CliRunner().invoke(app, ['--help']).exit_code == 0\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_the_graph_sees_imports_inside_functions_and_the_registry_targets():
    assert "app.data.build" in GRAPH["app.cli.dataset"]  # imported inside `app dataset build`
    assert {"app.train.run", "app.eval.run", "app.data.build"} <= GRAPH["app.stages"]
