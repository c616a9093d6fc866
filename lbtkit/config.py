"""RunConfig: the one typed, validated description of a training run.

Sources are layered, later ones winning: dataclass defaults < preset < config file < CLI flags.
A resolved config (derived values filled in) is what a run directory stores in ``config.json``,
and ``RunConfig.from_dict`` reads it back, so every result says exactly how it was made.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import sys
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from lbtkit.errors import ConfigError
from lbtkit.stopping import StopRule
from lbtkit.targets import parse_targets

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

OPTIMIZERS = ("sgd", "adam", "adamw", "lars", "lamb")
LR_SCALING_RULES = ("linear", "sqrt", "none")
SCHEDULERS = ("cosine", "step", "constant")
MIXED_PRECISION = ("no", "bf16", "fp16")
# Seeds feed torch.manual_seed (64 bits) after scaling (seed * 1000 + rank in training).
SEED_LIMIT = 2**32
# The range of every float field: (low, low included, high, high included). All must also be
# finite: nan slips through every comparison, so a check of the form "x < 0" lets it pass.
FLOAT_RANGES: dict[str, tuple[float, bool, float, bool]] = {
    "momentum": (0.0, True, 1.0, False),
    "weight_decay": (0.0, True, math.inf, False),
    "lr": (0.0, False, math.inf, False),
    "base_lr": (0.0, False, math.inf, False),
    "warmup_epochs": (0.0, True, math.inf, False),
    "step_gamma": (0.0, False, 1.0, True),
    "trust_coefficient": (0.0, False, math.inf, False),
    "sam_rho": (0.0, True, math.inf, False),
    "noise_scale_ema": (0.0, True, 1.0, False),
    "stop_train_acc": (0.0, False, 1.0, True),
    "stop_plateau_delta": (0.0, True, 1.0, False),
    "eval_growth": (1.0, False, math.inf, False),
}


def _opt(help_text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": help_text}, **kwargs)


# Tracker name (Accelerate's) -> the lbtkit extra that installs it.
TRACKER_EXTRAS = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "comet_ml": "comet",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "trackio": "trackio",
}


def parse_trackers(text: str | None) -> list[str]:
    """``"tensorboard,wandb"`` -> ``["tensorboard", "wandb"]``; unknown names are refused."""
    names = [part.strip() for part in (text or "").split(",") if part.strip()]
    for name in names:
        if name not in TRACKER_EXTRAS:
            raise ConfigError(
                f"unknown tracker {name!r} in log_with; choose from {', '.join(TRACKER_EXTRAS)}"
            )
    return list(dict.fromkeys(names))


@dataclass
class RunConfig:
    """Everything that determines a training run. ``batch_size`` is the global batch."""

    # What to train on what.
    model: str = _opt("model name from the registry (lbtkit models)", default="f1")
    dataset: str = _opt(
        "cifar10 | cifar100 | mnist | fashion-mnist | digits | synthetic | imagefolder:PATH "
        "(PATH/train/CLASS/*.png|jpg and PATH/val/CLASS/...)",
        default="digits",
    )
    data_dir: str = _opt("directory holding the datasets", default="data")
    download: bool = _opt("fetch the dataset into data_dir if missing", default=False)
    image_size: int | None = _opt(
        "input resolution; images are resized on the device when it differs from the "
        "dataset's (default: the dataset's own)",
        default=None,
    )
    num_classes: int | None = _opt("number of classes (default: the dataset's)", default=None)
    pretrained: str = _opt("none | imagenet | path to a weights file", default="none")
    init_weights: str | None = _opt(
        "start from these full model weights (.safetensors), e.g. a shared initialisation",
        default=None,
    )

    # Optimisation.
    epochs: int = _opt("number of training epochs", default=10)
    batch_size: int = _opt(
        "GLOBAL batch: all processes and accumulation steps together", default=128
    )
    max_per_device_batch: int | None = _opt(
        "largest batch one device takes; gradient accumulation makes up the rest",
        default=None,
    )
    grad_accum_steps: int | None = _opt(
        "gradient accumulation steps (default: derived from max_per_device_batch, else 1)",
        default=None,
    )
    optimizer: str = _opt(
        "sgd | adam | adamw | lars (SGD with a layer-wise trust ratio) | lamb (Adam with one)",
        default="sgd",
    )
    momentum: float = _opt("SGD/LARS momentum (Adam/AdamW/LAMB: beta1)", default=0.9)
    nesterov: bool = _opt("Nesterov momentum (SGD)", default=False)
    weight_decay: float = _opt("weight decay", default=1e-4)
    lr: float | None = _opt(
        "initial learning rate; when unset it is base_lr scaled by lr_scaling", default=None
    )
    base_lr: float = _opt("learning rate at base_batch_size", default=0.1)
    base_batch_size: int = _opt("batch size at which base_lr holds", default=256)
    lr_scaling: str = _opt("linear | sqrt | none: how lr follows the batch size", default="linear")
    warmup_epochs: float = _opt("linear warm-up length in epochs", default=0.0)
    warmup_steps: int | None = _opt(
        "linear warm-up length in optimizer steps (instead of warmup_epochs)", default=None
    )
    scheduler: str = _opt(
        "cosine (over all optimizer steps) | step | constant", default="cosine"
    )
    step_epochs: int = _opt("step scheduler: decay every this many epochs", default=30)
    step_gamma: float = _opt("step scheduler: decay factor", default=0.1)

    # When to stop before `epochs` (Keskar: compare solutions that both fit the training set).
    stop_train_acc: float | None = _opt(
        "stop at the end of the first epoch whose training accuracy reaches this (0-1]",
        default=None,
    )
    stop_plateau_epochs: int | None = _opt(
        "stop once the training loss has not improved for this many epochs", default=None
    )
    stop_plateau_delta: float = _opt(
        "relative improvement of the training loss that counts for stop_plateau_epochs",
        default=1e-3,
    )
    stop_train_acc_mode: str = _opt(
        "running | eval: stop_train_acc reads the epoch's running training accuracy (train "
        "mode, over its batches), or the whole training set evaluated at the epoch's end in "
        "eval mode (BatchNorm on running statistics, no augmentation; costs one pass)",
        default="running",
    )

    # Steps to a target (Shallue et al., McCandlish et al.: lbtkit study critical-batch).
    targets: str = _opt(
        "stop once every target is met, e.g. 'train_loss<=0.3,val_error<=0.12' (train_loss: "
        "eval mode on train_eval_samples training images); evaluated at steps spaced by "
        "eval_growth, and the first step meeting each is kept in results.json",
        default="",
    )
    eval_growth: float = _opt(
        "with targets: evaluate after optimizer steps 1, 2, 3, ... each at least this factor "
        "after the last (1.1: the step of a target is known to within 10%)",
        default=1.1,
    )
    keep_target_weights: bool = _opt(
        "with targets: keep the weights at the first step meeting each target, in "
        "RUN/snapshots/step-N/ (for lbtkit noise-scale --weights)", default=False,
    )
    train_eval_samples: int = _opt(
        "with targets: the training loss is evaluated (eval mode) on this many training "
        "images, a fixed draw the same for every run", default=4096,
    )
    val_split: int = _opt(
        "hold out this many training images as the validation split (a fixed draw, the same "
        "for every run); the test split is then evaluated once, at the end (results.json "
        "test_loss, test_acc). 0: validate on the test split",
        default=0,
    )

    # Large-batch remedies (each off by default).
    trust_coefficient: float = _opt(
        "LARS trust coefficient eta: a layer's lr is scaled by eta*|w|/(|g|+wd*|w|)",
        default=0.001,
    )
    ghost_batch_size: int | None = _opt(
        "ghost batch normalisation: BatchNorm statistics over groups of this many samples "
        "(must divide the per-device batch; default: the whole per-device batch)",
        default=None,
    )
    sync_bn: bool = _opt(
        "BatchNorm statistics over the global batch of all processes (SyncBatchNorm)",
        default=False,
    )
    sam_rho: float = _opt(
        "sharpness-aware minimisation radius rho (0: off; two passes per step)", default=0.0
    )

    # Diagnostics.
    log_noise_scale: bool = _opt(
        "log the gradient noise scale B_simple each epoch (needs 2+ processes: the "
        "per-process gradient is the small batch, the averaged one the big batch)",
        default=False,
    )
    noise_scale_ema: float = _opt(
        "decay of the per-step moving averages of |G|^2 and tr(Sigma) for the noise scale",
        default=0.95,
    )

    # Speed and numerics.
    mixed_precision: str = _opt("no | bf16 | fp16 (fp16 needs CUDA)", default="no")
    channels_last: bool = _opt("channels-last memory format for conv nets", default=False)
    compile: bool = _opt("torch.compile the model for training (slow first steps)",
                         default=False)
    eval_batch_size: int = _opt("per-device batch size for evaluation", default=1024)
    threads: int | None = _opt(
        "CPU threads per process for torch (default: OMP_NUM_THREADS, else the usable CPUs "
        "(affinity, cgroup quota, SLURM_CPUS_PER_TASK) over the processes launched on the "
        "machine; 1 is often fastest for small models on a shared node)",
        default=None,
    )

    # Bookkeeping.
    seed: int = _opt("seed for initial weights, data order and augmentation", default=0)
    eval_every: int = _opt("evaluate every N epochs (the last epoch always)", default=1)
    checkpoint_every: int = _opt("checkpoint every N epochs (0: only on a signal)", default=1)
    log_every: int = _opt("plain log line every N optimizer steps when not on a TTY", default=50)
    log_with: str = _opt(
        "experiment trackers, comma-separated (tensorboard, wandb, mlflow, ...: Accelerate's); "
        "each needs its extra, e.g. pip install 'lbtkit[tensorboard]'",
        default="",
    )
    tracking_dir: str | None = _opt(
        "where local trackers write (default: the run directory's parent/tracking, so the runs "
        "of a sweep share one)",
        default=None,
    )
    tracking_project: str = _opt("tracker project / experiment name (W&B, MLflow)",
                                 default="lbtkit")
    output_dir: str | None = _opt("the run directory (default: runs/NAME)", default=None)
    name: str | None = _opt("run name (default: model-dataset-bBATCH-sSEED)", default=None)

    # --- construction -------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> RunConfig:
        """Build from a plain dict, refusing unknown keys (a typo must not be ignored)."""
        return cls().updated(values, source=source)

    def updated(self, values: dict[str, Any], *, source: str = "override") -> RunConfig:
        """A copy with ``values`` applied; None values mean "not given" and are skipped."""
        known = {f.name: f for f in fields(self)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown key {unknown[0]!r} in {source}; known keys: {', '.join(known)}"
            )
        changes = {}
        for key, value in values.items():
            if value is None:
                continue
            changes[key] = _coerce(key, value, source)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # --- validation and derived values ----------------------------------------------------

    def stop_rule(self) -> StopRule:
        return StopRule(train_acc=self.stop_train_acc, plateau_epochs=self.stop_plateau_epochs,
                        plateau_delta=self.stop_plateau_delta,
                        train_acc_mode=self.stop_train_acc_mode)

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value."""
        from lbtkit.data import dataset_info
        from lbtkit.models import resolve_builder

        resolve_builder(self.model)  # raises ConfigError naming an unknown model
        dataset_info(self.dataset)  # raises on an unknown dataset
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("lr_scaling", self.lr_scaling, LR_SCALING_RULES)
        _choice("scheduler", self.scheduler, SCHEDULERS)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _positive("epochs", self.epochs)
        _positive("batch_size", self.batch_size)
        _positive("base_batch_size", self.base_batch_size)
        _positive("eval_batch_size", self.eval_batch_size)
        _positive("eval_every", self.eval_every)
        _positive("log_every", self.log_every)
        _positive("step_epochs", self.step_epochs)
        _check_floats(self)
        if not 0 <= self.seed < SEED_LIMIT:
            raise ConfigError(f"seed must be a whole number in [0, 2**32), got {self.seed}")
        for name in ("max_per_device_batch", "grad_accum_steps", "image_size", "num_classes",
                     "threads"):
            value = getattr(self, name)
            if value is not None:
                _positive(name, value)
        if self.name is not None and (self.name in ("", ".", "..") or
                                      any(c in self.name for c in "/\\\0")):
            raise ConfigError(f"name {self.name!r} must be one folder name (it makes runs/NAME, "
                              f"no '/' or '..'); give --output for a directory elsewhere")
        if self.num_classes is not None and self.num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ConfigError("nesterov needs optimizer 'sgd' with momentum > 0")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ConfigError(
                f"warmup_epochs ({self.warmup_epochs}) must be shorter than epochs ({self.epochs})"
            )
        if self.ghost_batch_size is not None:
            _positive("ghost_batch_size", self.ghost_batch_size)
        parse_trackers(self.log_with)
        self.stop_rule()  # raises ConfigError naming a bad stop_* value
        parse_targets(self.targets)  # raises ConfigError naming a bad target
        _positive("train_eval_samples", self.train_eval_samples)
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.val_split < 0:
            raise ConfigError(f"val_split must be >= 0, got {self.val_split}")
        if self.pretrained not in ("none", "imagenet") and not Path(self.pretrained).is_file():
            raise ConfigError(f"pretrained weights file not found: {self.pretrained}")
        if self.init_weights is not None and not Path(self.init_weights).is_file():
            raise ConfigError(f"init_weights file not found: {self.init_weights}")

    def resolved(self) -> RunConfig:
        """Validate, then fill in every value derived from others (lr, dataset shape, paths).

        Resolution is idempotent: ``c.resolved().resolved() == c.resolved()``.
        """
        from lbtkit.data import dataset_info

        self.validate()
        info = dataset_info(self.dataset)
        lr = self.lr
        if lr is None:
            lr = scale_lr(self.base_lr, self.base_batch_size, self.batch_size, self.lr_scaling)
        name = self.name or f"{self.model}-{_dataset_label(self.dataset)}-b{self.batch_size}" \
            f"-s{self.seed}"
        return dataclasses.replace(
            self,
            lr=lr,
            image_size=self.image_size or info.image_size,
            num_classes=self.num_classes or info.num_classes,
            name=name,
            output_dir=self.output_dir or str(Path("runs") / name),
        )


@functools.cache
def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(RunConfig)
    types = {}
    for f in fields(RunConfig):
        # "int | None" is an int that may be left unset: the value type is the non-None one.
        kinds = [k for k in typing.get_args(hints[f.name]) if k is not type(None)]
        types[f.name] = kinds[0] if kinds else hints[f.name]
    return types


def field_type(name: str) -> type:
    """The value type of RunConfig field ``name``: bool, int, float or str.

    The one owner of this knowledge: file values are checked, sweep values parsed and CLI
    flags typed with it. ConfigError names the known fields when ``name`` is not one.
    """
    types = _field_types()
    if name not in types:
        raise ConfigError(f"unknown key {name!r}; known keys: {', '.join(types)}")
    return types[name]


# --- the batch arithmetic ------------------------------------------------------------------


@dataclass(frozen=True)
class BatchPlan:
    """How the global batch is split over processes and accumulation steps."""

    world_size: int
    grad_accum_steps: int
    per_device_batch_size: int

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def plan_batches(config: RunConfig, world_size: int) -> BatchPlan:
    """Split ``config.batch_size`` over ``world_size`` processes and accumulation steps.

    per_device_batch = batch_size / (world_size * grad_accum_steps) must be a whole number.
    Without an explicit ``grad_accum_steps``, the smallest accumulation that keeps the
    per-device batch within ``max_per_device_batch`` is chosen.
    """
    batch = config.batch_size
    if world_size < 1:
        raise ConfigError(f"world size must be >= 1, got {world_size}")
    if batch % world_size:
        raise ConfigError(
            f"batch_size {batch} is not divisible by the number of processes {world_size}"
        )
    per_process = batch // world_size
    accum = config.grad_accum_steps
    if accum is None:
        limit = config.max_per_device_batch or per_process
        accum = next(
            (a for a in range(1, per_process + 1) if per_process % a == 0 and per_process // a
             <= limit),
            None,
        )
        if accum is None:  # unreachable with limit >= 1, kept for a clear message
            raise ConfigError(f"cannot fit batch_size {batch} in max_per_device_batch {limit}")
    if per_process % accum:
        raise ConfigError(
            f"batch_size {batch} is not divisible by world_size * grad_accum_steps = "
            f"{world_size} * {accum}"
        )
    per_device = per_process // accum
    if config.max_per_device_batch is not None and per_device > config.max_per_device_batch:
        raise ConfigError(
            f"per-device batch {per_device} (batch_size {batch} / {world_size} processes / "
            f"{accum} accumulation steps) exceeds max_per_device_batch "
            f"{config.max_per_device_batch}"
        )
    if config.log_noise_scale and world_size < 2:
        raise ConfigError(
            "log_noise_scale needs 2 or more processes (accelerate launch --num_processes N): "
            "the per-process gradient is its small batch; for one process, measure a "
            "checkpoint with `lbtkit noise-scale RUN`"
        )
    ghost = config.ghost_batch_size
    if ghost is not None and per_device % ghost:
        raise ConfigError(
            f"ghost_batch_size {ghost} does not divide the per-device batch {per_device} "
            f"(batch_size {batch} / {world_size} processes / {accum} accumulation steps)"
        )
    return BatchPlan(world_size, grad_accum_steps=accum, per_device_batch_size=per_device)


# --- pure math -------------------------------------------------------------------------------


def scale_lr(base_lr: float, base_batch_size: int, batch_size: int, rule: str) -> float:
    """The learning rate for ``batch_size`` given ``base_lr`` at ``base_batch_size``.

    linear (Goyal et al. 2017): lr grows with the batch; sqrt (Krizhevsky 2014, Hoffer et al.
    2017): with its square root; none: unchanged.
    """
    ratio = batch_size / base_batch_size
    if rule == "linear":
        return base_lr * ratio
    if rule == "sqrt":
        return base_lr * math.sqrt(ratio)
    if rule == "none":
        return base_lr
    raise ConfigError(f"unknown lr_scaling {rule!r}; known: {', '.join(LR_SCALING_RULES)}")


# --- presets and files -----------------------------------------------------------------------


def list_presets() -> list[str]:
    folder = resources.files("lbtkit") / "presets"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def preset_values(name: str) -> dict[str, Any]:
    values = _preset_table(name)
    values.pop("description", None)
    values.pop("sweep", None)  # sweep settings, read by sweep_settings
    return values


def _preset_table(name: str) -> dict[str, Any]:
    if name not in list_presets():
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(list_presets())}")
    return tomllib.loads((resources.files("lbtkit") / "presets" / f"{name}.toml").read_text())


def sweep_settings(
    *, preset: str | None = None, config_file: str | Path | None = None
) -> dict[str, Any] | None:
    """The ``[sweep]`` table of the config file, else of the preset (None when neither has one).

    It holds what ``lbtkit sweep plan`` sweeps by default: lists of values per field
    (``batch_size = [1024]``) and optional ``[sweep.variants.NAME]`` override tables.
    """
    for table in (_read_file(Path(config_file)) if config_file else {},
                  _preset_table(preset) if preset else {}):
        if "sweep" in table:
            return table["sweep"]
    return None


def preset_description(name: str) -> str:
    return str(_preset_table(name).get("description", ""))


def file_values(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file, or a run's ``config.json`` (so a run can be repeated).

    A ``[sweep]`` table is left out: it is for ``lbtkit sweep plan`` (see sweep_settings).
    """
    values = _read_file(Path(path))
    values.pop("sweep", None)
    return values


def _read_file(path: Path) -> dict[str, Any]:
    from lbtkit.fileio import read_json, read_regular_file

    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix == ".json":  # a run's config.json, read like every run file
        return read_json(path, kind=dict, error=ConfigError)
    try:
        values = tomllib.loads(read_regular_file(path).decode())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # TOMLDecodeError, not UTF-8, an integer of 5000 digits
        raise ConfigError(f"cannot parse config file {path}: {exc}") from None
    except RecursionError:
        raise ConfigError(f"cannot parse config file {path}: nested too deeply") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a table of keys")
    return values


def build_config(
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    resolve: bool = True,
) -> RunConfig:
    """Layer defaults < preset < config file < overrides, then resolve.

    ``resolve=False`` keeps derived values unset: a sweep's base config must not carry the
    lr of the preset's own batch size into every entry.
    """
    config = RunConfig()
    if preset:
        config = config.updated(preset_values(preset), source=f"preset {preset!r}")
    if config_file:
        config = config.updated(file_values(config_file), source=str(config_file))
    if overrides:
        config = config.updated(overrides, source="command line")
    if not resolve:
        config.validate()
        return config
    return config.resolved()


# --- helpers ---------------------------------------------------------------------------------


def _dataset_label(dataset: str) -> str:
    """The dataset as a run name takes it: one folder name (an image folder's PATH becomes
    its last component: imagefolder:/data/pets -> imagefolder-pets)."""
    kind, _, path = dataset.partition(":")
    label = f"{kind}-{Path(path).name}" if path else kind
    return re.sub(r"[^A-Za-z0-9._+-]", "_", label)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")


def _check_floats(config: RunConfig) -> None:
    """Every float field is a finite number inside its FLOAT_RANGES interval."""
    for f in fields(config):
        value = getattr(config, f.name)
        if field_type(f.name) is not float or value is None:
            continue
        low, low_in, high, high_in = FLOAT_RANGES.get(f.name, (-math.inf, False, math.inf, False))
        inside = (value >= low if low_in else value > low) and \
            (value <= high if high_in else value < high)
        if not (math.isfinite(value) and inside):
            interval = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
            raise ConfigError(f"{f.name} must be a finite number in {interval}, got {value}")


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value}")


def _coerce(key: str, value: Any, source: str) -> Any:
    """Check a value from a file against the field's declared type (files are untyped)."""
    kind = field_type(key)
    bad = ConfigError(f"{key} = {value!r} in {source} is not a valid {kind.__name__}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if not isinstance(value, str):
        raise bad
    return value
