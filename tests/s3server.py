"""A real S3 API on 127.0.0.1 for tests: moto in server mode, with the server's own request log.

    server = start_moto_server()
    env = server.env()            # AWS_ENDPOINT_URL + test credentials, for boto3 and subprocesses
    ...
    server.gets("bucket", "key")  # how many GetObject requests the server answered for that object
    server.stop()

Clients talk to it over HTTP like any S3 store (no patched client). `enforce_auth()` uses moto's
own `/moto-api/reset-auth` endpoint: from then on, requests signed with keys moto's IAM does not
know are refused with 403, as a real store refuses bad credentials.
"""

from __future__ import annotations

import threading
import urllib.request
from dataclasses import dataclass, field

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

ACCESS_KEY = "testing"
SECRET_KEY = "testing-secret"
REGION = "us-east-1"


@dataclass
class Request:
    method: str
    path: str  # /bucket/key?query, as the client sent it (path-style addressing)
    status: int


@dataclass
class MotoServer:
    url: str
    log: list[Request] = field(default_factory=list)
    _server: object = None
    _thread: threading.Thread | None = None

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for boto3 (here or in a child process) to use this server."""
        return {
            "AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true", **extra,
        }

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def gets(self, bucket: str, key: str) -> int:
        """GetObject requests the server answered for s3://bucket/key (any status)."""
        path = f"/{bucket}/{key}"
        return sum(1 for r in self.log if r.method == "GET" and r.path.split("?", 1)[0] == path)

    def object_gets(self) -> dict[str, int]:
        """GetObject requests per /bucket/key (listings, which have no key, are left out)."""
        counts: dict[str, int] = {}
        for r in self.log:
            path = r.path.split("?", 1)[0]
            if r.method == "GET" and path.count("/") >= 2 and not path.endswith("/") and not path.startswith("/moto-api"):
                counts[path] = counts.get(path, 0) + 1
        return counts

    def enforce_auth(self, enforce: bool = True) -> None:
        body = b"0" if enforce else b"inf"
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset-auth", data=body, method="POST",
                                                      headers={"Content-Type": "text/plain"})).read()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)


def start_moto_server() -> MotoServer:
    """Start moto's S3 server on a free port of 127.0.0.1, recording every request it answers."""
    log: list[Request] = []

    class LoggingHandler(MotoRequestHandler):
        def log_request(self, code="-", size="-") -> None:  # werkzeug's access log, kept as data
            log.append(Request(self.command, self.path, int(getattr(code, "value", code))))

    server = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=True,
                         request_handler=LoggingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    return MotoServer(url=f"http://{host}:{port}", log=log, _server=server, _thread=thread)
