"""A script under benchmarks/ or scripts/ runs with its own folder first on sys.path, so a file named
like a standard-library module (benchmarks/tokenize.py once did) replaces that module for the script
and for everything it imports: torch's own import of `tokenize` then fails."""

from __future__ import annotations

import sys

from tests.tools import REPO


def test_no_script_is_named_like_a_standard_library_module():
    shadowing = [str(p.relative_to(REPO)) for folder in ("benchmarks", "scripts") for p in (REPO / folder).glob("*.py")
                 if p.stem in sys.stdlib_module_names]
    assert not shadowing, f"rename these, they shadow the standard library: {shadowing}"
