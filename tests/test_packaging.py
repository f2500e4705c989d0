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
    assert [d for d in pip if not d.startswith("-")] == deps
    assert "-c constraints.txt" in pip


def test_constraints_pin_every_dependency_within_its_range() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    for dep in map(Requirement, wanted):
        version = pins.get(canonicalize_name(dep.name))
        assert version is not None, f"{dep.name} is not pinned in constraints.txt"
        assert dep.specifier.contains(version), f"{dep.name}=={version} is outside {dep}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    commands = [line.strip() for b in blocks[:2] for line in b.splitlines()
                if line.strip() and not line.startswith("#")]
    assert commands[:2] == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "make test" in [line.strip() for line in ci]


def test_torch_is_the_cpu_pin_and_installed_first() -> None:
    """What is installed is the pinned CPU build (a CUDA build or another version fails),
    and the install recipe puts torch before anything that could pull another one."""
    import subprocess

    import torch

    pin = re.search(r"^TORCH \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert pin, "the Makefile no longer pins torch"
    assert torch.__version__.split("+")[0] == pin.group(1)
    assert torch.version.cuda is None, "a CUDA build of torch was installed"
    dry = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), "install", "VENV=/nonexistent"],
                         capture_output=True, text=True, check=True).stdout
    installs = [line for line in dry.splitlines() if " -m pip install " in line
                and "--upgrade pip" not in line]
    assert f"torch=={pin.group(1)}" in installs[0], installs
