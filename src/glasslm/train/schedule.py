"""Learning-rate schedules as pure functions of the step, so resuming needs no scheduler state.

Step ``s`` (1-based) is the s-th optimizer update. All schedules warm up linearly from 0 to the peak
over ``warmup`` steps, then:
- ``cosine``: half a cosine from the peak down to the floor at the last step (OLMo-2's schedule);
- ``linear``: a straight line from the peak down to the floor;
- ``wsd``: warmup-stable-decay (Hu et al. 2024, MiniCPM): flat at the peak, then a linear decay to
  the floor over the last ``decay`` steps;
- ``constant``: flat at the peak.
The floor is ``final_lr_ratio`` × peak (10% by default, as OLMo-2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from glasslm.train.config import ScheduleConfig


@dataclass(frozen=True)
class Schedule:
    kind: str
    peak: float
    total_steps: int
    warmup_steps: float
    decay_steps: float
    floor: float

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            return self.peak * step / self.warmup_steps
        if self.kind == "constant":
            return self.peak
        if self.kind == "wsd":
            decay_start = self.total_steps - self.decay_steps
            if step <= decay_start:
                return self.peak
            frac = min(1.0, (step - decay_start) / max(self.decay_steps, 1e-9))
            return self.peak + (self.floor - self.peak) * frac
        span = max(self.total_steps - self.warmup_steps, 1e-9)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        if self.kind == "linear":
            return self.peak + (self.floor - self.peak) * progress
        return self.floor + (self.peak - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_schedule(config: ScheduleConfig, peak: float, total_steps: int, tokens_per_step: int) -> Schedule:
    """Convert a schedule given in steps or tokens to one over optimizer steps."""
    per = float(tokens_per_step) if config.unit == "tokens" else 1.0
    warmup = config.warmup / per
    decay = config.decay / per if config.decay > 0 else 0.2 * total_steps
    return Schedule(
        kind=config.kind,
        peak=peak,
        total_steps=total_steps,
        warmup_steps=min(warmup, float(total_steps)),
        decay_steps=min(decay, float(total_steps)),
        floor=peak * config.final_lr_ratio,
    )
