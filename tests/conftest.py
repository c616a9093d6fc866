"""pytest's hooks and fixtures for the suite; the helpers the tests import are in helpers.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from helpers import invoke_cli, run_cli, train_smoke

# The files that take minutes each (one real SLURM with its job waits, the quick Fashion-MNIST
# study, the multi-process analyses), collected first: under pytest-xdist (make test) a
# worker starts on them while the other works through the many short files, instead of one
# of them being left to run alone at the end.
LONG_FILES = ("test_slurm.py", "test_fashion_study.py", "test_landscape_cli.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in LONG_FILES)  # stable: order kept within


@pytest.fixture
def cli(tmp_path):
    """The CLI in this process (invoke_cli); ``fresh=True`` runs it in a fresh interpreter."""
    def call(*args: str, fresh: bool = False, **kwargs) -> subprocess.CompletedProcess:
        return (run_cli if fresh else invoke_cli)(*args, tmp_path=tmp_path, **kwargs)

    return call


# In-process training on a 2-core machine that also runs subprocess tests: one thread each
# avoids oversubscription (several times faster here, and the same numbers).
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory) -> Path:
    """A 2-epoch smoke run with its epoch-1 checkpoint, as a kill before the end leaves it
    (test_faults, test_hostile_files)."""
    run_dir = tmp_path_factory.mktemp("checkpointed") / "run"
    assert train_smoke(run_dir, epochs=2)["status"] == "completed"
    (run_dir / "results.json").unlink()
    (run_dir / "model.safetensors").unlink()
    return run_dir
