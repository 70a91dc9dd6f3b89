"""The dossier's identity section: what an identity command measured and decided.

Drawn from the report an identity run stores in its dossier (``dossier["identity"]``):
thresholds and the FMR they meet, counts and retained fractions, the impostor and mated
similarity histograms, KL divergences against a reference set, and the quasi-identifier
distributions before and after (drawn with the bias examination's chart). Ids of people
never appear in it: only counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["identity_section"]

_SKIP = {"impostor", "mated", "quasi_identifiers", "notes", "histogram", "command"}


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


def _histograms(dists: list[tuple[str, dict[str, Any]]], esc: Callable[[Any], str]) -> str:
    """Overlaid histograms (as shares of each distribution) on one SVG, [-1, 1]."""
    colours = ["#9aa5b4", "#2f6fb3", "#c0392b", "#116b2f"]
    width, height, pad = 640, 180, 28
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + pad}" '
        f'viewBox="0 0 {width} {height + pad}" role="img" aria-label="similarity histograms">',
        f'<rect width="{width}" height="{height + pad}" fill="#ffffff"/>',
    ]
    shares = []
    for _, d in dists:
        counts = d["histogram"]["counts"]
        total = max(sum(counts), 1)
        shares.append([c / total for c in counts])
    top = max((max(s) for s in shares if s), default=1.0) or 1.0
    for k, ((name, _), share) in enumerate(zip(dists, shares, strict=True)):
        n = len(share)
        pts = " ".join(
            f"{i * width / n:.1f},{height - v / top * (height - 10):.1f}"
            for i, v in enumerate(share)
        )
        colour = colours[k % len(colours)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}"/>')
        parts.append(
            f'<text x="{8 + 150 * k}" y="{height + 20}" font-size="11" fill="{colour}">'
            f"{esc(name)}</text>"
        )
    for x, label in ((0, "-1"), (width / 2, "0"), (width - 12, "1")):
        parts.append(f'<text x="{x}" y="{height + 8}" font-size="9" fill="#667085">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


def identity_section(
    report: dict[str, Any],
    esc: Callable[[Any], str],
    table: Callable[[list[str], list[list[Any]]], str],
    chart: Callable[[str, dict[str, Any]], str],
) -> str:
    """The HTML of the identity section (escaped with the dossier's own helpers)."""
    out = [f'<section id="identity"><h2>Identity hygiene: {esc(report.get("command", ""))}</h2>']
    rows: list[list[Any]] = []
    _flat("", report, rows)
    out.append(table(["Measure", "Value"], rows))
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
    if dists:
        out.append("<h3>Similarity distributions (share of pairs per 0.01 of cosine)</h3>")
        out.append(_histograms(dists, esc))
    qis = report.get("quasi_identifiers") or {}
    if qis:
        out.append("<h3>Quasi-identifier distributions before and after</h3>")
        for name, dist in qis.items():
            out.append(
                f"<h4>{esc(name)} (max shift {float(dist.get('max_abs_shift_pp', 0)):.2f} pp)</h4>"
            )
            out.append(chart(name, dist))
    for note in report.get("notes") or []:
        out.append(f'<p class="muted">{esc(note)}</p>')
    out.append("</section>")
    return "".join(out)
