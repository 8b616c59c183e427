"""Pod settings users give stage pods (and the pipeline's initializer): environment variables,
`envFrom`, volumes and their mounts — in Kubernetes' own shapes (a subset of core/v1), so
credentials such as HF_TOKEN or AWS_* reach pods only as references to Secrets.

    spec:
      env:
        - name: HF_TOKEN
          valueFrom: {secretKeyRef: {name: hub, key: token}}
      envFrom:
        - secretRef: {name: s3-credentials}       # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
      volumes:
        - name: models
          persistentVolumeClaim: {claimName: shared-model-cache, readOnly: true}
      stages:
        - name: sft
          volumeMounts: [{name: models, mountPath: /models, readOnly: true}]
"""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import ApiModel
from .credentials import env_secret_problem

ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
RESERVED_ENV_PREFIX = "REFINERY_"  # the operator's own variables (identity of the attempt)
RESERVED_VOLUMES = ("workspace", "stage-config", "tmp", "dshm")
RESERVED_MOUNTS = ("/workspace", "/etc/refinery", "/tmp", "/dev/shm")
MAX_ENV = 64
NAME = Field(..., min_length=1, max_length=253, description="Name of the object in the pipeline's namespace.")


class KeyRef(ApiModel):
    name: str = NAME
    key: str = Field(..., min_length=1, max_length=253, description="Key in the object's data.")
    optional: bool | None = Field(None, description="Whether the pod starts when the object or key is missing.")


class FieldRef(ApiModel):
    field_path: str = Field(..., min_length=1, max_length=253, description="e.g. metadata.name, metadata.namespace.")


class EnvVarSource(ApiModel):
    secret_key_ref: KeyRef | None = Field(None, description="A key of a Secret.")
    config_map_key_ref: KeyRef | None = Field(None, description="A key of a ConfigMap.")
    field_ref: FieldRef | None = Field(None, description="A field of the pod.")

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        if sum(x is not None for x in (self.secret_key_ref, self.config_map_key_ref, self.field_ref)) != 1:
            raise ValueError("set exactly one of secretKeyRef, configMapKeyRef, fieldRef")
        return self


class EnvVar(ApiModel):
    """One environment variable (core/v1 EnvVar): a literal value, or a reference (`valueFrom`)."""

    name: str = Field(..., min_length=1, max_length=253, pattern=ENV_NAME, description="Variable name.")
    value: str | None = Field(None, max_length=32768, description="A literal value (not for secrets: use valueFrom).")
    value_from: EnvVarSource | None = Field(None, description="A Secret or ConfigMap key, or a field of the pod.")

    @model_validator(mode="after")
    def _value_or_reference(self) -> EnvVar:
        if (self.value is None) == (self.value_from is None):
            raise ValueError(f"env {self.name}: set exactly one of value or valueFrom")
        if self.name.startswith(RESERVED_ENV_PREFIX):
            raise ValueError(f"env {self.name}: names starting with {RESERVED_ENV_PREFIX} are the operator's")
        if problem := env_secret_problem(self.name, self.value):
            raise ValueError(problem)
        return self


class ObjectRef(ApiModel):
    name: str = NAME
    optional: bool | None = Field(None, description="Whether the pod starts when the object is missing.")


class EnvFromSource(ApiModel):
    """Every key of a Secret or ConfigMap as environment variables (core/v1 EnvFromSource)."""

    prefix: str | None = Field(None, max_length=253, pattern=ENV_NAME, description="Prepended to every key.")
    secret_ref: ObjectRef | None = Field(None, description="A Secret.")
    config_map_ref: ObjectRef | None = Field(None, description="A ConfigMap.")

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvFromSource:
        if (self.secret_ref is None) == (self.config_map_ref is None):
            raise ValueError("envFrom: set exactly one of secretRef or configMapRef")
        return self


class PvcSource(ApiModel):
    claim_name: str = Field(..., min_length=1, max_length=253, description="A PersistentVolumeClaim in the namespace.")
    read_only: bool | None = Field(None, description="Mount read-only.")


class SecretSource(ApiModel):
    secret_name: str = Field(..., min_length=1, max_length=253, description="A Secret in the namespace.")
    optional: bool | None = Field(None, description="Whether the pod starts when the Secret is missing.")


class ConfigMapSource(ApiModel):
    name: str = NAME
    optional: bool | None = Field(None, description="Whether the pod starts when the ConfigMap is missing.")


class EmptyDirSource(ApiModel):
    medium: str | None = Field(None, max_length=16, description="`Memory` for a tmpfs.")
    size_limit: str | None = Field(None, max_length=32, pattern=r"^[0-9]+([EPTGMK]i?)?$", description="e.g. 10Gi.")


class NfsSource(ApiModel):
    server: str = Field(..., min_length=1, max_length=253, description="NFS server host.")
    path: str = Field(..., min_length=1, max_length=1024, description="Exported path.")
    read_only: bool | None = Field(None, description="Mount read-only.")


class Volume(ApiModel):
    """A volume of the pods (core/v1 Volume: the kinds a dataset or model cache lives on). No
    hostPath: a pipeline must not reach into its nodes."""

    name: str = Field(..., min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                      description="Name that `volumeMounts` refer to.")
    persistent_volume_claim: PvcSource | None = Field(None, description="A PersistentVolumeClaim.")
    secret: SecretSource | None = Field(None, description="A Secret's keys as files.")
    config_map: ConfigMapSource | None = Field(None, description="A ConfigMap's keys as files.")
    empty_dir: EmptyDirSource | None = Field(None, description="Scratch space that lives as long as the pod.")
    nfs: NfsSource | None = Field(None, description="An NFS export.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Volume:
        kinds = (self.persistent_volume_claim, self.secret, self.config_map, self.empty_dir, self.nfs)
        if sum(k is not None for k in kinds) != 1:
            raise ValueError(f"volume {self.name}: set exactly one of persistentVolumeClaim, secret, configMap, emptyDir, nfs")
        if self.name in RESERVED_VOLUMES:
            raise ValueError(f"volume {self.name}: the name is the operator's ({', '.join(RESERVED_VOLUMES)})")
        return self


class VolumeMount(ApiModel):
    name: str = Field(..., min_length=1, max_length=63, description="A volume of `spec.volumes`.")
    mount_path: str = Field(..., min_length=2, max_length=1024, pattern=r"^/", description="Where, in the container.")
    read_only: bool | None = Field(None, description="Mount read-only.")
    sub_path: str | None = Field(None, max_length=1024, description="A path inside the volume.")

    @model_validator(mode="after")
    def _not_ours(self) -> VolumeMount:
        path = self.mount_path.rstrip("/")
        if any(path == r or path.startswith(r + "/") for r in RESERVED_MOUNTS):
            raise ValueError(f"volumeMount {self.name}: {self.mount_path} is the operator's ({', '.join(RESERVED_MOUNTS)})")
        return self
