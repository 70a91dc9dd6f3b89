"""Erase reaches every key a subject ever had, through rotations of both kinds, and only it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from biomask.errors import BiomaskError
from biomask.keys import Keyring
from biomask.masking import Masker, Unmasker
from biomask.masking.entities import SubjectNames
from biomask.operations import erase_subject, rekey, rotate_keys, rotate_token_keys
from biomask.policies import parse_policy

POLICY = parse_policy(
    """\
version: 1
dataset: enrol
entities:
  subject: {column: sid}
columns:
  sid: {op: tokenize, domain: subject}
  face: {op: encrypt, entity: subject, per_entity_key: true}
"""
)
IDS = [f"SUBJ-{i:08d}" for i in (11, 22, 33, 44)]


def batch(ids: list[str] = IDS) -> pa.RecordBatch:
    rng = np.random.default_rng(len(ids))
    faces = [rng.bytes(64) for _ in ids]
    return pa.RecordBatch.from_pydict({"sid": ids, "face": faces})


def mask(ring: Keyring, b: pa.RecordBatch) -> pa.RecordBatch:
    out = Masker(POLICY, ring).mask_batch(b)
    assert out.quarantine is None
    return out.output


def readable(ring: Keyring, masked: pa.RecordBatch, b: pa.RecordBatch) -> list[str]:
    """Raw ids whose templates still decrypt (each to its own bytes)."""
    res = Unmasker(POLICY, ring).mask_batch(masked)
    if res.quarantine is not None:
        assert set(res.quarantine.column("_biomask_reason").to_pylist()) == {
            "face: subject key erased"
        }
    plain = dict(zip(b.column("face").to_pylist(), b.column("sid").to_pylist(), strict=True))
    return sorted(plain[f] for f in res.output.column("face").to_pylist())


@pytest.fixture()
def ring(tmp_path: Path) -> Keyring:
    return Keyring.create(tmp_path / "k.json", "pw")


def reopen(tmp_path: Path) -> Keyring:
    return Keyring.open(tmp_path / "k.json", "pw")


def test_erase_by_the_new_token_removes_the_one_key_both_outputs_use(
    ring: Keyring, tmp_path: Path
) -> None:
    b = batch()
    before = mask(ring, b)
    ring.rotate_tokens()
    ring = reopen(tmp_path)
    after = mask(ring, b)
    old_tok, new_tok = before.column("sid")[0].as_py(), after.column("sid")[0].as_py()
    assert old_tok != new_tok  # same subject, new token
    with pytest.raises(BiomaskError, match=r"pass --policy.*never guesses"):
        erase_subject(ring, token=new_tok, lineage_dir=tmp_path / "lin")
    res = erase_subject(ring, token=new_tok, policy=POLICY, lineage_dir=tmp_path / "lin")
    assert res.erased and res.dek_id == f"e:subject:{old_tok}"  # the name kept since creation
    for out in (before, after):
        assert readable(ring, out, b) == IDS[1:]
    again = erase_subject(ring, token=old_tok, token_key=ring.key_ids[0], policy=POLICY)
    assert not again.erased  # the same key, already gone


def test_erase_by_an_old_token_with_its_token_key(ring: Keyring, tmp_path: Path) -> None:
    b = batch()
    first_key = ring.token_key_id
    before = mask(ring, b)
    ring.rotate_tokens()
    ring = reopen(tmp_path)
    after = mask(ring, b)
    old_tok = before.column("sid")[1].as_py()
    # the old token is the name itself: no policy needed
    res = erase_subject(ring, token=old_tok, token_key=first_key, lineage_dir=tmp_path / "lin")
    assert res.erased
    for out in (before, after):
        assert readable(ring, out, b) == [IDS[0], *IDS[2:]]


def test_erase_by_subject_id_after_two_rotations_and_a_token_rotation(
    ring: Keyring, tmp_path: Path
) -> None:
    b = batch()
    outputs = [mask(ring, b)]
    for step in ("rotate", "rotate", "rotate_tokens"):
        getattr(ring, step)()
        ring = reopen(tmp_path)
        outputs.append(mask(ring, b))
    assert len({o.column("sid")[2].as_py() for o in outputs}) == 2  # one token rotation
    with pytest.raises(BiomaskError, match="needs the policy"):
        erase_subject(ring, subject_id=IDS[2])
    res = erase_subject(ring, subject_id=IDS[2], policy=POLICY, lineage_dir=tmp_path / "lin")
    assert res.erased and IDS[2] not in res.subject  # the raw id is never echoed
    for out in outputs:
        assert readable(ring, out, b) == [*IDS[:2], IDS[3]]


def test_a_new_token_equal_to_another_subjects_old_token_erases_the_right_subject(
    ring: Keyring, tmp_path: Path
) -> None:
    """Subject B is chosen so that B's token after rotate-tokens is A's token before it.

    Trying ``e:subject:<token>`` directly would shred A. Erase inverts the token under the
    key that made it and reaches B's key.
    """
    a_id = IDS[0]
    first = mask(ring, batch([a_id])).column("sid")[0].as_py()
    ring.rotate_tokens()
    ring = reopen(tmp_path)
    # B = the id whose token under the new token key is A's old token (a permutation)
    b_id = (
        SubjectNames(POLICY, ring)
        ._op("subject", ring.token_key_id)
        .invert(pa.array([first]))[0]  # type: ignore[attr-defined]
        .as_py()
    )
    assert b_id is not None and b_id != a_id
    both = batch([a_id, b_id])
    before, after = mask(ring.tokens_under(ring.entity_key_id), both), mask(ring, both)
    assert after.column("sid")[1].as_py() == first == before.column("sid")[0].as_py()
    res = erase_subject(ring, token=first, policy=POLICY, lineage_dir=tmp_path / "lin")
    assert res.erased
    for out in (before, after):
        assert readable(ring, out, both) == [a_id]  # A intact, B gone


def test_errors_are_one_line_each(ring: Keyring, tmp_path: Path) -> None:
    b = batch()
    mask(ring, b)
    ring.rotate_tokens()
    ring = reopen(tmp_path)
    with pytest.raises(BiomaskError, match=r"by its token \(--subject\) or by its id"):
        erase_subject(ring)
    with pytest.raises(BiomaskError, match="not a token of entity 'subject''s rule"):
        erase_subject(ring, token="SUBJ-1", policy=POLICY)
    ids_only = parse_policy(
        "version: 1\ndataset: enrol\ncolumns:\n  sid: {op: tokenize, domain: subject}\n"
    )
    never = pa.RecordBatch.from_pydict({"sid": ["SUBJ-99999999"]})
    unknown = Masker(ids_only, ring).mask_batch(never).output.column("sid")[0].as_py()
    with pytest.raises(BiomaskError, match="no template key for subject token"):
        erase_subject(ring, token=unknown, policy=POLICY, lineage_dir=tmp_path / "lin")
    hashed = parse_policy(
        "version: 1\ndataset: enrol\nentities:\n  subject: {column: sid}\ncolumns:\n"
        "  sid: {op: hash, domain: subject, length: 32}\n"
        "  face: {op: encrypt, entity: subject, per_entity_key: true}\n"
    )
    with pytest.raises(BiomaskError, match="cannot be turned back into ids"):
        erase_subject(ring, token="ab" * 16, policy=hashed)


def test_rotations_and_rekey_return_what_they_did_and_record_it(
    ring: Keyring, tmp_path: Path
) -> None:
    from biomask.keys.keystore import open_keystore
    from biomask.lineage.head import check_head

    lin = tmp_path / "lin"
    mask(ring, batch())
    first = ring.primary_key_id
    rot = rotate_keys(ring, lineage_dir=lin)
    assert (rot.old_key_id, rot.token_key_id) == (first, first) != (rot.new_key_id,) * 2
    tok = rotate_token_keys(ring, lineage_dir=lin)
    assert tok.old_key_id == first and tok.new_key_id == tok.token_key_id == ring.primary_key_id
    assert ring.entity_key_id == first
    res = rekey(ring, lineage_dir=lin)
    assert (res.rewrapped, res.key_id) == (4, ring.primary_key_id)
    store = open_keystore(str(tmp_path / "k.json.keystore.sqlite"), create=False)
    assert {k for _, k, _ in store.rows()} == {ring.primary_key_id}
    lines = (lin / "audit.jsonl").read_text().splitlines()
    kinds = [json.loads(line)["kind"] for line in lines]
    assert kinds == ["key.rotate", "key.rotate_tokens", "key.rekey"]
    assert rot.receipt != tok.receipt != res.receipt
    check_head(lin, ring)
    # a tampered lineage directory refuses the next rotation before it happens
    (lin / "audit.jsonl").write_text((lin / "audit.jsonl").read_text().replace("rekey", "rekex"))
    before = (tmp_path / "k.json").read_bytes()
    with pytest.raises(BiomaskError):
        rotate_keys(ring, lineage_dir=lin)
    assert (tmp_path / "k.json").read_bytes() == before
