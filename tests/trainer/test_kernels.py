"""Fast kernels: the attention implementation chosen, Liger and torch.compile switched on or
refused with a clear reason; what needs a GPU is marked `gpu` and skipped without one."""

from __future__ import annotations

import pytest

from refinery_trainer import cli, kernels
from refinery_trainer.kernels import KernelError, attention_implementation, kernel_training_kwargs

from .conftest import TINY_MODEL, make_corpus, read_json, stage_run, write_config


@pytest.fixture(autouse=True)
def _own_termination_log(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINERY_TERMINATION_LOG", str(tmp_path / "termination-log"))


@pytest.mark.parametrize("choice, cuda, half, flash_installed, expected", [
    ("auto", False, False, False, "sdpa"),  # CPU
    ("auto", True, True, False, "sdpa"),  # GPU without flash-attn
    ("auto", True, True, True, "flash_attention_2"),
    ("auto", True, False, True, "sdpa"),  # fp32: FlashAttention has no fp32 kernels
    ("eager", True, True, True, "eager"),
    ("sdpa", True, True, True, "sdpa"),
    ("flash_attention_2", True, True, True, "flash_attention_2"),
])
def test_attention_choice(choice, cuda, half, flash_installed, expected, monkeypatch):
    monkeypatch.setattr(kernels, "is_installed", lambda module: flash_installed)
    assert attention_implementation(choice, cuda=cuda, half_precision=half) == expected


@pytest.mark.parametrize("cuda, half, installed, needle", [
    (False, False, True, "needs a CUDA GPU"),
    (True, False, True, "needs bf16 or fp16"),
    (True, True, False, "needs the flash-attn package"),
])
def test_flash_attention_that_cannot_run_is_refused(cuda, half, installed, needle, monkeypatch):
    monkeypatch.setattr(kernels, "is_installed", lambda module: installed)
    with pytest.raises(KernelError, match=needle):
        attention_implementation("flash_attention_2", cuda=cuda, half_precision=half)


def test_liger_needs_a_gpu_and_its_package(monkeypatch):
    with pytest.raises(KernelError, match="needs a CUDA GPU"):
        kernel_training_kwargs(True, False, cuda=False)
    monkeypatch.setattr(kernels, "is_installed", lambda module: False)
    with pytest.raises(KernelError, match="liger-kernel package"):
        kernel_training_kwargs(True, False, cuda=True)
    assert kernel_training_kwargs(False, True, cuda=False) == {"use_liger_kernel": False, "torch_compile": True}


def _pretrain(workspace, **training):
    make_corpus(workspace / "corpus.txt", docs=80)
    run = stage_run(workspace, "pretrain", "pretrain", data={"path": "corpus.txt"}, model=TINY_MODEL,
                    training={"maxSteps": 8, "batchSize": 4, "seqLen": 32, "saveSteps": 8, "loggingSteps": 4, **training})
    return cli.main(["run", "--config", str(write_config(workspace / "run.yaml", run))])


@pytest.mark.parametrize("training, needle", [
    ({"ligerKernel": True}, "training.ligerKernel needs a CUDA GPU"),
    ({"attention": "flash_attention_2"}, "training.attention=flash_attention_2 needs a CUDA GPU"),
])
def test_a_kernel_this_machine_cannot_run_fails_the_stage_clearly(workspace, training, needle, capsys):
    assert _pretrain(workspace, **training) == cli.EXIT_FAILED
    progress = read_json(workspace / "p" / "pretrain" / "progress.json")
    assert progress["failureReason"] == "UnsupportedKernel" and needle in progress["message"]
    assert "Traceback" not in capsys.readouterr().err
    assert not (workspace / "p" / "pretrain" / "model").exists()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_pretrain_trains_with_each_attention_implementation(workspace, attention):
    assert _pretrain(workspace, attention=attention) == 0
    metrics = read_json(workspace / "p" / "pretrain" / "result.json")["metrics"]
    assert metrics["evalLoss"] < metrics["initialEvalLoss"]


def test_compiled_training_matches_eager_training(tmp_path):
    """torch.compile (inductor, C++ on a CPU) changes speed, not what is learnt: same seed, same losses."""
    results = {}
    for compiled in (False, True):
        ws = tmp_path / f"compile-{compiled}"
        assert _pretrain(ws, compile=compiled) == 0
        results[compiled] = read_json(ws / "p" / "pretrain" / "result.json")["metrics"]
    assert results[True]["evalLoss"] < results[True]["initialEvalLoss"]
    assert results[True]["evalLoss"] == pytest.approx(results[False]["evalLoss"], rel=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("training", [{"ligerKernel": True}, {"compile": True}, {"attention": "auto"}],
                         ids=["liger", "compile", "auto-attention"])
def test_gpu_kernels_train(workspace, training):
    """On a GPU: Liger kernels, torch.compile and the automatic attention (FlashAttention 2 when
    installed) each train the model in bf16."""
    assert _pretrain(workspace, precision="bf16", **training) == 0
    metrics = read_json(workspace / "p" / "pretrain" / "result.json")["metrics"]
    assert metrics["evalLoss"] < metrics["initialEvalLoss"] and metrics["mfu"] > 0


def test_vllm_generation_is_refused_where_it_cannot_run(monkeypatch):
    assert kernels.generation_kwargs("hf", cuda=False) == {}
    with pytest.raises(KernelError, match="rl.generation=vllm needs a CUDA GPU"):
        kernels.generation_kwargs("vllm", cuda=False)
    monkeypatch.setattr(kernels, "is_installed", lambda module: False)
    with pytest.raises(KernelError, match="needs the vllm package: run the trainer-vllm image"):
        kernels.generation_kwargs("vllm", cuda=True)
    monkeypatch.setattr(kernels, "is_installed", lambda module: True)
    assert kernels.generation_kwargs("vllm", cuda=True)["vllm_mode"] == "colocate"


def test_an_rlhf_stage_asking_for_vllm_on_a_cpu_fails_before_loading_anything(workspace, capsys):
    run = stage_run(workspace, "rlhf", "rlhf", data={"path": "prompts.jsonl"}, from_="sft",
                    training={"batchSize": 8}, initModel=str(workspace / "missing-policy"),
                    rewardModel=str(workspace / "missing-reward"))
    run["stage"].update(rewardModel="reward", rl={"generation": "vllm"})
    assert cli.main(["run", "--config", str(write_config(workspace / "run.yaml", run))]) == cli.EXIT_FAILED
    progress = read_json(workspace / "p" / "rlhf" / "progress.json")
    # Refused for what it asks, not for the missing data or models it never got to read.
    assert progress["failureReason"] == "UnsupportedKernel" and "rl.generation=vllm" in progress["message"]
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.slow
def test_vllm_colocated_generation_raises_the_reward(tmp_path_factory, workspace):
    """On a GPU with vLLM installed (the trainer-vllm image): RLOO sampling through vLLM in the
    training process raises the held-out reward like transformers' generate does. Not run here:
    no machine of ours has a GPU."""
    pytest.importorskip("vllm")
    from .test_rlhf import example_models, rlhf_run, run_stage

    example = example_models(tmp_path_factory.getbasetemp() / "example-vllm")
    run = rlhf_run(workspace, example, rl={"generation": "vllm"}, training={"maxSteps": 60, "saveSteps": 60})
    metrics = run_stage(workspace, run)["metrics"]
    assert metrics["meanReward"] > metrics["baselineMeanReward"] + 0.5 and metrics["tokensPerSecond"] > 0
