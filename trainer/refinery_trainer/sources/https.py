"""https:// sources: one file, streamed with urllib3 (which boto3 already brings).

What is verified: with a digest on the source (`https://host/f.jsonl#sha256=<hex>`), the
file's SHA-256 — a mismatch fails the fetch, and the digest, part of the URI, also names the
fetched copy's folder, so a new digest fetches again. Without one, only the length (a body
shorter than its Content-Length is a partial download) and TLS; the SHA-256 of what arrived is
recorded as what the source resolved to (`status.sources[].resolved`, `sha256:<hex>`), so the
exact bytes a model was trained on are known afterwards. 403/404/410 are the user's to fix;
5xx, 429 and network errors are worth retrying.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from refinery.api.sources import SourceRef, display_uri

from ..errors import SourceError
from .store import Fetched

CHUNK = 1 << 20
TIMEOUT_S = 30.0


def fetch(ref: SourceRef, dest: Path, name: str) -> Fetched:
    import urllib3

    shown = display_uri(ref.uri)
    path = dest / name
    http = urllib3.PoolManager(retries=urllib3.Retry(total=3, redirect=5, status_forcelist=()), timeout=TIMEOUT_S)
    try:
        response = http.request("GET", ref.url, preload_content=False, redirect=True)
        try:
            if response.status >= 400:
                what = {403: "access denied", 404: "not found", 410: "gone"}.get(response.status, "failed")
                raise SourceError(f"{shown}: {what} (HTTP {response.status})",
                                  transient=response.status >= 500 or response.status == 429)
            got, sha256 = 0, hashlib.sha256()
            with open(path, "wb") as out:
                for chunk in response.stream(CHUNK):  # raises when the body ends before Content-Length
                    out.write(chunk)
                    sha256.update(chunk)
                    got += len(chunk)
            tag = (response.headers.get("etag") or response.headers.get("last-modified") or "").strip('"')
        finally:
            response.release_conn()
    except urllib3.exceptions.ProtocolError as err:  # the server hung up before the body ended
        raise SourceError(f"{shown}: partial download ({type(err).__name__})", transient=True) from None
    except urllib3.exceptions.HTTPError as err:
        raise SourceError(f"{shown}: cannot download: {type(err).__name__}", transient=True) from None
    expected = response.headers.get("content-length")
    if expected is not None and got != int(expected):
        raise SourceError(f"{shown}: partial download: {got} of {expected} bytes", transient=True)
    if ref.sha256 is not None and sha256.hexdigest() != ref.sha256:
        raise SourceError(f"{shown}: the downloaded file's SHA-256 is {sha256.hexdigest()}, not the {ref.sha256} the "
                          "source names: the file changed, or the digest is wrong")
    return Fetched(resolved=f"sha256:{sha256.hexdigest()}", files={name: (got, tag or f"sha256:{sha256.hexdigest()}")})
