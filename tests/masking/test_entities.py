"""Subject key names: the subject's token under the pinned entity key, from ids or tokens."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from biomask.errors import BiomaskError
from biomask.keys import Keyring
from biomask.masking import Masker
from biomask.masking.entities import SubjectNames
from biomask.policies import parse_policy


def _policy(rule: str) -> object:
    return parse_policy(
        "version: 1\ndataset: d\nentities:\n  subject: {column: sid}\ncolumns:\n"
        f"  sid: {rule}\n  t: {{op: encrypt, entity: subject, per_entity_key: true}}\n"
    )


RULES = {
    "shape": ("{op: tokenize, domain: subject}", "SUBJ-{:08d}"),
    "no-prefix": ("{op: tokenize, domain: subject, prefix: null}", "{:09d}"),
    "literal-prefix": ("{op: tokenize, domain: subject, prefix: 'P'}", "P{:07d}X"),
    "luhn": ("{op: tokenize, domain: subject, format: luhn}", "luhn"),
    "reversible": ("{op: tokenize, domain: subject, reversible: true}", "AB{:07d}"),
}


def _luhn(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return body + str((10 - total % 10) % 10)


def _ids(kind: str, numbers: list[int]) -> list[str]:
    fmt = RULES[kind][1]
    if fmt == "luhn":
        return [_luhn(f"{n:015d}") for n in numbers]
    return [fmt.format(n) for n in numbers]


@pytest.fixture(scope="module")
def rotated() -> Keyring:
    ring = Keyring.ephemeral()
    ring.rotate()
    ring.rotate_tokens()
    assert ring.token_key_id != ring.entity_key_id
    return ring


@pytest.mark.parametrize("kind", sorted(RULES))
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(numbers=st.lists(st.integers(0, 9_999_999), min_size=1, max_size=40, unique=True))
def test_a_token_made_under_any_key_names_the_subject_its_id_names(
    rotated: Keyring, kind: str, numbers: list[int]
) -> None:
    """Token under the current (or an old) token key -> id -> token under the entity key:
    the same name as the id gives directly, for every invertible rule."""
    pol = _policy(RULES[kind][0])
    ids = pa.array(_ids(kind, numbers))
    names = SubjectNames(pol, rotated)  # type: ignore[arg-type]
    want = names.from_values("subject", ids)
    assert want.null_count == 0
    for kid in rotated.key_ids:  # every key a token may have been made under
        view = rotated.tokens_under(kid)
        tokens = Masker(pol, view).mask_batch(pa.RecordBatch.from_pydict(  # type: ignore[arg-type]
            {"sid": ids, "t": pa.array([b"x"] * len(ids))}
        )).output.column("sid")  # fmt: skip
        assert names.from_tokens("subject", tokens, kid).equals(want)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(numbers=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=40, unique=True))
def test_integer_ids_invert_too(rotated: Keyring, numbers: list[int]) -> None:
    for rule in ("{op: tokenize, domain: s}", "{op: tokenize, domain: s, reversible: true}"):
        pol = _policy(rule)
        ids = pa.array(numbers, pa.int64())
        names = SubjectNames(pol, rotated)  # type: ignore[arg-type]
        tokens = (
            Masker(pol, rotated)
            .mask_batch(  # type: ignore[arg-type]
                pa.RecordBatch.from_pydict({"sid": ids, "t": pa.array([b"x"] * len(ids))})
            )
            .output.column("sid")
        )
        assert tokens.type == pa.int64()
        got = names.from_tokens("subject", tokens, rotated.token_key_id)
        assert got.equals(names.from_values("subject", ids))
        assert not got.equals(tokens)


def test_a_string_that_is_no_token_of_the_rule_names_nobody(rotated: Keyring) -> None:
    pol = _policy(RULES["luhn"][0])
    names = SubjectNames(pol, rotated)  # type: ignore[arg-type]
    bad = _ids("luhn", [7])[0][:-1] + "0" if _ids("luhn", [7])[0][-1] != "0" else "1"
    got = names.from_tokens("subject", pa.array([bad, "12"]), rotated.token_key_id)
    assert got.to_pylist() == [None, None]


def test_hash_tokens_cannot_be_inverted(rotated: Keyring) -> None:
    pol = _policy("{op: hash, domain: subject, length: 32}")
    with pytest.raises(BiomaskError, match="whose tokens cannot be turned back into ids"):
        SubjectNames(pol, rotated).from_tokens(  # type: ignore[arg-type]
            "subject", pa.array(["ab" * 16]), rotated.token_key_id
        )


def test_names_stay_while_tokens_rotate(tmp_path: Path) -> None:
    """Before rotate-tokens the name is the token (no extra work); after it, a subject's
    new rows name the same key as its old rows, though their tokens differ."""
    pol = _policy(RULES["shape"][0])
    ring = Keyring.create(tmp_path / "k.json", "pw")
    ids = [f"SUBJ-{i % 4:08d}" for i in range(12)]
    b = pa.RecordBatch.from_pydict({"sid": ids, "t": pa.array([b"tpl"] * 12)})

    def heads(out: pa.RecordBatch) -> list[bytes]:  # the data key ids the headers name
        return [bytes(v)[9 : 9 + bytes(v)[8]] for v in out.column("t").to_pylist()]

    before = Masker(pol, ring).mask_batch(b).output  # type: ignore[arg-type]
    assert [h.split(b":", 2)[2].decode() for h in heads(before)] == before.column("sid").to_pylist()
    ring.rotate()
    ring.rotate_tokens()
    ring = Keyring.open(tmp_path / "k.json", "pw")
    after = Masker(pol, ring).mask_batch(b).output  # type: ignore[arg-type]
    assert not set(after.column("sid").to_pylist()) & set(before.column("sid").to_pylist())
    assert heads(after) == heads(before)
    assert len(set(heads(after))) == 4
