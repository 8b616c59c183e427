"""Build the operator image and the CPU trainer image from the Dockerfile with podman, where no
public registry can be reached, and save each as an OCI archive that a node can load.

    python3 scripts/build_images.py            # prints {"operator": {...}, "trainer-cpu": {...}} as JSON

Each image is the Dockerfile's own target (`operator`, `trainer-cpu`): the same entrypoint, user,
environment and install steps as a `docker build` of it. Only the inputs differ:
- PYTHON_IMAGE is a Debian 12 base made here with debootstrap from Debian's packages (python3,
  python3-venv, ca-certificates, passwd) and imported into podman as `localhost/refinery-debian`;
- TORCH_PIP_ARGS points pip at the folder of CPU torch wheels that this machine's pip
  configuration names as `find-links` (mounted read-only at /wheels), instead of PyPI's CPU index;
- the host's CA bundle is mounted where Debian's pip looks for it (a TLS-intercepting proxy).

Caching: an archive is named after a hash of the Dockerfile and every file the build context
holds (.dockerignore: pyproject.toml, README.md, sdk/, operator/, trainer/), so a second run with nothing
changed returns at once; podman's layer cache keeps the torch layer across source changes. The
archives live in `$REFINERY_IMAGE_CACHE` (default `~/.cache/refinery-images`). Root only (podman
as root, debootstrap); needs `apt-get install -y podman debootstrap`.

The runtime is runc with limits no higher than this machine allows (crun refuses hybrid cgroups;
no process here may raise a ulimit): passed on the command line, /etc/containers is left alone.
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("operator", "trainer-cpu")
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd")
BASE_REPOSITORY = "localhost/refinery-debian"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PODMAN = ["podman", "--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "refinery-images"
    folder = Path(os.environ.get("REFINERY_IMAGE_CACHE", default))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def context_files() -> list[Path]:
    """The files `.dockerignore` lets into the build context, plus the Dockerfile itself."""
    files = [REPO / "Dockerfile", REPO / "pyproject.toml", REPO / "README.md"]
    for folder in ("sdk", "operator", "trainer"):
        files += [p for p in sorted((REPO / folder).rglob("*")) if p.is_file()
                  and "__pycache__" not in p.parts and not p.suffix == ".pyc"
                  and not any(part.endswith(".egg-info") for part in p.parts)]
    return files


def context_hash() -> str:
    digest = hashlib.sha256()
    for path in context_files():
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def debian_mirror() -> str:
    """The mirror apt already uses (deb822 sources first, then sources.list)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    for line in Path("/etc/apt/sources.list").read_text().splitlines():
        if line.startswith("deb "):
            return next(w for w in line.split()[1:] if "://" in w)
    raise RuntimeError("no Debian mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list")


def image_exists(tag: str) -> bool:
    return subprocess.run(["podman", "image", "exists", tag]).returncode == 0


def build_base() -> str:
    """A Debian 12 (bookworm) root filesystem from Debian's packages, imported into podman."""
    tag = f"{BASE_REPOSITORY}:bookworm-" + hashlib.sha256(" ".join(BASE_PACKAGES).encode()).hexdigest()[:8]
    if image_exists(tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="refinery-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES),
                        "bookworm", str(rootfs), debian_mirror()], check=True, stdout=subprocess.DEVNULL)
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["podman", "import", "-", tag], stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise RuntimeError("tar of the Debian root filesystem failed")
    return tag


PIP_CONFIGS = ("/etc/pip.conf", "/etc/xdg/pip/pip.conf", "~/.config/pip/pip.conf", "~/.pip/pip.conf")


def wheel_folder() -> Path | None:
    """The folder pip's configuration names as `find-links` (this machine's CPU torch wheel):
    $PIP_FIND_LINKS, else pip's configuration files, read directly (no pip needed on the host)."""
    values = [os.environ.get("PIP_FIND_LINKS", "")]
    for name in PIP_CONFIGS:
        config = configparser.ConfigParser()
        try:
            config.read(Path(name).expanduser())
        except configparser.Error:
            continue
        values += [config.get(section, "find-links", fallback="") for section in ("global", "install")]
    for value in values:
        for entry in value.split():
            folder = Path(entry.removeprefix("file://"))
            if folder.is_dir() and any(folder.glob("torch-*.whl")):
                return folder
    return None


def build(target: str, base: str, tag: str) -> float:
    args = [*PODMAN, "build", "--target", target, "--tag", tag, "--network", "host", *ULIMITS,
            "--build-arg", f"PYTHON_IMAGE={base}", "--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    if target == "trainer-cpu":
        wheels = wheel_folder()
        if wheels is not None:
            args += ["--volume", f"{wheels}:/wheels:ro", "--build-arg", "TORCH_PIP_ARGS=--find-links=/wheels"]
    started = time.monotonic()
    subprocess.run([*args, str(REPO)], check=True, stdout=sys.stderr)
    return time.monotonic() - started


def image_size(tag: str) -> int:
    out = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", tag],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def build_images(targets: tuple[str, ...] = TARGETS) -> dict[str, dict]:
    """{target: {"tag", "archive", "build_seconds" (None when cached), "size_bytes" (the image, as
    podman counts it), "archive_bytes"}, "base": {"tag", "seconds"}}."""
    cache, key = cache_dir(), context_hash()
    started = time.monotonic()
    base = build_base()
    base_seconds = time.monotonic() - started
    images = {}
    for target in targets:
        tag = f"localhost/refinery-{target}:{key}"
        archive = cache / f"refinery-{target}-{key}.oci.tar"
        seconds = None
        if not archive.exists():
            if not image_exists(tag):
                seconds = build(target, base, tag)
            partial = archive.with_suffix(".partial")
            partial.unlink(missing_ok=True)
            # Uncompressed layers: a save of the trainer in ~30 s instead of ~2 min of gzip, and
            # nothing to decompress at `node load`; the archive is as big as the image (~2.2 GB).
            subprocess.run(["podman", "save", "--uncompressed", "--format", "oci-archive", "--output", str(partial), tag],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            partial.rename(archive)  # whole archives only: a killed save leaves no cache entry
        images[target] = {"tag": tag, "archive": str(archive), "build_seconds": seconds,
                          "size_bytes": image_size(tag) if image_exists(tag) else None,
                          "archive_bytes": archive.stat().st_size}
    images["base"] = {"tag": base, "seconds": round(base_seconds, 1)}
    forget_other_builds(cache, key, targets)
    return images


def forget_other_builds(cache: Path, key: str, targets: tuple[str, ...]) -> None:
    """Archives and tags of earlier sources (2.2 GB a trainer): only the current build is kept.
    Layers the current images share with them (the base, torch) stay in podman's storage."""
    for target in targets:
        for archive in cache.glob(f"refinery-{target}-*.oci.tar"):
            if archive.name != f"refinery-{target}-{key}.oci.tar":
                archive.unlink(missing_ok=True)
        listed = subprocess.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", f"localhost/refinery-{target}"],
                                capture_output=True, text=True)
        old = [tag for tag in listed.stdout.split() if tag != f"localhost/refinery-{target}:{key}"]
        if old:
            subprocess.run(["podman", "rmi", *old], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", action="append", choices=TARGETS, help="only this target (repeatable)")
    args = parser.parse_args()
    print(json.dumps(build_images(tuple(args.target or TARGETS)), indent=2))


if __name__ == "__main__":
    main()
