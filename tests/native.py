"""Run a block on the compiled kernels or on their NumPy/Arrow fallback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def kernels_path(native: bool) -> Iterator[None]:
    """Switch ``BIOMASK_NATIVE_KERNELS`` for the block; an env var, not a fixture, so that
    it works inside hypothesis' ``@given``."""
    saved = os.environ.get("BIOMASK_NATIVE_KERNELS")
    os.environ["BIOMASK_NATIVE_KERNELS"] = "1" if native else "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["BIOMASK_NATIVE_KERNELS"]
        else:
            os.environ["BIOMASK_NATIVE_KERNELS"] = saved
