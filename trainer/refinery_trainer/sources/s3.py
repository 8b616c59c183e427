"""s3:// sources with boto3: one object, every object under a prefix, or those matching a glob.

The endpoint and credentials come from boto3's own configuration: `AWS_ENDPOINT_URL_S3` or
`AWS_ENDPOINT_URL` (MinIO, Ceph, GCS interop), `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, a
profile or an IAM role. Each object is listed first, then read with `IfMatch` on the listed
ETag, so an object replaced between the listing and the read fails the fetch instead of
mixing two versions.

What is verified, end to end, of every object (a mismatch fails the fetch, naming the object):
- its ETag: a single-part object's is the MD5 of its bytes; a multipart object's (`<md5>-<N>`,
  e.g. anything over 8 MB the AWS CLI uploads) is the MD5 of its N parts' MD5s, recomputed from
  the downloaded file with the part sizes S3 reports (`HeadObject PartNumber`);
- S3's own checksum when the object has a full-object one (CRC32/CRC32C/CRC64NVME/SHA1/SHA256,
  read with `ChecksumMode=ENABLED`): botocore checks it while streaming. Composite checksums of
  multipart uploads are covered by the multipart ETag instead.
A store that reports no part sizes leaves a multipart object checked by its length only (logged).
(SSE-KMS and SSE-C objects' ETags are not MD5s: such stores are not supported yet.)
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from refinery.api.sources import SourceRef, matches

from ..errors import SourceError
from .store import Fetched

_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "Forbidden"}
_CHANGED = {"412", "PreconditionFailed"}
CHUNK = 1 << 20
log = logging.getLogger(__name__)


def client():
    import boto3
    from botocore.config import Config

    # boto3 reads AWS_ENDPOINT_URL(_S3) itself; "standard" retries cover throttling and 5xx. A new
    # session each time: the default one keeps the credentials it resolved first.
    return boto3.session.Session().client("s3", config=Config(retries={"mode": "standard", "max_attempts": 4}))


def list_objects(s3, ref: SourceRef) -> dict[str, tuple[int, str, str | None]]:
    """key → (size, ETag, version id) of every object the source names. Raises SourceError."""
    if ref.single_file:
        head = s3.head_object(Bucket=ref.bucket, Key=ref.key)
        return {ref.key: (head["ContentLength"], head["ETag"].strip('"'), head.get("VersionId"))}
    prefix = _prefix(ref.key)
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=ref.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if matches(ref, obj["Key"]) and not obj["Key"].endswith("/"):
                found[obj["Key"]] = (obj["Size"], obj["ETag"].strip('"'), None)
    if not found:
        raise SourceError(f"{ref.uri}: no objects match (bucket {ref.bucket!r}, prefix {prefix!r})")
    return found


def fetch(ref: SourceRef, dest: Path) -> Fetched:
    """Download the source's objects into `dest` (keys relative to the prefix). Raises SourceError."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

    try:
        s3 = client()
        objects = list_objects(s3, ref)
        prefix = _prefix(ref.key)
        base = prefix[: prefix.rfind("/") + 1]  # files keep their names below the prefix's folder
        fetched = Fetched(resolved="")
        for key, (size, etag, version) in sorted(objects.items()):
            name = key.rsplit("/", 1)[-1] if ref.single_file else key[len(base):]
            _download(s3, ref, key, size, etag, dest / name)
            fetched.files[name] = (size, version or etag)
        fetched.resolved = _resolved(fetched)
        return fetched
    except ClientError as err:
        raise _source_error(ref, err) from None
    except (NoCredentialsError, PartialCredentialsError):
        raise SourceError(f"{ref.uri}: no AWS credentials: give the pods AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                          "(spec.envFrom a Secret) or a role") from None
    except BotoCoreError as err:  # no connection, timeout, bad endpoint: worth retrying
        raise SourceError(f"{ref.uri}: cannot reach the S3 endpoint: {type(err).__name__}", transient=True) from None


def _prefix(key: str) -> str:
    """The literal start of a key or glob: what S3 can list by."""
    return key.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0]


def _download(s3, ref: SourceRef, key: str, size: int, etag: str, path: Path) -> None:
    from botocore.exceptions import FlexibleChecksumError

    path.parent.mkdir(parents=True, exist_ok=True)
    body = s3.get_object(Bucket=ref.bucket, Key=key, IfMatch=f'"{etag}"', ChecksumMode="ENABLED")["Body"]
    md5, got = hashlib.md5(usedforsecurity=False), 0
    try:
        with open(path, "wb") as out:
            while chunk := body.read(CHUNK):
                out.write(chunk)
                md5.update(chunk)
                got += len(chunk)
    except FlexibleChecksumError as err:  # S3's own full-object checksum, checked by botocore at the end
        raise SourceError(f"{ref.uri}: s3://{ref.bucket}/{key} does not match its S3 checksum: {err}") from None
    if got != size:
        raise SourceError(f"{ref.uri}: partial download of s3://{ref.bucket}/{key}: {got} of {size} bytes", transient=True)
    if "-" not in etag:
        if md5.hexdigest() != etag:
            raise SourceError(f"{ref.uri}: s3://{ref.bucket}/{key} does not match its ETag {etag} (MD5 {md5.hexdigest()})")
        return
    computed = multipart_etag(path, part_sizes(s3, ref.bucket, key, etag, size))
    if computed is not None and computed != etag:  # parts of uneven sizes: ask for each one
        computed = multipart_etag(path, part_sizes(s3, ref.bucket, key, etag, size, exact=True))
    if computed is None:
        log.warning("s3://%s/%s: the store reports no part sizes; a multipart object checked by its length only", ref.bucket, key)
    elif computed != etag:
        raise SourceError(f"{ref.uri}: s3://{ref.bucket}/{key} does not match its multipart ETag {etag} "
                          f"(recomputed from the downloaded parts: {computed})")


def part_sizes(s3, bucket: str, key: str, etag: str, size: int, exact: bool = False) -> list[int] | None:
    """The sizes of a multipart object's parts: the first part's size for all but the last (as
    uploaders do: one request), or, `exact`, each part's own (`HeadObject PartNumber`, one request
    a part). None: the store cannot say."""
    from botocore.exceptions import ClientError

    count = int(etag.rsplit("-", 1)[1])
    try:
        first = s3.head_object(Bucket=bucket, Key=key, PartNumber=1, IfMatch=f'"{etag}"')["ContentLength"]
        if not exact and first * (count - 1) < size <= first * count:
            return [first] * (count - 1) + [size - first * (count - 1)]
        return [s3.head_object(Bucket=bucket, Key=key, PartNumber=i, IfMatch=f'"{etag}"')["ContentLength"]
                for i in range(1, count + 1)]
    except ClientError as err:
        if str(err.response.get("Error", {}).get("Code", "")) in _CHANGED:
            raise
        return None


def multipart_etag(path: Path, sizes: list[int] | None) -> str | None:
    """S3's ETag of a multipart upload with these part sizes: MD5 of the parts' MD5s, `-<count>`."""
    if sizes is None:
        return None
    digests = b""
    with open(path, "rb") as f:
        for size in sizes:
            md5, left = hashlib.md5(usedforsecurity=False), size
            while left and (chunk := f.read(min(CHUNK, left))):
                md5.update(chunk)
                left -= len(chunk)
            digests += md5.digest()
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(sizes)}"


def _resolved(fetched: Fetched) -> str:
    """One object: its ETag (or version id). Several: a hash over their names and ETags."""
    if len(fetched.files) == 1:
        return next(iter(fetched.files.values()))[1]
    digest = hashlib.sha256("\n".join(f"{k} {t}" for k, (_, t) in sorted(fetched.files.items())).encode())
    return f"sha256:{digest.hexdigest()[:16]} of {len(fetched.files)} ETags"


def _source_error(ref: SourceRef, err) -> SourceError:
    code = str(err.response.get("Error", {}).get("Code", ""))
    status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in _NOT_FOUND or status == 404:
        return SourceError(f"{ref.uri}: not found (S3 {code or status}): check the bucket and key")
    if code in _DENIED or status == 403:
        return SourceError(f"{ref.uri}: access denied (S3 {code or status}): the pod's AWS credentials (env/envFrom) "
                           "may not read it")
    if code in _CHANGED or status == 412:
        return SourceError(f"{ref.uri}: an object changed while it was being fetched; fetch again for a consistent copy")
    transient = status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable")
    return SourceError(f"{ref.uri}: S3 error {code or status}", transient=transient)
