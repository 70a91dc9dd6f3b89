"""Synthetic enrolment data for ``biomask demo``, the benchmarks and the text-PII tests.

Nothing in it describes a real person: see :mod:`biomask.demo.generator`.
"""

from biomask.demo.generator import (
    DemoData,
    generate,
    generate_structured,
    iter_structured_batches,
)

__all__ = ["DemoData", "generate", "generate_structured", "iter_structured_batches"]
