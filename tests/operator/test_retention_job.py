"""Checkpoint retention through the operator: the prune Job field by field, then a pipeline with
`spec.checkpoints` whose stages leave only the kept checkpoints on the (mapped) volume."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from refinery.api.v1alpha1 import Phase, PipelineStatus, StageInputs, StageStatus
from refinery_operator.builders_retention import build_cleanup_job
from refinery_trainer import checkpoints as ckpt
from tests.builders import chat_pipeline, make_pipeline

from .conftest import create_pipeline, stored, stored_all, wait_for

FAKE_STAGE = [sys.executable, str(Path(__file__).with_name("fake_stage.py"))]
UID = "0f5c2a4e-1111-2222-3333-444455556666"


def pipeline(checkpoints):
    manifest = chat_pipeline("chat").manifest()
    manifest["spec"]["checkpoints"] = checkpoints
    manifest["metadata"]["uid"] = UID
    from refinery.api.v1alpha1 import TrainingPipeline

    return TrainingPipeline.model_validate(manifest)


def test_cleanup_job_fields():
    p = pipeline({"keepLast": 2, "keepBest": {"metric": "evalLoss", "mode": "min", "count": 1}})
    sft_ckpt = "/workspace/default/chat/sft/attempt-1/checkpoints/checkpoint-20"
    status = PipelineStatus(stages=[
        StageStatus(name="sft", phase=Phase.succeeded, attempt=2),
        StageStatus(name="reward", inputs=StageInputs(model=sft_ckpt)),
    ])
    job = build_cleanup_job(p, status, "sft")
    assert job["metadata"]["name"] == "chat-sft-2-prune"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "cleanup"
    assert job["metadata"]["ownerReferences"][0]["uid"] == UID
    assert job["spec"]["backoffLimit"] == 3 and job["spec"]["ttlSecondsAfterFinished"] == 86400
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["image"] == p.spec.image
    assert container["command"] == [
        "refinery-train", "prune", "--stage-dir", "/workspace/default/chat/sft", "--keep-last", "2",
        "--keep-best", "evalLoss:min:1", "--protect", sft_ckpt]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["volumeMounts"] == [{"name": "workspace", "mountPath": "/workspace"}]
    assert pod["volumes"] == [{"name": "workspace", "persistentVolumeClaim": {"claimName": "training-data"}}]
    assert "nodeSelector" not in pod and "tolerations" not in pod


def test_a_rerun_is_pruned_in_its_own_folder():
    p = pipeline({"keepLast": 1})
    rerun_ckpt = "/workspace/default/chat/sft/reruns/2/attempt-5/checkpoints/checkpoint-30"
    status = PipelineStatus(stages=[
        StageStatus(name="sft", phase=Phase.succeeded, attempt=5, run=2, first_attempt=5),
        StageStatus(name="reward", inputs=StageInputs(model=rerun_ckpt)),
    ])
    job = build_cleanup_job(p, status, "sft")
    assert job["metadata"]["name"] == "chat-sft-5-prune"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "refinery-train", "prune", "--stage-dir", "/workspace/default/chat/sft/reruns/2", "--keep-last", "1",
        "--protect", rerun_ckpt]


def test_cleanup_job_runs_where_its_stage_ran():
    placement = {"nodeSelector": {"pool": "a100"}, "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]}
    manifest = make_pipeline("p").stage("pt", "pretrain", resources=placement).manifest()
    manifest["spec"]["checkpoints"] = {"keepLast": 1}
    manifest["metadata"]["uid"] = UID
    from refinery.api.v1alpha1 import TrainingPipeline

    p = TrainingPipeline.model_validate(manifest)
    pod = build_cleanup_job(p, PipelineStatus(stages=[StageStatus(name="pt", phase=Phase.succeeded, attempt=1)]), "pt")
    assert pod["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "a100"}
    assert pod["spec"]["template"]["spec"]["tolerations"] == placement["tolerations"]


@pytest.mark.timeout(120)
async def test_succeeded_stages_are_pruned_on_the_volume(emulator, cluster, start_operator, kubelet):
    kubelet.command_map["refinery-train"] = FAKE_STAGE  # fake `run`; `prune` is the real one
    manifest = make_pipeline("keep").stage("pretrain", "pretrain").stage("sft", "sft", from_="pretrain").manifest()
    for stage in manifest["spec"]["stages"]:
        stage["training"] = {"maxSteps": 8, "saveSteps": 2}  # 4 complete checkpoints each
    manifest["spec"]["checkpoints"] = {"keepLast": 1}
    async with start_operator():
        await create_pipeline(cluster, manifest)
        await wait_for(lambda: ((stored(emulator, "refinery.dev/v1alpha1/trainingpipelines", "keep") or {})
                                .get("status") or {}).get("phase") == "Succeeded", 60, what="the pipeline")
        for job in ("keep-pretrain-1-prune", "keep-sft-1-prune"):
            await wait_for(lambda job=job: job in kubelet.pods and kubelet.pods[job].done.is_set(), 30, what=job)
    jobs = stored_all(emulator, "batch/v1/jobs")
    assert sorted(jobs) == ["keep-pretrain-1", "keep-pretrain-1-prune", "keep-sft-1", "keep-sft-1-prune", "keep-sources-1-fetch"]
    root = kubelet.claim_dir("training-data") / "default" / "keep"
    for stage in ("pretrain", "sft"):
        assert kubelet.pods[f"keep-{stage}-1-prune"].exit_code == 0, kubelet.pods[f"keep-{stage}-1-prune"].log
        assert [p.name for p in ckpt.list_checkpoints(root / stage)] == ["checkpoint-8"]
        assert (root / stage / "model").is_dir()
