"""The explicit stopping rule on known metric histories."""

from __future__ import annotations

import pytest

from lbtkit.errors import ConfigError
from lbtkit.stopping import StopRule, plateau_length

from helpers import train_smoke


def rows(*losses, accs=None):
    accs = accs or [0.5] * len(losses)
    return [{"epoch": i + 1, "train_loss": loss, "train_acc": acc}
            for i, (loss, acc) in enumerate(zip(losses, accs, strict=True))]


def test_no_rule_never_stops():
    rule = StopRule()
    assert not rule.active and rule.reason(rows(1.0, 1.0, 1.0)) is None


def test_train_accuracy_target_fires_at_the_first_epoch_that_reaches_it():
    rule = StopRule(train_acc=0.99)
    history = rows(0.5, 0.2, 0.1, accs=[0.9, 0.985, 0.99])
    assert rule.reason(history[:2]) is None
    assert "epoch 3" in rule.reason(history) and "0.9900" in rule.reason(history)


def test_eval_mode_target_reads_the_training_set_evaluated_in_eval_mode():
    rule = StopRule(train_acc=0.99, train_acc_mode="eval")
    assert rule.evaluates_training_set
    history = [{**row, "train_eval_acc": eval_acc} for row, eval_acc in
               zip(rows(0.5, 0.1, accs=[0.995, 0.98]), [0.97, 0.991], strict=True)]
    assert rule.reason(history[:1]) is None  # the running accuracy alone does not count
    assert rule.reason(history) == "train_eval_acc 0.9910 >= 0.99 at epoch 2"
    assert not StopRule(plateau_epochs=2, train_acc_mode="eval").evaluates_training_set


@pytest.mark.parametrize("losses,delta,expected", [
    ((1.0,), 0.01, 0),
    ((1.0, 0.5, 0.25), 0.01, 0),          # improving every epoch
    ((1.0, 0.5, 0.499, 0.498), 0.01, 2),  # two epochs within 1% of the best (0.5)
    ((1.0, 0.5, 0.6, 0.7, 0.4), 0.01, 0),  # a new best resets the count
    ((1.0, 0.5, 0.6, 0.7), 0.0, 2),       # delta 0: any rise or tie counts
])
def test_plateau_length(losses, delta, expected):
    assert plateau_length(rows(*losses), delta) == expected


def test_plateau_rule_fires_after_that_many_flat_epochs():
    rule = StopRule(plateau_epochs=2, plateau_delta=0.01)
    assert rule.reason(rows(1.0, 0.5, 0.499)) is None
    assert "2 epochs" in rule.reason(rows(1.0, 0.5, 0.499, 0.498))


@pytest.mark.parametrize("kwargs,needle", [
    ({"train_acc": 1.5}, "1.5"),
    ({"train_acc": float("nan")}, "nan"),
    ({"plateau_epochs": 0}, "0"),
    ({"plateau_delta": -0.1}, "-0.1"),
    ({"train_acc_mode": "train"}, "stop_train_acc_mode must be one of running, eval"),
])
def test_bad_rules_are_refused_by_name(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        StopRule(**kwargs)


def test_a_run_stops_at_the_first_epoch_that_meets_its_rule(tmp_path):
    import json

    from lbtkit.studies.summary import stop_text

    from helpers import train_smoke

    run_dir = tmp_path / "run"
    results = train_smoke(run_dir, epochs=8, stop_train_acc=0.8)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = next(r["epoch"] for r in rows if r["train_acc"] >= 0.8)
    assert results["status"] == "completed" and first < 8
    assert results["epochs_completed"] == first == len(rows)
    assert results["stopped_early"]["epoch"] == first
    assert "train_acc" in results["stopped_early"]["reason"]
    assert rows[-1]["val_acc"] is not None  # evaluated at the stop, whatever eval_every says
    assert (run_dir / "model.safetensors").is_file()
    assert json.loads((run_dir / "results.json").read_text())["stopped_early"] == \
        results["stopped_early"]
    assert results["stop_rule_met"] == results["stopped_early"]
    # A completed run is not retrained, and a run without a rule records no early stop.
    assert train_smoke(run_dir, epochs=8, stop_train_acc=0.8) == results
    plain = train_smoke(tmp_path / "plain", epochs=3)
    assert plain["stopped_early"] is None and plain["stop_rule_met"] is None
    assert stop_text(plain) == "epochs cap (3)"
    # The rule met exactly at the cap (the same run, a target only its last epoch reaches):
    # not an early stop, but the rule, not the cap, is why it ended.
    accuracies = [json.loads(line)["train_acc"]
                  for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert accuracies[-1] > max(accuracies[:-1]), accuracies
    at_cap = train_smoke(tmp_path / "at-cap", epochs=3, stop_train_acc=accuracies[-1])
    assert at_cap["stopped_early"] is None and at_cap["stop_rule_met"]["epoch"] == 3
    assert stop_text(at_cap) == at_cap["stop_rule_met"]["reason"]
    assert stop_text(at_cap).startswith("train_acc ") and "at epoch 3" in stop_text(at_cap)


def test_an_eval_mode_rule_evaluates_the_training_set_each_epoch(tmp_path):
    import json

    run_dir = tmp_path / "run"
    results = train_smoke(run_dir, epochs=6, stop_train_acc=0.8,
                          stop_train_acc_mode="eval")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["train_eval_acc"] <= 1 and r["train_eval_loss"] > 0 for r in rows)
    first = next(r["epoch"] for r in rows if r["train_eval_acc"] >= 0.8)
    assert results["epochs_completed"] == first
    assert results["stop_rule_met"]["reason"].startswith("train_eval_acc ")
    assert results["final"]["train_eval_acc"] == rows[-1]["train_eval_acc"]
    # a run without the eval-mode rule pays for no extra pass
    plain = train_smoke(tmp_path / "plain", epochs=1, stop_train_acc=0.8)
    assert "train_eval_acc" not in plain["final"]
