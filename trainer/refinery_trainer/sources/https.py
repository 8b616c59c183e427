"""https:// sources: one file, streamed with httpx (a dependency of huggingface_hub).

The response's ETag (else Last-Modified) is what the source resolved to; a body shorter than
its Content-Length is a partial download. 403/404/410 are the user's to fix; 5xx, 429 and
network errors are worth retrying.
"""

from __future__ import annotations

from pathlib import Path

from refinery_operator.api.sources import SourceRef, display_uri

from ..errors import SourceError
from .store import Fetched

CHUNK = 1 << 20
TIMEOUT_S = 30.0


def fetch(ref: SourceRef, dest: Path, name: str) -> Fetched:
    import httpx

    shown = display_uri(ref.uri)
    path = dest / name
    try:
        with httpx.stream("GET", ref.uri, follow_redirects=True, timeout=TIMEOUT_S) as response:
            if response.status_code >= 400:
                transient = response.status_code >= 500 or response.status_code == 429
                what = {403: "access denied", 404: "not found", 410: "gone"}.get(response.status_code, "failed")
                raise SourceError(f"{shown}: {what} (HTTP {response.status_code})", transient=transient)
            expected = response.headers.get("content-length")
            got = 0
            with open(path, "wb") as out:
                for chunk in response.iter_bytes(CHUNK):
                    out.write(chunk)
                    got += len(chunk)
            tag = (response.headers.get("etag") or response.headers.get("last-modified") or "").strip('"')
    except httpx.RemoteProtocolError as err:  # the server closed the connection before the body ended
        raise SourceError(f"{shown}: partial download ({type(err).__name__})", transient=True) from None
    except httpx.HTTPError as err:
        raise SourceError(f"{shown}: cannot download: {type(err).__name__}", transient=True) from None
    if expected is not None and got != int(expected):
        raise SourceError(f"{shown}: partial download: {got} of {expected} bytes", transient=True)
    return Fetched(resolved=tag or f"{got} bytes", files={name: (got, tag)})
