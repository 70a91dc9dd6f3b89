"""Fixtures shared by more than one test package."""

from __future__ import annotations

import pytest

from biomask.demo import DemoData, generate


@pytest.fixture(scope="session")
def demo() -> DemoData:
    """The demo export: about 450 notes with ground truth, 150 subjects."""
    return generate(150, seed=7)
