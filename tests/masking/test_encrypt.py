"""Templates: encrypted, bound to their row, rotatable, erasable, never in clear."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from biomask.errors import DecryptionError, KeyringError
from biomask.keys import Keyring
from biomask.keys.envelope import rewrap
from biomask.keys.keystore import open_keystore
from biomask.masking import Masker, Unmasker
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
  finger: {op: encrypt, entity: subject}
  raw: {op: encrypt, entity: subject}
"""
)


def batch(n: int = 6, seed: int = 0, dim: int = 512) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    face = rng.standard_normal((n, dim)).astype(np.float32)
    finger = [list(map(float, rng.standard_normal(64))) for _ in range(n)]
    return pa.RecordBatch.from_pydict(
        {
            "sid": [f"SUBJ-{i % 3:08d}" for i in range(n)],
            "face": pa.FixedSizeListArray.from_arrays(pa.array(face.reshape(-1)), dim),
            "finger": pa.array(finger, pa.list_(pa.float64())),
            "raw": [rng.bytes(100) for _ in range(n)],
        }
    )


@pytest.fixture()
def ring(tmp_path: Path) -> Keyring:
    return Keyring.create(tmp_path / "k.json", "pw")


@pytest.fixture(autouse=True, params=["native", "python"])
def aead_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on the compiled AES-GCM helper and on the Python loop."""
    from biomask.keys import aead

    if request.param == "native" and aead._gcm is None:
        pytest.skip("the compiled helper biomask.keys._gcm was not built in this install")
    monkeypatch.setenv("BIOMASK_NATIVE_AEAD", "1" if request.param == "native" else "0")
    return str(request.param)


def test_roundtrip_all_types(ring: Keyring) -> None:
    b = batch()
    masked = Masker(POLICY, ring).mask_batch(b)
    assert masked.quarantine is None
    assert masked.output.schema.field("face").type == pa.binary()
    back = Unmasker(POLICY, ring).mask_batch(masked.output).output
    for col in ("face", "finger", "raw"):
        assert back.schema.field(col).type == b.schema.field(col).type
        assert back.column(col).to_pylist() == b.column(col).to_pylist()


def test_no_template_bytes_in_output(ring: Keyring, tmp_path: Path) -> None:
    b = batch(20)
    out = Masker(POLICY, ring).mask_batch(b).output
    pq.write_table(pa.Table.from_batches([out]), tmp_path / "o.parquet", compression="none")
    blob = (tmp_path / "o.parquet").read_bytes()
    face = np.array(b.column("face").to_pylist(), dtype=np.float32)
    for row in face:
        assert row.tobytes()[:32] not in blob
    for r in b.column("raw").to_pylist():
        assert r[:32] not in blob


def test_equal_templates_differ(ring: Keyring) -> None:
    b = batch(2)
    same = pa.RecordBatch.from_arrays(
        [b.column(0), pa.concat_arrays([b.column(1).slice(0, 1)] * 2), b.column(2), b.column(3)],
        schema=b.schema,
    )
    out = Masker(POLICY, ring).mask_batch(same).output.column("face").to_pylist()
    assert out[0] != out[1]


def _tamper(out: pa.RecordBatch, col: str, fn) -> pa.RecordBatch:  # type: ignore[no-untyped-def]
    vals = fn(out.column(col).to_pylist())
    arrays = [pa.array(vals, pa.binary()) if n == col else out.column(n) for n in out.schema.names]
    return pa.RecordBatch.from_arrays(arrays, schema=out.schema)


@pytest.mark.parametrize(
    "fn",
    [
        lambda v: [v[1], v[0], *v[2:]],  # swap two rows (different subjects)
        lambda v: [v[0][:-1] + bytes([v[0][-1] ^ 1]), *v[1:]],  # flip one byte
        lambda v: [v[0][:40], *v[1:]],  # truncate
        lambda v: [b"BMT\x01" + v[0][4:8] + b"\x00" + v[0][9:], *v[1:]],  # mangle header
    ],
    ids=["swap", "flip", "truncate", "header"],
)
@pytest.mark.parametrize("col", ["face", "finger"])
def test_tampering_is_refused_with_one_message(ring: Keyring, fn, col: str) -> None:  # type: ignore[no-untyped-def]
    out = Masker(POLICY, ring).mask_batch(batch()).output
    with pytest.raises(DecryptionError) as info:
        Unmasker(POLICY, ring).mask_batch(_tamper(out, col, fn))
    assert str(info.value) == "decryption failed"


def test_copy_to_other_column_is_refused(ring: Keyring) -> None:
    out = Masker(POLICY, ring).mask_batch(batch()).output
    moved = pa.RecordBatch.from_arrays(
        [out.column("sid"), out.column("face"), out.column("finger"), out.column("finger")],
        schema=out.schema,
    )
    with pytest.raises(DecryptionError):
        Unmasker(POLICY, ring).mask_batch(moved)


def test_wrong_keyring_is_refused(ring: Keyring) -> None:
    out = Masker(POLICY, ring).mask_batch(batch()).output
    with pytest.raises(KeyringError):
        Unmasker(POLICY, Keyring.ephemeral()).mask_batch(out)


def test_rotate_then_old_still_decrypts_and_rekey(ring: Keyring, tmp_path: Path) -> None:
    b = batch()
    old = Masker(POLICY, ring).mask_batch(b).output
    old_key = ring.primary_key_id
    ring.rotate()
    reopened = Keyring.open(tmp_path / "k.json", "pw")
    new = Masker(POLICY, reopened).mask_batch(b).output
    assert new.schema.metadata[b"biomask.key_id"] != old.schema.metadata[b"biomask.key_id"]
    store = open_keystore(str(tmp_path / "k.json.keystore.sqlite"))
    assert any(k == old_key for _, k, _ in store.rows())
    assert rewrap(store, reopened) > 0
    assert all(k == reopened.primary_key_id for _, k, _ in store.rows())
    for data in (old, new):
        back = Unmasker(POLICY, reopened).mask_batch(data).output
        assert back.column("face").to_pylist() == b.column("face").to_pylist()


def test_one_batch_with_rows_from_before_and_after_a_rotation(ring: Keyring) -> None:
    """A subject's data key outlives a rotation, so rows written before and after it carry
    two headers (two key ids) naming one data key; a batch mixing them still decrypts."""
    b = batch(6)
    before = Masker(POLICY, ring).mask_batch(b).output
    ring.rotate()
    after = Masker(POLICY, ring).mask_batch(b).output
    both = pa.Table.from_batches([before, after]).combine_chunks().to_batches()[0]
    heads = {bytes(v)[:9] for v in both.column("face").to_pylist()}
    assert len(heads) == 2  # the key id in the header changed, the data keys did not
    back = Unmasker(POLICY, ring).mask_batch(both).output
    assert back.column("face").to_pylist() == b.column("face").to_pylist() * 2


def test_erase_subject_in_two_files(ring: Keyring, tmp_path: Path) -> None:
    b = batch(6)
    m = Masker(POLICY, ring)
    first = m.mask_batch(b).output
    second = Masker(POLICY, ring).mask_batch(b).output  # another run, another file
    token_a = first.column("sid")[0].as_py()
    store = open_keystore(str(tmp_path / "k.json.keystore.sqlite"))
    assert store.erase(f"e:subject:{token_a}")
    for data in (first, second):
        res = Unmasker(POLICY, ring).mask_batch(data)
        assert res.quarantine is not None
        assert set(res.quarantine.column("_biomask_reason").to_pylist()) == {
            "face: subject key erased"
        }
        assert res.quarantine.column("face").null_count == res.quarantine.num_rows
        assert set(res.quarantine.column("sid").to_pylist()) == {token_a}
        kept = [i for i, s in enumerate(b.column("sid").to_pylist()) if s != "SUBJ-00000000"]
        assert res.output.column("face").to_pylist() == [b.column("face")[i].as_py() for i in kept]


def test_erase_after_two_rotations_shreds_every_copy_of_one_subject(
    ring: Keyring, tmp_path: Path
) -> None:
    """Tokens survive rotation, so a subject has one key name in every run: outputs
    written before, between and after two rotations all lose that subject's templates
    and keep everyone else's."""
    b = batch(6)
    outputs = [Masker(POLICY, ring).mask_batch(b).output]
    for _ in range(2):
        ring.rotate()
        ring = Keyring.open(tmp_path / "k.json", "pw")
        outputs.append(Masker(POLICY, ring).mask_batch(b).output)
    tokens = {o.column("sid")[0].as_py() for o in outputs}
    assert len(tokens) == 1  # one token, so one key name, across the rotations
    (token_a,) = tokens
    store = open_keystore(str(tmp_path / "k.json.keystore.sqlite"))
    assert store.erase(f"e:subject:{token_a}")
    kept = [i for i, s in enumerate(b.column("sid").to_pylist()) if s != "SUBJ-00000000"]
    for data in outputs:
        res = Unmasker(POLICY, ring).mask_batch(data)
        assert res.quarantine is not None
        assert set(res.quarantine.column("sid").to_pylist()) == {token_a}
        assert res.output.column("face").to_pylist() == [b.column("face")[i].as_py() for i in kept]


def test_wrong_length_is_quarantined_never_clear(ring: Keyring) -> None:
    pol = parse_policy("version: 1\ndataset: d\ncolumns:\n  t: {op: encrypt, dim: 4}\n")
    b = pa.RecordBatch.from_pydict(
        {
            "t": pa.array(
                [[1.0, 2, 3, 4], [9.5, 9.25, 9.125], [1.0, None, 3, 4]], pa.list_(pa.float32())
            )
        }
    )
    res = Masker(pol, ring).mask_batch(b)
    assert res.output.num_rows == 1
    assert res.quarantine is not None
    assert res.quarantine.column("t").to_pylist() == [None, None]
    reasons = res.quarantine.column("_biomask_reason").to_pylist()
    assert "t: template has 3 values, expected 4" in reasons


def test_per_entity_key_needs_entity() -> None:
    from biomask.errors import PolicyError

    with pytest.raises(PolicyError, match="per_entity_key needs 'entity'"):
        parse_policy("version: 1\ndataset: d\ncolumns:\n  t: {op: encrypt, per_entity_key: true}\n")


def test_header_carries_key_id(ring: Keyring) -> None:
    out = Masker(POLICY, ring).mask_batch(batch(1)).output
    ct = out.column("face")[0].as_py()
    assert ct[:4] == b"BMT\x02" and ct[4:8] == bytes.fromhex(ring.primary_key_id)


def test_keystore_file_holds_no_raw_key(ring: Keyring, tmp_path: Path) -> None:
    Masker(POLICY, ring).mask_batch(batch())
    assert (tmp_path / "k.json.keystore.sqlite").exists()
    assert os.path.getsize(tmp_path / "k.json.keystore.sqlite") > 0


def test_recycled_output_buffers_never_touch_a_live_batch(ring: Keyring) -> None:
    """Output blocks of >= 1 MiB are reused, but only once nothing refers to them.

    Batch A's decrypted templates are held (as a training step holds its tensor) while B
    and C are decrypted: A must be unchanged. Dropping A then lets C's successor reuse it.
    """
    n = 1200  # 1200 x 2048 B: over the recycler's 1 MiB floor
    a, b, c = (batch(n, seed=s).select(["sid", "face"]) for s in (1, 2, 3))
    pol = parse_policy(
        "version: 1\ndataset: enrol\nentities:\n  subject: {column: sid}\ncolumns:\n"
        "  sid: {op: tokenize, domain: subject}\n  face: {op: encrypt, entity: subject}\n"
    )
    masker, unmasker = Masker(pol, ring), Unmasker(pol, ring)
    ma, mb, mc = (masker.mask_batch(x).output for x in (a, b, c))
    held = unmasker.mask_batch(ma).output.column("face")
    expect = a.column("face")
    for m, x in ((mb, b), (mc, c), (mb, b)):
        assert unmasker.mask_batch(m).output.column("face").equals(x.column("face"))
        assert held.equals(expect)
    # a tensor-like view outlives the Arrow array it came from
    view = held.values.to_numpy()
    del held
    for m, x in ((mb, b), (mc, c)):
        assert unmasker.mask_batch(m).output.column("face").equals(x.column("face"))
    assert np.array_equal(view, expect.values.to_numpy())


def test_an_erasure_takes_effect_in_an_unmasker_already_running(
    ring: Keyring, tmp_path: Path
) -> None:
    """A training feed keeps one Unmasker for a whole epoch: it may keep a run's data key,
    never a subject's, so erasing a subject mid-epoch stops their next batch."""
    b = batch(6)
    out = Masker(POLICY, ring).mask_batch(b).output
    um = Unmasker(POLICY, ring)
    assert um.mask_batch(out).quarantine is None
    token_a = out.column("sid")[0].as_py()
    assert open_keystore(str(tmp_path / "k.json.keystore.sqlite")).erase(f"e:subject:{token_a}")
    res = um.mask_batch(out)
    assert res.quarantine is not None
    assert set(res.quarantine.column("sid").to_pylist()) == {token_a}
    # the run-keyed columns of the other rows still decrypt with the kept run key
    assert res.output.column("finger").null_count == 0


ROWKEY = parse_policy(
    """\
version: 1
dataset: enrol
entities:
  subject: {column: sid}
columns:
  sid: {op: tokenize, domain: subject}
  cap: {op: tokenize, domain: capture}
  face: {op: encrypt, entity: subject, per_entity_key: true, row_key: cap}
"""
)


def captures(n: int = 4) -> pa.RecordBatch:
    rng = np.random.default_rng(5)
    return pa.RecordBatch.from_pydict(
        {
            "sid": ["SUBJ-00000001"] * n,  # one subject, several captures
            "cap": [f"CAP-{i:06d}" for i in range(n)],
            "face": [rng.bytes(64) for _ in range(n)],
        }
    )


def _swap(out: pa.RecordBatch, column: str) -> pa.RecordBatch:
    vals = out.column(column).to_pylist()
    vals[0], vals[1] = vals[1], vals[0]
    cols = {name: out.column(name) for name in out.schema.names}
    cols[column] = pa.array(vals, pa.binary())
    return pa.RecordBatch.from_pydict(cols).replace_schema_metadata(out.schema.metadata)


def test_row_key_refuses_a_swap_between_two_captures_of_one_subject(ring: Keyring) -> None:
    b = captures()
    out = Masker(ROWKEY, ring).mask_batch(b).output
    assert Unmasker(ROWKEY, ring).mask_batch(out).output.column("face") == b.column("face")
    with pytest.raises(DecryptionError):
        Unmasker(ROWKEY, ring).mask_batch(_swap(out, "face"))
    # without row_key, the same swap decrypts: what the docs say it is bound to
    plain = parse_policy(
        "version: 1\ndataset: enrol\nentities:\n  subject: {column: sid}\ncolumns:\n"
        "  sid: {op: tokenize, domain: subject}\n  cap: {op: tokenize, domain: capture}\n"
        "  face: {op: encrypt, entity: subject, per_entity_key: true}\n"
    )
    loose = Masker(plain, ring).mask_batch(b).output
    swapped = Unmasker(plain, ring).mask_batch(_swap(loose, "face")).output
    assert swapped.column("face")[0] == b.column("face")[1]


def test_version_1_ciphertexts_still_decrypt(
    ring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    import biomask.keys.envelope as env
    import biomask.masking.operators.encrypt as enc

    b = batch(6)
    with monkeypatch.context() as m:  # the version 1 writer: "|"-joined AAD, no row key
        m.setattr(env, "MAGIC", env.MAGIC_V1)
        m.setattr(enc.Encrypt, "_aad_prefix_v2", enc.Encrypt._aad_prefix)
        m.setattr(env, "mids_v2", lambda tok, rk, rows: env.row_tokens(tok, rows))
        m.setattr(env, "lp", lambda h: b"|" + h)
        old = Masker(POLICY, ring).mask_batch(b).output
    assert old.column("face")[0].as_py()[:4] == b"BMT\x01"
    new = Masker(POLICY, ring).mask_batch(b).output
    both = pa.Table.from_batches([old, new]).combine_chunks().to_batches()[0]
    back = Unmasker(POLICY, ring).mask_batch(both).output
    assert back.column("face").to_pylist() == b.column("face").to_pylist() * 2


def test_row_key_must_name_a_stable_column() -> None:
    from biomask.errors import PolicyError

    bad = (
        "version: 1\ndataset: d\ncolumns:\n  ts: {op: date_shift, entity: s}\n"
        "  sid: {op: tokenize, domain: s}\n  t: {op: encrypt, row_key: ts}\n"
        "entities:\n  s: {column: sid}\n"
    )
    with pytest.raises(PolicyError, match="row_key column 'ts' uses 'date_shift'"):
        parse_policy(bad, source="p.yaml")
    with pytest.raises(PolicyError, match="row_key 'nope' is not another column"):
        parse_policy("version: 1\ndataset: d\ncolumns:\n  t: {op: encrypt, row_key: nope}\n")
