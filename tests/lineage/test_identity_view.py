"""The dossier's identity section: measures, histograms and QI charts, escaped."""

from __future__ import annotations

from biomask.lineage.identity_view import identity_section


def test_identity_section_draws_measures_histograms_and_shift() -> None:
    hist = {"lo": -1.0, "hi": 1.0, "bins": 4, "counts": [0, 5, 3, 0]}
    report = {
        "command": "identity filter",
        "threshold": 0.5,
        "input": {
            "impostor": {"count": 8, "histogram": hist},
            "mated": {"count": 2, "histogram": {**hist, "counts": [0, 0, 0, 2]}},
            "uri": "<b>x</b>",
        },
        "quasi_identifiers": {
            "subjects.gender": {
                "before": {"F": 5, "M": 5},
                "after": {"F": 3, "M": 5},
                "before_total": 10,
                "after_total": 8,
                "shift_pp": {"F": -12.5, "M": 12.5},
                "max_abs_shift_pp": 12.5,
            }
        },
        "notes": ["signed with a throw-away key"],
    }
    html = identity_section(report)
    assert html.startswith('<section id="identity">') and "identity filter" in html
    assert "<td>threshold</td><td>0.5</td>" in html
    assert "input impostor" in html and "input mated" in html and "<polyline" in html
    assert "subjects.gender (max shift 12.50 pp)" in html and "-12.5 pp" in html
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    assert "throw-away key" in html
