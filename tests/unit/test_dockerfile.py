"""The Dockerfile's install steps against pyproject.toml, checked as text.

tests/cluster builds the `operator` and `trainer-cpu` targets with podman (scripts/build_images.py)
and runs them on a real node; the CUDA targets (`trainer`, `trainer-vllm`) need a registry and a
GPU base image that no machine here reaches, so only these checks stand for them. What can go
wrong without a build to notice it: the operator image pulling torch, the trainer
image installing an extra that does not exist or a CPU torch over the CUDA one, the entrypoints
naming a module or console script that is not there.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


@dataclass
class Stage:
    name: str
    base: str
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)
    instructions: list[tuple[str, str]] = field(default_factory=list)


def logical_lines(text: str) -> list[str]:
    """Dockerfile lines with `\\` continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        current += raw.rstrip().removesuffix("\\") + " "
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                lines.append(current.strip())
            current = ""
    return lines


def parse_dockerfile(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    global_args, stages, stage = {}, {}, None
    for line in logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            stage = stages[name.strip()] = Stage(name.strip(), base.strip())
        elif keyword == "ARG":
            key, _, default = rest.partition("=")
            (stage.args if stage else global_args)[key] = default
        elif keyword == "ENV" and stage:
            stage.env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
        elif keyword == "RUN" and stage:
            stage.runs.append(rest)
        if stage:
            stage.instructions.append((keyword, rest))
    return global_args, stages


GLOBAL_ARGS, STAGES = parse_dockerfile((REPO / "Dockerfile").read_text())


def commands(stage: Stage) -> list[list[str]]:
    """Every shell command of the stage's RUN steps, as words (split at `&&`)."""
    out = []
    for run in stage.runs:
        current: list[str] = []
        for word in shlex.split(run):
            if word in ("&&", ";", "||"):
                out.append(current)
                current = []
            else:
                current.append(word)
        out.append(current)
    return out


def pip_installs(stage: Stage) -> list[list[str]]:
    """The arguments of every `pip install` in the stage's RUN steps (options dropped)."""
    installs = []
    for words in commands(stage):
        if words[:2] == ["pip", "install"]:
            args, skip = [], False
            for w in words[2:]:
                if skip:
                    skip = False
                elif w in ("-c", "--constraint", "-r", "--index-url", "--extra-index-url"):
                    skip = True
                elif not w.startswith("-"):
                    args.append(w)
            installs.append(args)
    return installs


def requirement_names(args: list[str]) -> set[str]:
    return {re.split(r"[=<>!~\[ ]", a, maxsplit=1)[0].lower() for a in args if not a.startswith(".")}


def extras_installed(args: list[str]) -> set[str]:
    found = set()
    for a in args:
        m = re.fullmatch(r"\.\[(.+)\]", a)
        if m:
            found |= set(m.group(1).split(","))
    return found


def test_the_targets_exist_on_pinned_bases():
    assert set(STAGES) == {"operator", "trainer", "trainer-cpu", "trainer-vllm"}
    for stage in STAGES.values():
        base = stage.base
        if base in STAGES:  # a variant built on another target
            continue
        if base.startswith("${"):
            base = GLOBAL_ARGS[base.strip("${}")]
        image, _, tag = base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{stage.name}: base {base} is not pinned to a version"


def test_operator_installs_exactly_the_operator_extra_and_never_torch():
    installs = [a for a in pip_installs(STAGES["operator"]) if a]
    assert installs == [[".[operator]"]]
    resolved = {re.split(r"[=<>!~\[ ;]", r, maxsplit=1)[0].lower() for r in EXTRAS["operator"] + PYPROJECT["project"]["dependencies"]}
    assert "torch" not in resolved and "refinery" not in resolved  # no extra pulls the trainer in
    assert "kopf" in resolved and "prometheus-client" in resolved


def test_trainer_installs_the_trainer_extra_and_deepspeed_without_replacing_cuda_torch():
    stage = STAGES["trainer"]
    installs = pip_installs(stage)
    assert any(extras_installed(a) == {"trainer", "eval", "export", "tracking"} for a in installs)  # eval stages and exports run in it too
    assert not any(extras_installed(a) - {"trainer", "eval", "export", "tracking"} for a in installs), "only the trainer-side extras"
    assert any("deepspeed" in requirement_names(a) for a in installs)
    # torch is installed once, pinned, and every later install is constrained to it
    torch_steps = [i for i, a in enumerate(installs) if "torch" in requirement_names(a)]
    assert len(torch_steps) == 1
    later = [" ".join(w) for w in commands(stage) if w[:2] == ["pip", "install"]
             and not any(a.startswith(("torch==", "pip")) for a in w[2:])]
    assert later and all("-c /opt/constraints.txt" in cmd for cmd in later), later
    assert any("--no-build-isolation" in cmd and "deepspeed" in cmd for cmd in later), "DeepSpeed's build must see our torch"


def test_trainer_torch_is_the_version_the_readme_pins():
    readme_pin = re.search(r"pip install(?: -q)? torch==([\w.]+)", (REPO / "README.md").read_text()).group(1)
    assert STAGES["trainer"].args["TORCH_VERSION"] == readme_pin
    assert re.fullmatch(r"\d+\.\d+\.\d+", STAGES["trainer"].args["DEEPSPEED_VERSION"])


def test_trainer_vllm_adds_the_extras_pins_on_the_same_torch():
    stage = STAGES["trainer-vllm"]
    assert stage.base == "trainer"
    assert stage.args["TORCH_VERSION"] == STAGES["trainer"].args["TORCH_VERSION"]
    pins = {re.split(r"[=<>!~\[ ]", r, maxsplit=1)[0]: r for extra in ("vllm", "kernels") for r in EXTRAS[extra]}
    assert pins["vllm"] == f"vllm=={stage.args['VLLM_VERSION']}"
    liger = pins["liger-kernel"].removeprefix("liger-kernel==").removesuffix(".*")
    assert stage.args["LIGER_KERNEL_VERSION"].startswith(liger)
    installs = [" ".join(w) for w in commands(stage) if w[:2] == ["pip", "install"]]
    assert installs and all("-c /opt/constraints.txt" in cmd for cmd in installs), "no install may replace the torch"


@pytest.mark.parametrize("target", ["operator", "trainer", "trainer-cpu", "trainer-vllm"])
def test_runs_as_a_numeric_non_root_user(target):
    users = [rest for keyword, rest in STAGES[target].instructions if keyword == "USER"]
    assert users, f"{target}: no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so runAsNonRoot can verify it


@pytest.mark.parametrize("target", ["trainer", "trainer-cpu"])
def test_trainer_uid_matches_the_stage_pods_security_context(target):
    from refinery_operator.builders import RUN_AS_USER

    assert [rest for k, rest in STAGES[target].instructions if k == "USER"][-1] == f"{RUN_AS_USER}:{RUN_AS_USER}"


@pytest.mark.parametrize("target", ["trainer", "trainer-cpu"])
def test_trainer_caches_live_in_writable_paths(target):
    env = STAGES[target].env
    for name in ("TORCH_EXTENSIONS_DIR", "HF_HOME", "TRITON_CACHE_DIR", "HOME"):
        assert env[name].startswith("/tmp"), f"{name}={env[name]}: stage pods can write only /tmp and /workspace"


def test_trainer_cpu_is_the_trainer_on_cpu_torch_without_deepspeed():
    """Same extras, torch version, environment, user and entrypoint as `trainer`; torch is the
    `+cpu` build (a bare `torch==` would pull PyPI's CUDA wheel, GBs a CPU node never uses)."""
    cpu, gpu = STAGES["trainer-cpu"], STAGES["trainer"]
    assert cpu.args["TORCH_VERSION"] == gpu.args["TORCH_VERSION"]
    installs = pip_installs(cpu)
    assert any(extras_installed(a) == {"trainer", "eval", "export", "tracking"} for a in installs)
    assert not any("deepspeed" in requirement_names(a) for a in installs)
    torch_steps = [a for a in installs if "torch" in requirement_names(a)]
    assert torch_steps == [["${TORCH_PIP_ARGS}", "torch==${TORCH_VERSION}+cpu"]]
    assert cpu.args["TORCH_PIP_ARGS"] == "--index-url=https://download.pytorch.org/whl/cpu"
    later = [" ".join(w) for w in commands(cpu) if w[:2] == ["pip", "install"]
             and not any(a.startswith(("torch==", "pip")) for a in w[2:])]
    assert later and all("-c /opt/constraints.txt" in cmd for cmd in later), later
    assert {k: v for k, v in cpu.env.items()} == {k: v for k, v in gpu.env.items() if k != "DEBIAN_FRONTEND"}
    assert entrypoint("trainer-cpu") == entrypoint("trainer")


def test_trainer_extra_holds_the_client_a_stage_pod_reports_progress_with():
    """report.py imports `kubernetes` lazily (local mode never needs it), so nothing but a pod on a
    cluster notices its absence: found on the real node (tests/cluster), where every progress
    report failed with ModuleNotFoundError while the stage trained on."""
    assert "kubernetes" in requirement_names(EXTRAS["trainer"])


def test_operator_installs_into_a_virtual_environment():
    """A Debian base's system Python refuses `pip install` (PEP 668); a venv works on both bases."""
    stage = STAGES["operator"]
    assert ["python3", "-m", "venv", "/opt/venv"] in commands(stage)
    assert stage.env["PATH"].startswith("/opt/venv/bin:")


def entrypoint(target: str) -> list[str]:
    import json

    return json.loads(next(rest for k, rest in STAGES[target].instructions if k == "ENTRYPOINT"))


def test_operator_entrypoint_runs_the_operator_command_with_a_liveness_endpoint():
    """`refinery operator` (kopf standalone: the chart grants no peering RBAC) and not `kopf run`:
    only it hands `--namespace` to the handlers too (tests/real/test_least_privilege.py)."""
    from refinery_operator.cli import build_parser

    cmd = entrypoint("operator")
    assert cmd[:2] == ["refinery", "operator"]
    assert "refinery" in PYPROJECT["project"]["scripts"]
    assert any(a.startswith("--liveness=http://0.0.0.0:8080/healthz") for a in cmd)
    for chart_args in (["--all-namespaces"], ["--namespace=ml", "--verbose"]):  # what the chart's Deployment passes
        args = build_parser().parse_args(cmd[1:] + chart_args)
        assert args.liveness == "http://0.0.0.0:8080/healthz"


def test_trainer_entrypoint_is_the_console_script():
    assert entrypoint("trainer") == ["refinery-train"]
    assert "refinery-train" in PYPROJECT["project"]["scripts"]


def test_dockerignore_keeps_the_context_to_what_the_images_copy():
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore
    copied = {rest.split()[0].rstrip("/") for s in STAGES.values() for k, rest in s.instructions if k == "COPY"}
    for path in copied:
        assert f"!{path}/" in ignore or f"!{path}" in ignore, f"{path} is copied but excluded from the build context"


@pytest.mark.parametrize("target", ["trainer", "trainer-cpu"])
def test_trainer_dependencies_are_a_layer_built_from_pyproject_alone(target):
    """A change of the source must not reinstall GBs of dependencies: the extras install before the
    source is copied (only pyproject.toml is), and the source's own install adds no dependency."""
    steps = STAGES[target].instructions
    first_source = next(i for i, (k, rest) in enumerate(steps) if k == "COPY" and rest.split()[0] in ("sdk/", "operator/", "trainer/"))
    extras = next(i for i, (k, rest) in enumerate(steps) if k == "RUN" and "'.[trainer,eval,export,tracking]'" in rest)
    assert extras < first_source, f"{target}: the extras install after the source is copied"
    assert [rest for k, rest in steps[:extras] if k == "COPY"][-1].split()[0] == "pyproject.toml"
    source_installs = [" ".join(w) for w in commands(STAGES[target]) if w[:2] == ["pip", "install"] and w[-1] == "."]
    assert source_installs and all("--no-deps" in cmd for cmd in source_installs), source_installs
