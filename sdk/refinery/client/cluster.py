"""The client's cluster backend: the official Kubernetes client, imported only when a `Client` is made.

Login as kubectl does: `kubeconfig` (default `$KUBECONFIG`, else `~/.kube/config`) with its current
context or `context`; with no kubeconfig file at all, the in-cluster ServiceAccount (a notebook
running in a pod). The namespace is `namespace`, else the context's, else the pod's, else `default`.

Objects go out and come back as plain dicts (the CustomObjects API); `apply` is a server-side
apply (field manager `refinery-client`), `suspend`/`resume` a merge patch of `spec.suspend`.
Logs are the stage's current attempt's pod (index 0 of a multi-node attempt), found by the
label the Job controller puts on its pods. Events are the core/v1 Events about the pipeline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..api.v1alpha1 import GROUP, KIND, PLURAL, VERSION, StageStatus, TrainingPipeline
from .client import PipelineEvent
from .errors import ClientError, NoLogs, NotFound, Unreachable

FIELD_MANAGER = "refinery-client"
REQUEST_TIMEOUT = (5, 30)  # seconds to connect, to read: an API server that does not answer fails fast
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


class ClusterBackend:
    def __init__(self, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None) -> None:
        try:
            import kubernetes.client
            import kubernetes.config
        except ImportError:
            raise ClientError("a cluster client needs the Kubernetes client: pip install 'refinery[client]'") from None
        configuration = kubernetes.client.Configuration()
        default_file = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or os.path.expanduser("~/.kube/config")
        try:
            if kubeconfig or context or Path(default_file).exists():
                kubernetes.config.load_kube_config(config_file=kubeconfig, context=context,
                                                   client_configuration=configuration)
                contexts, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
                chosen = next((c for c in contexts if c["name"] == context), active) if context else active
                self.context = chosen["name"]
                namespace = namespace or chosen.get("context", {}).get("namespace")
            else:
                kubernetes.config.load_incluster_config(client_configuration=configuration)
                self.context = "in-cluster"
                namespace = namespace or (IN_CLUSTER_NAMESPACE.read_text().strip() if IN_CLUSTER_NAMESPACE.exists() else None)
        except (kubernetes.config.ConfigException, OSError, ValueError, KeyError) as err:
            where = f"context {context!r}" if context else (kubeconfig or "the kubeconfig")
            raise Unreachable(f"cannot use {where}: {one_line(err)}") from None
        configuration.retries = 1
        self.namespace = namespace or "default"
        self.server = configuration.host
        self.where = f"namespace {self.namespace!r} (context {self.context})"
        self.api_client = kubernetes.client.ApiClient(configuration)
        self.custom = kubernetes.client.CustomObjectsApi(self.api_client)
        self.core = kubernetes.client.CoreV1Api(self.api_client)

    def call(self, fn: Callable[..., Any], *args: Any, name: str | None = None, timeout: Any = REQUEST_TIMEOUT,
             **kwargs: Any) -> Any:
        """One API call, its failures mapped to NotFound / Unreachable / ClientError."""
        import urllib3.exceptions
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, **({"_request_timeout": timeout} if timeout is not None else {}), **kwargs)
        except ApiException as err:
            body = parse_body(err.body)
            if err.status == 404 and name is not None:
                if (body.get("details") or {}).get("name") == name:
                    raise NotFound(f"trainingpipeline {name!r} not found in {self.where}") from None
                raise NotFound(f"the TrainingPipeline kind is not installed on {self.server} "
                               "(kubectl apply -f crds/trainingpipelines.refinery.dev.yaml)") from None
            raise ClientError(f"{err.status} {err.reason}: {body.get('message') or one_line(err.body)}") from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            cause = getattr(err, "reason", None) or err  # MaxRetryError: the connection error under it
            raise Unreachable(f"the API server of context {self.context} ({self.server}) does not answer: "
                              f"{one_line(cause).rpartition(': ')[2] or type(cause).__name__}") from None

    # -- the resource ---------------------------------------------------------------------------

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        name = manifest["metadata"]["name"]
        namespace = manifest["metadata"].get("namespace") or self.namespace
        body = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
        self.call(self.custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name, body,
                  field_manager=FIELD_MANAGER, force=True, _content_type="application/apply-patch+yaml")
        return self.call(self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name, name=name)

    def get(self, name: str) -> dict[str, Any]:
        return self.call(self.custom.get_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, name, name=name)

    def list(self) -> list[dict[str, Any]]:
        listed = self.call(self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, name="")
        return listed.get("items") or []

    def set_suspend(self, name: str, suspend: bool) -> None:
        self.call(self.custom.patch_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, name,
                  {"spec": {"suspend": suspend}}, name=name, field_manager=FIELD_MANAGER,
                  _content_type="application/merge-patch+json")

    def delete(self, name: str) -> None:
        self.call(self.custom.delete_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, name, name=name)

    def events(self, name: str) -> list[PipelineEvent]:
        selector = f"involvedObject.kind={KIND},involvedObject.name={name}"
        listed = self.call(self.core.list_namespaced_event, self.namespace, field_selector=selector)
        # Oldest first: by time (to the second), then by resourceVersion, which etcd makes increase with each write.
        ordered = sorted(listed.items, key=lambda e: (event_time(e) or "", int(e.metadata.resource_version or 0)))
        return [PipelineEvent(e.type or "", e.reason or "", e.message or "", event_time(e), e.count or 1) for e in ordered]

    def stopped(self, name: str) -> str | None:
        return None  # the operator runs the pipeline; nothing of the client's to stop

    # -- a stage's output -----------------------------------------------------------------------

    def metrics(self, pipeline: TrainingPipeline, stage: StageStatus) -> list[dict[str, Any]]:
        """The one row the status holds: the stage's latest metrics at its step. The history
        (metrics.jsonl) is on the volume, out of this client's reach (client.py says where to look)."""
        return [{"step": stage.step, **stage.metrics}] if stage.metrics else []

    def logs(self, pipeline: TrainingPipeline, stage: StageStatus, follow: bool) -> Iterator[str]:
        name = pipeline.metadata.name
        if not stage.job_name:
            raise NoLogs(f"stage {stage.name!r} of pipeline {name!r} has not started yet (no attempt, no pod)")
        pods = self.call(self.core.list_namespaced_pod, self.namespace, label_selector=f"{JOB_NAME_LABEL}={stage.job_name}").items
        if not pods:
            raise NoLogs(f"stage {stage.name!r} attempt {stage.attempt} of pipeline {name!r}: Job {stage.job_name} has no pod "
                         "(not created yet, or deleted with the Job)")
        pod = min(pods, key=lambda p: ((p.metadata.labels or {}).get(COMPLETION_INDEX_LABEL, "0") != "0",
                                       -p.metadata.creation_timestamp.timestamp()))
        try:
            response = self.call(self.core.read_namespaced_pod_log, pod.metadata.name, self.namespace, follow=follow,
                                 _preload_content=False, timeout=None if follow else REQUEST_TIMEOUT)
        except ClientError as err:  # 400: "container ... is waiting to start"
            raise NoLogs(f"stage {stage.name!r} attempt {stage.attempt}: pod {pod.metadata.name}: {err}") from None
        return lines_of(response)


def lines_of(response) -> Iterator[str]:
    """The lines of a streamed HTTP response, as they arrive."""
    pending = ""
    try:
        for chunk in response.stream(4096, decode_content=True):
            lines = (pending + chunk.decode("utf-8", errors="replace")).split("\n")
            pending = lines.pop()
            yield from lines
        if pending:
            yield pending
    finally:
        response.release_conn()


def event_time(event) -> str | None:
    when = event.last_timestamp or event.event_time or event.first_timestamp or event.metadata.creation_timestamp
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


def parse_body(body: Any) -> dict[str, Any]:
    try:
        parsed = json.loads(body) if body else {}
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def one_line(value: Any) -> str:
    return " ".join(str(value).split())[:300]
