"""The dossier's identity section: what an identity command measured and decided.

Drawn from the report an identity run stores in its dossier (``dossier["identity"]``):
thresholds and the FMR they meet, counts and retained fractions, the impostor and mated
similarity histograms, KL divergences against a reference set, and the quasi-identifier
distributions before and after (drawn with the bias examination's chart). Ids of people
never appear in it: only counts.

This module shapes the report for the ``identity_section`` macro of
``templates/identity.html.j2`` (rows of the measures table, histogram geometry); the
markup is in the template.
"""

from __future__ import annotations

from typing import Any

from biomask.lineage.render import chart_view, environment

__all__ = ["histogram_view", "identity_section", "identity_view"]

_SKIP = {"impostor", "mated", "quasi_identifiers", "notes", "histogram", "command"}
_WIDTH, _HEIGHT, _PAD = 640, 180, 28


def _flat(prefix: str, value: Any, rows: list[list[Any]]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k in _SKIP:
                continue
            _flat(f"{prefix}.{k}" if prefix else str(k), v, rows)
    elif isinstance(value, list):
        rows.append([prefix, ", ".join(str(v) for v in value)])
    else:
        rows.append([prefix, value])


def histogram_view(dists: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Polylines of overlaid histograms (as shares of each distribution) over [-1, 1].

    Every line is scaled to the highest share of any of them, so they compare on one axis.
    """
    shares = []
    for _, d in dists:
        counts = d["histogram"]["counts"]
        total = max(sum(counts), 1)
        shares.append([c / total for c in counts])
    top = max((max(s) for s in shares if s), default=1.0) or 1.0
    lines = []
    for k, ((name, _), share) in enumerate(zip(dists, shares, strict=True)):
        n = len(share)
        points = " ".join(
            f"{i * _WIDTH / n:.1f},{_HEIGHT - v / top * (_HEIGHT - 10):.1f}"
            for i, v in enumerate(share)
        )
        lines.append({"name": name, "points": points, "label_x": 8 + 150 * k})
    return {
        "width": _WIDTH,
        "full_height": _HEIGHT + _PAD,
        "label_y": _HEIGHT + 20,
        "tick_y": _HEIGHT + 8,
        "ticks": [(0, "-1"), (_WIDTH / 2, "0"), (_WIDTH - 12, "1")],
        "lines": lines,
    }


def identity_view(report: dict[str, Any]) -> dict[str, Any]:
    """What the identity section shows, ready for the template (values still unescaped)."""
    rows: list[list[Any]] = []
    _flat("", report, rows)
    dists: list[tuple[str, dict[str, Any]]] = []

    def collect(prefix: str, value: Any) -> None:
        if not isinstance(value, dict):
            return
        for kind in ("impostor", "mated"):
            d = value.get(kind)
            if isinstance(d, dict) and d.get("count") and "histogram" in d:
                dists.append((f"{prefix}{kind}".strip(), d))
        for k, v in value.items():
            if k not in _SKIP:
                collect(f"{k} ", v)

    collect("", report)
    qis = report.get("quasi_identifiers") or {}
    return {
        "command": report.get("command", ""),
        "rows": rows,
        "histograms": histogram_view(dists) if dists else None,
        "qis": [
            {
                "name": name,
                "max_shift": float(dist.get("max_abs_shift_pp", 0)),
                "chart": chart_view(dist),
            }
            for name, dist in qis.items()
        ],
        "notes": report.get("notes") or [],
    }


def identity_section(report: dict[str, Any]) -> str:
    """The HTML of the identity section alone (the dossier page includes the same macro)."""
    macro = environment().get_template("identity.html.j2").module.identity_section  # type: ignore[attr-defined]
    return str(macro(identity_view(report)))
