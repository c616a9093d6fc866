"""The training loop: one function, ``run(config)``, readable top to bottom.

One code path for one process and for N processes (``accelerate launch``): every process
draws the same epoch permutation and takes its own slice of each global batch, so the
optimizer sees ``config.batch_size`` samples per step whatever the world size.

Exit semantics (``results.json`` status -> process exit code, see ``exit_code``):
completed -> 0, diverged (NaN/inf loss) -> 3, interrupted by a signal after saving a
checkpoint -> 75 (EX_TEMPFAIL: requeue me). User errors exit 2 (the CLI's business).
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime, timezone
from typing import Any

import torch
import torch.nn.functional as F

from lbtkit import sam
from lbtkit.checkpoint import (
    LoopState,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
)
from lbtkit.config import RunConfig, plan_batches
from lbtkit.data import augment, draw_epoch, load_dataset
from lbtkit.errors import ConfigError
from lbtkit.evaluate import InputSpec, evaluate_sums, mean_loss_and_accuracy
from lbtkit.models import build_model
from lbtkit.models.norm import convert_batchnorm, frozen_running_stats
from lbtkit.noise_scale import NoiseScaleMonitor, last_logged_noise_scale, noise_scale_row
from lbtkit.optim import LAMB, LARS
from lbtkit.progress import TrainingProgress
from lbtkit.rundir import (
    STATUS_COMPLETED,
    STATUS_DIVERGED,
    STATUS_INTERRUPTED,
    RunDir,
    guard_run,
    versions,
    write_json,
)
from lbtkit.schedule import Schedule
from lbtkit.signals import GracefulStop, StopPoll

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 75

# Fields that may differ when a run directory is reused: they change where data comes from,
# how often we log or save, or how fast a step runs, not what is trained.
_RESUME_FREE_FIELDS = {
    "data_dir", "download", "output_dir", "log_every", "checkpoint_every", "compile",
    "eval_batch_size", "log_noise_scale", "noise_scale_ema",
}


def exit_code(status: str) -> int:
    return {
        STATUS_COMPLETED: EXIT_OK,
        STATUS_DIVERGED: EXIT_DIVERGED,
        STATUS_INTERRUPTED: EXIT_INTERRUPTED,
    }.get(status, 1)


def make_accelerator(config: RunConfig):
    """An Accelerator on CUDA when there is one, else on the CPU (gloo for N processes)."""
    from accelerate import Accelerator

    has_cuda = torch.cuda.is_available()
    if config.mixed_precision == "fp16" and not has_cuda:
        raise ConfigError("mixed_precision 'fp16' needs a CUDA GPU; use 'bf16' on the CPU")
    return Accelerator(cpu=not has_cuda, mixed_precision=config.mixed_precision)


def run(config: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train as ``config`` says in ``config.output_dir``; return the results dict.

    Re-running on a directory with a checkpoint resumes; on a completed run it returns the
    stored results without training.
    """
    config = config.resolved()
    accelerator = make_accelerator(config)
    try:
        with guard_run(config.output_dir, main=accelerator.is_main_process):  # lock, disk full
            return _run(config, accelerator, progress=progress)
    finally:
        accelerator.end_training()
        _reset_accelerate_state()


def _run(config: RunConfig, accelerator, *, progress: bool) -> dict[str, Any]:
    rank, world = accelerator.process_index, accelerator.num_processes
    is_main = accelerator.is_main_process
    device = accelerator.device
    plan = plan_batches(config, world)
    run_dir = RunDir(config.output_dir)

    # Every process reads the directory before the main one writes to it.
    check_same_run(run_dir, config)
    previous = run_dir.read_results()
    if previous and previous.get("status") == STATUS_COMPLETED:
        if is_main:
            print(f"{run_dir.root}: already completed; not retraining")
        return previous
    accelerator.wait_for_everyone()
    if is_main:
        run_dir.create()
        write_json(run_dir.config_path, config.to_dict())
    accelerator.wait_for_everyone()

    with accelerator.main_process_first():  # only the main process downloads
        data = load_dataset(
            config.dataset, config.data_dir, download=config.download and is_main,
            image_size=config.image_size, num_classes=config.num_classes,
        ).to(device)
    info = data.info
    n_train = data.train_labels.shape[0]
    steps_per_epoch = n_train // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the training set "
            f"({n_train} samples of {config.dataset})"
        )
    inputs = InputSpec(info, config.image_size, config.channels_last)

    torch.manual_seed(config.seed)  # identical initial weights on every process
    model = build_model(
        config.model, num_classes=config.num_classes, in_channels=info.channels,
        image_size=config.image_size, pretrained=config.pretrained,
    )
    if config.init_weights:
        load_weights(model, config.init_weights)
    model = convert_batchnorm(model, ghost_batch_size=config.ghost_batch_size,
                              sync=config.sync_bn and world > 1)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = model.to(device)
    optimizer = build_optimizer(config, model, device)
    raw_model = model  # what checkpoints and evaluation use: no DDP or compile wrapper
    if config.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    # Dropout draws differ per process, as they would on separate GPUs.
    torch.manual_seed(config.seed * 1000 + rank + 1)

    schedule = Schedule(
        peak_lr=config.lr,
        total_steps=config.epochs * steps_per_epoch,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        kind=config.scheduler,
        step_every=config.step_epochs * steps_per_epoch,
        gamma=config.step_gamma,
    )

    state = LoopState()
    checkpoint = latest_checkpoint(run_dir.checkpoints)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model=raw_model, optimizer=optimizer, rank=rank)
        if is_main:
            run_dir.keep_metrics_before(state.epoch)
            print(f"resuming {run_dir.root} from {checkpoint.name} "
                  f"(epoch {state.epoch + 1}, step {state.global_step})")
    elif is_main:
        run_dir.keep_metrics_before(0)
    if state.scaler is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state.scaler)
    # Gradient noise scale: a DDP comm hook reads each process's own gradient (small batch)
    # before it is averaged (big batch); no host sync per step, see lbtkit.noise_scale.
    noise = NoiseScaleMonitor(
        model, b_small=plan.per_device_batch_size * plan.grad_accum_steps,
        b_big=config.batch_size, decay=config.noise_scale_ema, population=n_train,
        state=state.noise_scale,
        scaler=accelerator.scaler,
    ) if config.log_noise_scale else None

    def save(loop_state: LoopState) -> None:
        if accelerator.scaler is not None:
            loop_state.scaler = accelerator.scaler.state_dict()
        if noise is not None:  # collective: every process's moving averages
            loop_state.noise_scale = noise.state_dict()
        save_checkpoint(
            run_dir.checkpoints, loop_state, model=raw_model, optimizer=optimizer,
            rank=rank, world_size=world, barrier=accelerator.wait_for_everyone,
        )

    def finish(status: str, final: dict[str, Any] | None) -> dict[str, Any]:
        results = {
            "status": status,
            "config": config.to_dict(),
            **plan.to_dict(),
            "lr": config.lr,
            "steps_per_epoch": steps_per_epoch,
            "global_step": state.global_step,
            "epochs_completed": state.epoch,
            "final": final,
            "best_val_acc": state.best_val_acc,
            "train_seconds": state.train_seconds + (time.monotonic() - segment_start),
            "images_per_second": _overall_rate(run_dir, is_main),
            "noise_scale": last_logged_noise_scale(run_dir.read_metrics()) if is_main else None,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
        }
        if is_main:
            if status == STATUS_COMPLETED:
                save_weights(raw_model, run_dir.model_path)
            write_json(run_dir.results_path, results)
        accelerator.wait_for_everyone()
        return results

    display = TrainingProgress(
        total_steps=schedule.total_steps, done_steps=state.global_step,
        log_every=config.log_every, enabled=progress and is_main,
    )
    segment_start = time.monotonic()
    per_device = plan.per_device_batch_size
    accum = plan.grad_accum_steps
    last_final: dict[str, Any] | None = None
    # Running (loss sum, correct) of this process live on the device: no host sync per step.
    # A checkpoint stores the totals over processes; on resume rank 0 carries them.
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    if rank == 0:
        sums += torch.tensor([state.epoch_loss_sum, state.epoch_correct], dtype=torch.float64)
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)

    def describe() -> str:
        loss_sum, correct = sums.tolist()
        seen = max(per_device * accum * (state.step_in_epoch or 1), 1)
        return (f"loss {loss_sum / seen:.4f} acc {correct / seen:.3f} "
                f"lr {optimizer.param_groups[0]['lr']:.3g}")

    trainable = [p for p in raw_model.parameters() if p.requires_grad]

    def gradients(batch: torch.Tensor, draw, *, all_reduce: bool, record: bool) -> None:
        """Accumulate this process's share of ``batch`` into .grad, micro-batch by micro-batch.

        With ``all_reduce`` the last micro-batch averages the gradients over processes (the
        others never do); ``record`` adds loss and accuracy to the running sums.
        """
        nonlocal nonfinite
        for micro in range(accum):
            offset = (micro * world + rank) * per_device
            idx = batch[offset:offset + per_device]
            x = inputs(augment(
                data.train_images[idx], draw.shifts[idx], draw.flips[idx],
                padding=info.crop_padding,
            ))
            y = data.train_labels[idx]
            sync = contextlib.nullcontext() if all_reduce and micro == accum - 1 \
                else accelerator.no_sync(model)
            with sync:
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
                accelerator.backward(loss / accum)
            if record:
                detached = loss.detach()
                nonfinite |= ~torch.isfinite(detached)
                sums.add_(torch.stack((
                    detached.double() * y.shape[0],
                    (logits.detach().argmax(dim=1) == y).sum().double(),
                )))

    model.train()
    with GracefulStop() as stop:
        stop_poll = StopPoll.for_accelerator(accelerator)
        try:
            while state.epoch < config.epochs:
                epoch = state.epoch
                draw = draw_epoch(
                    n_train, seed=config.seed, epoch=epoch, padding=info.crop_padding,
                    flip=info.flip, device=device,
                )
                epoch_clock = time.monotonic()
                interrupted = False
                for step in range(state.step_in_epoch, steps_per_epoch):
                    lr = schedule.lr_at_step(state.global_step)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    batch = draw.order[step * config.batch_size:(step + 1) * config.batch_size]
                    if config.sam_rho > 0:
                        # The training metrics are those at w, from the first pass.
                        gradients(batch, draw, all_reduce=False, record=True)
                        perturbation = sam.ascend(trainable, config.sam_rho)
                        optimizer.zero_grad(set_to_none=True)
                        with frozen_running_stats(raw_model):
                            gradients(batch, draw, all_reduce=True, record=False)
                        sam.descend(perturbation)
                    else:
                        gradients(batch, draw, all_reduce=True, record=True)
                    if noise is not None:  # needs the averaged .grad: before step/zero_grad
                        noise.step()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    state.global_step += 1
                    state.step_in_epoch = step + 1
                    display.step(state.global_step, describe)

                    if state.global_step % config.log_every == 0 and \
                            _any_process(accelerator, nonfinite):
                        break
                    if step + 1 < steps_per_epoch and \
                            stop_poll.agreed_stop(state.global_step, stop.requested is not None):
                        interrupted = True
                        break

                if _any_process(accelerator, nonfinite):
                    display.close()
                    if is_main:
                        print(f"diverged: non-finite training loss at step {state.global_step} "
                              f"(lr {config.lr:g}); stopping")
                    return finish(STATUS_DIVERGED, None)

                epoch_seconds = state.epoch_step_seconds + (time.monotonic() - epoch_clock)
                if interrupted:
                    _store_sums(state, accelerator.reduce(sums.clone(), reduction="sum"),
                                epoch_seconds)
                    state.train_seconds += time.monotonic() - segment_start
                    segment_start = time.monotonic()
                    save(state)
                    display.close()
                    if is_main:
                        print(f"stopped by {stop.requested} at step {state.global_step}; "
                              f"checkpoint saved, rerun the same command to resume")
                    return finish(STATUS_INTERRUPTED, None)

                # End of epoch: one reduction of the running sums across processes.
                loss_sum, correct = accelerator.reduce(sums.clone(), reduction="sum").tolist()
                seen = config.batch_size * steps_per_epoch
                row: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "step": state.global_step,
                    "lr": optimizer.param_groups[0]["lr"],
                    "train_loss": loss_sum / seen,
                    "train_acc": correct / seen,
                    "val_loss": None,
                    "val_acc": None,
                    "images_per_second": seen / max(epoch_seconds, 1e-9),
                    **noise_scale_row(noise),  # collective when logging (one tiny reduce)
                }
                last_epoch = epoch + 1 == config.epochs
                if (epoch + 1) % config.eval_every == 0 or last_epoch:
                    _share_buffers_from_main(raw_model, world)
                    totals = evaluate_sums(
                        raw_model, data.val_images, data.val_labels, inputs,
                        batch_size=config.eval_batch_size, rank=rank, world_size=world,
                    )
                    val_loss, val_acc = mean_loss_and_accuracy(
                        accelerator.reduce(totals, reduction="sum")
                    )
                    row.update(val_loss=val_loss, val_acc=val_acc)
                    if state.best_val_acc is None or val_acc > state.best_val_acc:
                        state.best_val_acc = val_acc
                row["elapsed_s"] = state.train_seconds + (time.monotonic() - segment_start)
                if is_main:
                    run_dir.append_metrics(row)
                display.message(_epoch_line(row, config.epochs))
                last_final = {k: row[k] for k in ("train_loss", "train_acc", "val_loss",
                                                  "val_acc")}

                state.epoch += 1
                state.step_in_epoch = 0
                sums.zero_()
                _store_sums(state, sums, 0.0)
                stop_now = _any_process(accelerator, stop.requested is not None)
                due = config.checkpoint_every and state.epoch % config.checkpoint_every == 0
                if (due or stop_now) and not last_epoch:
                    state.train_seconds += time.monotonic() - segment_start
                    segment_start = time.monotonic()
                    save(state)
                if stop_now and not last_epoch:
                    display.close()
                    if is_main:
                        print(f"stopped by {stop.requested} after epoch {state.epoch}; "
                              f"checkpoint saved, rerun the same command to resume")
                    return finish(STATUS_INTERRUPTED, None)
        finally:
            display.close()

    if last_final is None:  # resumed exactly at the end: the last row is on disk
        last_final = {k: run_dir.read_metrics()[-1][k]
                      for k in ("train_loss", "train_acc", "val_loss", "val_acc")}
    return finish(STATUS_COMPLETED, last_final)


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
    # Fused kernels exist for CUDA; elsewhere torch picks foreach or the plain loop.
    fused = {"fused": True} if torch.device(device).type == "cuda" else {}
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


def check_same_run(run_dir: RunDir, config: RunConfig) -> None:
    """Refuse to resume a run directory that holds a run with other settings."""
    stored = run_dir.read_config()
    if stored is None:
        return
    old, new = stored.to_dict(), config.to_dict()
    changed = [k for k in new if k not in _RESUME_FREE_FIELDS and old.get(k) != new[k]]
    if changed:
        key = changed[0]
        raise ConfigError(
            f"{run_dir.root} holds a different run ({key} = {old.get(key)!r} there, "
            f"{new[key]!r} now); choose another --output or repeat the same settings"
        )


def _any_process(accelerator, flag: torch.Tensor | bool) -> bool:
    """True when ``flag`` is set on any process (a host sync: call it sparingly)."""
    if accelerator.num_processes == 1 and not isinstance(flag, torch.Tensor):
        return flag
    value = flag if isinstance(flag, torch.Tensor) else torch.tensor(bool(flag))
    value = value.to(device=accelerator.device, dtype=torch.float32).reshape(1)
    if accelerator.num_processes > 1:
        value = accelerator.reduce(value, reduction="sum")
    return bool(value.item() > 0)


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
    """Let one Python process run several trainings (tests, sweeps on a laptop)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
