"""Build the compiled helpers, both optional, both on OpenSSL's libcrypto.

- ``biomask.keys._gcm``: batched AES-256-GCM (the ``encrypt`` operator's AEAD).
- ``biomask.masking._kernels``: PRF seeds (AES CBC-MAC), counter-mode keystreams and
  shaped tokens over whole Arrow string buffers.

Everything else is in pyproject.toml. Without a C compiler or OpenSSL's headers the install
still succeeds and biomask uses its pure-Python/numpy code instead (same bytes, slower);
``biomask.keys.aead.native_available()`` and ``biomask.keys.primitives.native_available()``
say which one runs.
"""

from setuptools import Extension, setup

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
            "biomask.masking._kernels",
            sources=[
                "src/biomask/masking/_kernels.c",
                "src/biomask/masking/_layout.c",
                "src/biomask/masking/_evidence.c",
            ],
            depends=[
                "src/biomask/masking/_buffers.h",
                "src/biomask/masking/_layout.h",
                "src/biomask/masking/_evidence.h",
            ],
            libraries=["crypto"],
            extra_compile_args=["-O3", "-std=c99", "-Wall"],
            optional=True,
        ),
    ]
)
