"""The training loop: ``run(config)``.

    run            one Accelerator for the run, released however the run ends
    _run           claim the run directory, _setup, the epoch loop, _finish: the one exit
    _train_epoch   _optimizer_step for each remaining batch, then _end_epoch
    _end_epoch     evaluate when due, log the metrics row, checkpoint when due or asked to stop

One code path for one process and for N processes (``accelerate launch``): every process
draws the same epoch permutation and takes its own slice of each global batch, so the
optimizer sees ``config.batch_size`` samples per step whatever the world size.

Exit semantics (``results.json`` status -> process exit code, see ``exit_code``):
completed -> 0, diverged (NaN/inf loss) -> 3, interrupted by a signal after saving a
checkpoint -> 75 (EX_TEMPFAIL: requeue me). User errors exit 2 (the CLI's business).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch
import torch.nn.functional as F

from lbtkit import sam
from lbtkit.checkpoint import (
    LoopState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_snapshot,
    save_weights,
)
from lbtkit.config import BatchPlan, RunConfig, parse_trackers, plan_batches
from lbtkit.contention import ThreadGovernor
from lbtkit.cpu import CpuPolicy, affinity_set, set_cpu_threads
from lbtkit.data import (
    DatasetInfo,
    EpochDraw,
    ImageData,
    augment,
    draw_epoch,
    hold_out,
    load_dataset,
)
from lbtkit.data.provenance import data_files
from lbtkit.errors import STATUS_COMPLETED, STATUS_DIVERGED, STATUS_INTERRUPTED, ConfigError
from lbtkit.evaluate import InputSpec, evaluate_sums, mean_loss_and_accuracy
from lbtkit.fileio import write_json
from lbtkit.models.norm import convert_batchnorm, frozen_running_stats
from lbtkit.noise_scale import NoiseScaleMonitor, last_logged_noise_scale, noise_scale_row
from lbtkit.optim import LAMB, LARS
from lbtkit.progress import TrainingProgress
from lbtkit.run_model import build_model_for
from lbtkit.rundir import RunDir, guard_run, versions
from lbtkit.schedule import Schedule
from lbtkit.signals import GracefulStop, StopPoll
from lbtkit.stopping import StopRule
from lbtkit.targets import Target, all_met, eval_steps, first_steps, parse_targets
from lbtkit.tracking import Tracking, make_trackers

logger = logging.getLogger(__name__)

# Fields that may differ when a run directory is reused: they change where data comes from,
# how often we log or save, or how fast a step runs, not what is trained.
_RESUME_FREE_FIELDS = {
    "data_dir", "download", "output_dir", "log_every", "checkpoint_every", "compile",
    "eval_batch_size", "log_noise_scale", "noise_scale_ema", "log_with", "tracking_dir",
    "tracking_project", "threads",
}
_FINAL_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc")
# In results.json's "final" too when the run measured them (stop_train_acc_mode "eval").
_FINAL_EVAL_KEYS = ("train_eval_loss", "train_eval_acc")


def make_accelerator(config: RunConfig):
    """An Accelerator on CUDA when there is one, else on the CPU (gloo for N processes)."""
    from accelerate import Accelerator

    has_cuda = torch.cuda.is_available()
    if config.mixed_precision == "fp16" and not has_cuda:
        raise ConfigError("mixed_precision 'fp16' needs a CUDA GPU; use 'bf16' on the CPU")
    trackers = parse_trackers(config.log_with)
    return Accelerator(
        cpu=not has_cuda, mixed_precision=config.mixed_precision,
        log_with=make_trackers(trackers, output_dir=config.output_dir,
                               configured_dir=config.tracking_dir,
                               project=config.tracking_project) if trackers else None,
    )


def run(config: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train as ``config`` says in ``config.output_dir``; return the results dict.

    Re-running on a directory with a checkpoint resumes; on a completed run it returns the
    stored results without training.
    """
    config = config.resolved()
    completed = _completed(config)  # first: no lock, nothing written (a read-only disk is fine)
    if completed is not None:
        return completed
    cpu = CpuUse.start(set_cpu_threads(config.threads))
    accelerator = make_accelerator(config)
    ended = False
    try:
        with guard_run(config.output_dir, main=accelerator.is_main_process,  # lock, disk full
                       from_main=_from_main(accelerator)):
            results = _run(config, accelerator, cpu, progress=progress)
        ended = True
        return results
    finally:
        try:
            accelerator.end_training()
        except Exception:
            if ended:
                raise
            # The run's own error is the one to report: a tracker that failed to start (an
            # unwritable directory) fails again as it is closed, and would hide it.
            logger.debug("closing the trackers failed after the run failed", exc_info=True)
        finally:
            _reset_accelerate_state()
            cpu.restore()


def _completed(config: RunConfig) -> dict[str, Any] | None:
    """The stored results when ``config.output_dir`` holds this run completed."""
    run_dir = RunDir(config.output_dir)
    if not run_dir.results_path.exists():
        return None
    check_same_run(run_dir, config)
    previous = run_dir.read_results()
    if not previous or previous.get("status") != STATUS_COMPLETED:
        return None
    if os.environ.get("RANK", "0") == "0":  # once per launch (no Accelerator made yet)
        logger.info("%s: already completed; not retraining", run_dir.root)
    return previous


# --- the loop --------------------------------------------------------------------------------


@dataclass
class Clock:
    """Training wall time: the seconds of earlier segments (a checkpoint stores them as
    ``LoopState.train_seconds``) plus the segment running since ``started``."""

    banked: float
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return self.banked + (time.monotonic() - self.started)

    def bank(self) -> float:
        """Close the running segment into ``banked`` (before a checkpoint); return it."""
        self.banked, self.started = self.elapsed(), time.monotonic()
        return self.banked


@dataclass
class CpuUse:
    """The process's CPU policy, and the governor that follows other processes' load with the
    thread count when the policy is adaptive (lbtkit chose the count and there are 2 or more)."""

    policy: CpuPolicy
    governor: ThreadGovernor | None

    @classmethod
    def start(cls, policy: CpuPolicy) -> CpuUse:
        if not (policy.adaptive and policy.threads > 1):
            return cls(policy, None)
        cpus = affinity_set()
        # Others' load is measured on the CPUs the process may run on: a cgroup quota below
        # them caps the threads (the policy's count), not which CPUs are free.
        return cls(policy, ThreadGovernor(cap=policy.threads, usable=len(cpus), cpus=cpus,
                                          set_threads=torch.set_num_threads))

    def restore(self) -> None:
        """Put torch's thread count back to the policy's: the next run of this process (a
        sweep's next entry) must not take a count the load chose for this one as a setting."""
        if self.governor is not None and torch.get_num_threads() != self.policy.threads:
            torch.set_num_threads(self.policy.threads)

    def record(self) -> dict[str, Any]:
        """results.json's "cpu": the policy, and the thread changes when it adapted."""
        return {**self.policy.to_dict(), **(self.governor.record() if self.governor else {})}


@dataclass
class Training:
    """Everything the loop works with, built once by ``_setup``."""

    config: RunConfig
    accelerator: Any
    cpu: CpuUse
    plan: BatchPlan
    run_dir: RunDir
    data: ImageData
    inputs: InputSpec
    model: torch.nn.Module  # what a step calls: DDP (and compile) wrapped
    raw_model: torch.nn.Module  # what checkpoints and evaluation use: no wrapper
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    state: LoopState
    noise: NoiseScaleMonitor | None
    clock: Clock
    stop_poll: StopPoll  # when the processes agree on a stop request mid-epoch
    tracking: Tracking  # experiment trackers (a no-op without --log-with)
    stop_rule: StopRule  # when the run has trained enough before its last epoch
    history: list[dict[str, Any]]  # the metrics rows so far (what the stop rule reads)
    # This process's running (loss sum, correct) of the epoch, and "a loss was not finite",
    # on the device: no host sync per step.
    sums: torch.Tensor
    nonfinite: torch.Tensor
    watch: TargetWatch | None = None  # runs with targets: the evaluations by step
    last_final: dict[str, Any] | None = None  # the final metrics, once an epoch has ended
    stop_reason: str | None = None  # set when the stop rule fires

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def steps_per_epoch(self) -> int:
        return self.data.train_labels.shape[0] // self.config.batch_size

    def running_means(self) -> dict[str, float]:
        """This process's mean loss and accuracy so far in the epoch, and the lr (a host
        sync: called sparingly)."""
        loss_sum, correct = self.sums.tolist()
        samples_per_step = self.plan.per_device_batch_size * self.plan.grad_accum_steps
        seen = max(samples_per_step * (self.state.step_in_epoch or 1), 1)
        return {"train_loss": loss_sum / seen, "train_acc": correct / seen,
                "lr": self.optimizer.param_groups[0]["lr"]}

    def describe(self) -> str:
        """The epoch so far, for the progress display."""
        means = self.running_means()
        return (f"loss {means['train_loss']:.4f} acc {means['train_acc']:.3f} "
                f"lr {means['lr']:.3g}")


@dataclass
class TargetWatch:
    """A run with targets: when to evaluate, on which training images, and the rows so far."""

    targets: tuple[Target, ...]
    steps: frozenset[int]  # evaluate once this many optimizer steps are done
    # The fixed training images (and labels) the loss is read on, gathered once.
    train_subset: tuple[torch.Tensor, torch.Tensor]
    rows: list[dict[str, Any]]  # evals.jsonl: one row per evaluation, in step order


# The fixed training subset of a run with targets: a seed of its own, so every run of a study
# reads its training loss on the same images.
TRAIN_SUBSET_SEED = 1


@dataclass(frozen=True)
class _EarlyStop:
    """Why the loop ended before its last epoch, and the line that tells the user."""

    status: str
    message: str
    record: dict[str, Any] | None = None  # results.json's "stopped_early" (the stop rule)


def _run(config: RunConfig, accelerator, cpu: CpuUse, *, progress: bool) -> dict[str, Any]:
    """Set up, train epoch by epoch until done or stopped early, then the one exit: close the
    display, say why it stopped early, write results.json (signals still deferred meanwhile)."""
    plan = plan_batches(config, accelerator.num_processes)
    run_dir = RunDir(config.output_dir)
    previous = _claim_run_dir(run_dir, config, accelerator)
    if previous is not None:
        return previous
    training = _setup(config, accelerator, cpu, plan, run_dir)
    display = TrainingProgress(
        total_steps=training.schedule.total_steps, done_steps=training.state.global_step,
        log_every=config.log_every, enabled=progress and training.is_main,
    )
    training.model.train()
    with GracefulStop() as stop:
        early: _EarlyStop | None = None
        try:
            while early is None and training.state.epoch < config.epochs:
                early = _train_epoch(training, display, stop)
        finally:
            display.close()
        if early is not None and early.status == STATUS_INTERRUPTED:
            stop.acted_on()  # else a late request passes on when the block ends (next entry)
        if early is not None and training.is_main:
            # INFO, not WARNING: a diverged or interrupted run is an outcome (its status and
            # exit code say so), and the CLI shows it as a plain line on stdout, as ever.
            logger.info("%s", early.message)
        if early is None:
            return _finish(training, STATUS_COMPLETED)
        return _finish(training, early.status, stopped_early=early.record)


def _claim_run_dir(run_dir: RunDir, config: RunConfig, accelerator) -> dict[str, Any] | None:
    """The stored results when ``run_dir`` holds this run completed; else create it (once,
    on the main process), write the config and return None."""
    # Every process reads the directory before the main one writes to it.
    check_same_run(run_dir, config)
    previous = run_dir.read_results()
    if previous and previous.get("status") == STATUS_COMPLETED:
        if accelerator.is_main_process:
            logger.info("%s: already completed; not retraining", run_dir.root)
        return previous
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        run_dir.create()
        write_json(run_dir.config_path, config.to_dict())
    accelerator.wait_for_everyone()
    return None


def _setup(config: RunConfig, accelerator, cpu: CpuUse, plan: BatchPlan,
           run_dir: RunDir) -> Training:
    """Data, model, optimizer and schedule; the loop state from the latest checkpoint."""
    device = accelerator.device
    data = _load_data(config, accelerator)
    n_train = data.train_labels.shape[0]
    steps_per_epoch = n_train // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the training set "
            f"({n_train} samples of {config.dataset})"
        )
    model, raw_model, optimizer = _build_model(config, data.info, accelerator)
    schedule = Schedule(
        peak_lr=config.lr,
        total_steps=config.epochs * steps_per_epoch,
        warmup_steps=(config.warmup_steps if config.warmup_steps is not None
                      else round(config.warmup_epochs * steps_per_epoch)),
        kind=config.scheduler,
        step_every=config.step_epochs * steps_per_epoch,
        gamma=config.step_gamma,
    )
    state = _resume(run_dir, raw_model, optimizer, accelerator)
    stop_rule = config.stop_rule()
    history: list[dict[str, Any]] = []
    if stop_rule.active:  # the rows before a resume, once the main process has repaired them
        accelerator.wait_for_everyone()
        history = run_dir.read_metrics()
    tracking = Tracking(accelerator, enabled=bool(config.log_with), output_dir=config.output_dir)
    tracking.start(config.to_dict(), config.tracking_project)
    # Gradient noise scale: a DDP comm hook reads each process's own gradient (small batch)
    # before it is averaged (big batch); no host sync per step, see lbtkit.noise_scale.
    noise = NoiseScaleMonitor(
        model, b_small=plan.per_device_batch_size * plan.grad_accum_steps,
        b_big=config.batch_size, decay=config.noise_scale_ema, population=n_train,
        state=state.noise_scale, scaler=accelerator.scaler,
    ) if config.log_noise_scale else None
    # A checkpoint stores the running sums totalled over processes; on resume rank 0 carries them.
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    if accelerator.process_index == 0:
        sums += torch.tensor([state.epoch_loss_sum, state.epoch_correct], dtype=torch.float64)
    return Training(
        config=config, accelerator=accelerator, cpu=cpu, plan=plan, run_dir=run_dir, data=data,
        inputs=InputSpec(data.info, config.image_size, config.channels_last),
        model=model, raw_model=raw_model, optimizer=optimizer, schedule=schedule,
        state=state, noise=noise, clock=Clock(banked=state.train_seconds),
        stop_poll=StopPoll.for_accelerator(accelerator), tracking=tracking, sums=sums,
        stop_rule=stop_rule, history=history,
        nonfinite=torch.zeros((), dtype=torch.bool, device=device),
        watch=_target_watch(config, run_dir, data, schedule.total_steps,
                            resumed_at=state.global_step),
    )


def _target_watch(config: RunConfig, run_dir: RunDir, data: ImageData, total_steps: int,
                  *, resumed_at: int) -> TargetWatch | None:
    """The evaluation plan of a run with targets (None without), with the rows on record up
    to the resumed step. ``_resume`` drops later rows from the file on the main process; the
    others may read it before that, so every process filters alike and all agree on when the
    targets are met (a collective decision)."""
    targets = parse_targets(config.targets)
    if not targets:
        return None
    generator = torch.Generator().manual_seed(TRAIN_SUBSET_SEED)
    n_train = data.train_labels.shape[0]
    subset = torch.randperm(n_train, generator=generator)[:config.train_eval_samples]
    subset = subset.sort().values.to(data.train_labels.device)
    return TargetWatch(targets=targets,
                       steps=frozenset(eval_steps(config.eval_growth, total_steps)),
                       train_subset=(data.train_images[subset], data.train_labels[subset]),
                       rows=[r for r in run_dir.read_evals() if r["step"] <= resumed_at])


def _load_data(config: RunConfig, accelerator) -> ImageData:
    with accelerator.main_process_first():  # only the main process downloads
        data = load_dataset(
            config.dataset, config.data_dir,
            download=config.download and accelerator.is_main_process,
            image_size=config.image_size, num_classes=config.num_classes,
        )
    if config.val_split:
        data = hold_out(data, config.val_split)
    return data.to(accelerator.device)


def _build_model(
    config: RunConfig, info: DatasetInfo, accelerator
) -> tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]:
    """``(model, raw_model, optimizer)``: the model as a step calls it (prepared by
    Accelerate: DDP, compile) and as checkpoints and evaluation see it."""
    device = accelerator.device
    torch.manual_seed(config.seed)  # identical initial weights on every process
    raw_model = build_model_for(config, info)
    raw_model = convert_batchnorm(raw_model, ghost_batch_size=config.ghost_batch_size,
                                  sync=config.sync_bn and accelerator.num_processes > 1)
    if config.channels_last:
        raw_model = raw_model.to(memory_format=torch.channels_last)
    raw_model = raw_model.to(device)
    optimizer = build_optimizer(config, raw_model, device)
    model = torch.compile(raw_model) if config.compile else raw_model
    model, optimizer = accelerator.prepare(model, optimizer)
    # Dropout draws differ per process, as they would on separate GPUs.
    torch.manual_seed(config.seed * 1000 + accelerator.process_index + 1)
    return model, raw_model, optimizer


def _resume(run_dir: RunDir, raw_model, optimizer, accelerator) -> LoopState:
    """The loop state of the latest checkpoint, its model, optimizer, RNG and scaler restored;
    a fresh state when there is none. Metrics rows after it are dropped (they are redone)."""
    is_main = accelerator.is_main_process
    state = LoopState()
    checkpoint = latest_checkpoint(run_dir.checkpoints)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model=raw_model, optimizer=optimizer,
                                rank=accelerator.process_index)
        if is_main:
            run_dir.keep_metrics_before(state.epoch)
            run_dir.keep_evals_through(state.global_step)
            logger.info("resuming %s from %s (epoch %d, step %d)", run_dir.root,
                        checkpoint.name, state.epoch + 1, state.global_step)
    elif is_main:
        run_dir.keep_metrics_before(0)
        run_dir.keep_evals_through(0)
    if state.scaler is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state.scaler)
    return state


def _train_epoch(t: Training, display: TrainingProgress, stop: GracefulStop) -> _EarlyStop | None:
    """The rest of epoch ``t.state.epoch``; why the run must end now, if it must."""
    info = t.data.info
    draw = draw_epoch(
        t.data.train_labels.shape[0], seed=t.config.seed, epoch=t.state.epoch,
        padding=info.crop_padding, flip=info.flip, device=t.accelerator.device,
    )
    started = time.monotonic()
    ended = _take_steps(t, draw, display, stop)
    if _any_process(t.accelerator, t.nonfinite):
        return _EarlyStop(STATUS_DIVERGED, f"diverged: non-finite training loss at step "
                          f"{t.state.global_step} (lr {t.config.lr:g}); stopping")
    epoch_seconds = t.state.epoch_step_seconds + (time.monotonic() - started)
    if ended == "targets":
        return _targets_met(t)
    if ended == "signal":
        _store_sums(t.state, t.accelerator.reduce(t.sums.clone(), reduction="sum"),
                    epoch_seconds)
        _save_checkpoint(t)
        return _EarlyStop(STATUS_INTERRUPTED, f"stopped by {stop.requested} at step "
                          f"{t.state.global_step}; checkpoint saved, rerun the same command "
                          f"to resume")
    return _end_epoch(t, epoch_seconds, display, stop)


def _take_steps(t: Training, draw: EpochDraw, display: TrainingProgress,
                stop: GracefulStop) -> str | None:
    """The epoch's remaining optimizer steps; "signal" when a stop request cut them short,
    "targets" when a run with targets met them all.

    A non-finite loss also ends them early (checked every ``log_every`` steps, and at each
    evaluation of a run with targets); the caller reads ``t.nonfinite``.
    """
    config, state = t.config, t.state
    for step in range(state.step_in_epoch, t.steps_per_epoch):
        _optimizer_step(t, draw, step)
        if t.cpu.governor is not None:
            t.cpu.governor.check(state.global_step)
        display.step(state.global_step, t.describe)
        if t.tracking.enabled and state.global_step % config.log_every == 0:
            t.tracking.log_step(state.global_step, t.running_means())
        if state.global_step % config.log_every == 0 and _any_process(t.accelerator, t.nonfinite):
            return None
        if t.watch is not None and state.global_step in t.watch.steps:
            if _evaluate_targets(t):
                return "targets"
            if bool(t.nonfinite):
                return None
        if step + 1 < t.steps_per_epoch and \
                t.stop_poll.agreed_stop(state.global_step, stop.requested is not None):
            return "signal"
    return None


def _optimizer_step(t: Training, draw: EpochDraw, step: int) -> None:
    """Step ``step`` of the epoch: the lr of the schedule, the batch's gradient, the update."""
    config, state = t.config, t.state
    lr = t.schedule.lr_at_step(state.global_step)
    for group in t.optimizer.param_groups:
        group["lr"] = lr
    batch = draw.order[step * config.batch_size:(step + 1) * config.batch_size]
    if config.sam_rho > 0:
        # SAM: the gradient at the ascended weights; the training metrics are those at w,
        # from the first pass.
        _accumulate_gradients(t, batch, draw, all_reduce=False, record=True)
        trainable = [p for p in t.raw_model.parameters() if p.requires_grad]
        perturbation = sam.ascend(trainable, config.sam_rho)
        t.optimizer.zero_grad(set_to_none=True)
        with frozen_running_stats(t.raw_model):
            _accumulate_gradients(t, batch, draw, all_reduce=True, record=False)
        sam.descend(perturbation)
    else:
        _accumulate_gradients(t, batch, draw, all_reduce=True, record=True)
    if t.noise is not None:  # needs the averaged .grad: before step/zero_grad
        t.noise.step()
    t.optimizer.step()
    t.optimizer.zero_grad(set_to_none=True)
    state.global_step += 1
    state.step_in_epoch = step + 1


def _accumulate_gradients(t: Training, batch: torch.Tensor, draw: EpochDraw, *,
                          all_reduce: bool, record: bool) -> None:
    """Accumulate this process's share of ``batch`` into .grad, micro-batch by micro-batch.

    With ``all_reduce`` the last micro-batch averages the gradients over processes (the
    others never do); ``record`` adds loss and accuracy to the running sums.
    """
    per_device, accum = t.plan.per_device_batch_size, t.plan.grad_accum_steps
    data = t.data
    for micro in range(accum):
        offset = (micro * t.world + t.rank) * per_device
        idx = batch[offset:offset + per_device]
        x = t.inputs(augment(
            data.train_images[idx], draw.shifts[idx], draw.flips[idx],
            padding=data.info.crop_padding,
        ))
        y = data.train_labels[idx]
        sync = contextlib.nullcontext() if all_reduce and micro == accum - 1 \
            else t.accelerator.no_sync(t.model)
        with sync:
            logits = t.model(x)
            loss = F.cross_entropy(logits.float(), y)
            t.accelerator.backward(loss / accum)
        if record:
            detached = loss.detach()
            t.nonfinite |= ~torch.isfinite(detached)
            t.sums.add_(torch.stack((
                detached.double() * y.shape[0],
                (logits.detach().argmax(dim=1) == y).sum().double(),
            )))


def _end_epoch(t: Training, epoch_seconds: float, display: TrainingProgress,
               stop: GracefulStop) -> _EarlyStop | None:
    """Log the epoch's metrics row (evaluating when due), move on to the next epoch, and
    checkpoint when due or asked to stop; why the run must end now, if it must."""
    config, state = t.config, t.state
    row = _metrics_row(t, epoch_seconds)
    if t.is_main:
        t.run_dir.append_metrics(row)
    t.tracking.log_epoch(row)
    display.message(_epoch_line(row, config.epochs))
    t.last_final = _final_metrics(row)

    state.epoch += 1
    state.step_in_epoch = 0
    t.sums.zero_()
    _store_sums(state, t.sums, 0.0)
    last_epoch = state.epoch == config.epochs
    stop_now = _any_process(t.accelerator, stop.requested is not None)
    due = config.checkpoint_every and state.epoch % config.checkpoint_every == 0
    if (due or stop_now) and not last_epoch and t.stop_reason is None:
        _save_checkpoint(t)
    if t.stop_reason is not None and not last_epoch:
        return _EarlyStop(STATUS_COMPLETED, f"stopping early: {t.stop_reason}",
                          record={"epoch": state.epoch, "reason": t.stop_reason})
    if stop_now and not last_epoch:
        return _EarlyStop(STATUS_INTERRUPTED, f"stopped by {stop.requested} after epoch "
                          f"{state.epoch}; checkpoint saved, rerun the same command to resume")
    return None


def _metrics_row(t: Training, epoch_seconds: float) -> dict[str, Any]:
    """The metrics.jsonl row of the epoch just trained (collective: every process calls it)."""
    config, state = t.config, t.state
    epoch = state.epoch + 1
    # One reduction of the running sums across processes.
    loss_sum, correct = t.accelerator.reduce(t.sums.clone(), reduction="sum").tolist()
    seen = config.batch_size * t.steps_per_epoch
    row: dict[str, Any] = {
        "epoch": epoch,
        "step": state.global_step,
        "lr": t.optimizer.param_groups[0]["lr"],
        "train_loss": loss_sum / seen,
        "train_acc": correct / seen,
        "val_loss": None,
        "val_acc": None,
        "images_per_second": seen / max(epoch_seconds, 1e-9),
        **noise_scale_row(t.noise),  # collective when logging (one tiny reduce)
    }
    if t.stop_rule.evaluates_training_set:  # the fit of these weights, as reports judge it
        row["train_eval_loss"], row["train_eval_acc"] = _evaluate(t, split="train")
    # Every process computed the same row (reduced sums), so all agree on the stop rule.
    t.history.append(row)
    t.stop_reason = t.stop_rule.reason(t.history) if t.stop_rule.active else None
    if epoch % config.eval_every == 0 or epoch == config.epochs or t.stop_reason:
        val_loss, val_acc = _evaluate(t)
        row.update(val_loss=val_loss, val_acc=val_acc)
        if state.best_val_acc is None or val_acc > state.best_val_acc:
            state.best_val_acc = val_acc
    row["elapsed_s"] = t.clock.elapsed()
    return row


def _final_metrics(row: dict[str, Any]) -> dict[str, Any]:
    return {**{k: row[k] for k in _FINAL_KEYS},
            **{k: row[k] for k in _FINAL_EVAL_KEYS if k in row}}


def _evaluate(t: Training, split: str = "val") -> tuple[float, float]:
    """(loss, accuracy) of the raw model in eval mode on ``split``: "val", "test", "train"
    (the whole training set without augmentation) or "train_subset" (the fixed training
    images of a run with targets), each process taking its share of the split."""
    if split == "train_subset":
        images, labels = t.watch.train_subset
    else:
        images, labels = getattr(t.data, f"{split}_images"), getattr(t.data, f"{split}_labels")
    _share_buffers_from_main(t.raw_model, t.world)
    totals = evaluate_sums(
        t.raw_model, images, labels, t.inputs,
        batch_size=t.config.eval_batch_size, rank=t.rank, world_size=t.world,
    )
    return mean_loss_and_accuracy(t.accelerator.reduce(totals, reduction="sum"))


def _evaluate_targets(t: Training) -> bool:
    """Evaluate a run with targets at this step (collective), record the row in evals.jsonl;
    True once every target has been met. A non-finite loss sets ``t.nonfinite``."""
    state = t.state
    train_loss, train_acc = _evaluate(t, "train_subset")
    val_loss, val_acc = _evaluate(t, "val")
    row = {"step": state.global_step, "examples": state.global_step * t.config.batch_size,
           "epoch": state.global_step / t.steps_per_epoch, "lr": t.optimizer.param_groups[0]["lr"],
           "train_eval_loss": train_loss, "train_eval_error": 1 - train_acc,
           "val_loss": val_loss, "val_error": 1 - val_acc, "elapsed_s": t.clock.elapsed()}
    newly_met = [x for x in t.watch.targets if x.met(row)
                 and first_steps(t.watch.rows, [x])[x.name] is None]
    if t.is_main:
        if newly_met and t.config.keep_target_weights:
            save_snapshot(t.run_dir.snapshots, state, t.raw_model)
        t.run_dir.append_evals(row)
    t.watch.rows.append(row)
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
        t.nonfinite.fill_(True)
        return False
    return all_met(t.watch.rows, t.watch.targets)


def _targets_met(t: Training) -> _EarlyStop:
    """End a run with targets at the evaluation that met the last of them: completed, with
    the partial epoch's running training metrics and that evaluation's validation ones."""
    state, row = t.state, t.watch.rows[-1]
    loss_sum, correct = t.accelerator.reduce(t.sums.clone(), reduction="sum").tolist()
    seen = t.config.batch_size * max(state.step_in_epoch, 1)
    t.last_final = {"train_loss": loss_sum / seen, "train_acc": correct / seen,
                    "val_loss": row["val_loss"], "val_acc": 1 - row["val_error"]}
    t.stop_reason = f"every target met by step {state.global_step}"
    return _EarlyStop(STATUS_COMPLETED, f"stopping early: {t.stop_reason}",
                      record={"step": state.global_step, "epoch": row["epoch"],
                              "reason": t.stop_reason})


def _save_checkpoint(t: Training) -> None:
    """Collective: every process calls it (see lbtkit.checkpoint.save_checkpoint)."""
    t.state.train_seconds = t.clock.bank()
    if t.accelerator.scaler is not None:
        t.state.scaler = t.accelerator.scaler.state_dict()
    if t.noise is not None:  # collective: every process's moving averages
        t.state.noise_scale = t.noise.state_dict()
    save_checkpoint(
        t.run_dir.checkpoints, t.state, model=t.raw_model, optimizer=t.optimizer,
        rank=t.rank, world_size=t.world, barrier=t.accelerator.wait_for_everyone,
    )


def _finish(t: Training, status: str, *,
            stopped_early: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write results.json (and the final weights when completed); every process returns it.
    ``stopped_early`` records the stop rule that ended a completed run before its last epoch.
    """
    state, run_dir = t.state, t.run_dir
    final = None
    if status == STATUS_COMPLETED:
        # Resumed exactly at the end, no epoch ran here: the last row is on disk.
        final = t.last_final or _final_metrics(run_dir.read_metrics()[-1])
    results = {
        "status": status,
        "config": t.config.to_dict(),
        **t.plan.to_dict(),
        "lr": t.config.lr,
        "steps_per_epoch": t.steps_per_epoch,
        "global_step": state.global_step,
        "epochs_completed": state.epoch,
        "stopped_early": stopped_early,
        # The rule met at the last epoch trained, whether that ended the run early or was the
        # cap itself (stopped_early alone would call a rule met exactly at the cap "the cap").
        "stop_rule_met": ({"epoch": state.epoch, "reason": t.stop_reason}
                          if t.stop_reason is not None else None),
        "final": final,
        "best_val_acc": state.best_val_acc,
        "train_seconds": t.clock.elapsed(),
        "images_per_second": _overall_rate(run_dir, t.is_main),
        "noise_scale": last_logged_noise_scale(run_dir.read_metrics()) if t.is_main else None,
        **_targets_and_test(t, status),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "data_files": data_files(t.data.files) if t.is_main else None,  # path, sha256 each
        "cpu": t.cpu.record(),
    }
    t.tracking.finish(results)
    if t.is_main:
        if status == STATUS_COMPLETED:
            save_weights(t.raw_model, run_dir.model_path)
        write_json(run_dir.results_path, results)
    t.accelerator.wait_for_everyone()
    return results


def _targets_and_test(t: Training, status: str) -> dict[str, Any]:
    """results.json's ``steps_to_targets`` (a run with targets: each target's first step, None
    when not met) and, with a held-out validation split, ``test_loss``/``test_acc`` of the
    final weights (collective), the one evaluation on the test split."""
    extra: dict[str, Any] = {}
    if t.watch is not None:
        extra["steps_to_targets"] = first_steps(t.watch.rows, t.watch.targets)
    if t.data.test_images is not None and status == STATUS_COMPLETED:
        extra["test_loss"], extra["test_acc"] = _evaluate(t, "test")
    return extra


# --- building blocks -------------------------------------------------------------------------


def build_optimizer(config: RunConfig, model: torch.nn.Module, device) -> torch.optim.Optimizer:
    """SGD / Adam / AdamW / LARS / LAMB with the config's hyper-parameters (lr is set per
    step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "lars":
        return LARS(params, lr=config.lr, momentum=config.momentum,
                    weight_decay=config.weight_decay,
                    trust_coefficient=config.trust_coefficient)
    if config.optimizer == "lamb":
        return LAMB(params, lr=config.lr, betas=(config.momentum, 0.999),
                    weight_decay=config.weight_decay)
    fused = {"fused": True} if _has_fused_kernels(device) else {}
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
            weight_decay=config.weight_decay, **fused,
        )
    betas = (config.momentum, 0.999)
    if config.optimizer == "adam":
        return torch.optim.Adam(
            params, lr=config.lr, betas=betas, weight_decay=config.weight_decay, **fused
        )
    return torch.optim.AdamW(
        params, lr=config.lr, betas=betas, weight_decay=config.weight_decay, **fused
    )


def _has_fused_kernels(device) -> bool:
    """Whether torch has fused SGD/Adam/AdamW kernels for ``device``: one kernel per step
    instead of a loop of small ops. On the CPU, F1's step takes 0.65 ms instead of 1.74 (SGD
    with momentum) and 0.96 ms instead of 4.0 (Adam): ``bench/optimizer_step.py``. The
    rounding differs from the loop's, so runs are not bitwise equal to ones made before."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # a torch without the helper: the kernels are CUDA-only there
        return torch.device(device).type == "cuda"
    return torch.device(device).type in _get_fused_kernels_supported_devices()


def check_same_run(run_dir: RunDir, config: RunConfig) -> None:
    """Refuse to resume a run directory that holds a run with other settings.

    A directory with a config but nothing trained (no checkpoint, no metrics, no results: a
    start that failed before its first epoch) holds no run yet, and takes the new settings.
    """
    stored = run_dir.read_config()
    if stored is None or _nothing_trained(run_dir):
        return
    old, new = stored.to_dict(), config.to_dict()
    changed = [k for k in new if k not in _RESUME_FREE_FIELDS and old.get(k) != new[k]]
    if changed:
        key = changed[0]
        raise ConfigError(
            f"{run_dir.root} holds a different run ({key} = {old.get(key)!r} there, "
            f"{new[key]!r} now); choose another --output or repeat the same settings"
        )


def _nothing_trained(run_dir: RunDir) -> bool:
    return (latest_checkpoint(run_dir.checkpoints) is None and not run_dir.read_metrics()
            and run_dir.read_results() is None)


def _any_process(accelerator, flag: torch.Tensor | bool) -> bool:
    """True when ``flag`` is set on any process (a host sync: call it sparingly)."""
    if accelerator.num_processes == 1 and not isinstance(flag, torch.Tensor):
        return flag
    value = flag if isinstance(flag, torch.Tensor) else torch.tensor(bool(flag))
    value = value.to(device=accelerator.device, dtype=torch.float32).reshape(1)
    if accelerator.num_processes > 1:
        value = accelerator.reduce(value, reduction="sum")
    return bool(value.item() > 0)


def _from_main(accelerator) -> Callable[[Any], Any]:
    """A function every process calls at once with a value: the main process's comes back."""
    def share(value: Any) -> Any:
        if accelerator.num_processes == 1:
            return value
        from accelerate.utils import broadcast_object_list

        (value,) = broadcast_object_list([value], from_process=0)
        # No process acts on it (ends, if it is an error) before every process has it, as
        # at a run's end: none is left inside a collective when another leaves.
        accelerator.wait_for_everyone()
        return value

    return share


def _share_buffers_from_main(model: torch.nn.Module, world_size: int) -> None:
    """Give every process the main process's BatchNorm statistics before evaluating.

    DDP broadcasts buffers only at the start of a forward pass, so after the last step each
    process holds the statistics of its own last batch; evaluation must use the ones saved
    with the model (rank 0's). Training is unaffected: the next forward broadcasts anyway.
    """
    if world_size == 1:
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def _store_sums(state: LoopState, sums: torch.Tensor, step_seconds: float) -> None:
    state.epoch_loss_sum, state.epoch_correct = sums.tolist()
    state.epoch_step_seconds = step_seconds


def _overall_rate(run_dir: RunDir, is_main: bool) -> float | None:
    """Training images per second over the epochs on record (evaluation excluded)."""
    if not is_main:
        return None
    rows = run_dir.read_metrics()
    rates = [r["images_per_second"] for r in rows if r.get("images_per_second")]
    if not rates:
        return None
    return len(rates) / sum(1.0 / r for r in rates)  # equal images per epoch: harmonic mean


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    text = (f"epoch {row['epoch']}/{epochs} train_loss {row['train_loss']:.4f} "
            f"train_acc {row['train_acc']:.4f}")
    if row["val_acc"] is not None:
        text += f" val_loss {row['val_loss']:.4f} val_acc {row['val_acc']:.4f}"
    return text + f" {row['images_per_second']:.0f} img/s"


def _reset_accelerate_state() -> None:
    """Let one Python process run several trainings (tests, sweeps on a laptop).

    Accelerate's state is a per-process singleton that refuses a second Accelerator with
    other settings ("AcceleratorState has already been initialized"). Accelerate 1.15 has no
    public reset: ``end_training`` only destroys the process group, and these private calls
    are what its own test base class (``AccelerateTestCase.tearDown``) uses.
    """
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
