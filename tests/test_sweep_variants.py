"""Sweep variants: named override sets crossed with the grid (the remedies preset), from
plan to report."""

from __future__ import annotations

import csv
import json

import pytest

from lbtkit.config import RunConfig, preset_values, sweep_settings
from lbtkit.errors import ConfigError
from lbtkit.report import write_report
from lbtkit.sweep import load_sweep, plan_sweep, run_all, sweep_table

from helpers import assert_user_error

REMEDIES = ["baseline", "reference-b32", "sqrt-warmup", "lars", "lamb", "ghost-bn", "sync-bn",
            "sam"]


def _smoke_base(**changes) -> RunConfig:
    return RunConfig().updated(preset_values("smoke")).updated({"epochs": 1, **changes})


def test_variants_cross_the_grid_inside_the_batch_size(tmp_path):
    variants = {"plain": {}, "sqrt": {"lr_scaling": "sqrt"}, "sam": {"sam_rho": 0.1}}
    plan = plan_sweep(_smoke_base(), {"batch_size": [64, 256], "seed": [0, 1]}, tmp_path,
                      variants=variants)
    names = [entry["config"]["name"] for entry in plan["runs"]]
    assert names == [f"b{b}-s{s}-{v}" for b in (64, 256) for v in variants for s in (0, 1)]
    by_name = {entry["config"]["name"]: entry for entry in plan["runs"]}
    # The smoke preset: base_lr 0.05 at batch 64; each variant scales by its own rule.
    assert by_name["b256-s0-plain"]["config"]["lr"] == pytest.approx(0.2)
    assert by_name["b256-s0-sqrt"]["config"]["lr"] == pytest.approx(0.1)
    assert by_name["b256-s1-sam"]["config"]["sam_rho"] == 0.1
    assert by_name["b256-s1-sam"]["variant"] == "sam"
    assert by_name["b64-s0-plain"]["config"]["sam_rho"] == 0.0
    assert load_sweep(tmp_path)["variants"] == variants
    # A different set of variants over the same directory is refused, naming the difference.
    with pytest.raises(ConfigError, match="variants"):
        plan_sweep(_smoke_base(), {"batch_size": [64, 256], "seed": [0, 1]}, tmp_path,
                   variants={"plain": {}})


@pytest.mark.parametrize("variants, needle", [
    ({"lars": {"optimiser": "lars"}}, "unknown key 'optimiser' in sweep variant 'lars'"),
    ({"a b": {}}, "variant name 'a b'"),
    ({"x": {"output_dir": "elsewhere"}}, "cannot set 'output_dir'"),
    ({"x": {"optimizer": "rmsprop"}}, "rmsprop"),
    ({"x": 3}, "needs a table"),
    ({}, "non-empty"),
    ({"a": {"batch_size": 128}, "b": {"batch_size": 128}}, None),  # distinct names: fine
])
def test_bad_variants_are_refused_naming_them(tmp_path, variants, needle):
    if needle is None:
        plan_sweep(_smoke_base(), {"batch_size": [64]}, tmp_path, variants=variants)
        return
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        plan_sweep(_smoke_base(), {"batch_size": [64]}, tmp_path, variants=variants)


def test_remedies_preset_plans_every_remedy_at_batch_1024(tmp_path):
    grid, variants = sweep_table(sweep_settings(preset="remedies-mobilenetv2"), "preset")
    assert grid == {"batch_size": [1024]} and list(variants) == REMEDIES
    base = RunConfig().updated(preset_values("remedies-mobilenetv2"))
    plan = plan_sweep(base, grid, tmp_path, world_size=4, variants=variants)
    configs = {entry["variant"]: entry["config"] for entry in plan["runs"]}
    assert configs["baseline"]["batch_size"] == 1024
    assert configs["baseline"]["lr"] == pytest.approx(9.6e-3)  # the seed's table
    assert configs["reference-b32"]["batch_size"] == 32
    assert configs["reference-b32"]["lr"] == pytest.approx(3e-4)
    assert configs["sqrt-warmup"]["lr"] == pytest.approx(3e-4 * 32 ** 0.5)
    assert configs["lars"]["optimizer"] == "lars" and configs["lamb"]["optimizer"] == "lamb"
    assert configs["ghost-bn"]["ghost_batch_size"] == 32
    assert configs["sync-bn"]["sync_bn"] is True and configs["sam"]["sam_rho"] == 0.05
    # Apart from what a variant sets, every entry is the seed's recipe.
    for name, config in configs.items():
        for key in ("model", "pretrained", "epochs", "momentum", "weight_decay", "scheduler"):
            assert config[key] == configs["baseline"][key], (name, key)


def test_cpu_remedies_preset_plans_three_seeds_of_each_remedy(tmp_path):
    grid, variants = sweep_table(sweep_settings(preset="remedies-digits"), "preset")
    plan = plan_sweep(RunConfig().updated(preset_values("remedies-digits")), grid, tmp_path,
                      variants=variants)
    assert len(plan["runs"]) == 3 * len(variants)
    assert {entry["config"]["seed"] for entry in plan["runs"]} == {0, 1, 2}
    assert {entry["config"]["batch_size"] for entry in plan["runs"]} == {32, 1024}


def test_cli_plans_the_preset_table_and_flags_replace_its_grid(cli, tmp_path):
    result = cli("sweep", "plan", "--output", tmp_path / "a", "--preset",
                 "remedies-mobilenetv2", "--num-processes", "4")
    assert result.returncode == 0, result.stderr
    plan = json.loads((tmp_path / "a" / "sweep.json").read_text())
    assert [entry["variant"] for entry in plan["runs"]] == REMEDIES
    result = cli("sweep", "plan", "--output", tmp_path / "b", "--preset",
                 "remedies-mobilenetv2", "--batch-sizes", "512", "--seeds", "0,1")
    assert result.returncode == 0, result.stderr
    plan = json.loads((tmp_path / "b" / "sweep.json").read_text())
    assert {entry["config"]["batch_size"] for entry in plan["runs"]} == {32, 512}
    assert len(plan["runs"]) == 2 * len(REMEDIES)


def test_a_config_file_sweep_table_is_for_sweeps_only(cli, tmp_path):
    config = tmp_path / "study.toml"
    config.write_text('epochs = 1\n[sweep]\nbatch_size = [64]\n'
                      '[sweep.variants]\nplain = {}\nlars = { optimizer = "lars", lr = 1.0 }\n')
    result = cli("sweep", "plan", "--output", tmp_path / "s", "--preset", "smoke",
                 "--config", config)
    assert result.returncode == 0, result.stderr
    plan = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [entry["config"]["name"] for entry in plan["runs"]] == ["b64-s0-plain", "b64-s0-lars"]
    result = cli("run", "--preset", "smoke", "--config", config, "--dry-run")
    assert result.returncode == 0, result.stderr
    config.write_text('[sweep.variants]\nx = { optimiser = "lars" }\n')
    assert_user_error(cli("sweep", "plan", "--output", tmp_path / "t", "--preset", "smoke",
                          "--config", config), "optimiser")


def test_report_has_a_variant_column(tmp_path):
    variants = {"plain": {}, "ghost": {"ghost_batch_size": 16}}
    plan_sweep(_smoke_base(), {"batch_size": [64]}, tmp_path, variants=variants)
    assert set(run_all(tmp_path, progress=False).values()) == {"completed"}
    paths = write_report(tmp_path)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [(row["variant"], row["status"]) for row in rows] == [("plain", "completed"),
                                                                ("ghost", "completed")]
    report = paths["report"].read_text()
    assert "| batch size | variant |" in report
    assert "| 64 | ghost |" in report and "| 64 | plain |" in report
