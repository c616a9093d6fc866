"""Static checks of the container recipes: Dockerfile, apptainer.def, Makefile image names.

The real image build runs with ``make image-test`` (needs a Docker daemon), not here. hadolint,
shellcheck and spython come with the dev extras; a missing one fails these tests, not skips.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str) -> str:
    """A dev-extra binary: next to this interpreter (the venv), else on PATH."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[dev]'"
    return found


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    pairs = []
    for text in logical:
        keyword, _, args = text.partition(" ")
        pairs.append((keyword.upper(), args.strip()))
    return pairs


def env_values(instructions: list[tuple[str, str]]) -> dict[str, str]:
    values = {}
    for keyword, args in instructions:
        if keyword == "ENV":
            values.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return values


def makefile_var(name: str) -> str:
    match = re.search(rf"^{name}\s*\?=\s*(\S+)\s*$", (ROOT / "Makefile").read_text(), re.M)
    assert match, f"Makefile defines no {name} ?= ..."
    return match.group(1)


@pytest.fixture(scope="module")
def docker_instructions():
    return dockerfile_instructions(ROOT / "Dockerfile")


@pytest.fixture(scope="module")
def recipe():
    from spython.main.parse.parsers import SingularityParser

    return SingularityParser(str(ROOT / "apptainer.def")).recipe["spython-base"]


def test_base_image_is_a_pinned_cuda_pytorch_build_arg(docker_instructions):
    args = [a for k, a in docker_instructions if k == "ARG" and a.startswith("BASE_IMAGE=")]
    assert len(args) == 1, "Dockerfile needs exactly one ARG BASE_IMAGE=..."
    image = args[0].split("=", 1)[1]
    name, _, tag = image.rpartition(":")
    assert name == "pytorch/pytorch" and tag and tag != "latest", image
    assert re.fullmatch(r"\d+\.\d+\.\d+-cuda\d+\.\d+-cudnn\d+-runtime", tag), tag
    froms = [a for k, a in docker_instructions if k == "FROM"]
    assert froms == ["${BASE_IMAGE}"], froms


def test_runs_lbtkit_as_a_non_root_user(docker_instructions):
    users = [a for k, a in docker_instructions if k == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), users
    entrypoint = [a for k, a in docker_instructions if k == "ENTRYPOINT"]
    assert [json.loads(a) for a in entrypoint] == [["lbtkit"]]


def test_keeps_the_base_torch_and_the_pip_cache_out(docker_instructions):
    runs = " ".join(a for k, a in docker_instructions if k == "RUN")
    installs = re.findall(r"pip install [^&]*", runs)
    assert installs and all("--no-cache-dir" in i for i in installs), installs
    # Dependencies go in with the base's torch and torchvision as constraints; lbtkit itself
    # with --no-deps: no step may swap the base's CUDA torch for a PyPI one.
    assert all("--constraint" in i or "--no-deps" in i for i in installs), installs
    constraints = re.search(r'python -c (.*?) > (\S+)', runs)
    assert constraints and constraints.group(2) in runs.split("--constraint", 1)[1]
    assert '"torch", "torchvision"' in constraints.group(1), "pin both of the base's packages"
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*" and "!lbtkit/" in ignore, "the build context should be an allow-list"


def test_image_environment_isolates_caches(docker_instructions, recipe):
    env = env_values(docker_instructions)
    assert env["HF_HOME"].startswith("/opt/") and env["TORCH_HOME"].startswith("/opt/")
    environ = dict(item.split("=", 1) for item in recipe.environ)
    assert environ["HF_HOME"] == env["HF_HOME"]
    assert environ["TORCH_HOME"] == env["TORCH_HOME"]


def test_apptainer_def_builds_from_the_makefile_image(recipe):
    header = (ROOT / "apptainer.def").read_text()
    bootstrap = re.search(r"^Bootstrap:\s*(\S+)", header, re.M | re.I)
    assert bootstrap and bootstrap.group(1) in ("docker-daemon", "docker")
    image = f"{makefile_var('IMAGE_NAME')}:{makefile_var('IMAGE_TAG')}"
    assert recipe.fromHeader == image.lower()
    assert re.search(rf"^From:\s*{re.escape(image)}\s*$", header, re.M)
    version = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert makefile_var("IMAGE_TAG") == version.group(1), "image tag follows the package version"


def test_apptainer_def_runs_and_tests_lbtkit(recipe):
    assert recipe.cmd.strip() == 'exec lbtkit "$@"'
    assert recipe.test, "apptainer.def needs a %test section"
    assert any("lbtkit doctor" in line for line in recipe.install), recipe.install
    text = (ROOT / "apptainer.def").read_text()
    for section in ("%labels", "%help", "%environment"):
        assert re.search(rf"^{section}\s*$", text, re.M), section


def test_hadolint_is_clean():
    files = [ROOT / "Dockerfile", *sorted((ROOT / "docker").glob("*.Dockerfile"))]
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "warning", *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_is_clean_on_the_image_scripts():
    scripts = sorted((ROOT / "docker").glob("*.sh"))
    assert scripts
    result = subprocess.run([tool("shellcheck"), *map(str, scripts)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
