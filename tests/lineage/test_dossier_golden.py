"""The dossier HTML is byte-identical to the bytes recorded before it moved to a template.

``golden/demo_*.json`` are the dossiers of a real ``biomask demo`` run (the mask run and
the two identity runs, absolute paths made relative); ``golden/*.html`` are what the
f-string renderer produced for them, and for two variants built here: every value
replaced by markup-looking text (each must come out escaped exactly as before) and a
failed run with every optional section empty. The HTML is a signed artifact of the
lineage directory (its SHA-256 is in the manifest, and ``audit export --format html``
rewrites it), so its bytes, not only its meaning, must not move.

A deliberate change to the page updates the ``.html`` files in the same commit, after
looking at the diff.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from biomask.lineage.dossier import render_html

GOLDEN = Path(__file__).parent / "golden"
DEMO = ("demo_mask", "demo_identity_calibrate", "demo_identity_filter")
EVIL = "<b>x</b> & \"q\" 'a' </section><script>alert(1)</script>"


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))
    return data


def _evil(tag: str) -> str:
    return f"{tag}{EVIL}"


def hostile() -> dict[str, Any]:
    """The demo's mask dossier with markup in every value the page shows, every branch on."""
    d = copy.deepcopy(_load("demo_mask"))
    d["identity"] = copy.deepcopy(_load("demo_identity_filter")["identity"])
    run = d["run"]
    for k in ("run_id", "command", "job", "started_at", "ended_at"):
        run[k] = _evil(k)
    run["status"], run["error"] = "failed", _evil("error")
    d["regulation_refs"]["version"] = _evil("version")
    d["regulation_refs"]["notes"] = [_evil("note1"), _evil("note2")]
    for i in d["items"][:3]:
        for k in ("ref", "title", "evidence", "section"):
            i[k] = _evil(k)
    d["items"][3]["section"] = None
    d["items"][4]["coverage"] = "not_covered"
    prov = d["provenance"]
    prov["policy"] = {"path": _evil("policy"), "sha256": _evil("sha")}
    ds = prov["datasets"][0]
    ds["role"], ds["table"], ds["uri"] = _evil("role"), _evil("table"), _evil("uri")
    ds["files"] = [
        {"path": _evil("f1"), "size": _evil("size"), "sha256": _evil("fsha")},
        {"path": "plain.parquet", "size": 10, "sha256": "00"},
    ]
    prov["datasets"][1]["files"] = []
    c = d["counts"]
    c["rows_conserved"] = False
    c["text_detections"] = {_evil("DET"): 3, "PERSON": 2}
    c["quarantine_reasons"] = {_evil("reason"): 4, "policy.yaml:3: columns.x": 1}
    p = d["preparation"][0]
    for k in ("table", "column", "op", "measure", "domain", "entity", "key_id"):
        p[k] = _evil(k)
    d["preparation"][1].update({"domain": None, "entity": "subject", "key_id": None})
    d["preparation"][2].update({"domain": None, "entity": None, "dropped": True})
    m = d["measures"]
    m["removal"] = [_evil("col"), "t.c"]
    m["kept"] = []
    m["keyring_id"], m["signing_key_id"] = _evil("kr"), _evil("sk")
    m["key_ids"] = [_evil("k1"), "k2"]
    m["template_binding"] = {_evil("where"): _evil("binding"), "a.t": "bound to 'row'"}
    bias = d["bias_examination"]
    dists = bias["distributions"]
    first = next(iter(dists.values()))
    evil_dist = copy.deepcopy(first)
    long_cat = "&<>\"'" * 8 + " long category name past the cut"
    evil_dist["before"] = {_evil("c"): 5, long_cat: 1, "Côte d'Ivoire": 2}
    evil_dist["after"] = {_evil("c"): 2, long_cat: 1, "Côte d'Ivoire": 3, "new": 1}
    evil_dist["before_total"], evil_dist["after_total"] = 8, 7
    evil_dist["shift_pp"] = {_evil("c"): -33.928, long_cat: 1.786, "Côte d'Ivoire": 17.857}
    evil_dist["max_abs_shift_pp"] = 33.928
    dists[_evil("dist")] = evil_dist
    dists["zero"] = {
        "before": None,
        "after": {},
        "before_total": 0,
        "after_total": None,
        "max_abs_shift_pp": 0,
        "shift_pp": {},
    }
    bias["quasi_identifiers"][_evil("qt")] = {
        "charted": {},
        "withheld": {_evil("w"): _evil("why"), "age": "masked"},
    }
    d["k_anonymity"][_evil("kt")] = {
        "columns": [_evil("q1"), "q2"],
        "k": _evil("k"),
        "groups": 1,
        "groups_below_5": 1,
        "rows_in_groups_below_5": 1,
        "rows": 1,
    }
    rp = d["residual_pii"]
    rp["hits"], rp["coincidences"], rp["method"] = 0, _evil("co"), _evil("method")
    rp["findings"].append(
        {"output_column": _evil("o"), "input_column": _evil("i"), "hits": 2, "coincidences": 1}
    )
    rp["unchanged_in_place"][_evil("u")] = {"unchanged": _evil("n"), "compared": 3}
    rp["unaligned_batches"] = _evil("ub")
    rp["input_columns"], rp["output_columns"] = [_evil("in")], []
    d["access_events"] = [
        {"seq": 1, "time": _evil("t"), "kind": "erase", "details": {"b": _evil("v"), "a": 1}},
        {"seq": _evil("s"), "time": "t2", "kind": _evil("kind"), "details": {}},
    ]
    ident = d["identity"]
    ident["command"] = _evil("icmd")
    ident["threshold"] = _evil("thr")
    ident["notes"] = [_evil("n1"), "plain note"]
    ident["input"]["uri"] = _evil("iuri")
    ident["input"]["list"] = [_evil("l1"), 2]
    qis = ident["quasi_identifiers"]
    qis[_evil("iq")] = copy.deepcopy(evil_dist)
    qis["no_shift"] = {k: v for k, v in evil_dist.items() if k != "max_abs_shift_pp"}
    ident["input"]["impostor"] = {
        "count": 4,
        "histogram": {"lo": -1.0, "hi": 1.0, "bins": 4, "counts": [0, 3, 1, 0]},
    }
    ident["reference"] = {
        "mated": {
            "count": 2,
            "histogram": {"lo": -1.0, "hi": 1.0, "bins": 4, "counts": [0, 0, 0, 2]},
        },
        "impostor": {"count": 0, "histogram": {"counts": [1]}},
    }
    return d


def bare() -> dict[str, Any]:
    """A failed run with every optional section empty: the 'none' branches."""
    d = copy.deepcopy(_load("demo_mask"))
    d["run"]["status"], d["run"]["error"] = "failed", "policy.yaml:4: columns.x: bad"
    d["regulation_refs"]["notes"] = []
    for ds in d["provenance"]["datasets"]:
        ds["files"] = []
    d["provenance"]["policy"] = {"path": None, "sha256": None}
    d["counts"].update(
        {"text_detections": {}, "quarantine_reasons": {}, "rows_conserved": True, "rows_in": 0}
    )
    d["preparation"] = []
    for k in ("pseudonymisation", "encryption", "generalisation", "redaction", "removal", "kept"):
        d["measures"][k] = []
    d["measures"].update(
        {"key_ids": [], "keyring_id": None, "template_binding": {}, "reversible_columns": []}
    )
    d["measures"].pop("template_binding")
    d["bias_examination"] = {"quasi_identifiers": {}, "distributions": {}}
    d["k_anonymity"] = {}
    d["residual_pii"] = {"performed": False, "reason": "run failed before the scan"}
    d["access_events"] = []
    return d


def _variants() -> dict[str, dict[str, Any]]:
    out = {name: _load(name) for name in DEMO}
    out["hostile"] = hostile()
    out["bare"] = bare()
    no_reason = bare()
    no_reason["run"]["error"] = None
    no_reason["residual_pii"] = {}
    no_reason["identity"] = {}
    out["bare_no_reason"] = no_reason
    return out


@pytest.mark.parametrize("name", [*DEMO, "hostile", "bare", "bare_no_reason"])
def test_html_is_byte_identical_to_the_recorded_page(name: str) -> None:
    expected = (GOLDEN / f"{name}.html").read_bytes()
    got = render_html(_variants()[name]).encode("utf-8")
    assert got == expected


def test_hostile_values_never_reach_the_page_as_markup() -> None:
    """The variants exercise the escaping: no value's markup survives as markup."""
    page = render_html(hostile())
    assert "<script>" not in page and "<b>x</b>" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 60
    assert "&#x27;a&#x27;" in page and "&quot;q&quot;" in page


def test_templates_are_package_data() -> None:
    """A non-editable install ships the templates: pyproject's package-data names them."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["biomask"]
    package = root / "src" / "biomask"
    templates = sorted((package / "lineage" / "templates").iterdir())
    assert {t.name for t in templates} >= {"dossier.html.j2", "charts.html.j2", "identity.html.j2"}
    for t in templates:
        rel = t.relative_to(package)
        assert any(rel.match(p.removeprefix("**/")) for p in patterns), f"{rel} not shipped"
