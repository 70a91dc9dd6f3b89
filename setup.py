"""Build the one compiled helper, ``biomask.keys._gcm`` (batched AES-256-GCM on OpenSSL).

Everything else is in pyproject.toml. The extension is optional: without a C compiler or
OpenSSL's headers the install still succeeds and biomask uses its pure-Python AES-GCM loop
(same bytes, slower); ``biomask.keys.aead.native_available()`` says which one runs.
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
        )
    ]
)
