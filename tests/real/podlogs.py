"""The test node's kubelet log endpoint: what `kubectl logs` and `refinery logs` reach through the API server.

The API server answers `GET /api/v1/namespaces/NS/pods/POD/log` by calling the pod's node at
`https://<InternalIP>:<status.daemonEndpoints.kubeletEndpoint.Port>/containerLogs/NS/POD/CONTAINER`
(with `follow=true`, a stream). The test node runs pods as local processes whose output goes to
`log.txt`; this serves that file there, over TLS with a self-signed certificate (an API server
started without `--kubelet-certificate-authority` does not verify the kubelet's, as kubeadm's
default clusters). Not served: `previous`, `sinceSeconds`, `tailLines`, `timestamps`, `limitBytes`.
"""

from __future__ import annotations

import datetime
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

FOLLOW_POLL_S = 0.1


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (ECDSA P-256), written to `folder`."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-kubelet")])
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / "kubelet.crt", folder / "kubelet.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class PodLogServer:
    """`find(namespace, pod)` -> (log file, ended()) or None; serves /containerLogs on 127.0.0.1."""

    def __init__(self, find: Callable[[str, str], tuple[Path, Callable[[], bool]] | None], folder: Path) -> None:
        handler = type("Handler", (LogHandler,), {"find": staticmethod(find)})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*self_signed(folder))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="test-kubelet-logs")
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LogHandler(BaseHTTPRequestHandler):
    find: Callable[[str, str], tuple[Path, Callable[[], bool]] | None]

    def log_message(self, format, *args) -> None:  # noqa: A002 - quiet: no request log on stderr
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlparse(self.path)
        parts = url.path.strip("/").split("/")
        found = self.find(parts[1], parts[2]) if len(parts) >= 3 and parts[0] == "containerLogs" else None
        if found is None:
            self.send_error(404, "no such pod on this node")
            return
        path, ended = found
        follow = parse_qs(url.query).get("follow", ["false"])[0] == "true"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()  # HTTP/1.0: the body ends when the connection closes, so it can stream
        with open(path, "rb") as log:
            while True:
                chunk = log.read()
                if chunk:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    continue
                if not follow or ended():
                    self.wfile.write(log.read())
                    return
                time.sleep(FOLLOW_POLL_S)
