"""Class 4 of issue 25: every file a user hands over is hostile.

Each JSON (and TOML) file lbtkit reads is damaged every way a generator can name (not JSON,
the wrong type, nested absurdly deep, empty, not UTF-8, a number of 5000 digits, a FIFO that
would block a reader): a command that needs the file ends with one line naming it, exit 2; a
command that only reports (``lbtkit report``, ``sweep status``, the job step) goes on without
it. Then image folders (a decompression bomb, a FIFO, a folder named like an image, an
unreadable file), damaged checkpoint contents, and weights that are all NaN.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lbtkit.checkpoint import latest_checkpoint
from lbtkit.config import RunConfig, preset_values
from lbtkit.errors import CheckpointError, UserError
from lbtkit.fileio import MAX_JSON_DEPTH, read_json, write_json
from lbtkit.rundir import RunDir
from lbtkit.sweep import plan_sweep

from helpers import assert_user_error, invoke_cli, run_cli, train_smoke

FIFO = object()  # a damage that is not text: the file is a named pipe

# Every way a JSON file is damaged, as the bytes it then holds. "wrong type" is each file's own
# (a list where an object is, a string where a number is): WRONG_TYPE below.
JSON_DAMAGE: dict[str, bytes | object] = {
    "not JSON": b'{"status": "comp',
    "nested 100000 deep": b"[" * 100_000 + b"]" * 100_000,
    f"nested {MAX_JSON_DEPTH + 1} deep": b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1),
    "empty": b"",
    "not UTF-8": b'{"a": "\xff\xfe"}',
    "a number of 5000 digits": b'{"a": ' + b"7" * 5000 + b"}",
    "a FIFO": FIFO,
}
TOML_DAMAGE: dict[str, bytes | object] = {
    "not TOML": b"{not toml",
    "nested 100000 deep": b"a = " + b"[" * 100_000 + b"]" * 100_000,
    "not UTF-8": b'model = "\xff"',
    "a number of 5000 digits": b"batch_size = " + b"7" * 5000,
    "a FIFO": FIFO,
}


def damage(path: Path, how: bytes | object) -> None:
    path.unlink(missing_ok=True)
    if how is FIFO:
        os.mkfifo(path)
    else:
        path.write_bytes(how)


def _smoke(**values) -> RunConfig:
    return RunConfig().updated(preset_values("smoke")).updated({"epochs": 1, **values})


# --- files a command needs: one line naming the file, exit 2 -------------------------------------


def _sweep_plan(tmp_path: Path) -> tuple[Path, list]:
    sweep = tmp_path / "sweep"
    plan_sweep(_smoke(), {"batch_size": [32, 64]}, sweep)
    return sweep / "sweep.json", ["sweep", "status", sweep]


def _resumed_config(tmp_path: Path) -> tuple[Path, list]:
    """A run directory's config.json, read before a run resumes there."""
    run = RunDir(tmp_path / "run")
    run.create()
    write_json(run.config_path, _smoke().resolved().to_dict())
    run.append_metrics({"epoch": 1, "val_acc": 0.5})  # something trained: the config matters
    return run.config_path, ["run", "--preset", "smoke", "--epochs", "1", "--no-progress",
                             "--output", run.root]


def _repeated_config(tmp_path: Path) -> tuple[Path, list]:
    """A run's config.json handed to --config (to repeat the run)."""
    path = tmp_path / "config.json"
    write_json(path, _smoke().resolved().to_dict())
    return path, ["run", "--config", path, "--dry-run"]


def _toml_config(tmp_path: Path) -> tuple[Path, list]:
    path = tmp_path / "c.toml"
    path.write_text('model = "f1"\nbatch_size = 64\n')
    return path, ["run", "--preset", "smoke", "--config", path, "--dry-run"]


def _with(path: Path, change: Callable[[dict], None]) -> bytes:
    document = json.loads(path.read_text())
    change(document)
    return json.dumps(document).encode()


def _entry_batch_size(value):
    return lambda plan: plan["runs"][0]["config"].update(batch_size=value)


# Each file: (its set-up, its damages, its wrong types: name -> (the bytes from the valid file,
# what the one line names)). A damage's line names the file.
NEEDED_FILES = {
    "sweep.json": (_sweep_plan, JSON_DAMAGE, {
        "a list where the plan is": (lambda path: b"[]", "sweep.json holds an array"),
        "a string where a batch size is": (
            lambda path: _with(path, _entry_batch_size("abc")), "batch_size = 'abc'"),
        "a list where a batch size is": (
            lambda path: _with(path, _entry_batch_size([64])), "batch_size = [64]"),
        "an object where the runs are": (
            lambda path: _with(path, lambda plan: plan.update(runs={})), "runs must be a list"),
    }),
    "config.json of a run resumed": (_resumed_config, JSON_DAMAGE, {
        "a list where the config is": (lambda path: b"[1, 2]", "config.json holds an array"),
        "a string where a number is": (
            lambda path: _with(path, lambda config: config.update(lr="abc")), "lr = 'abc'"),
    }),
    "config.json given to --config": (_repeated_config, JSON_DAMAGE, {
        "a string where the config is": (lambda path: b'"f1"', "config.json holds a string"),
        "a string where a number is": (
            lambda path: _with(path, lambda config: config.update(epochs="2")), "epochs = '2'"),
    }),
    "a TOML --config": (_toml_config, TOML_DAMAGE, {
        "a string where a number is": (lambda path: b'batch_size = "abc"\n', "batch_size"),
        "a table where a name is": (lambda path: b"[model]\nwidth = 2\n", "model = {"),
    }),
}
NEEDED_CASES = [(file, kind) for file, (_, damages, wrong) in NEEDED_FILES.items()
                for kind in [*damages, *wrong]]


@pytest.mark.parametrize(("file", "kind"), NEEDED_CASES,
                         ids=[f"{file}: {kind}" for file, kind in NEEDED_CASES])
def test_a_damaged_file_a_command_needs_is_one_line_naming_it(tmp_path, file, kind):
    setup, damages, wrong = NEEDED_FILES[file]
    path, argv = setup(tmp_path)
    if kind in damages:
        damage(path, damages[kind])
        needle = path.name
    else:
        make, needle = wrong[kind]
        damage(path, make(path))
    assert_user_error(invoke_cli(*argv, tmp_path=tmp_path), needle)


def test_a_damaged_plan_in_a_fresh_interpreter_is_one_line(tmp_path):
    """As a user starts it: the interpreter's own stack, not the test runner's."""
    path, argv = _sweep_plan(tmp_path)
    damage(path, JSON_DAMAGE["nested 100000 deep"])
    assert_user_error(run_cli(*argv, tmp_path=tmp_path), "sweep.json nests more than")


@pytest.mark.parametrize("kind", list(JSON_DAMAGE))
def test_the_json_reader_names_the_file_and_the_damage(tmp_path, kind):
    path = tmp_path / "state.json"
    damage(path, JSON_DAMAGE[kind])
    with pytest.raises(CheckpointError, match=r"state\.json") as caught:
        read_json(path, kind=dict)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_the_json_reader_refuses_the_wrong_top_level_type(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[1]")
    with pytest.raises(CheckpointError, match="holds an array where an object belongs"):
        read_json(path, kind=dict)
    assert read_json(path) == [1]  # any type when none is asked for


# --- files a report only reads: it goes on without them ------------------------------------------


def _fake_completed(entry: dict, best: float = 0.8) -> dict:
    run = RunDir(entry["run_dir"])
    run.create()
    write_json(run.config_path, entry["config"])
    run.append_metrics({"epoch": 1, "step": 10, "train_loss": 1.0, "val_acc": best})
    results = {"status": "completed", **entry["batch_plan"], "epochs_completed": 1,
               "best_val_acc": best, "final": {"train_loss": 1.0, "val_acc": best},
               "train_seconds": 10.0, "images_per_second": 100.0}
    write_json(run.results_path, results)
    return results


# A results.json that parses but holds the wrong type: each field in turn.
RESULT_FIELDS = ["status", "best_val_acc", "final", "epochs_completed", "train_seconds",
                 "images_per_second", "world_size", "per_device_batch_size"]
WRONG_VALUES = {"a string": "abc", "a list": [1, 2], "an integer of 400 digits": 10**400}


def test_report_and_status_never_fail_on_a_broken_entry(tmp_path):
    """One sweep holds every damage at once, an entry each; the report lists them all."""
    damaged = [*JSON_DAMAGE, "a list", *[f"{field} is {what}" for field in RESULT_FIELDS
                                         for what in WRONG_VALUES]]
    sweep = plan_sweep(_smoke(), {"seed": list(range(len(damaged) + 1))}, tmp_path / "sweep")
    entries = sweep["runs"]
    _fake_completed(entries[0], best=0.9)  # one good entry
    for entry, kind in zip(entries[1:], damaged, strict=True):
        results = _fake_completed(entry)
        path = RunDir(entry["run_dir"]).results_path
        noise = Path(entry["run_dir"]) / "noise_scale.json"
        if kind in JSON_DAMAGE:
            damage(path, JSON_DAMAGE[kind])
            damage(noise, JSON_DAMAGE[kind])  # read for the noise-scale section
            damage(RunDir(entry["run_dir"]).metrics_path, JSON_DAMAGE[kind])
        elif kind == "a list":
            path.write_text("[]")
        else:
            field, what = kind.split(" is ")
            path.write_text(json.dumps({**results, field: WRONG_VALUES[what]}))
            noise.write_text(json.dumps({"b_simple": WRONG_VALUES[what]}))
    for argv in (["report", sweep["sweep_dir"]], ["sweep", "status", sweep["sweep_dir"]]):
        result = invoke_cli(*argv, tmp_path=tmp_path)
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        assert all(line.startswith("warning: ") for line in result.stderr.splitlines()), \
            result.stderr
    with open(Path(sweep["sweep_dir"]) / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(entries)  # every entry listed, none dropped
    assert rows[0]["status"] == "completed" and rows[0]["best_val_acc"] == "0.9"
    states = {kind: row["status"] for kind, row in zip(damaged, rows[1:], strict=True)}
    assert {states[kind] for kind in [*JSON_DAMAGE, "a list"]} == {"unreadable"}
    assert states["status is a string"] == "abc"  # a status of its own, shown as it is


@pytest.mark.parametrize("kind", [*JSON_DAMAGE, "a list"])
def test_the_job_step_counts_on_without_a_damaged_requeue_record(tmp_path, kind):
    from lbtkit.slurm.requeue import REQUEUE_FILE, count_idle_restart

    (tmp_path / "clean").mkdir()
    (tmp_path / "damaged").mkdir()
    damage(tmp_path / "damaged" / REQUEUE_FILE, JSON_DAMAGE.get(kind, b"[]"))
    for _ in range(2):  # as if there were none, and the record is whole again
        assert count_idle_restart(tmp_path / "damaged", None) == \
            count_idle_restart(tmp_path / "clean", None)


@pytest.mark.parametrize("kind", list(JSON_DAMAGE))
def test_a_damaged_hash_cache_is_hashed_again(tmp_path, kind):
    from lbtkit.data.provenance import _read_cache

    damage(tmp_path / "x.sha256.json", JSON_DAMAGE[kind])
    assert _read_cache(tmp_path / "x.sha256.json", {"size": 1}) is None


def test_a_metrics_line_nested_absurdly_deep_is_dropped(tmp_path):
    run = RunDir(tmp_path)
    run.append_metrics({"epoch": 1, "val_acc": 0.5})
    with run.metrics_path.open("a") as handle:
        handle.write("[" * 100_000 + "]" * 100_000 + "\n")
    assert run.read_metrics() == [{"epoch": 1, "val_acc": 0.5}]


# --- image folders ---------------------------------------------------------------------------


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (no pixels follow)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _image_folder(root: Path) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            Image.new("RGB", (8, 8), (40, 80, 120)).save(root / split / label / "0.png")
    return root


IMAGE_DAMAGE = {
    "a 20000x20000 header (decompression bomb)": (
        lambda p: p.write_bytes(_png_header(20_000, 20_000)), "exceeds limit"),
    "a 10000x10000 header (above Pillow's warning limit)": (
        lambda p: p.write_bytes(_png_header(10_000, 10_000)), "exceeds limit"),
    "a FIFO": (os.mkfifo, "not a regular file"),
    "a folder named like an image": (os.mkdir, "not a regular file"),
}


@pytest.mark.parametrize("kind", list(IMAGE_DAMAGE))
def test_a_hostile_image_is_one_error_naming_it(tmp_path, kind):
    from lbtkit.data import load_dataset

    root = _image_folder(tmp_path / "pets")
    make, needle = IMAGE_DAMAGE[kind]
    make(root / "train" / "b" / "1.png")
    with pytest.raises(UserError, match=needle) as caught:  # a FIFO returns: no hang
        load_dataset(f"imagefolder:{root}", "unused", image_size=8)
    assert "1.png" in str(caught.value)


def test_an_unreadable_image_is_one_error_naming_it(tmp_path, monkeypatch):
    """chmod 000 does not stop root (the tests' user): the refusal is simulated."""
    from PIL import Image

    from lbtkit.data import load_dataset

    root = _image_folder(tmp_path / "pets")
    real_open = Image.open

    def refuse(path, *args, **kwargs):
        if Path(path).name == "0.png" and Path(path).parent.name == "b":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(UserError, match=r"b/0\.png: .*Permission denied"):
        load_dataset(f"imagefolder:{root}", "unused", image_size=8)


def test_a_decompression_bomb_in_a_run_is_one_line(tmp_path):
    root = _image_folder(tmp_path / "pets")
    (root / "val" / "a" / "bomb.png").write_bytes(_png_header(20_000, 20_000))
    result = invoke_cli("run", "--preset", "smoke", "--dataset", f"imagefolder:{root}",
                        "--image-size", "8", "--no-progress", "--output", tmp_path / "run",
                        tmp_path=tmp_path)
    assert_user_error(result, "bomb.png")


# --- damaged checkpoint contents ---------------------------------------------------------------


def _save_rng(checkpoint: Path, state: torch.Tensor) -> None:
    from safetensors.torch import save_file

    save_file({"cpu": state}, str(checkpoint / "rng-rank0.safetensors"))


def _edit_state(checkpoint: Path, **values) -> None:
    path = checkpoint / "state.json"
    meta = json.loads(path.read_text())
    meta["state"].update(values)
    path.write_text(json.dumps(meta))


CHECKPOINT_DAMAGE = {
    "an RNG state of the wrong size": (
        lambda c: _save_rng(c, torch.get_rng_state()[:100]), "rng-rank0.safetensors"),
    "an RNG state of the wrong dtype": (
        lambda c: _save_rng(c, torch.get_rng_state().to(torch.int32)), "rng-rank0.safetensors"),
    "an optimizer.pt holding a list": (
        lambda c: torch.save([1, 2, 3], c / "optimizer.pt"),
        "optimizer.pt holds a list, not an optimizer state"),
    "an optimizer.pt with param_groups of numbers": (
        lambda c: torch.save({"state": {}, "param_groups": [1]}, c / "optimizer.pt"),
        "optimizer.pt"),
    "train_seconds 'abc' in state.json": (
        lambda c: _edit_state(c, train_seconds="abc"), "'train_seconds' is 'abc'"),
    "best_val_acc a list in state.json": (
        lambda c: _edit_state(c, best_val_acc=[0.5]), "'best_val_acc'"),
    "scaler a string in state.json": (lambda c: _edit_state(c, scaler="x"), "'scaler'"),
    **{f"state.json {kind}": ((lambda c, how=how: damage(c / "state.json", how)), "state.json")
       for kind, how in JSON_DAMAGE.items()},
}


@pytest.mark.parametrize("kind", list(CHECKPOINT_DAMAGE))
def test_damaged_checkpoint_contents_are_one_line(tmp_path, checkpointed, kind):
    run_dir = tmp_path / "run"
    shutil.copytree(checkpointed, run_dir)
    make, needle = CHECKPOINT_DAMAGE[kind]
    make(latest_checkpoint(run_dir / "checkpoints"))
    result = invoke_cli("run", "--preset", "smoke", "--epochs", "2", "--no-progress",
                        "--output", run_dir, tmp_path=tmp_path)
    assert_user_error(result, needle)
    assert "delete its checkpoint directory to resume from an earlier one" in result.stderr


@pytest.mark.parametrize("state", [None, "abc", {}, {"ema_per_rank": []},
                                   {"ema_per_rank": [[1.0, 2.0]]},
                                   {"ema_per_rank": [[1.0, 2.0, float("nan")]]},
                                   {"ema_per_rank": [[1.0, 2.0, "x"]]}])
def test_a_damaged_noise_scale_state_is_one_error(state):
    """The moving averages a 2-process run with --log-noise-scale keeps in state.json."""
    from lbtkit.noise_scale import ema_rows

    with pytest.raises(CheckpointError, match="noise-scale state is damaged"):
        ema_rows(state, 3)
    assert ema_rows({"ema_per_rank": [[1, 2.0, 3.0]] * 2}, 3) == [[1, 2.0, 3.0]] * 2


# --- weights that are all NaN --------------------------------------------------------------------


def test_noise_scale_at_nan_weights_is_one_line(tmp_path):
    from safetensors.torch import load_file, save_file

    run_dir = tmp_path / "run"
    train_smoke(run_dir, epochs=1)
    weights = tmp_path / "nan.safetensors"
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
               for k, v in load_file(str(run_dir / "model.safetensors")).items()}, str(weights))
    result = invoke_cli("noise-scale", run_dir, "--weights", weights, "--batches", "8,32",
                        "--draws", "2", tmp_path=tmp_path)
    assert_user_error(result, "nan.safetensors hold NaN or inf")


def test_the_gradient_norms_of_nan_have_no_error_bar():
    from lbtkit.noise_scale import gradient_sq

    measured = gradient_sq([float("nan"), 1.0, 2.0], batch_size=8)
    assert measured.std_error is None  # statistics.stdev raised AttributeError here
