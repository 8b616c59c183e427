"""The `TrainingPipeline` resource (refinery.dev/v1alpha1) as pydantic models.

These models are the single source of truth: the CRD in `crds/` is generated from them
(`refinery crd`), `refinery run` and `refinery validate` parse manifests with them, and the
operator reads every object through them. Python names are snake_case, YAML is camelCase.

Every field has a description, so `kubectl explain trainingpipeline.spec.stages` documents it.
This module imports neither kopf nor a Kubernetes client.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .base import (  # noqa: F401  (re-exported: the resource's names live here)
    API_VERSION, DNS_LABEL, GROUP, KIND, MAX_STAGES, PLURAL, SHORT_NAMES, SINGULAR, STAGE_NAME_MAX, VERSION,
    ApiModel, StageType, is_dns_label,
)
from .evaluation import EXPORT_STAGE, EvalSpec, ExportSpec
from .inputs import (  # noqa: F401  (re-exported: the resource's names live here)
    ModelConfig, ModelSource, MAX_MIXTURE, PRETRAIN_MIXTURE_MESSAGE, MIXTURE_MESSAGE, MixtureEntry, MAX_TOKENIZE_WORKERS, TOKENIZE_ONLY_PRETRAIN_MESSAGE, TokenizeSpec, DataSpec,
)
from .graph import stage_graph_problems
from .rewards import RewardSource
from .pod import MAX_ENV, EnvFromSource, EnvVar, Volume, VolumeMount
from .status import (  # noqa: F401  (re-exported: the resource's names live here)
    Checkpoint, Condition, Failure, Phase, PipelineStatus, RestartCounts, StageInputs, StageStatus,
)
from .tracking import TrackingSpec  # noqa: F401
from .training import DeepSpeedSpec, DpoSpec, LoraSpec, RlSpec, TrainingSpec  # noqa: F401

# ----------------------------------------------------------------------------------------------
# spec


class Toleration(ApiModel):
    key: str | None = Field(None, max_length=253, description="Taint key.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal.")
    value: str | None = Field(None, max_length=253, description="Taint value (with Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(None, description="Taint effect to tolerate.")
    toleration_seconds: int | None = Field(None, ge=0, description="How long a NoExecute taint is tolerated.")


# Pods of a multi-node stage. Their hostnames are `<job>-<index>`: naming.job_name leaves room for
# the index (two digits) within the 63 characters of a DNS label.
MAX_NODES = 64
PACKING_MESSAGE = "`training.packing` is only valid on sft stages: pretrain always trains on full blocks of seqLen tokens"
RLHF_INPUTS_MESSAGE = ("an rlhf stage needs `from` (the policy's stage) and exactly one of `rewardModel` (a reward stage) "
                       "or `rl.rewards` (reward stages' models and verifiers; `{model: <stage>}` adds a reward model)")
VLLM_GPU_MESSAGE = "rl.generation vllm needs a GPU: set resources.gpus to at least 1, or use generation hf"
PPO_ONE_PROCESS_MESSAGE = ("rl.algorithm ppo runs in one process: no deepspeed, no training.lora, at most one GPU "
                           "on one node (rloo and grpo support all three)")
SHARED_VOLUME_MESSAGE = ("stages on several nodes (resources.nodes > 1) need storage.claim.accessModes to include "
                         "ReadWriteMany: every node mounts the volume")


class Resources(ApiModel):
    """What each stage pod asks the scheduler for. Ignored in local mode."""

    gpus: int = Field(1, ge=0, le=64, description="GPUs per node (`nvidia.com/gpu`); 0 runs on CPU.")
    nodes: int = Field(
        1,
        ge=1,
        le=MAX_NODES,
        description="Nodes (pods) per stage attempt. Above 1: an Indexed Job of this many pods plus a headless "
        "Service; the trainer runs under torchrun with one process per GPU (one per pod on CPU). The volume "
        "must then be mountable on several nodes (ReadWriteMany).",
    )
    cpu: str | None = Field(None, max_length=32, pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPU request and limit, e.g. `8`.")
    memory: str | None = Field(
        None, max_length=32, pattern=r"^[0-9]+(\.[0-9]+)?([EPTGMK]i?)?$", description="Memory request and limit, e.g. `64Gi`."
    )
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] | None = Field(
        None, max_length=32, description="Node labels the pod must match."
    )
    tolerations: list[Toleration] | None = Field(None, max_length=32, description="Taints the pod tolerates.")
    gpu_peak_tflops: float | None = Field(
        None, gt=0, le=100000,
        description="Dense bf16 peak of one GPU in TFLOP/s, for the stage's `mfu` metric. Default: looked up from the "
        "GPU's name (A100, H100, H200, L40S, B200 ...); no `mfu` for a GPU not in that table, nor on a CPU.",
    )


class Retries(ApiModel):
    """How many times a failed attempt is retried, resuming from the newest complete checkpoint."""

    application: int = Field(1, ge=0, le=100, description="Retries after the trainer itself failed (non-zero exit).")
    infrastructure: int = Field(
        3, ge=0, le=100,
        description="Retries after the platform failed the pod (killed by the node for memory, no pod ready within "
        "`startTimeoutSeconds`, the Job's deadline). Disruptions have their own budget (`disruption`).",
    )
    disruption: int = Field(
        3, ge=0, le=100,
        description="Disruptions in a row without progress that are retried. A disruption ends an attempt from outside "
        "the trainer (pod deleted, evicted, preempted, node drained or lost, SIGTERM, or a rank failing because a "
        "peer was disrupted); it spends neither other budget, and one after which the stage wrote a newer "
        "checkpoint starts the count again, so a long stage on spot nodes is never failed by reclaims alone. "
        "Disrupted attempts are retried at once, without back-off.",
    )
    backoff_seconds: int = Field(
        10, ge=0, le=3600,
        description="Wait before the first retry; it doubles with every further failure of the stage, up to 32 times "
        "this (and at most 1 hour).",
    )
    start_timeout_seconds: int = Field(
        900, ge=1, le=86400,
        description="An attempt whose pod is not ready this long after its Job started (image pull back-off, "
        "unschedulable, volume not attachable) fails as an infrastructure failure `StartTimeout`.",
    )


GateOperator = Literal[">=", ">", "<=", "<"]
GATE_METRIC = r"^[A-Za-z][A-Za-z0-9_./,-]*$"  # dots and slashes: an eval stage's `rlhf.animals/acc`


class Gate(ApiModel):
    """A threshold the stage's final metrics must meet before the stages that depend on it start.

    `value` is a fixed threshold; `valueFrom` names another metric of the same stage instead (an
    eval stage: `{metric: rlhf.exactMatch, operator: ">=", valueFrom: sft.exactMatch}`)."""

    metric: str = Field(
        ..., min_length=1, max_length=127, pattern=GATE_METRIC,
        description="A final metric of the stage, e.g. `evalAccuracy` (reward), `evalLoss`, `meanReward`, or an eval "
        "stage's `<model>.<score>` such as `rlhf.exactMatch`.",
    )
    operator: GateOperator = Field(">=", description="How the metric compares with `value`: >=, >, <=, <.")
    value: float | None = Field(None, description="The threshold.")
    value_from: str | None = Field(
        None, max_length=127, pattern=GATE_METRIC, description="Instead of `value`: another final metric of the stage."
    )

    @model_validator(mode="after")
    def _one_threshold(self) -> Gate:
        if (self.value is None) == (self.value_from is None):
            raise ValueError("a gate needs exactly one of `value` or `valueFrom`")
        return self

    def threshold(self, metrics: dict[str, float]) -> float | None:
        return self.value if self.value_from is None else metrics.get(self.value_from)

    def holds(self, metrics: dict[str, float]) -> bool | None:
        """Whether the metrics meet the gate; None when a metric it reads was not reported."""
        got, limit = metrics.get(self.metric), self.threshold(metrics)
        if got is None or limit is None:
            return None
        return {">=": got >= limit, ">": got > limit, "<=": got <= limit, "<": got < limit}[self.operator]

    def describe(self) -> str:
        return f"{self.metric} {self.operator} {self.value_from if self.value_from else format(self.value, 'g')}"


class Stage(ApiModel):
    """One step of the recipe, run as a Job of the trainer image."""

    name: str = Field(..., min_length=1, max_length=STAGE_NAME_MAX, pattern=DNS_LABEL, description="Unique DNS label.")
    type: StageType = Field(..., description="pretrain | sft | reward | rlhf | dpo | eval.")
    from_: str | None = Field(
        None,
        alias="from",
        max_length=STAGE_NAME_MAX,
        pattern=DNS_LABEL,
        description="The stage whose final model initialises this one (its `model/` folder).",
    )
    model: ModelSource | None = Field(None, description="The initial model when the stage does not start `from` another stage.")
    reward_model: str | None = Field(
        None, max_length=STAGE_NAME_MAX, pattern=DNS_LABEL, description="rlhf: the reward stage whose model scores completions."
    )
    depends_on: list[Annotated[str, Field(max_length=STAGE_NAME_MAX, pattern=DNS_LABEL)]] | None = Field(
        None, max_length=MAX_STAGES, description="Stages that must succeed first. Default: the stages named in from/rewardModel."
    )
    data: DataSpec | None = Field(None, description="The stage's dataset (every type but eval).")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation settings.")
    rl: RlSpec | None = Field(None, description="rlhf only: algorithm, sampling and KL settings.")
    dpo: DpoSpec | None = Field(None, description="dpo only: beta and loss type.")
    deepspeed: DeepSpeedSpec | None = Field(None, description="Run the stage's trainer under DeepSpeed ZeRO.")
    resources: Resources = Field(default_factory=Resources, description="Pod resources (cluster only).")
    retries: Retries = Field(default_factory=Retries, description="Retry budgets per failure class.")
    eval_: EvalSpec | None = Field(None, alias="eval", description="eval only: the models to score and how.")
    gate: Gate | None = Field(
        None, description="A metric threshold the stage must meet before its dependants start; else the pipeline "
        "fails with reason `GateNotMet`."
    )
    env: list[EnvVar] | None = Field(
        None, max_length=MAX_ENV, description="Environment of this stage's pods, after `spec.env` (Kubernetes EnvVar: "
        "`value` or `valueFrom` a Secret/ConfigMap key). Also given to the pipeline's initializer.",
    )
    env_from: list[EnvFromSource] | None = Field(
        None, max_length=16, description="Secrets/ConfigMaps whose keys become this stage's environment.",
    )
    volume_mounts: list[VolumeMount] | None = Field(
        None, max_length=16, description="Volumes of `spec.volumes` mounted into this stage's pods.",
    )

    @model_validator(mode="after")
    def _inputs_fit_type(self) -> Stage:
        if self.type == StageType.export:
            return self  # built by PipelineSpec.export_stage, never written by hand
        if self.type == StageType.eval:
            return self._eval_fits()
        if self.eval_ is not None:
            raise ValueError("`eval` is only valid on eval stages")
        if self.data is None:
            raise ValueError("`data` is required (every stage type but eval trains on a dataset)")
        if (self.from_ is None) == (self.model is None):
            raise ValueError("set exactly one of `from` (a stage) or `model`")
        if self.type == StageType.rlhf and (self.from_ is None or (self.reward_model is None) == (not self._rl_rewards())):
            raise ValueError(RLHF_INPUTS_MESSAGE)
        if self.type != StageType.rlhf and self.reward_model is not None:
            raise ValueError("`rewardModel` is only valid on rlhf stages")
        if self.rl is not None and self.type != StageType.rlhf:
            raise ValueError("`rl` is only valid on rlhf stages")
        if self.dpo is not None and self.type != StageType.dpo:
            raise ValueError("`dpo` is only valid on dpo stages")
        if self.data.tokenize is not None and self.type != StageType.pretrain:
            raise ValueError(TOKENIZE_ONLY_PRETRAIN_MESSAGE)
        if self.training.lora is not None and self.type == StageType.pretrain:
            raise ValueError("`training.lora` is not valid on pretrain stages: pretraining trains every weight")
        if self.training.packing is not None and self.type != StageType.sft:
            raise ValueError(PACKING_MESSAGE)
        if self.data.mixture is not None and self.type == StageType.pretrain:
            raise ValueError(PRETRAIN_MIXTURE_MESSAGE)
        if self.rl is not None and self.rl.generation == "vllm" and self.resources.gpus == 0:
            raise ValueError(VLLM_GPU_MESSAGE)
        if self.rl is not None and self.rl.algorithm == "ppo" and (
                self.deepspeed is not None or self.training.lora is not None
                or self.resources.nodes > 1 or self.resources.gpus > 1):
            raise ValueError(PPO_ONE_PROCESS_MESSAGE)
        return self

    def _eval_fits(self) -> Stage:
        if self.eval_ is None:
            raise ValueError("an eval stage needs `eval` (models, and generate and/or harness)")
        misplaced = [f for f, v in (("from", self.from_), ("model", self.model), ("data", self.data),
                                    ("rewardModel", self.reward_model), ("rl", self.rl), ("dpo", self.dpo),
                                    ("deepspeed", self.deepspeed)) if v is not None]
        if misplaced:
            raise ValueError(f"an eval stage trains nothing: remove {', '.join(misplaced)} (the models to score go in "
                             "eval.models, the judge in eval.generate.rewardModel)")
        return self

    @property
    def dependencies(self) -> list[str]:
        """Stages that must succeed before this one starts."""
        if self.depends_on is not None:
            return list(dict.fromkeys(self.depends_on))
        if self.eval_ is not None:
            return self.eval_.referenced_stages
        return list(dict.fromkeys([s for s in (self.from_, *self.reward_stages) if s]))

    def _rl_rewards(self) -> list[RewardSource]:
        return list(self.rl.rewards or []) if self.rl is not None else []

    @property
    def rewards(self) -> list[RewardSource]:
        """rlhf: what the policy is optimised against (`rewardModel: X` is `rl.rewards: [{model: X}]`)."""
        if self.reward_model is not None:
            return [RewardSource(model=self.reward_model)]
        return self._rl_rewards()

    @property
    def reward_stages(self) -> list[str]:
        """rlhf: the reward stages whose models it reads, optimised against or auditing, in spec order."""
        audit = list(self.rl.audit or []) if self.rl is not None else []
        return list(dict.fromkeys(s.model for s in [*self.rewards, *audit] if s.model))


class ClaimTemplate(ApiModel):
    size: str = Field(..., max_length=32, pattern=r"^[0-9]+([EPTGMK]i?)?$", description="Requested size, e.g. `500Gi`.")
    storage_class_name: str | None = Field(None, max_length=253, description="StorageClass; default: the cluster's default.")
    access_modes: list[Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"]] = Field(
        default_factory=lambda: ["ReadWriteOnce"],
        max_length=3,
        description="ReadWriteMany is needed when stages run on several nodes at once.",
    )


class Storage(ApiModel):
    """The persistent volume mounted at /workspace in every stage pod."""

    claim_name: str | None = Field(None, max_length=253, description="An existing PersistentVolumeClaim in the namespace.")
    claim: ClaimTemplate | None = Field(None, description="A claim the operator creates and owns (deleted with the pipeline).")

    @model_validator(mode="after")
    def _exactly_one(self) -> Storage:
        if (self.claim_name is None) == (self.claim is None):
            raise ValueError("set exactly one of claimName or claim")
        return self


class KeepBest(ApiModel):
    """Keep the checkpoints with the best value of a metric (read from each checkpoint's marker)."""

    metric: str = Field(
        ..., min_length=1, max_length=63, pattern=r"^[A-Za-z][A-Za-z0-9_.]*$",
        description="Metric recorded with each checkpoint, e.g. `evalLoss`, `loss`, `evalAccuracy`.",
    )
    mode: Literal["min", "max"] = Field("min", description="`min`: lower is better (losses); `max`: higher is better.")
    count: int = Field(1, ge=1, le=1000, description="How many best checkpoints to keep.")


class CheckpointRetention(ApiModel):
    """Which complete checkpoints of a finished stage are kept on the volume.

    Applied by a short Job (`refinery-train prune`) that the operator starts when a stage
    succeeds. A checkpoint is kept when it is among the `keepLast` newest, among the `keepBest`
    best, or still used (an input of a stage, the newest complete one); partial checkpoints are
    never touched. The trainer's own `training.keepCheckpoints` bounds the disk *during* a run and
    acts first: retention only chooses among the checkpoints that rotation left.
    """

    keep_last: int | None = Field(
        None, ge=1, le=1000, description="Keep this many newest complete checkpoints of each stage (at least the newest)."
    )
    keep_best: KeepBest | None = Field(None, description="Also keep the best checkpoints by a metric.")

    @model_validator(mode="after")
    def _something_to_keep(self) -> CheckpointRetention:
        if self.keep_last is None and self.keep_best is None:
            raise ValueError("set keepLast, keepBest or both")
        return self


class PipelineSpec(ApiModel):
    image: str = Field(
        "ghcr.io/refinery-dev/refinery-trainer:0.1.0", max_length=512, description="Trainer image every stage runs."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field("IfNotPresent", description="Image pull policy.")
    service_account_name: str | None = Field(None, max_length=253, description="ServiceAccount of the stage pods.")
    storage: Storage = Field(..., description="The shared volume.")
    suspend: bool = Field(
        False,
        description="Stop the running stages after they save a checkpoint (their pods get SIGTERM and "
        "`terminationGracePeriodSeconds`); `false` again resumes them from it. Spends no retry budget.",
    )
    queue_name: str | None = Field(
        None, max_length=63, pattern=DNS_LABEL,
        description="Kueue LocalQueue: every stage Job carries `kueue.x-k8s.io/queue-name` and is created suspended "
        "until Kueue admits it.",
    )
    termination_grace_period_seconds: int = Field(
        300, ge=10, le=3600,
        description="How long a stage pod may take to save a checkpoint after SIGTERM (suspend, eviction) before it "
        "is killed.",
    )
    stages: list[Stage] = Field(..., min_length=1, max_length=MAX_STAGES, description="The stages; they form a DAG.")
    checkpoints: CheckpointRetention | None = Field(
        None, description="Retention of finished stages' checkpoints. Default: keep what the trainer's rotation left."
    )
    tracking: TrackingSpec | None = Field(
        None, description="Experiment tracking: TensorBoard event files per stage attempt, MLflow runs per stage.")
    env: list[EnvVar] | None = Field(
        None, max_length=MAX_ENV, description="Environment of every stage pod and of the initializer (Kubernetes "
        "EnvVar), e.g. HF_TOKEN from a Secret (`valueFrom.secretKeyRef`), AWS_ENDPOINT_URL for an S3-compatible store.",
    )
    env_from: list[EnvFromSource] | None = Field(
        None, max_length=16, description="Secrets/ConfigMaps whose keys become every stage pod's environment "
        "(e.g. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).",
    )
    volumes: list[Volume] | None = Field(
        None, max_length=16, description="Extra volumes (a shared model cache, a dataset volume) that stages mount "
        "with `volumeMounts`.",
    )
    export: ExportSpec | None = Field(
        None, description="Copy one stage's model with a generated model card once every stage (and gate) succeeded."
    )

    @field_validator("stages")
    @classmethod
    def _graph_is_valid(cls, stages: list[Stage]) -> list[Stage]:
        problems = stage_graph_problems(stages)
        if problems:
            raise ValueError("; ".join(problems))
        return stages

    @model_validator(mode="after")
    def _shared_volume_for_multi_node(self) -> PipelineSpec:
        # Each pod of a multi-node stage mounts the volume from its own node: a ReadWriteOnce claim
        # the operator creates would leave every pod but the first stuck on "Multi-Attach error".
        # An existing `claimName` cannot be checked here (its access modes are the cluster's).
        claim = self.storage.claim
        wide = any(s.resources.nodes > 1 for s in self.stages)
        if claim is not None and wide and "ReadWriteMany" not in claim.access_modes:
            raise ValueError(SHARED_VOLUME_MESSAGE)
        return self

    @model_validator(mode="after")
    def _mounts_name_volumes(self) -> PipelineSpec:
        known = {v.name for v in self.volumes or ()}
        for i, stage in enumerate(self.stages):
            for mount in stage.volume_mounts or ():
                if mount.name not in known:
                    raise ValueError(f"stages[{i}].volumeMounts: no volume named {mount.name!r} in spec.volumes")
        return self

    @model_validator(mode="after")
    def _export_fits(self) -> PipelineSpec:
        names = {s.name: s for s in self.stages}
        if any(s.type == StageType.export for s in self.stages):
            raise ValueError("stages[].type `export` is not written as a stage: set spec.export instead")
        if self.export is None:
            return self
        if EXPORT_STAGE in names:
            raise ValueError(f"spec.export: a stage named {EXPORT_STAGE!r} clashes with the export's own step; rename it")
        target = names.get(self.export.stage)
        if target is None:
            raise ValueError(f"spec.export.stage: no stage named {self.export.stage!r}")
        if target.type in (StageType.reward, StageType.eval):
            raise ValueError(f"spec.export.stage: {self.export.stage!r} is a {target.type} stage; export a language "
                             "model (pretrain, sft, rlhf or dpo)")
        return self

    def export_stage(self) -> Stage | None:
        """spec.export as the step the planner runs last: it depends on every stage, so it starts only
        after all of them (and their gates) succeeded; it reads the exported stage's model (`from`)."""
        if self.export is None:
            return None
        return Stage(name=EXPORT_STAGE, type=StageType.export, from_=self.export.stage,
                     depends_on=[s.name for s in self.stages], resources=Resources(gpus=0),
                     retries=Retries(application=1, infrastructure=3))

    @property
    def run_stages(self) -> list[Stage]:
        """Everything the planner runs: the stages, then the export step when there is one."""
        export = self.export_stage()
        return [*self.stages, export] if export else list(self.stages)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.run_stages if s.name == name)


class ObjectMeta(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")
    name: str = Field(..., min_length=1, max_length=63, pattern=DNS_LABEL)
    namespace: str | None = None
    generation: int | None = None
    uid: str | None = None


class TrainingPipeline(ApiModel):
    api_version: Literal["refinery.dev/v1alpha1"] = Field(API_VERSION, description="refinery.dev/v1alpha1")
    kind: Literal["TrainingPipeline"] = KIND
    metadata: ObjectMeta
    spec: PipelineSpec
    status: PipelineStatus | None = None

    def check(self) -> TrainingPipeline:
        """Run `refinery validate`'s checks offline — the CRD's schema and CEL rules as the API
        server applies them, then the operator's own — and return the pipeline; InvalidManifest
        (api/load.py) lists every problem with its field otherwise."""
        from .load import parse_pipeline

        return parse_pipeline(self.model_copy(update={"status": None}).dump(), f"pipeline {self.metadata.name!r}")

    def to_yaml(self) -> str:
        """The manifest (`kubectl apply -f`, `refinery run`): camelCase, no status, and only the fields
        that were set (defaults apply again when it is read)."""
        import yaml

        fields = self.model_dump(by_alias=True, exclude_unset=True, exclude_none=True, mode="json", exclude={"status"})
        return yaml.safe_dump({"apiVersion": self.api_version, "kind": self.kind, **fields}, sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> TrainingPipeline:
        """One pipeline from YAML text, checked as `check()` does."""
        import yaml

        from .load import parse_pipeline

        return parse_pipeline(yaml.safe_load(text), "YAML text")


