"""Integrations: the Ray and Spark engines and the PyTorch training feed.

All are optional extras and import lazily: :func:`executor` maps ``--engine`` names to
:class:`~biomask.pipeline.Executor` objects, importing Ray or Spark only when named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from biomask.errors import BiomaskError

if TYPE_CHECKING:
    from biomask.pipeline import Executor

__all__ = ["ENGINES", "executor"]

#: the names ``biomask mask --engine`` takes
ENGINES = ("local", "ray", "spark")


def executor(engine: str) -> Executor:
    """The executor of ``--engine NAME``: ``local``, ``ray`` or ``spark``."""
    if engine == "local":
        from biomask.pipeline import LocalExecutor

        return LocalExecutor()
    if engine == "ray":
        from biomask.integrations.ray import RayExecutor

        return RayExecutor()
    if engine == "spark":
        from biomask.integrations.spark import SparkExecutor

        return SparkExecutor()
    raise BiomaskError(f"unknown engine '{engine}': use {', '.join(ENGINES)}")
