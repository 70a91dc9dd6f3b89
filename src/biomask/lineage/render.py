"""The Jinja2 environment of the lineage HTML pages, and the geometry of their charts.

The markup lives in ``templates/*.html.j2`` (shipped as package data); this module holds
what a template should not: how values are escaped, and the arithmetic that places bars
and labels in the inline SVG charts.

Escaping is on for every value: the environment autoescapes, and its ``finalize`` hook
escapes each value with :func:`html.escape` (``quote=True``) before Jinja's own escape sees
it. The two escape the same characters (``& < > " '``) but spell quotes differently
(``&quot;``/``&#x27;`` here, ``&#34;``/``&#39;`` in markupsafe); the page is a signed
artifact of the lineage directory whose bytes are recorded in the manifest and rewritten by
``audit export``, so they keep the stdlib spelling the recorded pages use
(``tests/lineage/test_dossier_golden.py``). ``None`` renders as an empty string. Only
template markup (macro output) is ever emitted unescaped.
"""

from __future__ import annotations

import html
from functools import cache
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

if TYPE_CHECKING:
    from jinja2 import Environment

__all__ = ["SHIFT_PP", "chart_view", "environment", "escape_cut"]

SHIFT_PP = 1.0
"""A category whose share moves by at least this many percentage points is highlighted."""

_LABEL_W, _BAR_W = 170, 420


def _finalize(value: Any) -> Any:
    """Escape one output value with the stdlib spelling (see the module docstring)."""
    if hasattr(value, "__html__"):  # template markup (a macro's output): already safe
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def escape_cut(value: Any, length: int) -> Markup:
    """The first ``length`` characters of the escaped value (a chart label's width).

    Marked raw on purpose: the value is escaped first and then cut (an entity counts as its
    characters), so the bytes match the recorded pages. Cutting escaped text only drops
    characters; at worst it leaves a partial entity (``&am``), which reads as text and can
    never open a tag.
    """
    return Markup(html.escape("" if value is None else str(value), quote=True)[:length])


@cache
def environment() -> Environment:
    """The one Jinja2 environment for the lineage templates (built once, then reused).

    Jinja2 is imported here, not at module import: a process that never renders a page
    (``biomask --help``, ``audit verify``) does not pay for it.
    """
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("biomask.lineage", "templates"),
        autoescape=True,
        finalize=_finalize,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["escape_cut"] = escape_cut
    env.globals["shift_pp"] = SHIFT_PP
    env.globals["chart_view"] = chart_view
    return env


def chart_view(dist: dict[str, Any]) -> dict[str, Any]:
    """Where the bars and labels of one distribution chart go.

    One row per category (sorted); a row has the "before" bar (when raw values were charted)
    above the "after" one. Bars are scaled to the largest share so small categories stay
    readable; a category whose share moved by :data:`SHIFT_PP` or more is ``changed``.
    """
    before: dict[str, int] | None = dist.get("before")
    after: dict[str, int] = dist.get("after") or {}
    shifts: dict[str, float] = dist.get("shift_pp") or {}
    cats = sorted(set(after) | set(before or {}))
    bt = max(dist.get("before_total") or 0, 1)
    at = max(dist.get("after_total") or 0, 1)
    row_h = 30 if before is not None else 18
    top = max(
        [after.get(c, 0) / at for c in cats] + [(before or {}).get(c, 0) / bt for c in cats],
        default=1.0,
    )
    top = top or 1.0
    rows = []
    y = 18
    for cat in cats:
        shift = shifts.get(cat, 0.0)
        changed = abs(shift) >= SHIFT_PP
        shares = [] if before is None else [(before.get(cat, 0) / bt, "before")]
        shares.append((after.get(cat, 0) / at, "changed" if changed else "after"))
        bars = [
            {"y": y + 13 * i, "width": max(round(share / top * _BAR_W, 1), 0.5), "kind": kind}
            for i, (share, kind) in enumerate(shares)
        ]
        rows.append(
            {
                "category": cat,
                "changed": changed,
                "label_y": y + (row_h - 6) // 2 + 4,
                "bars": bars,
                "note_y": y + 10,
                "percent": after.get(cat, 0) / at * 100,
                "shift": None if before is None else shift,
            }
        )
        y += row_h
    return {
        "width": _LABEL_W + _BAR_W + 120,
        "height": 24 + row_h * len(cats),
        "label_x": _LABEL_W - 8,
        "bar_x": _LABEL_W,
        "note_x": _LABEL_W + _BAR_W + 6,
        "rows": rows,
    }
