"""Source URIs: where a stage's model, tokenizer or data files come from.

    hf://<org>/<name>[@<revision>]                              a model (or tokenizer) repo on the Hub
    hf://datasets/<org>/<name>[@<revision>]/<file or glob>      files of a dataset repo
    s3://<bucket>/<key | prefix/ | glob>                        an S3-compatible store (AWS_ENDPOINT_URL[_S3])
    https://host/path[#sha256=<64 hex digits>]                  one file (with a digest: checked)
    data/sft.jsonl                                              a path on the volume (as before)

A remote source is fetched once per pipeline into `<pipeline>/sources/<key>/` (the key is a hash
of the URI, which carries the revision), and stages read that copy. Pure: parsing and naming
only; the trainer's `refinery_trainer.sources` does the fetching.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from pydantic import Field

from .base import ApiModel
from .credentials import uri_credential_problem

SCHEMES = ("hf://", "s3://", "https://")
SOURCES_DIR = "sources"
SOURCE_MARKER = "refinery-source-complete.json"  # written last, like a checkpoint's marker
FILES_DIR = "files"  # the fetched files, below the source's folder
UNKNOWN_SCHEME_MESSAGE = "a source is a path on the volume or a URI starting with hf://, s3:// or https://"
# The same check as `check_uri`, for the CRD (x-kubernetes-validations on the fields' parents).
CEL_KNOWN_SCHEME = "!{f}.contains('://') || {f}.startsWith('hf://') || {f}.startsWith('s3://') || {f}.startsWith('https://')"

SourceKind = Literal["hf-model", "hf-dataset", "s3", "https", "path"]
_HF_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_HF_MODEL = re.compile(rf"^hf://(?P<repo>{_HF_NAME}(?:/{_HF_NAME})?)(?:@(?P<rev>[^/@]+))?/?$")
_HF_DATASET = re.compile(rf"^hf://datasets/(?P<repo>{_HF_NAME}/{_HF_NAME})(?:@(?P<rev>[^/@]+))?(?:/(?P<pattern>.+))?$")
_S3 = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<key>.*))?$")
_GLOB_CHARS = "*?["
_SHA256 = re.compile(r"^sha256=(?P<hex>[0-9a-f]{64})$")


@dataclass(frozen=True)
class SourceRef:
    """One parsed source URI."""

    uri: str
    kind: SourceKind
    repo: str | None = None  # hf: org/name
    revision: str | None = None  # hf: branch, tag or commit (None: main)
    pattern: str | None = None  # hf dataset: file or glob in the repo
    bucket: str | None = None  # s3
    key: str | None = None  # s3: a key, a prefix (ending in "/", or empty) or a glob
    sha256: str | None = None  # https: the digest the file must have (`#sha256=<hex>`)

    @property
    def url(self) -> str:
        """What is requested: the URI without its `#sha256=` fragment (never sent to a server)."""
        return self.uri.split("#", 1)[0]

    @property
    def remote(self) -> bool:
        return self.kind != "path"

    @property
    def is_glob(self) -> bool:
        return any(c in (self.pattern or self.key or "") for c in _GLOB_CHARS)

    @property
    def single_file(self) -> bool:
        """Whether the source names one file (a stage then reads that file, not a folder)."""
        if self.kind == "https":
            return True
        if self.kind == "hf-dataset":
            return bool(self.pattern) and not self.is_glob
        if self.kind == "s3":
            return bool(self.key) and not self.key.endswith("/") and not self.is_glob
        return False


class SourceUriError(ValueError):
    pass


def check_uri(value: str) -> str:
    """The URI itself when it parses; else SourceUriError with what is wrong (for validators)."""
    parse_source(value)
    return value


def parse_source(uri: str) -> SourceRef:
    """Parse a source; a value without `://` is a path on the volume. Raises SourceUriError."""
    if "://" not in uri:
        return SourceRef(uri, "path")
    if uri.startswith("hf://datasets/"):
        m = _HF_DATASET.match(uri)
        if not m:
            raise SourceUriError(f"{uri!r}: expected hf://datasets/<org>/<name>[@<revision>]/<file or glob>")
        return SourceRef(uri, "hf-dataset", repo=m["repo"], revision=m["rev"], pattern=m["pattern"])
    if uri.startswith("hf://"):
        m = _HF_MODEL.match(uri)
        if not m:
            raise SourceUriError(f"{uri!r}: expected hf://<org>/<name>[@<revision>]")
        return SourceRef(uri, "hf-model", repo=m["repo"], revision=m["rev"])
    if uri.startswith("s3://"):
        m = _S3.match(uri)
        if not m:
            raise SourceUriError(f"{uri!r}: expected s3://<bucket>/<key, prefix or glob> (a valid bucket name)")
        return SourceRef(uri, "s3", bucket=m["bucket"], key=m["key"] or "")
    if uri.startswith("https://"):
        url, hash_sign, fragment = uri.partition("#")
        if len(url) <= len("https://") or url.endswith("/"):
            raise SourceUriError(f"{uri!r}: an https:// source is one file (a URL that does not end in /)")
        digest = _SHA256.match(fragment) if hash_sign else None
        if hash_sign and not digest:
            raise SourceUriError(f"{uri!r}: the only fragment an https:// source takes is #sha256=<64 lowercase hex digits>")
        return SourceRef(uri, "https", sha256=digest["hex"] if digest else None)
    raise SourceUriError(f"{uri!r}: {UNKNOWN_SCHEME_MESSAGE}")


def display_uri(uri: str) -> str:
    """The URI as messages and status show it: no user:password@ and no query (a presigned URL's
    signature), which may carry credentials."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rsplit('@', 1)[-1]}{slash}{path.split('?', 1)[0]}"


def hub_uri(hub_id: str) -> str:
    """`model.hubId` (`org/name`, optionally `@rev`) as the hf:// URI it stands for."""
    return hub_id if hub_id.startswith("hf://") else f"hf://{hub_id}"


def source_key(uri: str) -> str:
    """The folder name of a fetched source: a hash of the URI (which carries the revision)."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def source_dir(pipeline_root_dir: str, uri: str) -> str:
    return str(PurePosixPath(pipeline_root_dir) / SOURCES_DIR / source_key(uri))


def fetched_path(pipeline_root_dir: str, ref: SourceRef) -> str:
    """What a stage reads for a fetched source: its one file, or the folder of its files."""
    files = PurePosixPath(source_dir(pipeline_root_dir, ref.uri)) / FILES_DIR
    return str(files / single_file_name(ref)) if ref.single_file else str(files)


def single_file_name(ref: SourceRef) -> str:
    """Where a single-file source lands below `files/`: its name in the repo, or the key's/URL's last part."""
    if ref.kind == "hf-dataset":
        return ref.pattern
    return ref.uri.split("#", 1)[0].split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def matches(ref: SourceRef, name: str) -> bool:
    """Whether a repo file (hf dataset) or object key (s3) belongs to the source."""
    selector = ref.pattern if ref.kind == "hf-dataset" else ref.key
    if not selector:
        return True
    if any(c in selector for c in _GLOB_CHARS):
        return fnmatch.fnmatchcase(name, selector)
    if ref.kind == "s3" and selector.endswith("/"):
        return name.startswith(selector)
    return name == selector or name.startswith(selector.rstrip("/") + "/")


@dataclass(frozen=True)
class StageSource:
    stage: str
    field: str  # e.g. "data.path", "model.tokenizer"
    ref: SourceRef


def checked_source(value: str | None) -> str | None:
    """A source URI with a known scheme and shape and no credential in it, or a plain path; else
    ValueError (pydantic's validators). The message never repeats the URI: it may hold a secret."""
    if value is not None:
        if problem := uri_credential_problem(value):
            raise ValueError(problem)
        try:
            parse_source(value)
        except SourceUriError as err:
            raise ValueError(str(err)) from None
    return value


def stage_sources(stage) -> list[StageSource]:
    """Every model, tokenizer and data source a stage names (a `Stage` of v1alpha1)."""
    found: list[tuple[str, str]] = []
    if stage.model is not None:
        if stage.model.path:
            found.append(("model.path", stage.model.path))
        if stage.model.hub_id:
            found.append(("model.hubId", hub_uri(stage.model.hub_id)))
        if stage.model.tokenizer:
            found.append(("model.tokenizer", stage.model.tokenizer))
    if stage.data is not None:  # an eval stage trains on nothing
        if stage.data.path is not None:
            found.append(("data.path", stage.data.path))
        found += [(f"data.mixture[{j}].path", m.path) for j, m in enumerate(stage.data.mixture or [])]
        if stage.data.eval_path:
            found.append(("data.evalPath", stage.data.eval_path))
    rl = getattr(stage, "rl", None)
    for field, sources in ((("rl.rewards", rl.rewards), ("rl.audit", rl.audit)) if rl is not None else ()):
        found += [(f"{field}[{j}].python.path", s.python.path) for j, s in enumerate(sources or []) if s.python]
    generate = stage.eval_.generate if getattr(stage, "eval_", None) is not None else None
    if generate is not None:  # an eval stage's held-out prompts and reference answers
        found.append(("eval.generate.path", generate.path))
        found += [(f"eval.generate.rewards[{j}].python.path", s.python.path)
                  for j, s in enumerate(generate.rewards or []) if s.python]
    return [StageSource(stage.name, f, parse_source(uri)) for f, uri in found]


def remote_sources(stages) -> list[SourceRef]:
    """The distinct remote sources of a pipeline's stages, in spec order."""
    seen: dict[str, SourceRef] = {}
    for stage in stages:
        for s in stage_sources(stage):
            if s.ref.remote:
                seen.setdefault(s.ref.uri, s.ref)
    return list(seen.values())


class SourceStatus(ApiModel):
    """What the pipeline's initializer fetched (or found already fetched) for one remote source."""

    uri: str = Field(..., description="The source as the spec names it.")
    resolved: str | None = Field(
        None, description="What it resolved to: the hub commit sha, the S3 ETag (or version id) of a single object, a "
        "hash of the ETags of several, or the SHA-256 of an https file (`sha256:<hex>`).",
    )
    path: str | None = Field(None, description="The fetched copy on the volume that stages read.")
    bytes: int = Field(0, description="Bytes fetched.")
    files: int = Field(0, description="Files fetched.")
    fetched_at: str | None = Field(None, description="When the fetch completed (RFC 3339).")
    duration_seconds: float = Field(0.0, description="How long the fetch took.")
