"""A user's verifier: `function(prompts, completions, references, **columns) -> list[float]`.

    fn = UserFunction.load(Path("rewards.py"), "score", timeout_s=30, stage="rlhf")
    fn(prompts, completions, references, columns)      # one float per completion, or BadRewardFunction

The file is imported in the trainer's process (it runs the user's code, as TRL's `reward_funcs`
and Kubeflow Trainer's reward-function modules do). Each call is bounded by `timeoutSeconds`: a
SIGALRM timer in the main thread (where TRL calls rewards), so a loop that never ends is
interrupted. A function that raises, runs past its time, or returns anything but one number per
completion fails the stage as `BadRewardFunction` with what went wrong — the exception's last
line, never a silent zero that would train the policy on nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import math
import signal
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

from ..errors import StageError

REASON_BAD_REWARD_FUNCTION = "BadRewardFunction"


class BadRewardFunction(StageError):
    """The user's reward function cannot be imported, raised, ran too long, or returned no floats."""

    reason = REASON_BAD_REWARD_FUNCTION


class _TimedOut(BaseException):  # BaseException: a user's `except Exception` cannot swallow it
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Interrupt the block after `seconds` (main thread: SIGALRM; elsewhere the call is not bounded)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise _TimedOut()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class UserFunction:
    def __init__(self, fn: Callable, where: str, timeout_s: float):
        self.fn, self.where, self.timeout_s = fn, where, timeout_s

    @classmethod
    def load(cls, path: Path, function: str, *, timeout_s: float, stage: str) -> UserFunction:
        where = f"stage {stage!r} reward {path.name}:{function}"
        if not path.is_file():
            raise BadRewardFunction(f"{where}: {path}: file not found")
        # A module name of its own per file, so two stages' `rewards.py` never share one module.
        name = "refinery_user_reward_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - whatever the user's module raises on import
            raise BadRewardFunction(f"{where}: importing {path} failed: {last_line(exc)}") from None
        fn = getattr(module, function, None)
        if not callable(fn):
            raise BadRewardFunction(f"{where}: {path} defines no function {function!r}")
        return cls(fn, where, timeout_s)

    def __call__(self, prompts: list, completions: list[str], references: list | None, columns: dict[str, list]) -> list[float]:
        try:
            with time_limit(self.timeout_s):
                out = self.fn(prompts, completions, references, **columns)
        except _TimedOut:
            raise BadRewardFunction(f"{self.where}: a call took longer than timeoutSeconds ({self.timeout_s:g} s) "
                                    f"on {len(completions)} completions") from None
        except Exception as exc:  # noqa: BLE001 - the user's function: fail the stage with its message
            raise BadRewardFunction(f"{self.where} raised {last_line(exc)}") from None
        return checked(out, len(completions), self.where)


def checked(out, n: int, where: str) -> list[float]:
    """One finite float per completion; bools and ints count as numbers, nothing else does."""
    if isinstance(out, (str, bytes)) or not hasattr(out, "__len__"):
        raise BadRewardFunction(f"{where} returned {type(out).__name__} {_short(out)}: it must return a list of "
                                f"{n} floats, one per completion")
    values = list(out)
    if len(values) != n:
        raise BadRewardFunction(f"{where} returned {len(values)} values for {n} completions: one per completion")
    for i, v in enumerate(values):
        if not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise BadRewardFunction(f"{where} returned {type(v).__name__} {_short(v)} for completion {i}: "
                                    "each reward must be a finite float")
    return [float(v) for v in values]


def last_line(exc: BaseException) -> str:
    """`ZeroDivisionError: division by zero` — what a traceback's last line says."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
