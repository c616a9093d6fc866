"""Typed, validated specs of the weight-space analyses, as ``RunConfig`` is for training.

One frozen dataclass per analysis holds every setting that determines its numbers:

- ``InterpolationSpec``: Keskar's parametric plot between two solutions;
- ``PlaneSpec``: a 2-D loss landscape around a solution (Li et al. 2018);
- ``SharpnessSpec``: Keskar's sharpness, the top Hessian eigenvalues, the Hessian trace;
- ``NoiseScaleSpec``: the gradient noise scale at a trained model (McCandlish et al. 2018);
- ``KeskarStudySpec``: the two batch sizes of the study and the two specs it measures with.

A spec validates itself on construction (``ConfigError`` naming the bad value), and
``to_dict``/``from_dict`` round-trip it through JSON: every analysis stores its spec under
``"spec"`` in its output JSON, so a result says exactly how it was made, and the launcher hands
a spec to its worker processes as a file. The run directories an analysis reads are not part of
its spec: the same spec measures both runs of a study.

``from_dict`` also reads the command line's text forms (``"-1:2:25"`` for alphas,
``"1e-3,5e-4"`` for eps, ``"train,test"`` for splits), so flags map onto fields one to one: a
field's metadata holds its option's help (and, where they differ from the field's, the option's
name and the default's text form), and ``lbtkit.cli.flags`` generates the options from it.
The vocabularies (``BN_MODES``, ``SPLITS``, ...) and parsers of those text forms live here too;
this module imports no torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import numpy as np

from lbtkit.errors import ConfigError
from lbtkit.stopping import TRAIN_ACC_MODES

BN_MODES = ("recalibrate", "batch-stats", "interpolate")
# BatchNorm in a sharpness measure's f: the running statistics the run kept (PyTorch's eval
# mode), or each batch's own statistics (Keras' BatchNormalization(mode=2), which Keskar et
# al.'s code uses: it normalises with the batch's statistics at evaluation too).
SHARPNESS_BN = ("running", "batch")
SPLITS = ("train", "test")
DIRECTIONS = ("random", "between")
NORMS = ("filter", "layer", "none")
DEFAULT_ALPHAS = "-1:2:25"
DEFAULT_GRID = "-1:1:21"
DEFAULT_EPS = "1e-3,5e-4"

Grid = tuple[list[float], list[float]]
SpecT = TypeVar("SpecT", bound="Spec")


# --- parsers of the command line's text forms ------------------------------------------------


def parse_alphas(text: str) -> list[float]:
    """``"START:STOP:COUNT"`` (inclusive, like numpy.linspace) or a comma list ``"0,0.5,1"``."""
    usage = "use START:STOP:COUNT (e.g. -1:2:25) or a comma-separated list (e.g. 0,0.5,1)"
    try:
        if ":" in text:
            start, stop, count = text.split(":")
            first, last, n = float(start), float(stop), int(count)
            if n < 1 or not (math.isfinite(first) and math.isfinite(last)):
                raise ValueError
            values = np.linspace(first, last, n).tolist()
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"cannot parse alphas {text!r}: {usage}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"cannot parse alphas {text!r}: {usage}")
    return values


def parse_splits(text: str | Sequence[str]) -> list[str]:
    """``"train,test"`` or a sequence of split names -> a list, checked."""
    items = text.split(",") if isinstance(text, str) else list(text)
    splits = [s.strip() for s in items if isinstance(s, str) and s.strip()]
    bad = [s for s in items if not isinstance(s, str)] + [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise ConfigError(f"unknown split {bad[0] if bad else text!r}; choose from {SPLITS}")
    return splits


def parse_grid(text: str) -> Grid:
    """``"START:STOP:COUNT"`` (inclusive, like numpy.linspace) for both axes, or
    ``"XSPEC,YSPEC"`` for different axes (e.g. ``-0.5:1.5:21,-1:1:21`` with ``between``).
    Returns (x coordinates, y coordinates)."""
    usage = "use START:STOP:COUNT for both axes (e.g. -1:1:21) or X0:X1:NX,Y0:Y1:NY"
    specs = [s.strip() for s in text.split(",")]
    if len(specs) not in (1, 2):
        raise ConfigError(f"cannot parse grid {text!r}: {usage}")
    axes = []
    for spec in specs:
        try:
            start, stop, count = spec.split(":")
            first, last, n = float(start), float(stop), int(count)
        except ValueError:
            raise ConfigError(f"cannot parse grid {text!r}: {usage}") from None
        if n < 1 or not (math.isfinite(first) and math.isfinite(last)):
            raise ConfigError(f"cannot parse grid {text!r}: COUNT must be >= 1 and the ends "
                              f"finite; {usage}")
        # 12 significant digits: 0.1 rather than linspace's 0.10000000000000009 in the files,
        # and the rounded value is the coordinate evaluated, so files and numbers agree
        axes.append([float(f"{v:.12g}") for v in np.linspace(first, last, n)])
    xs, ys = axes if len(axes) == 2 else (axes[0], list(axes[0]))
    return xs, ys


def parse_subspace(text: str) -> int | None:
    """``"full"`` -> None; ``"random:P"`` -> P (the dimension of Keskar's random subspace)."""
    text = text.strip()
    if text == "full":
        return None
    kind, _, size = text.partition(":")
    if kind == "random" and size.isdigit() and int(size) >= 1:
        return int(size)
    raise ConfigError(f"unknown subspace {text!r}; use 'full' or 'random:P' (e.g. random:100)")


def parse_batches(text: str) -> tuple[int, int]:
    """``"32,1024"`` -> (32, 1024): two different positive batch sizes, in either order."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--batches {text!r}: expected two whole numbers, e.g. 32,1024") from None
    if len(values) != 2:
        raise ConfigError(f"--batches {text!r}: expected exactly two batch sizes, e.g. 32,1024")
    bad = [v for v in values if v < 1]
    if bad:
        raise ConfigError(f"--batches {text!r}: batch size {bad[0]} is not positive")
    if values[0] == values[1]:
        raise ConfigError(f"--batches {text!r}: the two batch sizes must differ")
    small, big = sorted(values)
    return small, big


def parse_floats(text: str, name: str) -> list[float]:
    """``"1e-3,5e-4"`` -> [0.001, 0.0005]; ConfigError naming ``name`` and the text."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{name} {text!r}: expected a comma list of numbers") from None
    if not values:
        raise ConfigError(f"{name} {text!r}: expected at least one number")
    return values


# --- checks of one value -----------------------------------------------------------------------


def whole_number(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def _choice(name: str, value: Any, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ConfigError(f"unknown {what} {value!r} for {name}; choose one of: "
                          f"{', '.join(allowed)}")
    return value


def _finite_numbers(name: str, values: Any) -> tuple[float, ...]:
    """A non-empty tuple of finite floats from a sequence (not a string)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigError(f"{name} must be a list of numbers, got {values!r}")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))
           or not math.isfinite(v)]
    if bad or not values:
        raise ConfigError(f"{name} must be a non-empty list of finite numbers, got "
                          f"{bad[0] if bad else values!r}")
    return tuple(float(v) for v in values)


# --- the specs ---------------------------------------------------------------------------------


def _setting(default: Any, help_text: str, *, flag: str | None = None,
             text: str | None = None, switch: bool = False) -> Any:
    """A field with the help of its command-line option; ``flag``: the option's name where it
    is not the field's (``--subspace`` for ``subspaces``); ``text``: the default as the option
    shows it, where the field's value reads worse (``-1:2:25`` rather than 25 numbers);
    ``switch``: a bool whose option only turns it on (``--ignore-bn-bias``, no ``--no-``)."""
    metadata: dict[str, Any] = {"help": help_text}
    if flag is not None:
        metadata["flag"] = flag
    if text is not None:
        metadata["text"] = text
    if switch:
        metadata["switch"] = True
    return field(default=default, metadata=metadata)


# Help shared by the fields the two grids over weight space both have.
_SPLITS_HELP = "comma list of train, test"
_BN_SAMPLES_HELP = "training samples for BN re-estimation (default: all)"
_EVAL_BATCH_HELP = "evaluation batch per process"


@dataclass(frozen=True)
class Spec:
    """to_dict/from_dict for the frozen specs below; each validates in ``__post_init__``."""

    kind: ClassVar[str] = "spec"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values: tuples become lists, nested specs dicts."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls: type[SpecT], values: dict[str, Any], *, source: str | None = None
                  ) -> SpecT:
        """Build from a plain dict (a JSON file, the command line), refusing unknown keys;
        a key left out keeps its default."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source or cls.kind} must be a table of keys, got {values!r}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} in {source or cls.kind}; known keys: "
                              f"{', '.join(known)}")
        return cls(**values)

    def updated(self: SpecT, **changes: Any) -> SpecT:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _nest(self, name: str, cls: type[Spec]) -> None:
        """Field ``name`` holds a ``cls``: one as is, or built from a table (JSON)."""
        value = getattr(self, name)
        if isinstance(value, dict):
            self._set(name, cls.from_dict(value, source=f"{name} of the {self.kind}"))
        elif not isinstance(value, cls):
            raise ConfigError(f"{name}: expected {cls.__name__} or a table of its keys, got "
                              f"{value!r}")


def _plain(value: Any) -> Any:
    if isinstance(value, Spec):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _check_bn(spec: InterpolationSpec | PlaneSpec) -> None:
    """The BatchNorm fields the two grids over weight space share."""
    spec._set("splits", tuple(parse_splits(spec.splits)))
    _choice("bn", spec.bn, BN_MODES, "BatchNorm mode")
    if spec.bn_samples is not None:
        spec._set("bn_samples", whole_number("bn_samples", spec.bn_samples, 2))
    spec._set("eval_batch_size", whole_number("eval_batch_size", spec.eval_batch_size, 1))


@dataclass(frozen=True)
class InterpolationSpec(Spec):
    """theta(a) = a*theta_LB + (1-a)*theta_SB evaluated at ``alphas`` on ``splits``.

    ``bn``: how BatchNorm statistics are set at each alpha (``lbtkit.landscape.interpolate``);
    ``bn_samples``: the first N training images re-estimate them (None: all);
    ``eval_batch_size``: the evaluation batch per process, also the fixed batch of
    ``batch-stats``. ``refine``: that many extra alphas after the grid, each the midpoint of
    the neighbouring pair whose training loss differs most (on the log scale the plot uses),
    so a cliff between two grid points is resolved. ``alphas`` also takes the text
    ``"START:STOP:COUNT"`` or ``"0,0.5,1"``.
    """

    kind: ClassVar[str] = "interpolation spec"

    alphas: tuple[float, ...] = _setting(
        tuple(parse_alphas(DEFAULT_ALPHAS)), "START:STOP:COUNT (inclusive) or a comma list",
        text=DEFAULT_ALPHAS)
    splits: tuple[str, ...] = _setting(SPLITS, _SPLITS_HELP)
    bn: str = _setting("recalibrate",
                       "recalibrate | batch-stats | interpolate (BatchNorm statistics)")
    bn_samples: int | None = _setting(None, _BN_SAMPLES_HELP)
    eval_batch_size: int = _setting(1024, _EVAL_BATCH_HELP)
    refine: int = _setting(0, "extra alphas after the grid, each halving the neighbouring pair "
                           "whose training loss differs most (log scale): resolves a cliff")

    def __post_init__(self) -> None:
        alphas = parse_alphas(self.alphas) if isinstance(self.alphas, str) else self.alphas
        self._set("alphas", _finite_numbers("alphas", alphas))
        _check_bn(self)
        self._set("refine", whole_number("refine", self.refine, 0))
        if self.refine and len(set(self.alphas)) < 2:
            raise ConfigError(f"refine needs at least two alphas to refine between, got "
                              f"{list(self.alphas)}")


@dataclass(frozen=True)
class PlaneSpec(Spec):
    """theta + x*d1 + y*d2 on the grid ``x`` by ``y`` around a run.

    ``directions``: "random" (two random directions) or "between" (x towards a second run,
    which the analysis is then given); ``norm`` and ``ignore_bn_bias``: the scaling of the
    random directions (``lbtkit.landscape.plane.normalize_direction``); ``seed`` draws them.
    ``grid`` (text, only as a constructor shortcut through ``from_dict``) sets both axes.
    The BatchNorm fields are as in ``InterpolationSpec``.
    """

    kind: ClassVar[str] = "plane spec"

    x: tuple[float, ...] = tuple(parse_grid(DEFAULT_GRID)[0])
    y: tuple[float, ...] = tuple(parse_grid(DEFAULT_GRID)[1])
    directions: str = _setting("random", "random: two random directions | between: x = OTHER "
                               "- RUN (x=1 is OTHER), y = one random direction")
    norm: str = _setting("filter", "filter | layer | none: scaling of the random directions "
                         "against the run's weights (Li et al.)")
    ignore_bn_bias: bool = _setting(False, "random directions leave biases and BatchNorm "
                                    "parameters (1-D tensors) at the run's values",
                                    switch=True)
    splits: tuple[str, ...] = _setting(SPLITS, _SPLITS_HELP)
    bn: str = _setting("recalibrate", "recalibrate | batch-stats | interpolate (BatchNorm "
                       "statistics, as in interpolate; interpolate keeps RUN's along random "
                       "axes)")
    bn_samples: int | None = _setting(None, _BN_SAMPLES_HELP)
    eval_batch_size: int = _setting(1024, _EVAL_BATCH_HELP)
    seed: int = _setting(0, "seed of the random directions")

    def __post_init__(self) -> None:
        self._set("x", _finite_numbers("x", self.x))
        self._set("y", _finite_numbers("y", self.y))
        _choice("directions", self.directions, DIRECTIONS, "directions")
        _choice("norm", self.norm, NORMS, "direction normalisation")
        _flag("ignore_bn_bias", self.ignore_bn_bias)
        self._set("seed", whole_number("seed", self.seed, 0))
        _check_bn(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str | None = None) -> PlaneSpec:
        """As ``Spec.from_dict``; a ``grid`` text (``-1:1:21`` or ``X-SPEC,Y-SPEC``) gives
        ``x`` and ``y``."""
        values = dict(values)
        grid = values.pop("grid", None)
        if grid is not None:
            values["x"], values["y"] = parse_grid(grid)
        return super().from_dict(values, source=source)

    def check_other(self, other: Any) -> None:
        """A second run is needed by, and only by, ``directions="between"``."""
        if self.directions == "between" and other is None:
            raise ConfigError("--directions between needs a second solution: give --other RUN2")
        if self.directions == "random" and other is not None:
            # Refused rather than ignored: a user naming a second run expects to see it.
            raise ConfigError(f"--other {other} is used only with --directions between "
                              "(the plane through both solutions)")


@dataclass(frozen=True)
class SharpnessSpec(Spec):
    """Keskar's sharpness for each box size in ``eps`` and each subspace ("full" or
    "random:P") with ``iters`` L-BFGS-B iterations; with ``hessian`` the ``top_k`` largest
    Hessian eigenvalues (``hessian_iters`` Lanczos steps); with ``trace`` Hutchinson's trace
    estimate (``trace_samples`` probes). f is the mean training cross-entropy over ``samples``
    seeded training images (all when fewer), evaluated in batches of ``batch_size``; ``seed``
    also draws the subspace, the start points and the probes. Everything is measured once per
    BatchNorm convention in ``bn`` (``SHARPNESS_BN``; "batch": near-equal batches of at most
    ``batch_size``, whose statistics normalise them), with the gradient norm at the solution
    over ``gradient_samples`` seeded training images (None: the whole training set, the
    full-batch gradient). ``eps``, ``subspaces`` and ``bn`` also take comma-separated text.
    """

    kind: ClassVar[str] = "sharpness spec"

    eps: tuple[float, ...] = _setting(tuple(parse_floats(DEFAULT_EPS, "eps")),
                                      "comma list of box sizes", text=DEFAULT_EPS)
    subspaces: tuple[str, ...] = _setting(
        ("full",), "full | random:P, or several comma-separated", flag="subspace")
    iters: int = _setting(10, "L-BFGS-B iterations")
    hessian: bool = _setting(False, "top Hessian eigenvalues (Lanczos)")
    top_k: int = _setting(1, "how many eigenvalues")
    hessian_iters: int = _setting(20, "Lanczos iterations")
    trace: bool = _setting(False, "Hutchinson estimate of the trace")
    trace_samples: int = _setting(100, "Hutchinson probe vectors")
    samples: int = _setting(4096, "training samples in the loss")
    batch_size: int = _setting(1024, "evaluation batch", flag="eval-batch-size")
    seed: int = _setting(0, "seed for samples, subspace and probes")
    bn: tuple[str, ...] = _setting(
        ("running",), "BatchNorm in f: running (the run's running statistics) | batch (each "
        "batch's own, as Keras' BatchNormalization(mode=2) in Keskar et al.'s code), or both "
        "comma-separated: every measure once per convention")
    gradient_samples: int | None = None

    def __post_init__(self) -> None:
        bn = self.bn.split(",") if isinstance(self.bn, str) else self.bn
        if isinstance(bn, (bytes, str)) or not isinstance(bn, Sequence) or not bn or \
                len(set(bn)) < len(bn):
            raise ConfigError(f"bn must be one or more of {', '.join(SHARPNESS_BN)}, each "
                              f"once, got {self.bn!r}")
        self._set("bn", tuple(_choice("bn", str(b).strip(), SHARPNESS_BN,
                                      "BatchNorm convention") for b in bn))
        eps = parse_floats(self.eps, "eps") if isinstance(self.eps, str) else self.eps
        eps = _finite_numbers("eps", eps)
        if any(e < 0 for e in eps):
            raise ConfigError(f"eps must be non-negative numbers, got {list(eps)}")
        self._set("eps", eps)
        subspaces = (self.subspaces.split(",") if isinstance(self.subspaces, str)
                     else self.subspaces)
        if not isinstance(subspaces, Sequence) or not all(isinstance(s, str) for s in subspaces):
            raise ConfigError(f"subspaces must be a list of 'full' or 'random:P', got "
                              f"{self.subspaces!r}")
        subspaces = tuple(s.strip() for s in subspaces if s.strip())
        if not subspaces:
            raise ConfigError(f"no subspace given in {self.subspaces!r}; use 'full' or "
                              "'random:P'")
        for s in subspaces:
            parse_subspace(s)
        self._set("subspaces", subspaces)
        for name in ("iters", "samples", "batch_size", "top_k", "hessian_iters"):
            self._set(name, whole_number(name, getattr(self, name), 1))
        self._set("trace_samples", whole_number("trace_samples", self.trace_samples, 0))
        if self.gradient_samples is not None:
            self._set("gradient_samples",
                      whole_number("gradient_samples", self.gradient_samples, 1))
        self._set("seed", whole_number("seed", self.seed, 0))
        _flag("hessian", self.hessian)
        _flag("trace", self.trace)
        if self.hessian and self.top_k > self.hessian_iters:
            raise ConfigError(f"need 1 <= top_k <= hessian_iters, got {self.top_k} and "
                              f"{self.hessian_iters}")
        if self.trace and self.trace_samples < 2:
            raise ConfigError(f"trace_samples must be >= 2, got {self.trace_samples}")


@dataclass(frozen=True)
class NoiseScaleSpec(Spec):
    """E|G_B|^2 over ``draws`` random batches at each of ``batch_sizes`` (small, big),
    forward passes of at most ``chunk_size`` samples (None: the small batch), ``seed`` fixing
    the batches and dropout masks. ``batch_sizes`` also takes the text ``"32,1024"``."""

    kind: ClassVar[str] = "noise-scale spec"

    batch_sizes: tuple[int, int] = _setting(
        (32, 1024), "the small and the big batch size, comma-separated", flag="batches")
    draws: int = _setting(32, "random batches drawn per batch size")
    seed: int = _setting(0, "seed of the batches and dropout masks")
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        sizes = parse_batches(self.batch_sizes) if isinstance(self.batch_sizes, str) \
            else self.batch_sizes
        if isinstance(sizes, str) or not isinstance(sizes, Sequence) or len(sizes) != 2:
            raise ConfigError(f"batch_sizes must be two batch sizes, got {self.batch_sizes!r}")
        small, big = (whole_number("batch_sizes", b, 1) for b in sizes)
        if small >= big:
            raise ConfigError(f"the small batch must be smaller than the big one, got "
                              f"batch_sizes {[small, big]}")
        self._set("batch_sizes", (small, big))
        self._set("draws", whole_number("draws", self.draws, 0))
        if self.draws < 2:
            raise ConfigError(f"draws must be at least 2 (for a standard error), got "
                              f"{self.draws}")
        self._set("seed", whole_number("seed", self.seed, 0))
        if self.chunk_size is not None:
            self._set("chunk_size", whole_number("chunk_size", self.chunk_size, 1))


@dataclass(frozen=True)
class KeskarStudySpec(Spec):
    """Keskar et al.'s study: train at ``sb`` and ``lb`` from one initialisation, then measure
    both solutions with ``interpolation`` and ``sharpness``."""

    kind: ClassVar[str] = "study spec"

    sb: int = _setting(256, "small batch size")
    lb: int = _setting(5000, "large batch size")
    interpolation: InterpolationSpec = field(default_factory=InterpolationSpec)
    sharpness: SharpnessSpec = field(default_factory=lambda: SharpnessSpec(hessian=True,
                                                                           trace=True))

    def __post_init__(self) -> None:
        sb, lb = whole_number("sb", self.sb, 1), whole_number("lb", self.lb, 1)
        if not sb < lb:
            raise ConfigError(f"need 0 < sb < lb batch sizes, got sb={sb}, lb={lb}")
        self._set("sb", sb)
        self._set("lb", lb)
        self._nest("interpolation", InterpolationSpec)
        self._nest("sharpness", SharpnessSpec)


@dataclass(frozen=True)
class FashionStudySpec(Spec):
    """``lbtkit study fashion``: Keskar's F1 protocol over ``seeds`` and the batch-size sweep.

    The Keskar part: per seed, SB (``sb``) and LB (``lb``) from that seed's initial weights,
    each trained until the stopping rule fires (training accuracy ``stop_train_acc``, read
    as ``stop_train_acc_mode`` says: "eval", the whole training set in eval mode at each
    epoch's end, or "running", the epoch's running average; and/or
    no relative improvement of the training loss above ``stop_plateau_delta`` for
    ``stop_plateau_epochs`` epochs; at least one of the two) or ``epochs_cap`` epochs pass,
    then measured with ``interpolation`` and ``sharpness``. The sweep part: the
    ``fashion-batch-sweep`` recipe at ``sweep_batch_sizes`` for ``sweep_epochs`` epochs (the
    first ``sweep_warmup_epochs`` a linear warm-up) with seed ``sweep_seed``, and the gradient
    noise scale (``noise_scale``) at the final weights of its smallest batch. ``threads``:
    torch's intra-op threads during the study (None: leave torch's setting).
    """

    kind: ClassVar[str] = "fashion study spec"

    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    sb: int = 256
    lb: int = 6000
    epochs_cap: int = 30
    stop_train_acc: float | None = 0.99
    stop_train_acc_mode: str = "eval"
    stop_plateau_epochs: int | None = None
    stop_plateau_delta: float = 1e-3
    sweep_batch_sizes: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
    sweep_epochs: int = 10
    sweep_warmup_epochs: float = 2.0
    sweep_seed: int = 0
    interpolation: InterpolationSpec = field(default_factory=InterpolationSpec)
    sharpness: SharpnessSpec = field(default_factory=lambda: SharpnessSpec(
        subspaces=("full", "random:100"), hessian=True))
    noise_scale: NoiseScaleSpec = field(default_factory=NoiseScaleSpec)
    threads: int | None = 2

    def __post_init__(self) -> None:
        seeds = self.seeds
        if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
            raise ConfigError(f"seeds must be a list of seeds, got {seeds!r}")
        seeds = tuple(whole_number("seeds", s, 0) for s in seeds)
        if len(set(seeds)) < 2 or len(set(seeds)) < len(seeds):
            raise ConfigError(f"seeds must be at least two different seeds (for a standard "
                              f"deviation), each once, got {list(seeds)}")
        self._set("seeds", seeds)
        KeskarStudySpec(sb=self.sb, lb=self.lb)  # the same check of the two batch sizes
        self._set("sb", whole_number("sb", self.sb, 1))
        self._set("lb", whole_number("lb", self.lb, 1))
        self._set("epochs_cap", whole_number("epochs_cap", self.epochs_cap, 1))
        self._check_stop_rule()
        sizes = sorted({whole_number("sweep_batch_sizes", b, 1) for b in self.sweep_batch_sizes})
        if len(sizes) < 2:
            raise ConfigError(f"the sweep needs at least two batch sizes, got {sizes}")
        self._set("sweep_batch_sizes", tuple(sizes))
        self._set("sweep_epochs", whole_number("sweep_epochs", self.sweep_epochs, 1))
        warmup = self.sweep_warmup_epochs
        if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not (
                math.isfinite(warmup) and 0 <= warmup < self.sweep_epochs):
            raise ConfigError(f"sweep_warmup_epochs must be in [0, sweep_epochs "
                              f"({self.sweep_epochs})), got {warmup!r}")
        self._set("sweep_seed", whole_number("sweep_seed", self.sweep_seed, 0))
        self._nest("interpolation", InterpolationSpec)
        self._nest("sharpness", SharpnessSpec)
        self._nest("noise_scale", NoiseScaleSpec)
        if self.threads is not None:
            self._set("threads", whole_number("threads", self.threads, 1))

    def _check_stop_rule(self) -> None:
        """The same ranges as RunConfig's stop_* fields, and at least one rule: without one
        a side could stop under-trained at the cap without the study saying so."""
        acc, epochs = self.stop_train_acc, self.stop_plateau_epochs
        if acc is None and epochs is None:
            raise ConfigError("the study needs a stopping rule: set stop_train_acc and/or "
                              "stop_plateau_epochs")
        if acc is not None and (isinstance(acc, bool) or not isinstance(acc, (int, float))
                                or not (math.isfinite(acc) and 0 < acc <= 1)):
            raise ConfigError(f"stop_train_acc must be in (0, 1], got {acc!r}")
        if epochs is not None:
            self._set("stop_plateau_epochs", whole_number("stop_plateau_epochs", epochs, 1))
        _choice("stop_train_acc_mode", self.stop_train_acc_mode, TRAIN_ACC_MODES,
                "training-accuracy mode")
        delta = self.stop_plateau_delta
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not (
                math.isfinite(delta) and 0 <= delta < 1):
            raise ConfigError(f"stop_plateau_delta must be in [0, 1), got {delta!r}")

    def stop_fields(self) -> dict[str, Any]:
        """The RunConfig fields of the stopping rule and the cap, for both sides."""
        return {"epochs": self.epochs_cap, "stop_train_acc": self.stop_train_acc,
                "stop_train_acc_mode": self.stop_train_acc_mode,
                "stop_plateau_epochs": self.stop_plateau_epochs,
                "stop_plateau_delta": self.stop_plateau_delta}


OPTIMIZER_CHOICES = ("sgd", "lars", "lamb")


@dataclass(frozen=True)
class CriticalBatchSpec(Spec):
    """``lbtkit study critical-batch``: steps to each target against the batch size, with the
    learning rate tuned per batch size, the McCandlish fit, and the noise-scale prediction.

    Every run uses ``model`` on ``dataset`` with ``val_split`` training images held out for
    validation, SGD with momentum (or ``remedies`` at the ``remedy_batches`` largest batch
    sizes) at a constant learning rate after ``warmup_steps`` of linear warm-up, stopping once
    every target in ``targets`` is met (evaluated at steps spaced by ``eval_growth``), for at
    most ``epochs_for(B)`` epochs: ``min_epochs``, or more where that gives fewer than
    ``min_steps`` optimizer steps. Learning rates: ``lr_at_256[optimizer]`` scaled by
    ``lr_scaling`` to each batch size, times each of ``lr_factors``; a best learning rate on
    the grid's edge adds the next factor-of-``lr_step`` value that way, for at most
    ``extension_rounds`` rounds. The noise scale B_simple (``noise_scale``) is measured on the
    seed-``seeds[0]`` SGD run at ``reference_batch`` at the weights where it met each target.
    """

    kind: ClassVar[str] = "critical-batch study spec"

    model: str = "f1"
    dataset: str = "fashion-mnist"
    batch_sizes: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    seeds: tuple[int, ...] = (0, 1)
    targets: tuple[str, ...] = ("train_loss<=0.6", "train_loss<=0.5", "train_loss<=0.4",
                                "val_error<=0.16")
    val_split: int = 5000
    train_eval_samples: int = 4096
    eval_growth: float = 1.1
    warmup_steps: int = 10
    min_epochs: int = 2
    min_steps: int = 160
    lr_at_256: dict[str, float] = field(default_factory=lambda: {
        "sgd": 0.0125, "lars": 1.0, "lamb": 0.0025})
    lr_scaling: str = "sqrt"
    lr_factors: tuple[float, ...] = (0.5, 1.0, 2.0)
    lr_step: float = 2.0
    extension_rounds: int = 3
    remedies: tuple[str, ...] = ("lars", "lamb")
    remedy_batches: int = 3
    reference_batch: int = 256
    noise_scale: NoiseScaleSpec = field(default_factory=lambda: NoiseScaleSpec(
        batch_sizes=(32, 2048), draws=32, seed=0))
    bootstrap_samples: int = 2000
    eval_batch_size: int = 2000
    jobs: int = 1
    threads: int | None = 1

    def __post_init__(self) -> None:
        from lbtkit.targets import parse_targets

        sizes = sorted({whole_number("batch_sizes", b, 1) for b in _sequence(
            "batch_sizes", self.batch_sizes)})
        if len(sizes) < 3:
            raise ConfigError(f"batch_sizes needs at least three batch sizes (a fit of two "
                              f"parameters and a check), got {sizes}")
        self._set("batch_sizes", tuple(sizes))
        seeds = tuple(whole_number("seeds", s, 0) for s in _sequence("seeds", self.seeds))
        if len(set(seeds)) < 2 or len(set(seeds)) < len(seeds):
            raise ConfigError(f"seeds must be at least two different seeds (the bootstrap "
                              f"draws over them), each once, got {list(seeds)}")
        self._set("seeds", seeds)
        targets = [str(t) for t in _sequence("targets", self.targets)]
        parsed = parse_targets(",".join(targets))
        if not parsed:
            raise ConfigError("targets must name at least one target, e.g. train_loss<=0.3")
        self._set("targets", tuple(t.name for t in parsed))
        for name, low in (("val_split", 1), ("train_eval_samples", 1), ("warmup_steps", 0),
                          ("min_epochs", 1), ("min_steps", 1), ("extension_rounds", 0),
                          ("remedy_batches", 1),
                          ("reference_batch", 1), ("bootstrap_samples", 1),
                          ("eval_batch_size", 1), ("jobs", 1)):
            self._set(name, whole_number(name, getattr(self, name), low))
        _finite_numbers("eval_growth", [self.eval_growth])
        if not self.eval_growth > 1:
            raise ConfigError(f"eval_growth must be > 1, got {self.eval_growth}")
        factors = sorted(set(_finite_numbers("lr_factors", self.lr_factors)))
        if len(factors) < 3 or factors[0] <= 0:
            raise ConfigError(f"lr_factors needs three or more positive factors (a best "
                              f"that can be interior), got {factors}")
        self._set("lr_factors", tuple(factors))
        if not (_finite_numbers("lr_step", [self.lr_step])[0] > 1):
            raise ConfigError(f"lr_step must be > 1, got {self.lr_step}")
        _choice("lr_scaling", self.lr_scaling, ("linear", "sqrt", "none"), "lr scaling rule")
        remedies = tuple(_choice("remedies", r, OPTIMIZER_CHOICES[1:], "remedy")
                         for r in (self.remedies or ()))
        self._set("remedies", remedies)
        lrs = self.lr_at_256
        if not isinstance(lrs, dict):
            raise ConfigError(f"lr_at_256 must be a table optimizer = lr, got {lrs!r}")
        for name in ("sgd", *remedies):
            if name not in lrs or _finite_numbers(f"lr_at_256.{name}", [lrs[name]])[0] <= 0:
                raise ConfigError(f"lr_at_256 needs a positive learning rate for {name!r}")
        self._set("lr_at_256", {k: float(v) for k, v in lrs.items()})
        if self.reference_batch not in sizes:
            raise ConfigError(f"reference_batch {self.reference_batch} is not one of "
                              f"batch_sizes {sizes}")
        self._nest("noise_scale", NoiseScaleSpec)
        if self.threads is not None:
            self._set("threads", whole_number("threads", self.threads, 1))

    def epochs_for(self, batch_size: int, train_images: int) -> int:
        """The epochs cap at ``batch_size``: ``min_epochs``, or enough for ``min_steps``."""
        steps_per_epoch = max(train_images // batch_size, 1)
        return max(self.min_epochs, math.ceil(self.min_steps / steps_per_epoch))

    def remedy_sizes(self) -> tuple[int, ...]:
        """The batch sizes the remedies run at: the ``remedy_batches`` largest."""
        return self.batch_sizes[-self.remedy_batches:] if self.remedies else ()


def _sequence(name: str, values: Any) -> Sequence[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ConfigError(f"{name} must be a non-empty list, got {values!r}")
    return values
