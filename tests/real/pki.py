"""The certificates of a test control plane (the shared launcher's set), made once per folder.

`make_pki(DIR/pki)`: a CA; kube-apiserver's serving certificate (127.0.0.1, localhost and the
in-cluster names); client certificates for the admin (`system:masters`), kube-controller-manager
(`system:kube-controller-manager`) and kube-apiserver's kubelet client; a front-proxy CA and its
client; `sa.key`/`sa.pub` for ServiceAccount tokens. ECDSA P-256 throughout (instant to make),
keys in PKCS#8 PEM as `openssl genpkey` writes them. With the `cryptography` package when it is
installed, else the `openssl` command. Written to a temporary folder and renamed into place, with
`.complete` inside, so an interrupted run leaves nothing half made.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from pathlib import Path

SERVER_NAMES = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local"]
SERVER_IPS = ["127.0.0.1", "10.0.0.1"]  # loopback and the first address of --service-cluster-ip-range
# name -> (subject as (O, CN), issuer, profile)
CERTIFICATES = {
    "ca": ((None, "refinery-k8s-ca"), None, "ca"),
    "apiserver": ((None, "kube-apiserver"), "ca", "server"),
    "admin": (("system:masters", "refinery-k8s-admin"), "ca", "client"),
    "controller-manager": ((None, "system:kube-controller-manager"), "ca", "client"),
    "apiserver-kubelet-client": (("system:masters", "kube-apiserver-kubelet-client"), "ca", "client"),
    "front-proxy-ca": ((None, "refinery-k8s-front-proxy-ca"), None, "ca"),
    "front-proxy-client": ((None, "front-proxy-client"), "front-proxy-ca", "client"),
}
DAYS = 3650


def make_pki(pki: Path) -> Path:
    """`pki` with every certificate and key in it (kept when complete already)."""
    if (pki / ".complete").exists():
        return pki
    if pki.exists():
        raise RuntimeError(f"{pki} exists but is incomplete or was not made here; remove it")
    new = pki.with_name(pki.name + ".new")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(mode=0o700, parents=True)
    try:
        import cryptography  # noqa: F401
    except ImportError:
        _with_openssl(new)
    else:
        _with_cryptography(new)
    for key in new.glob("*.key"):
        key.chmod(0o600)
    (new / ".complete").touch()
    new.rename(pki)
    return pki


def _with_cryptography(folder: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def write_key(name: str):
        key = ec.generate_private_key(ec.SECP256R1())
        (folder / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return key

    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    made = {}
    for serial, (name, ((org, common_name), issuer, profile)) in enumerate(CERTIFICATES.items(), start=1):
        key = write_key(name)
        subject = x509.Name(([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else [])
                            + [x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        issuer_cert, issuer_key = made[issuer] if issuer else (None, key)
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(issuer_cert.subject if issuer_cert else subject)
                   .public_key(key.public_key()).serial_number(serial)
                   .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=DAYS))
                   .add_extension(x509.BasicConstraints(ca=profile == "ca", path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=profile == "ca",
                                                content_commitment=False, data_encipherment=False, key_agreement=False,
                                                crl_sign=False, encipher_only=False, decipher_only=False), critical=True))
        if profile == "ca":
            builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        else:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
            usage = ExtendedKeyUsageOID.SERVER_AUTH if profile == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if profile == "server":
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_IPS] + [x509.DNSName(n) for n in SERVER_NAMES]),
                critical=False)
        cert = builder.sign(issuer_key, hashes.SHA256())
        (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        made[name] = (cert, key)
    sa = write_key("sa")
    (folder / "sa.pub").write_bytes(sa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,keyEncipherment,keyCertSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
authorityKeyIdentifier = keyid
subjectAltName = {san}
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
"""


def _with_openssl(folder: Path) -> None:
    if shutil.which("openssl") is None:
        raise RuntimeError("neither the cryptography package nor openssl is installed (pip install cryptography)")
    config = folder / "openssl.cnf"
    config.write_text(OPENSSL_CONFIG.format(san=",".join([f"IP:{ip}" for ip in SERVER_IPS] + [f"DNS:{n}" for n in SERVER_NAMES])))

    def openssl(*args: str, stdin: bytes | None = None) -> bytes:
        done = subprocess.run(["openssl", *args], input=stdin, capture_output=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.decode(errors='replace')[-500:]}")
        return done.stdout

    def key(name: str) -> str:
        path = str(folder / f"{name}.key")
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
        return path

    for serial, (name, ((org, common_name), issuer, profile)) in enumerate(CERTIFICATES.items(), start=1):
        subject = (f"/O={org}" if org else "") + f"/CN={common_name}"
        out, sign = str(folder / f"{name}.crt"), ["-config", str(config), "-sha256", "-days", str(DAYS)]
        if issuer is None:
            openssl("req", *sign, "-x509", "-new", "-key", key(name), "-subj", subject, "-extensions", profile, "-out", out)
            continue
        request = openssl("req", "-config", str(config), "-new", "-sha256", "-key", key(name), "-subj", subject)
        openssl("x509", "-req", "-sha256", "-days", str(DAYS), "-CA", str(folder / f"{issuer}.crt"),
                "-CAkey", str(folder / f"{issuer}.key"), "-set_serial", str(serial), "-extfile", str(config),
                "-extensions", profile, "-out", out, stdin=request)
    openssl("pkey", "-in", key("sa"), "-pubout", "-out", str(folder / "sa.pub"))
