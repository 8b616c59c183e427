"""The DeepSpeed config a stage's `deepspeed` spec becomes, and what it asks of TrainingArguments
(no DeepSpeed needed: the config is plain data)."""

from __future__ import annotations

import json
import sys

import pytest

from refinery.api.v1alpha1 import DeepSpeedSpec
from refinery_trainer.distributed import DeepSpeedConfigError, deepspeed_config, gathered_parameters, training_args_kwargs


def config(**spec):
    return deepspeed_config(DeepSpeedSpec(**spec), resolve=lambda p: p)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_and_auto_fields(stage):
    cfg = config(zero_stage=stage)
    assert cfg["zero_optimization"]["stage"] == stage
    # Everything TrainingArguments knows stays "auto", so the two can never disagree.
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size", "gradient_clipping"):
        assert cfg[key] == "auto"
    assert cfg["bf16"] == {"enabled": "auto"} and cfg["fp16"] == {"enabled": "auto"}
    # ZeRO-3 checkpoints and final models hold whole 16-bit weights, loadable with from_pretrained.
    assert cfg["zero_optimization"].get("stage3_gather_16bit_weights_on_model_save", False) is (stage == 3)
    assert "offload_optimizer" not in cfg["zero_optimization"] and "offload_param" not in cfg["zero_optimization"]


def test_offload():
    zero = config(zero_stage=3, offload_optimizer=True, offload_params=True)["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}
    pinned = deepspeed_config(DeepSpeedSpec(zero_stage=2, offload_optimizer=True), lambda p: p, pin_memory=True)
    assert pinned["zero_optimization"]["offload_optimizer"]["pin_memory"] is True


@pytest.mark.parametrize("spec, words", [
    ({"zero_stage": 2, "offload_params": True}, "offloadParams needs zeroStage 3"),
    ({"zero_stage": 0, "offload_optimizer": True}, "offloadOptimizer needs zeroStage 1, 2 or 3"),
])
def test_impossible_combinations_are_stage_errors(spec, words):
    with pytest.raises(DeepSpeedConfigError, match=words) as exc:
        config(**spec)
    assert exc.value.reason == "BadDeepSpeedConfig"


def test_config_path_replaces_the_fields(tmp_path):
    full = {"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": "auto"}
    (tmp_path / "ds.json").write_text(json.dumps(full))
    resolve = lambda p: tmp_path / p  # noqa: E731 - as StageContext.resolve: relative to the data root
    assert deepspeed_config(DeepSpeedSpec(zero_stage=3, config_path="ds.json"), resolve) == full

    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DeepSpeedConfigError, match=r"bad.json: not valid JSON"):
        deepspeed_config(DeepSpeedSpec(config_path="bad.json"), resolve)
    with pytest.raises(DeepSpeedConfigError, match=r"missing.json: cannot read it"):
        deepspeed_config(DeepSpeedSpec(config_path="missing.json"), resolve)
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(DeepSpeedConfigError, match="expected a JSON object"):
        deepspeed_config(DeepSpeedSpec(config_path="list.json"), resolve)


def test_training_args_kwargs():
    assert training_args_kwargs(None, lambda p: p, cuda=True) == {}
    kwargs = training_args_kwargs(DeepSpeedSpec(zero_stage=2), lambda p: p, cuda=True)
    # use_cpu=True would make accelerate drop the DeepSpeed plugin, even on a CPU-only host.
    assert kwargs["use_cpu"] is False and kwargs["deepspeed"]["zero_optimization"]["stage"] == 2


def test_gathering_a_model_that_is_not_partitioned_does_nothing(monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # any use of DeepSpeed would raise ImportError
    model = torch.nn.Linear(2, 2)
    before = model.weight.detach().clone()
    with gathered_parameters(model):
        assert torch.equal(model.weight, before)
    with gathered_parameters(object()):  # anything with save_pretrained, e.g. a test double
        pass


def test_marker_waits_for_every_rank_and_only_rank_0_writes_it(workspace, monkeypatch):
    """Under torchrun each rank writes its own files (ZeRO shards, rng_state_<rank>.pth) after the
    Trainer's last barrier: the marker may only come after a barrier that every rank reaches."""
    from refinery.api.run import CHECKPOINT_MARKER, StageRun
    from refinery_trainer import distributed
    from refinery_trainer.context import StageContext
    from refinery_trainer.report import Reporter

    from .conftest import stage_run

    events = []
    monkeypatch.setattr(distributed, "barrier", lambda: events.append("barrier"))
    run = StageRun.model_validate(stage_run(workspace, "sft", "sft", data={"path": "d.jsonl"}, from_="pre"))
    path = workspace / "p" / "sft" / "attempt-1" / "checkpoints" / "checkpoint-10"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")

    monkeypatch.setenv("RANK", "1")
    StageContext(run, reporter=Reporter(None)).mark_checkpoint(path, 10, {})
    assert events == ["barrier"] and not (path / CHECKPOINT_MARKER).exists()  # rank 1: waits, never marks

    monkeypatch.setenv("RANK", "0")
    ctx = StageContext(run, reporter=Reporter(None))
    monkeypatch.setattr(distributed, "barrier", lambda: events.append("barrier" if not (path / CHECKPOINT_MARKER).exists() else "late"))
    ctx.mark_checkpoint(path, 10, {"trainLoss": 1.0})
    assert events == ["barrier", "barrier"]  # rank 0 also waited, before its marker existed
    assert json.loads((path / CHECKPOINT_MARKER).read_text())["step"] == 10


def _stop_vote(rank: int, init_file: str, votes) -> None:
    import torch.distributed as dist

    from refinery_trainer import distributed

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        # step 1: no SIGTERM yet; step 2: only rank 1 got one (a drained node, or its SIGTERM came first)
        votes[rank] = [distributed.any_rank(False), distributed.any_rank(rank == 1)]
    finally:
        dist.destroy_process_group()


def test_a_sigterm_on_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """A 2-process gloo world (torch.multiprocessing, as torchrun's workers): SIGTERM seen by one
    rank is every rank's stop, so they save one checkpoint together (callbacks.ProgressCallback)."""
    import torch.multiprocessing as mp

    from refinery_trainer import distributed

    assert distributed.any_rank(True) and not distributed.any_rank(False)  # one process: the flag itself
    votes = mp.Manager().dict()
    mp.spawn(_stop_vote, args=(str(tmp_path / "init"), votes), nprocs=2, join=True)
    assert dict(votes) == {0: [False, True], 1: [False, True]}
