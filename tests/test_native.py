"""One loader for the compiled helpers, each owned by the package that uses it.

:func:`biomask._native.load` imports an optional extension by name: None where it is not
built (the numpy/Arrow fallback runs) or switched off, and an error instead of a silent
fallback when ``BIOMASK_REQUIRE_NATIVE=1`` (CI sets it, so the benchmarks never measure the
slow path by accident).
"""

from __future__ import annotations

import os

import pytest

from biomask import _native
from biomask.keys import aead, primitives
from biomask.lineage import evidence
from biomask.masking import shape

#: every compiled helper and the package that owns it
HELPERS = {
    "biomask.keys._prf": "keys",
    "biomask.keys._gcm": "keys",
    "biomask.masking._kernels": "masking",
    "biomask.lineage._evidence": "lineage",
}


def test_a_helper_that_is_not_built_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_native.REQUIRE_ENV, raising=False)
    assert _native.load("biomask.keys._not_built") is None


def test_require_native_makes_a_missing_helper_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_native.REQUIRE_ENV, "1")
    with pytest.raises(_native.NativeMissingError, match=r"biomask\.keys\._not_built is not built"):
        _native.load("biomask.keys._not_built")
    # switched off on purpose is a choice, not a broken build
    monkeypatch.setenv("BIOMASK_TEST_SWITCH", "0")
    assert _native.load("biomask.keys._not_built", "BIOMASK_TEST_SWITCH") is None


@pytest.mark.parametrize("name", sorted(HELPERS))
def test_each_helper_is_built_where_ci_requires_it(name: str) -> None:
    if os.environ.get(_native.REQUIRE_ENV) != "1":
        pytest.skip("BIOMASK_REQUIRE_NATIVE is not set (CI sets it)")
    module = _native.load(name)
    assert module is not None and module.__name__ == name


def test_each_owner_says_whether_its_helper_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    owners = [primitives.native_available, shape.native_available, evidence.native_available]
    monkeypatch.setenv(_native.KERNELS_SWITCH, "0")
    assert not any(f() for f in owners)
    monkeypatch.setenv(_native.AEAD_SWITCH, "0")
    assert not aead.native_available()
    if os.environ.get(_native.REQUIRE_ENV) == "1":
        monkeypatch.setenv(_native.KERNELS_SWITCH, "1")
        monkeypatch.setenv(_native.AEAD_SWITCH, "1")
        assert all(f() for f in owners) and aead.native_available()


def test_helpers_live_with_their_owner() -> None:
    """A helper is a module of the package whose code uses it (see setup.py)."""
    for name, owner in HELPERS.items():
        assert name.split(".")[1] == owner
        module = _native._import(name)
        if module is not None:
            assert f"/biomask/{owner}/" in (module.__file__ or "")
