"""Learning-rate schedule: linear warm-up, then linear decay to zero, counted in OPTIMIZER steps.

TelME's public code counted its warm-up in samples, so with batch 4 the warm-up and decay were
4x too long and the rate barely decayed (REFERENCE.md section 2, defect 7). Here every
quantity is in optimizer steps (one step = one ``optimizer.step()``, i.e. after gradient
accumulation), and :func:`total_optimizer_steps` is the only place that converts from batches.
"""

from __future__ import annotations

import math

import torch


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Learning rate used by optimizer step ``step`` (0-based).

    Warm-up: ``base_lr * (step + 1) / warmup_steps`` for ``step < warmup_steps`` (the first step
    already moves; step ``warmup_steps - 1`` reaches ``base_lr``).
    Decay: ``base_lr * (total_steps - step) / (total_steps - warmup_steps)`` afterwards, so the
    first decay step is ``base_lr`` and the last step (``total_steps - 1``) is still above zero.
    Zero from ``total_steps`` on.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step >= total_steps:
        return 0.0
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return base_lr * (total_steps - step) / (total_steps - warmup_steps)


def total_optimizer_steps(batches_per_epoch: int, epochs: int, grad_accum_steps: int) -> int:
    """Optimizer steps of a whole run: a partial accumulation at an epoch's end still steps."""
    return math.ceil(batches_per_epoch / grad_accum_steps) * epochs


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    """Warm-up length in optimizer steps for a fraction ``warmup_ratio`` of the run."""
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    return int(round(total_steps * warmup_ratio))


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                   warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_at` for every parameter group (its state resumes)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, total_steps, warmup_steps, 1.0))
