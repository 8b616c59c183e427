"""Which resourceVersion a pass's status patch is conditional on (handlers.known_version).

The watched body lags behind our own writes: right after a status patch the daemon may run again
on the body it read before it. The pass must then use the version that patch produced — the
body's own would be refused (409) although nothing but our own write happened since."""

from __future__ import annotations

import kopf

from refinery_operator.handlers import known_version

KEY = ("ns", "p", "uid-1")


def body(version: str | None) -> kopf.Body:
    meta = {"namespace": "ns", "name": "p", "uid": "uid-1"}
    if version is not None:
        meta["resourceVersion"] = version
    return kopf.Body({"metadata": meta})


def test_the_first_pass_uses_the_bodys_version():
    assert known_version(kopf.Memo(versions={}), KEY, body("10")) == "10"


def test_a_body_from_before_our_last_patch_uses_the_version_that_patch_produced():
    memo = kopf.Memo(versions={KEY: ("10", "11")})
    assert known_version(memo, KEY, body("10")) == "11"


def test_a_body_the_watch_updated_since_uses_its_own_version():
    memo = kopf.Memo(versions={KEY: ("10", "11")})
    assert known_version(memo, KEY, body("11")) == "11"  # our own write, delivered
    assert known_version(memo, KEY, body("14")) == "14"  # a spec edit or another writer after it


def test_no_version_known_means_an_unconditional_patch():
    assert known_version(kopf.Memo(versions={KEY: ("10", None)}), KEY, body("10")) == "10"
    assert known_version(kopf.Memo(versions={}), KEY, body(None)) is None
