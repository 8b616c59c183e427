"""How long a stage has left: the rate of its progress since its first step, times what is left.

    eta = RemainingTime()
    eta.observe(progress=0.10, now=12.0)   # None: the first advance only sets the anchor
    eta.observe(progress=0.30, now=20.0)   # 32.0 s: 0.2 of the stage took 8 s, 0.7 is left

The anchor is the first report whose progress moved past where the attempt began (a resumed
attempt begins at its checkpoint's step), so what an attempt does once — starting the process,
loading the model and data, the first step's warm-up — does not count as the pace of the rest.
Evaluations and checkpoint saves between steps do count: they recur every `evalSteps` and
`saveSteps`, and the user waits for them too. The same rule serves stages that report steps
(progress = step / maxSteps) and the eval stage, which reports the share of its models done.
"""

from __future__ import annotations


class RemainingTime:
    def __init__(self) -> None:
        self.start: float | None = None  # progress when the attempt's first report came
        self.anchor: tuple[float, float] | None = None  # (progress, time) of the first advance

    def observe(self, progress: float, now: float) -> float | None:
        """Seconds left at `now` (None until two points of progress are known)."""
        if self.start is None:
            self.start = progress
            return None
        if self.anchor is None:
            if progress > self.start:
                self.anchor = (progress, now)
            return None
        done, since = progress - self.anchor[0], now - self.anchor[1]
        if done <= 0 or since <= 0:
            return None
        return round(max(0.0, 1.0 - progress) * since / done, 1)

    def seconds_per_stage(self, progress: float, now: float) -> float | None:
        """The whole stage's seconds at the measured pace (over max_steps: seconds per step)."""
        if self.anchor is None or progress <= self.anchor[0] or now <= self.anchor[1]:
            return None
        return (now - self.anchor[1]) / (progress - self.anchor[0])
