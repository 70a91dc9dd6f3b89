"""Build the compiled helpers: each optional, each owned by the package whose code it speeds up.

- ``biomask.keys._gcm``: batched AES-256-GCM (the ``encrypt`` operator's AEAD).
- ``biomask.keys._prf``: the keys PRF: AES CBC-MAC seeds and counter-mode keystreams over
  whole Arrow string buffers.
- ``biomask.masking._kernels``: masking's shaped permutations (FF1 walks) and phone/e-mail
  layouts.
- ``biomask.lineage._evidence``: lineage's residual-PII scan digests.

All link OpenSSL's libcrypto except ``_evidence``; the headers they share (argument checks,
AES-ECB in groups of blocks, keyed string digests and the table of distinct values) are in
``src/biomask``. Everything else is in pyproject.toml.
Without a C compiler or OpenSSL's headers the install still succeeds and biomask uses its
pure-Python/numpy code instead (same bytes, slower); one loader, ``biomask._native``,
imports them, and ``BIOMASK_REQUIRE_NATIVE=1`` makes a missing helper an error.
"""

from setuptools import Extension, setup

SHARED = ["src/biomask/_buffers.h", "src/biomask/_aes.h"]
FLAGS = ["-O3", "-std=c99", "-Wall"]

setup(
    ext_modules=[
        Extension(
            "biomask.keys._gcm",
            sources=["src/biomask/keys/_gcm.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-std=c99", "-Wall"],
            optional=True,
        ),
        Extension(
            "biomask.keys._prf",
            sources=["src/biomask/keys/_prf.c"],
            include_dirs=["src/biomask"],
            depends=SHARED,
            libraries=["crypto"],
            extra_compile_args=FLAGS,
            optional=True,
        ),
        Extension(
            "biomask.masking._kernels",
            sources=["src/biomask/masking/_kernels.c", "src/biomask/masking/_layout.c"],
            include_dirs=["src/biomask"],
            depends=[
                *SHARED,
                "src/biomask/_distinct.h",
                "src/biomask/masking/_layout.h",
                "src/biomask/masking/_blocks.h",
            ],
            libraries=["crypto"],
            extra_compile_args=FLAGS,
            optional=True,
        ),
        Extension(
            "biomask.lineage._evidence",
            sources=["src/biomask/lineage/_evidence.c"],
            include_dirs=["src/biomask"],
            depends=["src/biomask/_buffers.h", "src/biomask/_distinct.h"],
            extra_compile_args=FLAGS,
            optional=True,
        ),
    ]
)
