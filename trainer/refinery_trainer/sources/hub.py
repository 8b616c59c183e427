"""hf:// sources with huggingface_hub: a model repo, or files of a dataset repo, at a revision.

`snapshot_download` resolves the revision to a commit and fills the hub cache (`HF_HUB_CACHE`
when set — for instance a shared cache volume — else `<pipeline>/sources/.hub-cache`); it honours
`HF_TOKEN`, `HF_ENDPOINT` and `HF_HUB_OFFLINE` (then only the cache is read). Every file is then
checked against the hash the cache names its blob by (the LFS sha256, or the git blob sha1 of a
small file) — a cache or download that does not match its revision fails — and linked (or
copied) into the source's `files/` folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from refinery.api.sources import SourceRef, matches

from ..errors import SourceError
from .store import Fetched

CHUNK = 1 << 20


def fetch(ref: SourceRef, dest: Path, cache_dir: Path) -> Fetched:
    """Download (or find in the cache) the source's files into `dest`. Raises SourceError."""
    snapshot = _snapshot(ref, cache_dir)
    commit = Path(snapshot).name
    if ref.revision and len(ref.revision) == 40 and ref.revision != commit:
        raise SourceError(f"{ref.uri}: pinned to commit {ref.revision} but the hub returned {commit}")
    fetched = Fetched(resolved=commit)
    for path in sorted(Path(snapshot).rglob("*")):
        if path.is_dir():
            continue
        name = path.relative_to(snapshot).as_posix()
        if name == ".gitattributes" or not matches(ref, name):  # offline, the whole cached snapshot comes back
            continue
        tag = _verified(ref, name, path)
        _place(path, dest / name)
        fetched.files[name] = (path.stat().st_size, tag)
    if not fetched.files:
        raise SourceError(f"{ref.uri}: no files match in {ref.repo} at {commit}")
    return fetched


def _snapshot(ref: SourceRef, cache_dir: Path) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hub

    dataset = ref.kind == "hf-dataset"
    try:
        return snapshot_download(
            ref.repo, repo_type="dataset" if dataset else "model", revision=ref.revision,
            cache_dir=os.environ.get("HF_HUB_CACHE") or str(cache_dir),
            allow_patterns=ref.pattern if dataset and ref.pattern else None, ignore_patterns=[".gitattributes"],
        )
    except hub.GatedRepoError:
        raise SourceError(f"{ref.uri}: the repository is gated: accept its terms on the hub and give the pod an "
                          "HF_TOKEN that may read it (env/envFrom)") from None
    except hub.RevisionNotFoundError:
        raise SourceError(f"{ref.uri}: revision {ref.revision!r} not found in {ref.repo}") from None
    except hub.RepositoryNotFoundError:
        raise SourceError(f"{ref.uri}: repository {ref.repo!r} not found, or private and the pod's HF_TOKEN "
                          "(env/envFrom) does not grant access") from None
    except (hub.LocalEntryNotFoundError, hub.IncompleteSnapshotError):
        if _offline():
            raise SourceError(f"{ref.uri}: not in the hub cache, and HF_HUB_OFFLINE is set (revision "
                              f"{ref.revision or 'main'})") from None
        raise SourceError(f"{ref.uri}: cannot reach the hub", transient=True) from None
    except hub.HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", 0) or 0
        raise SourceError(f"{ref.uri}: hub error HTTP {status}", transient=status >= 500 or status == 429) from None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _verified(ref: SourceRef, name: str, path: Path) -> str:
    """The file's hash, checked against the one its cache blob is named by."""
    expected = Path(os.path.realpath(path)).name
    if len(expected) == 64:
        got = _hash(path, hashlib.sha256())
    elif len(expected) == 40:  # a git blob id: sha1 of "blob <size>\0" + content
        got = _hash(path, hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False))
    else:
        raise SourceError(f"{ref.uri}: {name} in the hub cache is not a blob named by its hash; cannot verify it")
    if got != expected:
        raise SourceError(f"{ref.uri}: {name} does not match its hash at this revision (expected {expected}, got "
                          f"{got}): the cached or downloaded copy changed; delete it from the hub cache")
    return got


def _hash(path: Path, digest) -> str:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _place(src: Path, dst: Path) -> None:
    """A hard link to the cached blob when on the same filesystem (no second copy), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(os.path.realpath(src), dst)
    except OSError:
        shutil.copyfile(src, dst)
