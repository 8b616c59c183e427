"""The layering of STYLE.md, enforced: handlers -> reconcile -> k8s/builders -> core -> api; the
pure layers import no Kubernetes client or kopf; the trainer and the operator share only the `refinery` package (api, core), which imports neither.
The contracts live in pyproject.toml ([tool.importlinter])."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 kept, 0 broken" in result.stdout
