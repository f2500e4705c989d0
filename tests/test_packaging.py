"""The set-up promises: environment.yml equals pyproject, CI runs the README's test command."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_pip_section_equals_pyproject() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == deps


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    commands = [line.strip() for b in blocks[:2] for line in b.splitlines()
                if line.strip() and not line.startswith("#")]
    assert commands[:2] == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "make test" in [line.strip() for line in ci]


def test_torch_is_installed_first_from_the_cpu_pin() -> None:
    makefile = (ROOT / "Makefile").read_text()
    install = makefile[makefile.index("$(VENV)/.installed:"):]
    assert install.index('"$(TORCH)"') < install.index("-e .")
    assert "TORCH ?= torch==2.13.0" in makefile
