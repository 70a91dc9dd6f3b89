"""The kept prefixes of shaped values (:func:`biomask.masking.shape.prefix_lengths`)."""

import pyarrow as pa

from biomask.masking.shape import codepoints, prefix_lengths


def _keep(values: list[str], prefix: str | None) -> list[int]:
    cps, offsets = codepoints(pa.array(values, pa.string()))
    out: list[int] = prefix_lengths(cps, offsets, prefix).tolist()
    return out


def test_auto_prefix() -> None:
    """1-6 upper-case ASCII letters, a separator, and at least one character after it."""
    values = ["BIO-41937913", "SUBJ-00012345", "DV/7", "X.1", "AB12", "ABCDEFG-1", "AB-"]
    assert _keep(values, "auto") == [4, 5, 3, 2, 0, 0, 0]
    assert _keep(["A1-2", "-AB", "ab-1", "ÉB-1", ""], "auto") == [0, 0, 0, 0, 0]


def test_literal_prefix() -> None:
    assert _keep(["XY1234", "ZZ9999", "X", "xY12"], "XY") == [2, 0, 0, 0]
    assert _keep(["É12", "E12"], "É") == [1, 0]  # code points, not bytes


def test_no_prefix() -> None:
    assert _keep(["BIO-41937913", ""], None) == [0, 0]
