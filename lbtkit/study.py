"""``lbtkit study keskar``: Keskar et al. 2016 end to end, in one resumable output directory.

    OUTPUT/init.safetensors   the shared initial weights: both runs start from them
    OUTPUT/sb/  OUTPUT/lb/    the small-batch and large-batch run directories, each with its
                              sharpness.json
    OUTPUT/interpolation/     interpolation.csv, interpolation.png, interpolation.json
    OUTPUT/report.md          the figure, the SB/LB table (the layout of the paper's Tables 2-3)
                              and a comparison computed from the numbers

Every step is also a command of its own (``lbtkit run``, ``interpolate``, ``sharpness``), so a
cluster can run them as separate jobs. Re-running the study resumes: completed runs are not
retrained, and an interpolation or sharpness file newer than both runs' weights, made with the
same settings, is kept.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from lbtkit.checkpoint import load_weights, save_weights
from lbtkit.config import RunConfig
from lbtkit.data import load_dataset
from lbtkit.errors import ConfigError
from lbtkit.landscape import (
    BN_MODES,
    SPLITS,
    interpolation_meta,
    parse_alphas,
    parse_splits,
    run_interpolation,
    run_sharpness,
    sharpness_settings,
)
from lbtkit.models import build_model
from lbtkit.rundir import STATUS_COMPLETED, RunDir, atomic_write_text, read_json

DEFAULT_ALPHAS = "-1:2:25"
LABELS = ("sb", "lb")
# Below this relative difference two sharpness values count as equal in the report's sentence.
SAME_SHARPNESS = 0.05


def keskar_study(
    base: RunConfig,
    *,
    sb: int = 256,
    lb: int = 5000,
    output: str | Path,
    alphas: Sequence[float] | None = None,
    splits: Sequence[str] = SPLITS,
    bn: str = "recalibrate",
    bn_samples: int | None = None,
    eps: Sequence[float] = (1e-3, 5e-4),
    subspace: str | Sequence[str] = "full",
    iters: int = 10,
    hessian_k: int = 1,
    hessian_iters: int = 20,
    trace: bool = True,
    trace_samples: int = 100,
    samples: int = 4096,
    progress: bool = True,
) -> dict[str, Any]:
    """Train SB (batch ``sb``) and LB (batch ``lb``) from one initialisation, interpolate,
    measure sharpness, write ``report.md``.

    ``base`` should be unresolved: with ``lr`` unset each run gets ``base_lr`` scaled to its
    own batch by ``lr_scaling`` (the Keskar presets use "none": the same Adam lr for both).
    ``hessian_k`` 0 skips the Hessian. Returns {"status", ...}: a status other than
    "completed" is that of the training run that stopped the study (diverged, interrupted).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "the study runs in one process; to use several per step, run its steps as "
            "separate commands (lbtkit run / interpolate / sharpness)"
        )
    output = Path(output)
    alphas = parse_alphas(DEFAULT_ALPHAS) if alphas is None else [float(a) for a in alphas]
    if not alphas:
        raise ConfigError("no alphas to evaluate")
    splits = parse_splits(splits)
    if bn not in BN_MODES:
        raise ConfigError(f"unknown BatchNorm mode {bn!r}; choose one of {', '.join(BN_MODES)}")
    if hessian_k < 0:
        raise ConfigError(f"hessian_k must be >= 0, got {hessian_k}")
    # Validate the measurement settings now, not after hours of training.
    settings = sharpness_settings(
        eps=eps, subspace=subspace, iters=iters, hessian=hessian_k > 0, top_k=max(hessian_k, 1),
        hessian_iters=hessian_iters, trace=trace, trace_samples=trace_samples, samples=samples,
        batch_size=base.eval_batch_size, seed=base.seed,
    )
    _check_batch_sizes(base, sb, lb)

    output.mkdir(parents=True, exist_ok=True)
    init = write_initial_weights(base, output / "init.safetensors")
    stem = base.name or f"keskar-{base.model}-{base.dataset}"
    configs = {
        label: base.updated({
            "batch_size": size, "init_weights": str(init), "output_dir": str(output / label),
            "name": f"{stem}-{label}{size}",
        }).resolved()
        for label, size in zip(LABELS, (sb, lb), strict=True)
    }

    from lbtkit.train import run as train_run

    results = {}
    for label, config in configs.items():
        print(f"study: {label.upper()} run, batch {config.batch_size}, in {config.output_dir}")
        results[label] = train_run(config, progress=progress)
        if results[label].get("status") != STATUS_COMPLETED:
            return {"status": results[label].get("status"), "stopped_at": label,
                    "runs": results}
    weights = [RunDir(output / label).model_path for label in LABELS]

    interpolation_dir = output / "interpolation"
    interpolation = {"csv": interpolation_dir / "interpolation.csv",
                     "png": interpolation_dir / "interpolation.png",
                     "json": interpolation_dir / "interpolation.json"}
    meta = interpolation_meta(
        output / "sb", output / "lb", alphas=alphas, splits=splits, bn=bn,
        bn_samples=bn_samples, eval_batch_size=base.eval_batch_size,
    )
    if _up_to_date(list(interpolation.values()), meta, weights):
        print(f"study: {interpolation_dir} is up to date")
    else:
        print(f"study: interpolating over {len(alphas)} alphas (BatchNorm: {bn})")
        interpolation = run_interpolation(
            output / "sb", output / "lb", interpolation_dir, alphas=alphas, splits=splits, bn=bn,
            bn_samples=bn_samples, eval_batch_size=base.eval_batch_size, progress=progress,
        )

    sharpness = {}
    for label, path in zip(LABELS, weights, strict=True):
        target = output / label / "sharpness.json"
        if _up_to_date([target], {"settings": settings}, [path]):
            print(f"study: {target} is up to date")
            sharpness[label] = read_json(target)
            continue
        print(f"study: sharpness of the {label.upper()} solution")
        sharpness[label] = run_sharpness(
            output / label, eps=eps, subspace=subspace, iters=iters, hessian=hessian_k > 0,
            top_k=max(hessian_k, 1), hessian_iters=hessian_iters, trace=trace,
            trace_samples=trace_samples, samples=samples, batch_size=base.eval_batch_size,
            seed=base.seed, output=target,
        )

    report = output / "report.md"
    atomic_write_text(report, study_report(configs, results, sharpness, bn=bn))
    print(f"study: wrote {report}")
    return {"status": STATUS_COMPLETED, "report": report, "init": init, "runs": results,
            "interpolation": interpolation, "sharpness": sharpness}


def write_initial_weights(base: RunConfig, path: Path) -> Path:
    """Build the model as ``lbtkit run`` would (seed, pretrained, init_weights) and save it
    to ``path``; an existing file must hold exactly these weights (a resumed study)."""
    from lbtkit.data import dataset_info

    info = dataset_info(base.dataset)
    torch.manual_seed(base.seed)
    model = build_model(
        base.model, num_classes=base.num_classes or info.num_classes, in_channels=info.channels,
        image_size=base.image_size or info.image_size, pretrained=base.pretrained,
    )
    if base.init_weights:
        load_weights(model, base.init_weights)
    if not path.exists():
        save_weights(model, path)
        return path
    stored = load_file(str(path))
    state = model.state_dict()
    if stored.keys() != state.keys() or any(
        not torch.equal(stored[k], state[k].cpu()) for k in state
    ):
        raise ConfigError(
            f"{path} holds other initial weights than model {base.model!r} with seed "
            f"{base.seed} gives; use another output directory"
        )
    return path


def study_report(
    configs: dict[str, RunConfig],
    results: dict[str, dict[str, Any]],
    sharpness: dict[str, dict[str, Any]],
    *,
    bn: str,
) -> str:
    """report.md: the figure, the SB/LB table and sentences computed from the numbers."""
    sb_config = configs["sb"]
    measures = [(m["subspace"], m["eps"]) for m in sharpness["sb"]["sharpness"]]
    header = ["", "batch", "lr", "train acc (%)", "test acc (%)"]
    header += [f"φ {_space(space)} ε={eps:g}" for space, eps in measures]
    has_hessian = sharpness["sb"].get("hessian") is not None
    has_trace = sharpness["sb"].get("trace") is not None
    if has_hessian:
        header.append("top Hessian eigenvalue")
    if has_trace:
        header.append("Hessian trace (± s.e.)")
    body = []
    for label in LABELS:
        final = results[label]["final"]
        phis = {(m["subspace"], m["eps"]): m["phi"] for m in sharpness[label]["sharpness"]}
        row = [label.upper(), str(configs[label].batch_size), f"{configs[label].lr:g}",
               f"{100 * final['train_acc']:.2f}", f"{100 * final['val_acc']:.2f}"]
        row += [f"{phis[key]:.4g}" for key in measures]
        if has_hessian:
            row.append(f"{sharpness[label]['hessian']['top_eigenvalues'][0]:.4g}")
        if has_trace:
            t = sharpness[label]["trace"]
            row.append(f"{t['mean']:.4g} ± {t['stderr']:.2g}")
        body.append(row)

    settings = sharpness["sb"]["settings"]
    space, eps = measures[0]
    first = [sharpness[label]["sharpness"][0]["phi"] for label in LABELS]
    test_gap = 100 * (results["sb"]["final"]["val_acc"] - results["lb"]["final"]["val_acc"])
    lines = [
        "# Sharp minima: small-batch vs large-batch solution (Keskar et al. 2016)",
        "",
        f"Model `{sb_config.model}` on `{sb_config.dataset}`, {sb_config.epochs} epochs, "
        f"{sb_config.optimizer}, seed {sb_config.seed}; both runs start from `init.safetensors`. "
        "Runs: `sb/`, `lb/`.",
        "",
        "![parametric plot](interpolation/interpolation.png)",
        "",
        "Cross-entropy (log scale, blue) and accuracy (red) along "
        "θ(α) = α·θ_LB + (1−α)·θ_SB; solid: training set (no augmentation), dashed: test set. "
        f"BatchNorm statistics: `{bn}` (see `interpolation/interpolation.json`).",
        "",
        *_table(header, body),
        "",
        compare_sharpness(first[0], first[1], what=f"{_space(space)}, ε={eps:g}"),
        f"LB's test accuracy is {abs(test_gap):.2f} points "
        f"{'below' if test_gap > 0 else 'above'} SB's."
        if test_gap != 0 else "SB and LB reach the same test accuracy.",
        "",
        "Train accuracy is the last epoch's running average during training (augmented "
        "batches), test accuracy the validation set, both from each run's `results.json`. "
        f"φ is Keskar's sharpness (in %) of the mean training cross-entropy over "
        f"{sharpness['sb']['samples_used']} training images (seed {settings['seed']}), "
        f"maximised by L-BFGS-B for {settings['iters']} iterations; BatchNorm on running "
        "statistics. Settings and timings: `sb/sharpness.json`, `lb/sharpness.json`.",
        "",
    ]
    return "\n".join(lines)


def compare_sharpness(sb: float, lb: float, *, what: str) -> str:
    """One sentence comparing two sharpness values, decided by the numbers alone."""
    values = f"φ = {sb:.4g} (SB) vs {lb:.4g} (LB)"
    if not (math.isfinite(sb) and math.isfinite(lb)):
        return f"No sharpness comparison possible ({what}): {values}."
    top = max(abs(sb), abs(lb))
    if top == 0 or abs(lb - sb) <= SAME_SHARPNESS * top:
        return f"No sharpness gap measured ({what}): {values}."
    sharper, flatter = ("LB", "SB") if lb > sb else ("SB", "LB")
    low = min(sb, lb)
    factor = f"by a factor of {max(sb, lb) / low:.3g}" if low > 0 else "(the other is 0)"
    return f"{sharper} is sharper than {flatter} {factor} ({what}): {values}."


def _check_batch_sizes(base: RunConfig, sb: int, lb: int) -> None:
    if not 0 < sb < lb:
        raise ConfigError(f"need 0 < sb < lb batch sizes, got sb={sb}, lb={lb}")
    data = load_dataset(base.dataset, base.data_dir, download=base.download,
                        image_size=base.image_size, num_classes=base.num_classes)
    n_train = data.train_labels.shape[0]
    if lb > n_train:
        raise ConfigError(
            f"lb batch {lb} exceeds the training set ({n_train} samples of {base.dataset}); "
            f"Keskar's LB is 10% of the data: {n_train // 10}"
        )


def _up_to_date(files: list[Path], expected: dict[str, Any], inputs: list[Path]) -> bool:
    """All ``files`` exist, are newer than every input, and the JSON among them (the first
    .json) holds ``expected``."""
    if not all(f.exists() for f in files):
        return False
    newest_input = max(p.stat().st_mtime_ns for p in inputs)
    if any(f.stat().st_mtime_ns < newest_input for f in files):
        return False
    stored = read_json(next(f for f in files if f.suffix == ".json"))
    return all(stored.get(k) == v for k, v in expected.items())


def _space(subspace: str) -> str:
    return "full space" if subspace == "full" else f"subspace {subspace}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in body]
