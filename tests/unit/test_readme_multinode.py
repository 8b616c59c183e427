"""The README's multi-node figures stay in the shape their benchmarks print: each line names the
command that produced it, and its numbers agree with one another (the ratios are the figures'
ratios, the steps lost are the steps logged minus the step resumed from). The figures themselves
come from benchmarks/multinode.py and benchmarks/inplace_restart.py on real nodes (root, minutes):
rerun them and paste their lines when the stages' code changes."""

from __future__ import annotations

import re

from tests.tools import REPO

README = (REPO / "README.md").read_text()
NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


def line(prefix: str) -> str:
    found = re.search(rf"^\*\*{re.escape(prefix)}[^*]*:\*\*(.*)$", README, re.M)
    assert found, f"README: no line starting **{prefix}"
    return found.group(0)


def test_multi_node_against_single_node_figures_are_consistent():
    text = line("Multi-node vs single-node")
    assert re.search(r"python\s+benchmarks/multinode\.py", README)
    figures = {}
    for name in ("final loss", "tokens/s", "stage time"):
        match = re.search(rf"{name} {NUMBER}(?: s)? on one node, {NUMBER}(?: s)? on two \(x{NUMBER}\)", text)
        assert match, (name, text)
        single, multi, ratio = map(float, match.groups())
        assert abs(multi / single - ratio) <= 0.011, (name, single, multi, ratio)
        figures[name] = ratio
    # The bar: the loss ends near a single-node run with the same global batch.
    assert 0.9 <= figures["final loss"] <= 1.1, text


def test_in_place_against_whole_attempt_restart_figures_are_consistent():
    text = line("Rank 1's pod deleted")
    assert re.search(r"python\s+benchmarks/(inplace_restart\.py|multinode\.py [^`]*--restarts)", README)
    for way in ("whole attempt", "in place"):
        match = re.search(rf"{way}: {NUMBER} s to training again, resumed from step {NUMBER} after step {NUMBER} "
                          rf"\((-?[0-9]+) steps lost", text)  # negative: the SIGTERM checkpoint came after the last log
        assert match, (way, text)
        _, resumed, last, lost = match.groups()
        assert int(float(last)) - int(float(resumed)) == int(lost), (way, text)


def test_multi_node_suspend_and_node_loss_figures_are_consistent():
    """The lines tests/cluster/test_multi_node_on_nodes.py prints (paste them from a run of it)."""
    assert re.search(r"pytest -s[^`]*tests/cluster/test_multi_node_on_nodes\.py", README)
    text = line("Suspended, `nodes: 2`")
    match = re.search(rf"Suspended {NUMBER} s after spec.suspend, one checkpoint at step ([0-9]+) from both ranks, "
                      rf"restarts (\{{[^}}]*\}}), resumed \(attempt 1\) from step ([0-9]+)", text)
    assert match, text
    _, saved, restarts, resumed = match.groups()
    assert saved == resumed and "'disruption': 0" in restarts and "'application': 0" in restarts, text  # no budget

    text = line("Node lost, `nodes: 2`")
    match = re.search(rf"rank ([01])'s node stopped after a checkpoint at step ([0-9]+): attempt 1 ended {NUMBER} s after "
                      rf"the node stopped, attempt 2 Running on both nodes {NUMBER} s after the node's restart "
                      rf"\({NUMBER} s after the loss\), resumed from step ([0-9]+); restarts (\{{[^}}]*\}})", text)
    assert match, text
    _, checkpoint, ended, back, total, resumed, restarts = match.groups()
    assert float(total) + 0.2 >= float(ended) + float(back), text  # the restart came after the attempt ended
    assert int(resumed) >= int(checkpoint) and "'disruption': 1" in restarts and "'application': 0" in restarts, text
    assert float(ended) < 120 and float(back) < 120, text  # the bounds the test asserts
