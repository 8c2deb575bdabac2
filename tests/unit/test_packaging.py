"""The images can be built: each Dockerfile copies every package pyproject.toml installs (the image
build runs `pip install -e .`, which fails on a package folder it cannot find; there is no Docker
engine on the development machines, so this is checked here)."""

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "docker").glob("*.Dockerfile")), ids=lambda p: p.name)
def test_every_installed_package_is_copied_into_the_image(dockerfile):
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    copied = set(re.findall(r"^COPY (\w+) \./\1$", dockerfile.read_text(), flags=re.MULTILINE))
    assert sorted(set(packages) - copied) == []
