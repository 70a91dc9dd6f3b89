"""The one loader of biomask's compiled helpers.

Each helper belongs to the package whose code it speeds up, and only that package asks for
it (by name, so this module, on the bottom floor, imports none of them itself):

- ``biomask.keys._prf``: the keys PRF (AES CBC-MAC seeds, counter-mode keystreams), for
  :mod:`biomask.keys.primitives`;
- ``biomask.keys._gcm``: batched AES-256-GCM, for :mod:`biomask.keys.aead`;
- ``biomask.masking._kernels``: shaped permutations (FF1 walks) and phone/e-mail layouts,
  for :mod:`biomask.masking.shape` and the modules that use it;
- ``biomask.lineage._evidence``: the residual-PII scan digests, for
  :mod:`biomask.lineage.evidence`.

Every helper is optional: without a C compiler or OpenSSL's headers at install time the
package still installs, and the same bytes come from numpy/Arrow code, more slowly. That
silence is wrong where speed is part of what is checked (CI, benchmarks), so
``BIOMASK_REQUIRE_NATIVE=1`` turns a helper that is not built into an error the first time
it is asked for. A switch variable per kind of helper (``BIOMASK_NATIVE_KERNELS=0``,
``BIOMASK_NATIVE_AEAD=0``) forces the fallback, read on every call, which is how the tests
compare both paths.
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from types import ModuleType

__all__ = ["AEAD_SWITCH", "KERNELS_SWITCH", "REQUIRE_ENV", "NativeMissingError", "load"]

#: set to ``1`` to make a compiled helper that is not built an error (CI sets it)
REQUIRE_ENV = "BIOMASK_REQUIRE_NATIVE"
#: ``0`` forces the fallback of the PRF, masking and evidence helpers
KERNELS_SWITCH = "BIOMASK_NATIVE_KERNELS"
#: ``0`` forces the fallback of the AEAD helper
AEAD_SWITCH = "BIOMASK_NATIVE_AEAD"


class NativeMissingError(ImportError):
    """A compiled helper is not built while ``BIOMASK_REQUIRE_NATIVE=1`` asks for it."""


@cache
def _import(name: str) -> ModuleType | None:
    """The extension module ``name``, imported once; None when it is not built."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def load(name: str, switch: str | None = None) -> ModuleType | None:
    """The compiled helper ``name``, or None where the fallback runs.

    Parameters
    ----------
    name:
        The extension's module name (``"biomask.keys._prf"``); its owner's code asks.
    switch:
        An environment variable that forces the fallback when set to ``0``, read on
        every call (not cached) so that it can be flipped at run time.

    Raises
    ------
    NativeMissingError
        The helper is not built and ``BIOMASK_REQUIRE_NATIVE=1`` (a switched-off helper
        is no error: that is a choice, not a broken build).
    """
    if switch is not None and os.environ.get(switch, "1") == "0":
        return None
    module = _import(name)
    if module is None and os.environ.get(REQUIRE_ENV) == "1":
        raise NativeMissingError(
            f"the compiled helper {name} is not built, and {REQUIRE_ENV}=1 requires it: "
            "build it with `python setup.py build_ext --inplace` (needs a C compiler and "
            "OpenSSL's headers) or unset the variable to use the slower fallback"
        )
    return module
