"""The package structure: one import package, imports flowing one way
(components <- pipeline <- {kubeflow, serving}), no bare top-level names."""
import ast
from pathlib import Path

import pytest

from tests.support import REPO

AREAS = ("components", "pipeline", "serving", "kubeflow", "schema")
# What each area may import from ctpipe.
ALLOWED = {
    "components": {"components", "schema"},
    "pipeline": {"components", "pipeline", "schema"},
    "serving": {"components", "pipeline", "serving"},
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
    assert project["project"]["scripts"]["ctpipe"] == "ctpipe.pipeline.cli:entry"
