"""The layout's promise: every public name of a subpackage resolves, and the packages'
lists match what their modules export (a newcomer finds any concept from the folder)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "mediad"


@pytest.mark.parametrize("package", ["data", "networks", "engine", "experiments"])
def test_public_names_resolve_and_match_the_modules(package: str) -> None:
    pkg = importlib.import_module(f"mediad.{package}")
    exported: set[str] = set()
    for module in (ROOT / package).glob("[!_]*.py"):
        for node in ast.parse(module.read_text()).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__":
                exported |= set(ast.literal_eval(node.value))
    assert set(pkg.__all__) == exported
    for name in pkg.__all__:
        assert getattr(pkg, name) is not None


def test_no_module_imports_the_training_loop() -> None:
    """Helpers have their own homes; only the CLI, the demo and experiments train."""
    allowed = {"cli.py", "demo.py", "ablation.py", "trainer.py"}
    for module in ROOT.rglob("*.py"):
        if module.name not in allowed:
            assert "mediad.engine.trainer" not in module.read_text(), module
