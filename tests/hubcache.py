"""A Hugging Face hub cache laid out as `huggingface_hub` writes it, for hf:// tests offline.

    commit = add_repo(cache, "acme/tiny", {"config.json": b"{...}", ...})
    # HF_HUB_CACHE=cache HF_HUB_OFFLINE=1: snapshot_download("acme/tiny", revision=commit) finds it

Layout (huggingface_hub's cache): `<type>s--<org>--<name>/blobs/<hash>` holds each file once,
named by its hash (the sha256 of LFS files, the git blob sha1 of small ones), `snapshots/<commit>/`
has relative symbolic links to the blobs, `refs/main` names the commit. What stays untested
offline: the hub's HTTP API itself (revision resolution of a branch over the network, auth).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".parquet")  # stored in LFS on the hub: blob named by sha256


def blob_name(name: str, data: bytes) -> str:
    if name.endswith(LFS_SUFFIXES):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def add_repo(cache: Path, repo_id: str, files: dict[str, bytes], repo_type: str = "model", ref: str = "main") -> str:
    """Put a repo snapshot into the cache; returns its (made-up, deterministic) commit sha."""
    storage = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(b"".join(n.encode() + d for n, d in sorted(files.items()))).hexdigest()
    for name, data in files.items():
        blob = storage / "blobs" / blob_name(name, data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = storage / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():  # the same files again: the same commit, already in place
            os.symlink(os.path.relpath(blob, link.parent), link)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / ref).write_text(commit)
    return commit


def add_folder(cache: Path, repo_id: str, folder: Path, repo_type: str = "model") -> str:
    """A saved model (or any folder) as a repo snapshot."""
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    return add_repo(cache, repo_id, files, repo_type)
