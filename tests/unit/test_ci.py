"""CI installs promtool before it runs the tests, so promtool tests fail there instead of skipping."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ci_installs_promtool_before_the_test_command_and_runs_as_ci():
    script = (REPO / ".ci" / "run").read_text()
    install = script.index("apt-get install -y -qq prometheus")
    assert script.index("command -v promtool") < install < script.index("&& pytest")
    assert 'export CI="${CI:-true}"' in script


def test_ci_provides_what_the_real_control_plane_needs_before_the_test_command():
    """tests/real fails under CI=true without a control plane; its launcher needs openssl and zstd."""
    script = (REPO / ".ci" / "run").read_text()
    install = script.index("apt-get install -y -qq openssl zstd")
    assert script.index("command -v zstd") < install < script.index("&& pytest")


def test_ci_provides_the_node_and_builds_the_images_before_the_test_command():
    """tests/cluster fails under CI=true without podman, debootstrap and the node's runtime (dnsmasq:
    the cluster DNS that multi-node stages find rank 0 by)."""
    script = (REPO / ".ci" / "run").read_text()
    install = script.index("apt-get install -y -qq podman debootstrap containerd runc containernetworking-plugins iptables")
    assert "dnsmasq-base" in script[install:script.index("\n", install)] and "command -v dnsmasq" in script
    build = script.index("python3 scripts/build_images.py")
    assert script.index("command -v podman") < install < build < script.index("&& pytest")
