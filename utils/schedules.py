"""Learning-rate schedules shared by the training scripts."""

from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, floor: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 1% to the full rate over warmup_steps, then cosine decay to `floor` (a share of the full
    rate) at total_steps, flat after it."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.01 + 0.99 * step / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
