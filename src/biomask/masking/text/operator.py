"""The ``text`` operator: PII inside free text, replaced with the columns' own tokens.

A rule ``{op: text, entities: {PERSON: person, EMAIL_ADDRESS: email}}`` links each entity
type to a token domain. For every linked domain the operator builds, once, the operator of
the policy's column rule with that domain (any table): a detected e-mail is then masked by
the very ``Email`` operator that masks the ``email`` column, and a detected name by the
``pseudonym`` column's name mapper, part by part. That is the contract in DESIGN.md: a
PERSON found in ``operator_notes`` reads exactly as the ``full_name`` column gives that
person, in the shape it was written ("PETROSYAN, Isabel" -> "MARLOW, Kirsten").

How a batch is masked:

1. the column is dictionary-encoded (each distinct note once), each note is cut into
   sentence-like segments (:func:`~biomask.masking.text.engine.segments`) and each distinct
   segment is analysed once: Presidio recognizers over a NER-only spaCy pipeline, in
   chunks, optionally in a process pool (same results either way);
2. the known-value lexicon (values of the linked columns of every table, read in the
   pipeline's pre-pass) finds the job's own names, e-mails, phones and document numbers,
   in any case and order, even where NER misses them;
3. per note: names are also taken from the local parts of e-mail addresses in the note
   and propagated to every other mention of a detected name part; overlapping spans are
   resolved (known values first, then score, then length);
4. replacements are computed in one call per linked domain (one PRF call for all name
   parts of the batch) and spliced in.

Dates are found in every text too (:mod:`~biomask.masking.text.dates`) and, in a row bound
to an entity, shifted by the entity's offset (the one its ``date_shift`` columns get) and
written back in their own format, so a note agrees with its row; a distinct text with
dates is kept as a template and written once per (text, offset) pair. A known name that is
also a common word counts only in a name context
(:func:`~biomask.masking.text.lexicon.name_context`). A cell over ``max_text_bytes`` is
quarantined, not masked.

Names, e-mails, phones, document numbers, card numbers, IBANs, IP addresses, US SSNs and UK
National Insurance numbers are always looked for; a detected type with no linked domain
becomes ``<TYPE>`` or ``***`` (``unlinked: tag | redact``). Nothing detected is ever passed through.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from biomask.errors import PolicyError
from biomask.keys import Keyring
from biomask.masking.operators.names import (
    FAMILY,
    GIVEN,
    INITIAL,
    TITLES,
    NameMapper,
    normalize_name,
    split_name,
)
from biomask.masking.operators.temporal import DateShift
from biomask.masking.registry import (
    Binding,
    Operator,
    OperatorContext,
    dictionary_encode,
    expand,
    get_operator,
    is_string_type,
    register,
)
from biomask.masking.services import RunNeeds, RunServices
from biomask.masking.text.dates import DateMatch, find_dates
from biomask.masking.text.engine import (
    ALWAYS_DETECTED,
    NER_ENTITIES,
    POOL_MIN,
    SUPPORTED_ENTITIES,
    check_model,
    default_workers,
    detect,
    segments,
)
from biomask.masking.text.lexicon import LexHit, Lexicon, name_context, role_of
from biomask.masking.text.words import ROLE_NOUNS, Vocabulary, load_vocabulary, needs_ner
from biomask.policies.models import (
    DateShiftOp,
    EmailOp,
    PhoneOp,
    Policy,
    PseudonymOp,
    TextOp,
    TokenizeOp,
)

__all__ = [
    "LinkedDomain",
    "TextOperator",
    "build_lexicon",
    "lexicon_columns",
    "linked_domains",
]

log = logging.getLogger("biomask.text")

_LEXICON = "text.lexicon"
_DOMAIN_RE = regex.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_WORD = regex.compile(r"[\p{L}\p{M}]+(?:['’][\p{L}\p{M}]+)*")
_ALPHA_RUN = regex.compile(r"[\p{L}]{3,}")
_TITLE_BEFORE = regex.compile(
    r"(?i)\b(?:"
    + "|".join(sorted((regex.escape(t) for t in TITLES), key=len, reverse=True))
    + r")\.?[ \t]+$"
)
_SPACE_GAP = regex.compile(r"[ \t]{1,3}")
_COMMA_GAP = regex.compile(r",[ \t]{1,2}")

#: words that may open a name span but are not the name
_LEADERS = ROLE_NOUNS | TITLES | frozenset({"dear", "hi", "hello", "hey", "attn", "cc"})
# priority of a candidate's origin when spans overlap: dates (a precise pattern, and a
# date must never be read as a phone number), then known values, then the rest
_P_DATE, _P_LEXICON, _P_DETECTED, _P_DERIVED = 3, 2, 1, 0
#: a batch with this much text shows progress (on a terminal) while it is analysed
_PROGRESS_BYTES = 4 << 20


class _Cand(NamedTuple):
    start: int
    end: int
    entity_type: str
    score: float
    priority: int


# -- linked domains ----------------------------------------------------------------------


@dataclass
class LinkedDomain:
    """A token domain a ``text`` rule links to, with the column operator that masks it.

    Attributes
    ----------
    kind:
        ``name`` (a pseudonym column: replaced part by part through :attr:`mapper`),
        ``email``, ``phone`` or ``token`` (anything else: tokenize, hash...).
    op:
        The bound column operator (from the policy's rule with this domain, or the
        entity type's default when no column uses the domain).
    """

    domain: str
    kind: str
    op: Operator[Any]
    table: str
    column: str

    @property
    def mapper(self) -> NameMapper | None:
        """The name mapper of a pseudonym column."""
        return getattr(self.op, "mapper", None)

    def tokens(self, values: list[str]) -> list[str | None]:
        """What the column operator gives these values (None where it refuses one).

        The column operator's own ``__call__`` runs on the values, so the text and the
        column agree by construction, whatever options the rule has.
        """
        if not values:
            return []
        arr = pa.array(values, pa.string())
        ctx = OperatorContext(
            self.table,
            self.column,
            pa.record_batch([arr], names=[self.column]),
            {},
            np.zeros(len(values), dtype=bool),
        )
        try:
            out = self.op(arr, ctx).cast(pa.string()).to_pylist()
        except PolicyError:  # e.g. every detected value too small for a token: none get one
            return [None] * len(values)
        return [None if ctx.bad[i] else v for i, v in enumerate(out)]


def _kind(op_name: str) -> str:
    return {"pseudonym": "name", "email": "email", "phone": "phone"}.get(op_name, "token")


def _default_spec(entity_type: str, domain: str) -> Any:
    """The column rule a linked domain gets when no column of the policy declares it."""
    model: type[Any] = {
        "PERSON": PseudonymOp,
        "EMAIL_ADDRESS": EmailOp,
        "PHONE_NUMBER": PhoneOp,
    }.get(entity_type, TokenizeOp)
    op = model.model_fields["op"].annotation.__args__[0]
    return model.model_validate({"op": op, "domain": domain})


def _build_linked(
    policy: Policy,
    keyring: Keyring,
    domain: str,
    entity_type: str,
    fallback_table: str,
) -> LinkedDomain:
    for table, tspec in policy.table_specs().items():
        for column, spec in tspec.columns.items():
            if spec.op != "text" and spec.domain_name == domain:
                op = get_operator(spec.op)(spec, Binding(policy, keyring, table, column))
                return LinkedDomain(domain, _kind(spec.op), op, table, column)
    spec = _default_spec(entity_type, domain)
    op = get_operator(spec.op)(spec, Binding(policy, keyring, fallback_table, domain))
    return LinkedDomain(domain, _kind(spec.op), op, fallback_table, f"<text:{domain}>")


def linked_domains(policy: Policy) -> dict[str, str]:
    """Every domain any ``text`` rule of the policy links to -> its (first) entity type."""
    out: dict[str, str] = {}
    for tspec in policy.table_specs().values():
        for spec in tspec.columns.values():
            if isinstance(spec, TextOp):
                for etype, domain in spec.entities.items():
                    out.setdefault(domain, etype)
    return out


def lexicon_columns(policy: Policy) -> dict[str, list[str]]:
    """The columns the lexicon pre-pass reads, per table: what a run must pre-read.

    Declared here (:meth:`TextOperator.needs`), read by the caller (the pipeline reads them
    from its sources, once, and hands them over in :class:`RunServices`): the operator
    itself does no I/O. A column qualifies when its rule's domain is one a ``text`` rule
    links to.
    """
    linked = linked_domains(policy)
    out: dict[str, list[str]] = {}
    for table, tspec in policy.table_specs().items():
        cols = [
            column
            for column, spec in tspec.columns.items()
            if spec.op != "text" and spec.domain_name is not None and spec.domain_name in linked
        ]
        if cols:
            out[table] = cols
    return out


def build_lexicon(policy: Policy, keyring: Keyring, services: RunServices) -> Lexicon:
    """The run's lexicon, from the pre-read linked columns of every table.

    Only the columns whose rule's domain a ``text`` rule links to are looked at, each
    through the operator its own column rule gives it, so a known name is remembered with
    the pseudonym the column gets. A table the run could not read twice (JSON Lines on
    standard input) is listed as skipped, with a warning: its values are then found by
    NER and patterns only. Every ``text`` operator of a run shares the one lexicon
    (:meth:`RunServices.shared`).
    """
    lex = Lexicon()
    linked = linked_domains(policy)
    for table, tspec in policy.table_specs().items():
        cols: list[tuple[str, LinkedDomain]] = []
        for column, spec in tspec.columns.items():
            domain = spec.domain_name
            if spec.op == "text" or domain is None or domain not in linked:
                continue
            op = get_operator(spec.op)(spec, Binding(policy, keyring, table, column))
            cols.append((column, LinkedDomain(domain, _kind(spec.op), op, table, column)))
        if not cols:
            continue
        if table in services.unreadable:
            lex.skipped.append(table)
            log.warning(
                "table %s is read from standard input, which cannot be read twice: its "
                "values are not in the text lexicon (names in notes rely on NER alone)",
                table,
            )
            continue
        preread = services.preread.get(table)
        if preread is None:
            continue
        present = [c for c, _ in cols if c in preread.column_names]
        for batch in preread.select(present).to_batches():
            names = batch.schema.names
            for column, link in cols:
                if column in names:
                    lex.add(link.domain, link.kind, batch.column(column), link.mapper)
    lex.prepared = True
    return lex


# -- the operator ------------------------------------------------------------------------


@register
class TextOperator(Operator[TextOp]):
    """Detect PII in free text and replace it with the linked domains' tokens.

    Attributes
    ----------
    workers:
        Processes for detection on large batches (``BIOMASK_TEXT_WORKERS``, default: the
        usable cores). Results do not depend on it.
    pool_min:
        Distinct segments a batch needs before the pool is used.
    """

    name = "text"
    #: dates in a row's text shift by the row's entity offset: masked after entity columns
    needs_entities = True

    def __init__(self, spec: TextOp, binding: Binding) -> None:
        super().__init__(spec, binding)
        policy = binding.policy
        field = (
            f"tables.{binding.table}.columns.{binding.column}"
            if policy.is_multi_table
            else f"columns.{binding.column}"
        )
        line = (
            policy.line_of("tables", binding.table, "columns", binding.column, "entities")
            if policy.is_multi_table
            else policy.line_of("columns", binding.column, "entities")
        )
        for etype, domain in spec.entities.items():
            if etype not in SUPPORTED_ENTITIES:
                raise PolicyError(
                    f"entity type '{etype}' is not detected by biomask (supported: "
                    f"{', '.join(sorted(SUPPORTED_ENTITIES))})",
                    path=policy.source,
                    line=line,
                    field=f"{field}.entities",
                )
            if not _DOMAIN_RE.match(domain):
                raise PolicyError(
                    f"'{domain}' is not a valid domain name for entity {etype}",
                    path=policy.source,
                    line=line,
                    field=f"{field}.entities.{etype}",
                )
        self.model = policy.nlp.model
        self.language = policy.nlp.language
        check_model(
            self.model,
            language=self.language,
            path=policy.source,
            line=policy.line_of("nlp", "model") or policy.line_of("nlp"),
        )
        self.links: dict[str, str] = dict(spec.entities)
        self.detect_types: tuple[str, ...] = tuple(sorted(set(self.links) | set(ALWAYS_DETECTED)))
        self.linked: dict[str, LinkedDomain] = {}
        for etype, domain in self.links.items():
            if domain not in self.linked:
                self.linked[domain] = _build_linked(
                    policy, binding.keyring, domain, etype, binding.table
                )
        self._type_of_domain = {d: t for t, d in reversed(list(self.links.items()))}
        self.person_domain = self.links.get("PERSON")
        self._ner_types = NER_ENTITIES.intersection(self.detect_types)
        self._vocabulary: Vocabulary | None = None
        #: share of the last batch's distinct segments that went through the NER model
        self.last_ner_share = 1.0
        #: the run's known values; empty (NER and patterns only) until :meth:`prepare`
        self.lexicon = Lexicon()
        self.workers = default_workers()
        self.pool_min = POOL_MIN
        self.date_entity, self.date_shift = self._bind_dates(spec, binding, field)
        self._dates: list[dict[int, DateMatch]] = []

    def needs(self) -> RunNeeds:
        """The linked columns of every table, for the lexicon (:func:`lexicon_columns`)."""
        cols = lexicon_columns(self.binding.policy)
        return RunNeeds({t: tuple(c) for t, c in cols.items()})

    def prepare(self, services: RunServices) -> None:
        """Take the run's lexicon, built once per run from the pre-read columns."""
        policy, keyring = self.binding.policy, self.binding.keyring
        key = (_LEXICON, policy.sha256, keyring.keyring_id, keyring.token_key_id)
        self.lexicon = services.shared(key, lambda: build_lexicon(policy, keyring, services))

    def _bind_dates(
        self, spec: TextOp, binding: Binding, field: str
    ) -> tuple[str | None, DateShift | None]:
        """The entity whose offset moves this column's dates, and its date_shift operator.

        An explicit ``entity`` wins; otherwise the one entity whose key column this table
        lists (none when there are zero or several: then ``shift_by`` or ``dates`` decide).
        The operator is built from the entity alone, so its offsets are the ones every
        ``date_shift`` column of that entity gets.
        """
        policy = binding.policy
        columns = policy.table_specs()[binding.table].columns
        if spec.shift_by is not None and spec.shift_by not in columns:
            line = (
                policy.line_of("tables", binding.table, "columns", binding.column, "shift_by")
                if policy.is_multi_table
                else policy.line_of("columns", binding.column, "shift_by")
            )
            raise PolicyError(
                f"shift_by names column '{spec.shift_by}', which table '{binding.table}' "
                "does not list (it must be an integer column of days in the same table)",
                path=policy.source,
                line=line,
                field=f"{field}.shift_by",
            )
        entity = spec.entity
        if entity is None:
            here = [e for e, es in policy.entities.items() if es.column in columns]
            entity = here[0] if len(here) == 1 else None
        if entity is None:
            return None, None
        op = DateShiftOp.model_validate({"op": "date_shift", "entity": entity})
        return entity, DateShift(op, binding)

    @property
    def vocabulary(self) -> Vocabulary:
        """The model's ordinary words, loaded on first use (cached per model).

        Not at construction: reading them imports spaCy (about 3 s here), and a Masker
        built only to check a policy or derive the output schema (the Ray driver's, say)
        never masks a note.
        """
        if self._vocabulary is None:
            self._vocabulary = load_vocabulary(self.model, self.language)
        return self._vocabulary

    @property
    def key_id(self) -> str | None:
        for link in self.linked.values():
            kid = link.op.key_id
            if kid is not None:
                return kid
        return None

    def check(self, dtype: pa.DataType) -> str | None:
        return None if is_string_type(dtype) else "text takes string columns"

    def __call__(self, values: pa.Array, ctx: OperatorContext) -> pa.Array:
        if len(values) == 0 or values.null_count == len(values):
            return values
        enc = dictionary_encode(values)
        limit = self.spec.max_text_bytes
        sizes = pc.binary_length(enc.dictionary.cast(pa.string())).to_numpy(zero_copy_only=False)
        too_big = sizes > limit
        if too_big.any():
            # a cell this large is not a note: masking it would take minutes and be as
            # unsure as any text that long; the row goes to quarantine, never through
            rows = pc.is_in(enc.indices, pa.array(np.flatnonzero(too_big))).fill_null(False)
            ctx.quarantine(
                rows, f"text cell larger than max_text_bytes ({limit:,} bytes); not masked"
            )
        notes = enc.dictionary.to_pylist()
        for i in np.flatnonzero(too_big):
            notes[int(i)] = ""
        templates, found = self._templates(notes, self.find(notes))
        idx = enc.indices.drop_null().to_numpy(zero_copy_only=False)
        uses = np.bincount(idx, minlength=len(notes))
        totals: Counter[str] = Counter()
        for n, c in zip(uses.tolist(), found, strict=True):
            for etype, k in c.items():
                totals[etype] += n * k
        for etype in sorted(totals):
            ctx.count(f"text:{etype}", totals[etype])
        plain = [t if isinstance(t, str) else None for t in templates]
        out = expand(pa.array(plain, pa.string()), enc.indices)
        dated = np.array([not isinstance(t, str) for t in templates], dtype=bool)
        if dated.any():
            out = self._shift_dates(out, enc.indices, templates, dated, ctx)
        return out.cast(values.type)

    def _row_days(self, ctx: OperatorContext) -> list[int | None]:
        """Days to shift each row's dates by: the entity's offset, else ``shift_by``'s
        value, else None (the rule's ``dates`` setting applies)."""
        n = ctx.batch.num_rows
        days: list[int | None] = [None] * n
        if self.date_shift is not None and self.date_entity is not None:
            tokens = ctx.entity_tokens.get(self.date_entity)
            if tokens is not None:
                ds = self.date_shift
                column = self.binding.policy.entities[self.date_entity].column
                got = ctx.memo.get(
                    ("date_shift", self.date_entity, ds.max_days),
                    lambda: ds.offsets(tokens, ctx.memo.peek(("tokens", column))),
                )
                days = got.to_pylist()
        col = self.spec.shift_by
        if col is not None:
            if col not in ctx.batch.schema.names:  # pragma: no cover - checked on binding
                raise PolicyError(f"shift_by column '{col}' is not in the input")
            by = ctx.batch.column(col)
            if not pa.types.is_integer(by.type):
                raise PolicyError(
                    f"shift_by column '{col}' is {by.type}, not an integer column of days",
                    path=self.binding.policy.source,
                    field=f"columns.{self.binding.column}.shift_by",
                )
            extra = by.to_pylist()
            days = [d if d is not None else extra[i] for i, d in enumerate(days)]
        return days

    def _shift_dates(
        self,
        out: pa.Array,
        indices: pa.Array,
        templates: list[str | list[str | DateMatch]],
        dated: np.ndarray,
        ctx: OperatorContext,
    ) -> pa.Array:
        """Fill in the dates of the rows whose text has any, with each row's offset.

        Only those rows are visited, and each distinct (text, offset) pair is written once.
        """
        idx = indices.fill_null(0).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(dated[idx] & np.asarray(indices.is_valid(), dtype=bool))
        days = self._row_days(ctx)
        done: dict[tuple[int, int | None], str] = {}
        repl: list[str] = []
        for r in rows.tolist():
            key = (int(idx[r]), days[r])
            text = done.get(key)
            if text is None:
                template = templates[key[0]]
                assert not isinstance(template, str)
                text = done[key] = self._render(template, key[1])
            repl.append(text)
        mask = np.zeros(len(out), dtype=bool)
        mask[rows] = True
        return pc.replace_with_mask(out, pa.array(mask), pa.array(repl, pa.string()))

    def _render(self, template: list[str | DateMatch], days: int | None) -> str:
        """A text with dates: shifted by ``days``, else kept or redacted (``dates``)."""
        out: list[str] = []
        for piece in template:
            if isinstance(piece, str):
                out.append(piece)
            elif days is not None:
                out.append(piece.shifted(days))
            elif self.spec.dates == "keep":
                out.append(piece.written)
            else:
                out.append("***" if self.spec.unlinked == "redact" else "<DATE>")
        return "".join(out)

    # -- the work, on Python strings ---------------------------------------------------
    def mask_texts(self, notes: list[str]) -> tuple[list[str], list[Counter[str]]]:
        """Mask distinct texts; returns them masked and, per text, detections by type.

        With no row to take an offset from, dates follow the rule's ``dates`` setting.
        """
        templates, found = self._templates(notes, self.find(notes))
        out = [t if isinstance(t, str) else self._render(t, None) for t in templates]
        return out, found

    def find(self, notes: list[str]) -> list[list[_Cand]]:
        """The final, non-overlapping PII spans of each text."""
        seg_ids: dict[str, int] = {}
        layout: list[list[tuple[int, int]]] = []  # per note: (offset, segment id)
        for note in notes:
            row = []
            for a, b in segments(note):
                seg = note[a:b]
                sid = seg_ids.setdefault(seg, len(seg_ids))
                row.append((a, sid))
            layout.append(row)
        seg_texts = list(seg_ids)
        known: list[list[LexHit]] = (
            [
                [h for h in hits if h.domain in self._type_of_domain]
                for hits in self.lexicon.find(seg_texts, self.vocabulary.is_wordlike)
            ]
            if len(self.lexicon)
            else [[] for _ in seg_texts]
        )
        ner: list[bool] | None = None
        if self._ner_types == {"PERSON"}:
            ner = [
                needs_ner(t, [(h.start, h.end) for h in hits if not h.weak], self.vocabulary)
                for t, hits in zip(seg_texts, known, strict=True)
            ]
        self.last_ner_share = (sum(ner) / len(ner)) if ner else 1.0
        report = _Progress.start(self.binding.column, sum(len(n) for n in notes))
        detected = detect(
            seg_texts,
            model=self.model,
            language=self.language,
            entities=self.detect_types,
            threshold=self.spec.score_threshold,
            workers=self.workers,
            pool_min=self.pool_min,
            ner=ner,
            progress=report,
        )
        if report is not None:
            report.close()
        out: list[list[_Cand]] = []
        self._dates = []
        order = self.spec.date_order
        for note, row in zip(notes, layout, strict=True):
            cands: list[_Cand] = []
            dates = {d.start: d for d in find_dates(note, order)}
            self._dates.append(dates)
            cands.extend(_Cand(d.start, d.end, "DATE", 1.0, _P_DATE) for d in dates.values())
            for off, sid in row:
                # a known name that is also a word, with nothing around it that says
                # "name" (weak), counts only where a detector found a name too
                persons = [(d.start, d.end) for d in detected[sid] if d.entity_type == "PERSON"]
                for d in detected[sid]:
                    c = _Cand(off + d.start, off + d.end, d.entity_type, d.score, _P_DETECTED)
                    if d.entity_type in NER_ENTITIES:
                        trimmed = _trim_ner(note, c)
                        if trimmed is None:
                            continue
                        c = trimmed
                    cands.append(c)
                for h in known[sid]:
                    if h.weak and not any(a < h.end and h.start < b for a, b in persons):
                        continue
                    etype = self._type_of_domain[h.domain]
                    cands.append(_Cand(off + h.start, off + h.end, etype, 1.0, _P_LEXICON))
            out.append(self._resolve_note(note, cands))
        return out

    def _resolve_note(self, note: str, cands: list[_Cand]) -> list[_Cand]:
        """Final spans of one note from all candidates (see the module docstring, step 3).

        Other types are resolved first: a name candidate that overlaps an e-mail, phone
        or document number loses. Overlapping name candidates are then joined rather than
        ranked: the lexicon may know "Newman" and the NER "Jillian Newman", and both
        halves are one person.
        """
        others = _select([c for c in cands if c.entity_type != "PERSON"])
        taken = _Occupied(len(note))
        for o in others:
            taken.take(o.start, o.end)
        persons = [c for c in cands if c.entity_type == "PERSON" and not taken.hit(c.start, c.end)]
        chosen = sorted(others + _union_persons(note, persons, self.vocabulary))
        if "PERSON" not in self.detect_types:
            return chosen
        # names written in e-mail local parts: "lope.rodenas@..." -> "Lope", "Ródenas"
        runs: set[str] = set()
        for c in chosen:
            if c.entity_type == "EMAIL_ADDRESS":
                local = note[c.start : c.end].rpartition("@")[0]
                runs.update(normalize_name(r) for r in _ALPHA_RUN.findall(local))
        # every other mention of a detected name part; a lower-case mention counts when
        # the name was itself written in lower case, or is no ordinary word
        names: set[str] = set()
        lower: set[str] = set()
        for c in chosen:
            if c.entity_type != "PERSON":
                continue
            for m in _WORD.finditer(note, c.start, c.end):
                n = normalize_name(m.group())
                if len(m.group()) > 1 and n not in TITLES:
                    names.add(n)
                    if m.group().islower() or not self.vocabulary.is_ordinary(m.group()):
                        lower.add(n)
        if not runs and not names:
            return chosen
        covered = np.zeros(len(note) + 1, dtype=bool)
        for c in chosen:
            covered[c.start : c.end] = True
        extra: list[_Cand] = []
        for m in _WORD.finditer(note):
            w = m.group()
            if covered[m.start()] or len(w) < 2:
                continue
            n = normalize_name(w)
            if n in TITLES or n in ROLE_NOUNS or (not w[0].isupper() and n not in lower):
                continue
            if self.vocabulary.is_wordlike(w) and not name_context(note, m.start(), m.end(), w):
                continue  # "Hope Bell signed. The bell rang." keeps the bell
            if n in names:
                extra.append(_Cand(m.start(), m.end(), "PERSON", 0.7, _P_DERIVED))
            elif not w[0].isupper():
                continue
            elif len(n) >= 3 and any(
                n == r or (len(n) >= 4 and (r.startswith(n) or r.endswith(n))) for r in runs
            ):
                extra.append(_Cand(m.start(), m.end(), "PERSON", 0.6, _P_DERIVED))
        return sorted(chosen + extra) if extra else chosen

    # -- replacement -------------------------------------------------------------------
    def _templates(
        self, notes: list[str], spans: list[list[_Cand]]
    ) -> tuple[list[str | list[str | DateMatch]], list[Counter[str]]]:
        """Each text masked: a string, or (when it holds dates, which depend on the row's
        offset) a list of masked text pieces and :class:`DateMatch` es."""
        # pieces per note: (start, end, key into the replacement tables)
        pieces: list[list[tuple[int, int, Callable[[], str]]]] = []
        name_parts: dict[str, list[tuple[str, str]]] = {}
        values: dict[str, dict[str, int]] = {d: {} for d in self.linked}
        found: list[Counter[str]] = []
        resolved: dict[tuple[str, int], str] = {}
        self._lookup_names(notes, spans)
        date_slots: dict[tuple[int, int], DateMatch] = {}
        for k_note, (note, cs) in enumerate(zip(notes, spans, strict=True)):
            row: list[tuple[int, int, Callable[[], str]]] = []
            count: Counter[str] = Counter()
            cs = _merge_persons(note, cs, self._family_first)
            roles_here = self._note_roles(note, cs)
            for c in cs:
                if c.entity_type == "DATE":
                    date_slots[(k_note, c.start)] = self._dates[k_note][c.start]
                    row.append((c.start, c.end, _const("")))
                    count["DATE"] += 1
                    continue
                domain = self.links.get(c.entity_type)
                link = self.linked.get(domain) if domain else None
                if link is None:
                    tag = "***" if self.spec.unlinked == "redact" else f"<{c.entity_type}>"
                    row.append((c.start, c.end, _const(tag)))
                    count[c.entity_type] += 1
                    continue
                if link.kind == "name" and link.mapper is not None:
                    parts = self._person_parts(note, c, roles_here, link.domain)
                    if not parts:
                        continue
                    for a, b, role, fixed in parts:
                        if fixed is not None:
                            row.append((a, b, _const(fixed)))
                        else:
                            todo = name_parts.setdefault(link.domain, [])
                            row.append((a, b, _lookup(resolved, (f"n:{link.domain}", len(todo)))))
                            todo.append((role, note[a:b]))
                else:
                    table = values[link.domain]
                    k = table.setdefault(note[c.start : c.end], len(table))
                    row.append((c.start, c.end, _lookup(resolved, (link.domain, k))))
                count[c.entity_type] += 1
            pieces.append(row)
            found.append(count)
        # one call per domain for the whole batch
        for domain, todo in name_parts.items():
            mapper = self.linked[domain].mapper
            assert mapper is not None
            for k, v in enumerate(mapper.map_parts(todo)):
                resolved[(f"n:{domain}", k)] = v
        for domain, table in values.items():
            if not table:
                continue
            link = self.linked[domain]
            etype = self._type_of_domain.get(domain, "PII")
            for k, tok in enumerate(link.tokens(list(table))):
                resolved[(domain, k)] = tok if tok is not None else f"<{etype}>"
        out: list[str | list[str | DateMatch]] = []
        for k_note, (note, row) in enumerate(zip(notes, pieces, strict=True)):
            if not row:
                out.append(note)
                continue
            buf: list[str | DateMatch] = []
            last = 0
            for a, b, get in sorted(row, key=lambda p: p[0]):
                buf.append(note[last:a])
                slot = date_slots.get((k_note, a))
                if slot is not None:
                    buf.append(slot)
                else:
                    buf.append(get())
                last = b
            buf.append(note[last:])
            if any(isinstance(p, DateMatch) for p in buf):
                out.append(buf)
            else:
                out.append("".join(p for p in buf if isinstance(p, str)))
        return out, found

    def _lookup_names(self, notes: list[str], spans: list[list[_Cand]]) -> None:
        """Ask the lexicon, in one call each, for the roles of every word in the batch's
        name spans and the pseudonym initials of every "I. Family" pair in them."""
        self._roles: dict[str, int] = {}
        self._initials: dict[tuple[str, str], str | None] = {}
        domain = self.person_domain
        if domain is None or domain not in self.lexicon.kinds:
            return
        words: set[str] = set()
        pairs: set[tuple[str, str]] = set()
        for note, cs in zip(notes, spans, strict=True):
            ws = [
                m.group()
                for c in cs
                if c.entity_type == "PERSON"
                for m in _WORD.finditer(note, c.start, c.end)
            ]
            words.update(ws)
            for k, w in enumerate(ws):
                if len(w) == 1:
                    pairs.update((f, w) for f in ws[k + 1 : k + 3] if len(f) > 1)
        self._roles = self.lexicon.name_roles(domain, words)
        self._initials = self.lexicon.initials(domain, pairs)

    def _role(self, domain: str, word: str) -> str | None:
        bits = self._roles.get(word) if domain == self.person_domain else None
        if bits is None:
            bits = self.lexicon.name_role(domain, word)
        return role_of(bits)

    def _family_first(self, first: str, second: str) -> bool:
        """Whether "First, Second" is "Family, Given" (capitals, or the lexicon says so)."""
        if first.isupper() and len(first) > 1:
            return True
        if self.person_domain is None:
            return False
        a = self._role(self.person_domain, first)
        b = self._role(self.person_domain, second)
        return a == FAMILY and b == GIVEN

    def _note_roles(self, note: str, cs: list[_Cand]) -> dict[str, str]:
        """Roles of name words in this note's multi-word names, for lone mentions."""
        roles: dict[str, str] = {}
        for c in cs:
            if c.entity_type != "PERSON":
                continue
            words = split_name(note[c.start : c.end])
            if sum(r != INITIAL for *_, r in words) < 2:
                continue
            for a, b, r in words:
                if r != INITIAL:
                    roles.setdefault(normalize_name(note[c.start + a : c.start + b]), r)
        return roles

    def _person_parts(
        self, note: str, c: _Cand, roles_here: dict[str, str], domain: str
    ) -> list[tuple[int, int, str, str | None]]:
        """(start, end, role, fixed replacement or None) for each name word of a span."""
        text = note[c.start : c.end]
        words = split_name(text)
        if not words:
            return []
        full = [(c.start + a, c.start + b, r) for a, b, r in words]
        names = [w for w in full if w[2] != INITIAL]
        if len(names) == 1 and "," not in text:
            a, b, role = names[0]
            word = note[a:b]
            titled = len(split_name(text)) < len(_WORD.findall(text)) or bool(
                _TITLE_BEFORE.search(note, max(0, c.start - 12), c.start)
            )
            known = self._role(domain, word)
            if known is not None:
                role = known
            elif normalize_name(word) in roles_here:
                role = roles_here[normalize_name(word)]
            elif titled or len(full) > 1:
                role = FAMILY
            else:
                role = GIVEN
            full = [(x, y, role if (x, y) == (a, b) else r) for x, y, r in full]
        elif len(names) > 1 and "," not in text:
            # the job's own names know their roles, in whatever order they are written
            # ("petrosyan isabel"); positions decide only for words the lexicon does not
            # know or knows in both roles (and a comma always means "Family, Given")
            full = [
                (
                    x,
                    y,
                    r if r == INITIAL else self._role(domain, note[x:y]) or r,
                )
                for x, y, r in full
            ]
        out: list[tuple[int, int, str, str | None]] = []
        for i, (a, b, role) in enumerate(full):
            fixed = None
            if role == INITIAL:
                family = next((note[x:y] for x, y, r in full[i + 1 :] if r == FAMILY), None)
                if family is not None:
                    key = (family, note[a:b])
                    got = (
                        self._initials[key]
                        if key in self._initials
                        else self.lexicon.initial_for(domain, *key)
                    )
                    if got is not None:
                        fixed = got if note[a:b].isupper() else got.lower()
            out.append((a, b, role, fixed))
        return out


class _Progress:
    """One line on standard error, updated at most every two seconds, while a batch with
    a lot of text (a large cell, or many notes) is analysed; nothing in a pipe."""

    EVERY = 2.0

    def __init__(self, column: str) -> None:
        self.column = column
        self.began = self.last = time.monotonic()
        self.shown = False

    @classmethod
    def start(cls, column: str, chars: int) -> _Progress | None:
        if chars < _PROGRESS_BYTES or os.environ.get("BIOMASK_NO_PROGRESS"):
            return None
        try:
            if not sys.stderr.isatty():
                return None
        except (AttributeError, ValueError):  # a closed or replaced stream
            return None
        return cls(column)

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < self.EVERY and done < total:
            return
        self.last = now
        self.shown = True
        sys.stderr.write(
            f"\rbiomask: text {self.column}: {done:,}/{total:,} sentences "
            f"({now - self.began:.0f} s)"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _const(value: str) -> Callable[[], str]:
    return lambda: value


def _lookup(table: dict[tuple[str, int], str], key: tuple[str, int]) -> Callable[[], str]:
    return lambda: table[key]


class _Occupied:
    """Characters already covered by chosen spans: an overlap test in the span's length,
    not in the number of spans chosen (a large cell has hundreds of thousands)."""

    def __init__(self, n: int) -> None:
        self.mask = bytearray(n + 1)

    def take(self, a: int, b: int) -> None:
        self.mask[a:b] = b"\x01" * (b - a)

    def hit(self, a: int, b: int) -> bool:
        return self.mask.find(1, a, b) != -1


def _select(cands: list[_Cand]) -> list[_Cand]:
    """Non-overlapping spans: known values first, then higher score, then longer."""
    order = sorted(cands, key=lambda c: (-c.priority, -c.score, c.start - c.end, c.start))
    chosen: list[_Cand] = []
    taken = _Occupied(max((c.end for c in cands), default=0))
    for c in order:
        if not taken.hit(c.start, c.end):
            chosen.append(c)
            taken.take(c.start, c.end)
    return sorted(chosen, key=lambda c: c.start)


def _trim_ner(note: str, c: _Cand) -> _Cand | None:
    """Cut a NER name span to its capitalized words (if any) on its first line.

    "Isabel Petrosyan presented" -> "Isabel Petrosyan"; a span running over a line break
    (a signature's name and the address under it) keeps its first line.
    """
    if c.entity_type != "PERSON":
        return c
    nl = note.find("\n", c.start, c.end)
    end_limit = nl if nl > c.start else c.end
    words = list(_WORD.finditer(note, c.start, end_limit))
    if not words:
        return None
    # a lower-cased name (the engine kept it: a word in it is not an ordinary word)
    words = [m for m in words if m.group()[0].isupper()] or words
    end = words[-1].end()
    # keep the '.' of a trailing initial ("Smith, J.") inside the span
    if note[end : end + 1] == "." and end - words[-1].start() == 1:
        end += 1
    return c._replace(start=words[0].start(), end=end)


def _union_persons(note: str, persons: list[_Cand], vocabulary: Vocabulary) -> list[_Cand]:
    """Join overlapping name candidates into one span per person.

    Then cut what is not the name: a leading role noun ("Applicant"), and, around the
    known part of a name (a lexicon hit), lower-case ordinary words that a heuristic took
    along ("caroline verhaeghe presented" -> "caroline verhaeghe").
    """
    clusters: list[list[_Cand]] = []
    reach = -1  # the furthest end of the last cluster
    for c in sorted(persons):
        if clusters and c.start < reach:
            clusters[-1].append(c)
            reach = max(reach, c.end)
        else:
            clusters.append([c])
            reach = c.end
    out: list[_Cand] = []
    for cl in clusters:
        start, end = min(c.start for c in cl), max(c.end for c in cl)
        words = list(_WORD.finditer(note, start, end))
        known = [c for c in cl if c.priority == _P_LEXICON]
        if known:
            ks, ke = min(c.start for c in known), max(c.end for c in known)

            def loose(m: Any) -> bool:
                w = m.group()
                return w.islower() and vocabulary.is_ordinary(w)

            while words and words[0].end() <= ks and loose(words[0]):
                words.pop(0)
            while words and words[-1].start() >= ke and loose(words[-1]):
                words.pop()
        # "Dear Mr Szymanski" -> "Szymanski": greetings, role nouns and titles stay text
        # (a title before the span still tells the name's role, see _person_parts)
        while len(words) > 1 and normalize_name(words[0].group()) in _LEADERS:
            words.pop(0)
        if not words or (
            len(words) == 1 and normalize_name(words[0].group()) in ROLE_NOUNS | TITLES
        ):
            continue  # "Applicant" or "Ms" alone is nobody
        first, last = words[0].start(), words[-1].end()
        # keep the '.' of a trailing initial ("Smith, J.") inside the span
        if last < end and note[last : last + 1] == "." and last - words[-1].start() == 1:
            last += 1
        score, priority = max(c.score for c in cl), max(c.priority for c in cl)
        out.append(_Cand(first, last, "PERSON", score, priority))
    return out


def _merge_persons(
    note: str, cs: list[_Cand], family_first: Callable[[str, str], bool]
) -> list[_Cand]:
    """Join adjacent PERSON spans ("Lope" + "Ródenas"; "PETROSYAN" + ", " + "Isabel").

    Roles are positional within a span, so two halves of one name must be one span.
    """
    out: list[_Cand] = []
    for c in cs:
        if out and c.entity_type == "PERSON" and out[-1].entity_type == "PERSON":
            prev = out[-1]
            gap = note[prev.end : c.start]
            join = _SPACE_GAP.fullmatch(gap) is not None
            if not join and _COMMA_GAP.fullmatch(gap) is not None:
                first = note[prev.start : prev.end].split()
                second = note[c.start : c.end].split()
                join = len(first) == 1 and len(second) == 1 and family_first(first[0], second[0])
            if join:
                out[-1] = prev._replace(end=c.end, score=max(prev.score, c.score))
                continue
        out.append(c)
    return out
