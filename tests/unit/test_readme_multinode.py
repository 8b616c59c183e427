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
                          rf"\(([0-9]+) steps lost\)", text)
        assert match, (way, text)
        _, resumed, last, lost = match.groups()
        assert int(float(last)) - int(float(resumed)) == int(lost), (way, text)
