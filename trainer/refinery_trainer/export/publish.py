"""Where an export goes: a folder (on the volume), an S3 prefix, or a Hugging Face Hub repo.

    publish(bundle_dir, "s3://models/tiny-chat/rlhf")   # boto3; endpoint/keys from the environment
    publish(bundle_dir, "hf://my-org/tiny-chat")         # huggingface_hub; HF_TOKEN; private by default
    publish(bundle_dir, "/workspace/exports/tiny-chat")  # a folder: replaced atomically

Credentials only ever come from the environment (a Secret through `spec.export.credentialsSecret`
on a cluster); errors are reported without them (the messages of boto3 and huggingface_hub name
the bucket or repo, never a key).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import StageError

REASON_EXPORT_FAILED = "ExportFailed"


def publish(bundle: Path, destination: str, *, private: bool = True, resolve=Path) -> str:
    """Copy every file of `bundle` to `destination`; returns the destination as written."""
    if destination.startswith("s3://"):
        return to_s3(bundle, destination)
    if destination.startswith("hf://"):
        return to_hub(bundle, destination, private=private)
    if "://" in destination:
        raise StageError(f"export destination {destination!r}: use s3://, hf:// or a folder path", REASON_EXPORT_FAILED)
    return to_folder(bundle, resolve(destination))


def to_folder(bundle: Path, target: Path) -> str:
    """Copied beside the target, then renamed into place: a reader never sees half an export."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(bundle, tmp)
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return str(target)


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise StageError(f"export destination {uri!r}: no bucket (s3://bucket/prefix)", REASON_EXPORT_FAILED)
    return bucket, prefix.strip("/")


def to_s3(bundle: Path, uri: str) -> str:
    """Upload each file under the prefix (boto3 reads AWS_ENDPOINT_URL, keys and region from the env)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3(uri)
    client = boto3.client("s3")
    try:
        for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
            key = "/".join(filter(None, [prefix, path.relative_to(bundle).as_posix()]))
            client.upload_file(str(path), bucket, key)
    except (BotoCoreError, ClientError) as exc:
        raise StageError(f"export to {uri} failed: {exc}", REASON_EXPORT_FAILED) from None
    return uri


def to_hub(bundle: Path, uri: str, *, private: bool) -> str:
    """Create the repo (private unless `private` is false) and upload the folder as one commit."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    repo = uri.removeprefix("hf://").strip("/")
    if repo.count("/") != 1:
        raise StageError(f"export destination {uri!r}: expected hf://<org>/<name>", REASON_EXPORT_FAILED)
    api = HfApi()  # HF_TOKEN from the environment
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo, folder_path=str(bundle), commit_message="Export from Refinery")
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise StageError(f"export to {uri} failed: {type(exc).__name__}: {str(exc)[:300]}", REASON_EXPORT_FAILED) from None
    return uri
