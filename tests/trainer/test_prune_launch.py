"""`refinery-train prune` (checkpoint retention on the volume) and `refinery-train launch` (multi-node
pods wait for rank 0's name). Both torch-free: files, DNS and exec only."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from refinery.api.run import CHECKPOINT_MARKER
from refinery_trainer import checkpoints as ckpt
from refinery_trainer import cli, launch


def make_checkpoint(stage_dir, attempt, step, complete=True, **metrics):
    path = ckpt.attempt_dir(stage_dir, attempt) / "checkpoints" / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"x" * 10)
    if complete:
        ckpt.write_marker(path, step, metrics)
    return path


def prune(capsys, *args) -> dict:
    assert cli.main(["prune", *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_prune_keeps_last_and_best_and_never_touches_a_partial_checkpoint(tmp_path, capsys):
    stage = tmp_path / "ns" / "p" / "sft"
    c10 = make_checkpoint(stage, 1, 10, evalLoss=1.0)  # the best
    c20 = make_checkpoint(stage, 1, 20, evalLoss=2.0)
    c30 = make_checkpoint(stage, 2, 30, evalLoss=3.0)
    c40 = make_checkpoint(stage, 2, 40, evalLoss=2.5)
    partial = make_checkpoint(stage, 3, 50, complete=False)  # maybe being written: left alone

    result = prune(capsys, "--stage-dir", str(stage), "--keep-last", "1", "--keep-best", "evalLoss:min:1")

    assert result["deleted"] == sorted([str(c20), str(c30)])
    assert not c20.exists() and not c30.exists()
    assert c10.exists() and c40.exists() and partial.exists()
    assert [p.name for p in ckpt.complete_checkpoints(stage)] == ["checkpoint-40", "checkpoint-10"]
    # idempotent: a second run (a retried Job) deletes nothing more
    again = prune(capsys, "--stage-dir", str(stage), "--keep-last", "1", "--keep-best", "evalLoss:min:1")
    assert again["deleted"] == [] and sorted(again["kept"]) == sorted([str(c10), str(c40)])


def test_prune_protects_paths_and_dry_run_deletes_nothing(tmp_path, capsys):
    stage = tmp_path / "sft"
    old = [make_checkpoint(stage, 1, s) for s in (10, 20, 30)]
    result = prune(capsys, "--stage-dir", str(stage), "--keep-last", "1", "--protect", str(old[0]), "--dry-run")
    assert result["deleted"] == [str(old[1])] and result["dryRun"] is True
    assert all(p.exists() for p in old)


def test_runs_of_a_stage_are_pruned_apart(tmp_path, capsys):
    from refinery.core.naming import stage_dir

    base = tmp_path / "sft"
    first = [make_checkpoint(base, 1, s) for s in (10, 20)]
    rerun_dir = tmp_path / stage_dir("", "sft", 1).lstrip("/")  # <stage>/reruns/1
    rerun = [make_checkpoint(rerun_dir, 3, s) for s in (5, 15)]
    # the first run's prune never reaches into a re-run's folder (its newest may be at a lower step)
    assert prune(capsys, "--stage-dir", str(base), "--keep-last", "1")["deleted"] == [str(first[0])]
    assert all(p.exists() for p in rerun)
    # the re-run's prune Job (builders_retention: --stage-dir <stage>/reruns/<run>) keeps its own newest
    assert prune(capsys, "--stage-dir", str(rerun_dir), "--keep-last", "1")["deleted"] == [str(rerun[0])]
    assert first[1].exists() and rerun[1].exists()


def test_prune_of_a_missing_folder_is_a_no_op(tmp_path, capsys):
    assert prune(capsys, "--stage-dir", str(tmp_path / "nothing"), "--keep-last", "1")["deleted"] == []


def test_prune_rejects_a_policy_that_keeps_nothing(tmp_path, capsys):
    assert cli.main(["prune", "--stage-dir", str(tmp_path)]) == 2
    assert "keepLast, keepBest" in capsys.readouterr().err


def test_a_half_deleted_checkpoint_is_partial_not_complete(tmp_path):
    from refinery_trainer.prune import delete_checkpoint

    path = make_checkpoint(tmp_path, 1, 10)
    (path / CHECKPOINT_MARKER).unlink()  # what delete_checkpoint does first
    assert not ckpt.is_checkpoint_complete(path)
    delete_checkpoint(path)
    delete_checkpoint(path)  # again: nothing to do, no error
    assert not path.exists()


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_launch_waits_until_the_name_resolves():
    clock, lookups, lines = FakeClock(), [], []

    def resolve(host):
        lookups.append(clock.now)
        return clock.now >= 5

    assert launch.wait_for_name("p-sft-1-0.p-sft-1", 60, 1, resolve=resolve, clock=clock, sleep=clock.sleep, log=lines.append)
    assert lookups[-1] == 5 and len(lookups) == 6
    assert lines == ["refinery-train launch: waiting for p-sft-1-0.p-sft-1 (rank 0's pod) to resolve, 0s of 60s"]


def test_launch_gives_up_after_its_timeout():
    clock = FakeClock()
    assert not launch.wait_for_name("x", 10, 3, resolve=lambda h: False, clock=clock, sleep=clock.sleep, log=lambda _: None)
    assert clock.now == 10


def test_launch_execs_the_command_once_resolved(tmp_path):
    done = subprocess.run([sys.executable, "-m", "refinery_trainer", "launch", "--wait-for", "localhost", "--timeout", "5",
                           "--", sys.executable, "-c", "print('rank ready')"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "rank ready"


def test_launch_fails_with_a_clear_message_when_rank_0_never_resolves(tmp_path):
    log = tmp_path / "termination-log"
    done = subprocess.run([sys.executable, "-m", "refinery_trainer", "launch", "--wait-for", "p-sft-1-0.p-sft-1.invalid",
                           "--timeout", "1", "--interval", "0.5", "--", "false"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "REFINERY_TERMINATION_LOG": str(log)})
    assert done.returncode == launch.EXIT_NOT_RESOLVED
    assert "p-sft-1-0.p-sft-1.invalid did not resolve within 1s" in done.stderr
    assert json.loads(log.read_text())["reason"] == "RendezvousNotResolved"


CHILD = ("import signal, sys, time\n"
         "signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))\n"  # what torchrun does once its workers run
         "print('child running', flush=True)\n"
         "time.sleep(120)\n")


def start_launcher(host: str, *command: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "refinery_trainer.launch", "--wait-for", host, "--timeout", "120",
                             "--", *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("handled", [True, False])
def test_the_launcher_passes_sigterm_on_to_the_command(handled):
    """The launcher stays the container's PID 1 (which drops signals it has no handler for) and
    forwards SIGTERM: the command's exit code comes back, 128 + 15 when SIGTERM ended it."""
    command = [sys.executable, "-c", CHILD if handled else CHILD.replace("signal.signal", "(lambda *_: 0)")]
    launcher = start_launcher("localhost", *command)
    assert launcher.stdout.readline().strip() == "child running"
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=30) == (42 if handled else 143)


def test_the_launcher_exits_143_on_sigterm_while_it_waits_for_rank_0():
    launcher = start_launcher("never-resolves.invalid", sys.executable, "-c", "pass")
    assert "waiting for never-resolves.invalid" in launcher.stdout.readline()
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=30) == 143
