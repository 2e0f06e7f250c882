"""The package structure: one import package, imports flowing one way
(components <- pipeline <- {kubeflow, serving}), no bare top-level names; inside pipeline/,
commands -> run -> ops/observe -> home -> config/errors/spans -> components (ARCHITECTURE.md),
observe never imports ops, and only command modules parse arguments."""
import ast
from pathlib import Path

import pytest

from tests.support import REPO

AREAS = ("components", "pipeline", "serving", "kubeflow", "schema")
# What each area may import from ctpipe.
ALLOWED = {
    "components": {"components", "schema"},
    "pipeline": {"components", "pipeline", "schema"},
    "serving": {"components", "pipeline", "serving"},  # pipeline: command registration only
    "kubeflow": {"components", "pipeline", "kubeflow", "schema"},
    "schema": set(),
}


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


@pytest.mark.parametrize("area", AREAS)
def test_imports_flow_one_way(area):
    wrong = []
    for path in sorted((REPO / area).rglob("*.py")):
        for module in _imports(path):
            parts = module.split(".")
            if parts[0] in AREAS:
                wrong.append(f"{path.relative_to(REPO)}: bare import {module}")
            elif parts[0] == "ctpipe" and len(parts) > 1 and parts[1] not in ALLOWED[area]:
                wrong.append(f"{path.relative_to(REPO)}: imports {module}")
    assert wrong == []


def test_the_package_maps_every_fixed_folder():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_dir = project["tool"]["setuptools"]["package-dir"]
    assert package_dir == {f"ctpipe.{area}": area for area in AREAS}
    assert project["project"]["scripts"]["ctpipe"] == "ctpipe.pipeline.commands.main:entry"


# -- inside pipeline/: the layer of each module, and what each layer may import ----------------

ROOT = {"config", "errors", "spans"}
PIPELINE_LAYERS = {
    "root": set(),
    "home": {"root"},
    "definition": {"home", "root"},
    "observe": {"observe", "home", "root"},          # never ops
    "ops": {"ops", "observe", "home", "root"},
    "run": {"run", "ops", "observe", "home", "definition", "root"},
    "commands": {"commands", "run", "ops", "observe", "home", "definition", "root"},
    # The benchmark drives whole processes (`ctpipe run`, the stock anchor) like a user would.
    "bench": {"bench", "run", "ops", "observe", "home", "definition", "root"},
}
# Modules that parse arguments: the command modules, plus process entry points whose argv is a
# contract of their own (each says why).
ARGUMENT_PARSERS = {
    "kubeflow/commands.py", "serving/commands.py",
    "kubeflow/steps.py",          # container entry points: their argv is the compiled spec's
    "pipeline/bench/__main__.py",  # `python -m ctpipe.pipeline.bench` (make bench)
    "pipeline/bench/stock.py",    # the stock anchor runs as its own process, without ctpipe's CLI
    "serving/benchmark.py",       # `python -m ctpipe.serving.benchmark`, a standalone load tool
}


def _layer_of(module: str) -> str:
    """`ctpipe.pipeline.home.cycles` -> home; `ctpipe.pipeline.config` -> root."""
    parts = module.split(".")[2:]
    if not parts or parts[0] in ROOT or parts[0] == "__init__":
        return "root"
    return parts[0]


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REPO))
                                        for p in (REPO / "pipeline").rglob("*.py")))
def test_pipeline_layers_import_downwards(path):
    module = "ctpipe." + path[:-3].replace("/", ".")
    if module.endswith(".__init__"):
        module = module[: -len(".__init__")]
    layer = _layer_of(module) if module != "ctpipe.pipeline" else "root"
    assert layer in PIPELINE_LAYERS, f"{path}: no layer named {layer!r} in the table"
    wrong = []
    for imported in _imports(REPO / path):
        if imported.startswith("ctpipe.pipeline.") or imported == "ctpipe.pipeline":
            target = _layer_of(imported)
            if target != layer and target not in PIPELINE_LAYERS[layer]:
                wrong.append(f"{path} ({layer}) imports {imported} ({target})")
    assert wrong == []


def test_serving_imports_pipeline_only_to_register_commands():
    wrong = [f"{path.relative_to(REPO)}: imports {module}"
             for path in sorted((REPO / "serving").rglob("*.py"))
             for module in _imports(path)
             if module.startswith("ctpipe.pipeline") and path.name != "commands.py"]
    assert wrong == []


def test_only_command_modules_parse_arguments():
    parsers = set()
    for area in ("components", "pipeline", "serving", "kubeflow"):
        for path in (REPO / area).rglob("*.py"):
            if "argparse" in set(_imports(path)):
                parsers.add(str(path.relative_to(REPO)))
    commands = {p for p in parsers if p.startswith("pipeline/commands/")}
    assert parsers - commands - ARGUMENT_PARSERS == set()


def test_pipeline_root_stays_small():
    """The folder list explains the system: sub-packages, and a handful of modules at the root."""
    modules = sorted(p.name for p in (REPO / "pipeline").glob("*.py"))
    assert modules == ["__init__.py", "config.py", "definition.py", "errors.py", "spans.py"]


def test_exit_codes_have_one_home():
    import re

    owners = set()
    for area in ("components", "pipeline", "serving", "kubeflow"):
        for path in (REPO / area).rglob("*.py"):
            text = path.read_text()
            if re.search(r"^\s*(EXIT_\w+(, EXIT_\w+)*|exit_code)\s*=\s*\d", text, re.M):
                owners.add(str(path.relative_to(REPO)))
    assert owners == set(), f"numeric exit codes outside components/basics.py: {owners}"
