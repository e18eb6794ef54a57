"""The production compose file is valid (it cannot run here: no Docker engine)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is not installed (.ci/run installs it from Debian)",
)
def test_compose_file_is_valid() -> None:
    checked = subprocess.run(
        ["docker-compose", "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr


def test_compose_has_the_production_services() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert set(services) == {"postgres", "temporal", "temporal-ui", "api", "worker"}
    assert services["worker"]["command"] == ["pilothouse", "worker"]


def test_the_image_copies_every_top_level_module() -> None:
    """`pip install .` in the image installs what it was given: a module the Dockerfile
    leaves out is an image that cannot start."""
    project = (ROOT / "pyproject.toml").read_text()
    modules = yaml.safe_load("[" + project.split("py-modules = [", 1)[1].split("]", 1)[0] + "]")
    dockerfile = (ROOT / "Dockerfile").read_text()
    missing = [m for m in modules if f"{m}.py" not in dockerfile]
    assert missing == []
