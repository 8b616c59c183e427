"""Real tools the tests drive: promtool (Debian's `prometheus` package) and helm (from a PyPI wheel).

A missing tool skips its tests on a developer's machine, with the command that installs it, but
fails them in CI (`CI=true`), so a broken set-up can never turn those tests into silent passes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_tool(name: str, install_hint: str) -> str:
    """Path of the executable `name`; fails in CI, skips elsewhere, when it is not installed."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed ({install_hint})"
    if in_ci():
        pytest.fail(message + "; CI must install it (.ci/run does)")
    pytest.skip(message)


def promtool() -> str:
    return require_tool("promtool", "apt-get install prometheus")


def run_promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run promtool; the result's stdout/stderr are in the assertion message when it fails."""
    return subprocess.run([promtool(), *args], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=120)


def check_metrics(exposition: str) -> None:
    """`promtool check metrics` (the naming linter) must report nothing for a scrape."""
    result = run_promtool("check", "metrics", stdin=exposition)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        f"promtool check metrics:\n{result.stdout}{result.stderr}"
    )
