"""Options declared once: the analysis commands' options are generated from their specs
(lbtkit.cli.flags), so the defaults a command shows are the spec's and each flag sets its field;
the options several commands share (lbtkit.cli.options) behave alike everywhere."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from lbtkit.cli import app
from lbtkit.cli.flags import with_spec_flags
from lbtkit.config import RunConfig
from lbtkit.specs import (
    InterpolationSpec,
    KeskarStudySpec,
    NoiseScaleSpec,
    PlaneSpec,
    SharpnessSpec,
    Spec,
)

# --- with_spec_flags on a spec of its own -------------------------------------------------------


@dataclass(frozen=True)
class Toy(Spec):
    kind: ClassVar[str] = "toy spec"

    size: int = field(default=8, metadata={"help": "a size"})
    rate: float = field(default=0.5, metadata={"help": "a rate"})
    names: tuple[str, ...] = field(default=("a", "b"),
                                   metadata={"help": "names", "flag": "name-list"})
    fast: bool = field(default=False, metadata={"help": "go fast"})
    strict: bool = field(default=False, metadata={"help": "be strict", "switch": True})
    limit: int | None = field(default=None, metadata={"help": "a limit"})
    internal: int = 0  # no help: not an option


@dataclass(frozen=True)
class Pair(Spec):
    kind: ClassVar[str] = "pair spec"

    toy: Toy = field(default_factory=lambda: Toy(size=16, fast=True))


def _toy_command(spec: Spec, **options: Any) -> tuple[typer.Typer, dict]:
    """A one-command app whose command records what it was given."""
    toy_app = typer.Typer(add_completion=False, rich_markup_mode=None)
    seen: dict = {}

    @toy_app.command()
    @with_spec_flags(spec, **options)
    def main(
        first: Annotated[int, typer.Option(help="before")] = 1,
        *,
        spec_flags: dict,
        last: Annotated[int, typer.Option(help="after")] = 2,
    ) -> None:
        seen.update(spec_flags=spec_flags, first=first, last=last)

    return toy_app, seen


def _options(toy_app: typer.Typer) -> list[str]:
    return [param.opts[0] for param in typer.main.get_command(toy_app).params]


def test_options_stand_where_spec_flags_does_with_the_specs_defaults():
    toy_app, seen = _toy_command(Toy(size=3), exclude=("internal",))
    assert _options(toy_app) == ["--first", "--size", "--rate", "--name-list", "--fast",
                                 "--strict", "--limit", "--last"]
    assert CliRunner().invoke(toy_app, []).exit_code == 0
    assert seen == {"first": 1, "last": 2, "spec_flags": {
        "size": 3, "rate": 0.5, "names": "a,b", "fast": False, "strict": False, "limit": None}}
    shown = " ".join(CliRunner().invoke(toy_app, ["--help"]).output.split())
    assert "a size [default: 3]" in shown and "names [default: a,b]" in shown
    assert "--fast / --no-fast go fast [default: no-fast]" in shown
    assert "--strict be strict" in shown and "--no-strict" not in shown


def test_each_flag_sets_its_field():
    toy_app, seen = _toy_command(Toy(), exclude=("internal",))
    result = CliRunner().invoke(toy_app, ["--size", "5", "--rate", "2", "--name-list", "x",
                                          "--fast", "--strict", "--limit", "7", "--last", "9"])
    assert result.exit_code == 0, result.output
    assert seen["spec_flags"] == {"size": 5, "rate": 2.0, "names": "x", "fast": True,
                                  "strict": True, "limit": 7}
    assert seen["last"] == 9


def test_a_bad_number_is_named():
    toy_app, _ = _toy_command(Toy(), exclude=("internal",))
    result = CliRunner().invoke(toy_app, ["--size", "big"])
    assert result.exit_code == 2
    assert "'big' is not a whole number" in result.output


def test_nested_fields_by_path_with_an_own_parameter_among_them():
    toy_app, seen = _toy_command(Pair(), fields=("toy.size", "first", "toy.fast"),
                                 help={"toy.size": "the toy's size"})
    assert _options(toy_app) == ["--size", "--first", "--fast", "--last"]
    assert CliRunner().invoke(toy_app, []).exit_code == 0
    assert seen["spec_flags"] == {"toy": {"size": 16, "fast": True}}
    assert "the toy's size" in CliRunner().invoke(toy_app, ["--help"]).output


def test_a_field_without_help_is_refused_when_the_command_is_made():
    with pytest.raises(TypeError, match="internal"):
        _toy_command(Toy())


# --- the analysis commands --------------------------------------------------------------------

# (command, its spec, the spec's fields it does not offer as options)
ANALYSES = [
    ("interpolate", InterpolationSpec, ()),
    ("landscape", PlaneSpec, ("x", "y")),
    ("sharpness", SharpnessSpec, ("gradient_samples",)),
    ("noise-scale", NoiseScaleSpec, ("chunk_size",)),
]
RUN_ARGS = {"interpolate": ["sb", "lb", "--output", "out"], "landscape": ["run"],
            "sharpness": ["run"], "noise-scale": ["run"]}


@pytest.fixture
def built(monkeypatch):
    """The spec (or study base and spec) each command hands the library, which is replaced
    by a recorder that ends the command."""
    import lbtkit.landscape
    import lbtkit.landscape.plane
    import lbtkit.noise_scale
    import lbtkit.studies.keskar

    specs: dict[str, Any] = {}

    def recorder(name):
        def record(*args, **kwargs):  # the spec first; the study: the base config, the spec
            specs[name] = args[:2] if name == "study keskar" else args[0]
            raise typer.Exit(0)
        return record

    monkeypatch.setattr(lbtkit.landscape, "run_interpolation", recorder("interpolate"))
    monkeypatch.setattr(lbtkit.landscape.plane, "run_landscape", recorder("landscape"))
    monkeypatch.setattr(lbtkit.landscape, "run_sharpness", recorder("sharpness"))
    monkeypatch.setattr(lbtkit.noise_scale, "run_noise_scale", recorder("noise-scale"))
    monkeypatch.setattr(lbtkit.studies.keskar, "keskar_study", recorder("study keskar"))
    return specs


def _command(path: str):
    command = typer.main.get_command(app)
    for name in path.split():
        command = command.commands[name]
    return command


@pytest.mark.parametrize(("name", "spec", "left_out"), ANALYSES, ids=[a[0] for a in ANALYSES])
def test_every_field_is_an_option(name, spec, left_out):
    flags = {opt for param in _command(name).params for opt in param.opts}
    for f in dataclasses.fields(spec):
        if f.name not in left_out:
            assert "--" + f.metadata.get("flag", f.name.replace("_", "-")) in flags, f.name


@pytest.mark.parametrize(("name", "spec", "left_out"), ANALYSES, ids=[a[0] for a in ANALYSES])
def test_without_flags_a_command_measures_with_its_specs_defaults(cli, built, name, spec,
                                                                   left_out):
    cli(name, *RUN_ARGS[name], check=0)
    assert built[name] == spec()


def test_sharpness_flags_set_their_fields(cli, built):
    cli("sharpness", "run", "--eps", "1e-2", "--subspace", "full,random:100", "--iters", "3",
        "--hessian", "--top-k", "2", "--hessian-iters", "5", "--trace", "--trace-samples", "4",
        "--samples", "99", "--eval-batch-size", "33", "--seed", "5", "--bn", "running,batch",
        check=0)
    assert built["sharpness"] == SharpnessSpec(
        eps=(1e-2,), subspaces=("full", "random:100"), iters=3, hessian=True, top_k=2,
        hessian_iters=5, trace=True, trace_samples=4, samples=99, batch_size=33, seed=5,
        bn=("running", "batch"))


def test_landscape_grid_and_switch(cli, built):
    cli("landscape", "run", "--grid", "0:1:3", "--ignore-bn-bias", "--norm", "layer", check=0)
    assert built["landscape"] == PlaneSpec(x=(0.0, 0.5, 1.0), y=(0.0, 0.5, 1.0),
                                           ignore_bn_bias=True, norm="layer")


def test_study_keskar_measures_with_the_study_specs_defaults_and_the_base_config(cli, built):
    cli("study", "keskar", "--output", "out", check=0)
    base, spec = built["study keskar"]
    default = KeskarStudySpec()
    assert spec == default.updated(
        interpolation=default.interpolation.updated(eval_batch_size=base.eval_batch_size),
        sharpness=default.sharpness.updated(batch_size=base.eval_batch_size, seed=base.seed))
    assert base.eval_batch_size == RunConfig.eval_batch_size


def test_study_keskar_flags_set_the_nested_fields(cli, built):
    cli("study", "keskar", "--output", "out", "--sb", "32", "--lb", "64", "--alphas", "0,1",
        "--bn", "batch-stats", "--eps", "1e-2", "--subspace", "random:10", "--iters", "2",
        "--hessian-k", "0", "--no-trace", "--samples", "50", "--eval-batch-size", "128",
        "--seed", "9", check=0)
    _, spec = built["study keskar"]
    assert spec == KeskarStudySpec(
        sb=32, lb=64, interpolation=InterpolationSpec(alphas=(0.0, 1.0), bn="batch-stats",
                                                      eval_batch_size=128),
        sharpness=SharpnessSpec(eps=(1e-2,), subspaces=("random:10",), iters=2, hessian=False,
                                trace=False, samples=50, batch_size=128, seed=9))


def test_keskar_help_shows_its_own_texts_and_the_studys_defaults(cli):
    shown = " ".join(cli("study", "keskar", "--help", check=0).stdout.split())
    assert "--eps <str> comma list of sharpness box sizes [default: 1e-3,5e-4]" in shown
    assert "--trace / --no-trace Hutchinson trace [default: trace]" in shown
    assert "--alphas <str> interpolation grid [default: -1:2:25]" in shown


# --- the shared options -----------------------------------------------------------------------

# Every command with --num-processes, and the least it needs to get to checking it.
NUM_PROCESSES = {
    "run": ["--dry-run"], "sweep plan": ["--output", "sweep"],
    "interpolate": RUN_ARGS["interpolate"], "landscape": ["run"], "sharpness": ["run"],
    "noise-scale": ["run"], "study keskar": ["--output", "out"],
}


def _commands_with(option: str) -> set[str]:
    def walk(command, path):
        if any(option in param.opts for param in command.params):
            yield " ".join(path)
        for name, sub in (getattr(command, "commands", None) or {}).items():
            yield from walk(sub, [*path, name])
    return set(walk(typer.main.get_command(app), []))


def test_num_processes_is_offered_where_expected():
    assert _commands_with("--num-processes") == set(NUM_PROCESSES)


@pytest.mark.parametrize(("value", "needle"), [("0", "--num-processes must be >= 1, got 0"),
                                               ("two", "'two' is not a whole number")])
@pytest.mark.parametrize("path", sorted(NUM_PROCESSES))
def test_num_processes_is_checked_alike_everywhere(cli, path, value, needle):
    result = cli(*path.split(), *NUM_PROCESSES[path], "--num-processes", value)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert needle in result.stderr


def test_jobs_has_its_short_form_everywhere():
    for path in _commands_with("--jobs"):
        assert "-j" in next(p for p in _command(path).params if "--jobs" in p.opts).opts, path


def test_study_fashion_help_states_the_studys_seed_counts(cli):
    from lbtkit.studies.fashion_presets import FULL, QUICK

    shown = " ".join(cli("study", "fashion", "--help", check=0).stdout.split())
    assert f"(default: {len(FULL.seeds)}; {len(QUICK.seeds)} with --quick)" in shown
    assert f"--quick {len(QUICK.seeds)} seeds" in shown


def test_the_cli_imports_no_torch():
    """The CLI answers --help and parses without torch's seconds of imports: commands import
    what computes only when they run."""
    code = "import sys, lbtkit.cli; print(sorted(m for m in sys.modules if m == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
