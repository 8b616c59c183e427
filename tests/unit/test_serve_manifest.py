"""`refinery serve-manifest`: the printed vLLM Deployment + Service are valid Kubernetes objects
(kubernetes-validate, strict: no unknown field), ask for the GPU, serve the exported model, probe
the server and run as non-root; `--kserve` prints an InferenceService for the same model. The
images are not run here (no cluster, no GPU)."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from refinery_operator.cli import main

VERSION = "1.33.0"


def printed(capsys, *args: str) -> list[dict]:
    assert main(["serve-manifest", *args]) == 0
    return list(yaml.safe_load_all(capsys.readouterr().out))


@pytest.mark.parametrize("uri", ["s3://models/tiny-chat/rlhf", "hf://my-org/tiny-chat", "pvc://training-data/exports/tiny-chat"])
def test_vllm_deployment_and_service_are_valid(capsys, uri):
    objects = printed(capsys, uri, "--name", "tiny-chat", "--namespace", "serving", "--credentials-secret", "model-store")
    assert [o["kind"] for o in objects] == ["Deployment", "Service"]
    for obj in objects:
        kubernetes_validate.validate(obj, VERSION, strict=True)
    pod = objects[0]["spec"]["template"]["spec"]
    vllm = pod["containers"][0]
    assert vllm["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert {"readinessProbe", "livenessProbe", "startupProbe"} <= set(vllm)
    for container in [*pod.get("initContainers", []), vllm]:
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] and ctx["runAsUser"] != 0 and not ctx["allowPrivilegeEscalation"]
    model = vllm["args"][vllm["args"].index("--model") + 1]
    if uri.startswith("s3://"):  # fetched by an init container into the volume vLLM serves
        assert pod["initContainers"][0]["args"][:3] == ["s3", "sync", uri] and model == "/models"
    elif uri.startswith("hf://"):
        assert model == "my-org/tiny-chat"
    else:
        assert model == "/models/exports/tiny-chat" and pod["volumes"][0]["persistentVolumeClaim"]["readOnly"]
    assert {"secretRef": {"name": "model-store"}} in vllm["envFrom"]
    service = objects[1]
    assert service["spec"]["selector"] == objects[0]["spec"]["selector"]["matchLabels"]


def test_kserve_inference_service(capsys):
    (isvc,) = printed(capsys, "s3://models/tiny-chat/rlhf", "--name", "tiny-chat", "--kserve", "--gpus", "2",
                      "--service-account", "model-reader")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == "s3://models/tiny-chat/rlhf"
    assert predictor["model"]["modelFormat"] == {"name": "huggingface"}
    assert predictor["model"]["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert predictor["serviceAccountName"] == "model-reader" and predictor["securityContext"]["runAsNonRoot"]
    # kubernetes-validate knows no KServe schema: the metadata at least is a valid ObjectMeta.
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": isvc["metadata"]}, VERSION, strict=True)


def test_an_unknown_model_uri_is_refused(capsys):
    assert main(["serve-manifest", "ftp://somewhere/model"]) == 2
    assert "s3://bucket/prefix, hf://org/name or pvc://claim/path" in capsys.readouterr().err
