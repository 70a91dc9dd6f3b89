"""Run a block on the compiled kernels or on their NumPy/Arrow fallback, and the compiled
kernels on either of their AES-256 implementations."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType


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


def aes_impls(module: ModuleType) -> list[str]:
    """The AES-256 implementations a compiled helper can use on this machine: ``"evp"``
    (OpenSSL's) always, ``"vaes"`` where the CPU has VAES and AVX-512 (biomask/_aes.h)."""
    saved = module._aes_impl()
    try:
        module._aes_impl("vaes")
    except ValueError:
        return ["evp"]
    finally:
        module._aes_impl(saved)
    return ["evp", "vaes"]


@contextmanager
def aes_path(module: ModuleType, name: str) -> Iterator[None]:
    """Run the block with ``module``'s AES-256 on ``name`` (``"evp"`` or ``"vaes"``): the
    module's private switch, which calls read when they start."""
    saved = module._aes_impl()
    module._aes_impl(name)
    try:
        yield
    finally:
        module._aes_impl(saved)
