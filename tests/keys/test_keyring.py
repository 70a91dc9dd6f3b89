import copy
import json
import pickle
from pathlib import Path

import pytest

from biomask.errors import KeyringError
from biomask.keys import PASSPHRASE_ENV, DeterministicPrf, Keyring


def test_create_open_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    ring = Keyring.create(path, "correct horse")
    again = Keyring.open(path, "correct horse")
    assert again.primary_key_id == ring.primary_key_id
    assert again.keyring_id == ring.keyring_id
    a = DeterministicPrf(ring.derive("tokenize", "subject")).seeds([b"x"])
    b = DeterministicPrf(again.derive("tokenize", "subject")).seeds([b"x"])
    assert (a == b).all()
    assert again.public_key_raw() == ring.public_key_raw()
    assert (path.stat().st_mode & 0o777) == 0o600


def test_file_holds_no_raw_key(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    ring = Keyring.create(path, "pw")
    text = path.read_text()
    for secret in ring._masters.values():
        assert secret.hex() not in text
        import base64

        assert base64.b64encode(secret).decode() not in text


def test_passphrase_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "from-env")
    Keyring.create(tmp_path / "k")
    assert Keyring.open(tmp_path / "k").key_ids


def test_refuses_without_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    with pytest.raises(KeyringError, match="set the passphrase in the BIOMASK_PASSPHRASE"):
        Keyring.create(tmp_path / "k")
    Keyring.create(tmp_path / "k", "pw")
    with pytest.raises(KeyringError, match=r"cannot open keyring .*BIOMASK_PASSPHRASE"):
        Keyring.open(tmp_path / "k")


def test_wrong_passphrase_one_message(tmp_path: Path) -> None:
    Keyring.create(tmp_path / "k", "right")
    with pytest.raises(KeyringError) as info:
        Keyring.open(tmp_path / "k", "wrong")
    assert str(info.value) == f"wrong passphrase for keyring {tmp_path / 'k'}"
    assert info.value.__cause__ is None


def test_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="not found; create one with 'biomask keys init"):
        Keyring.open(tmp_path / "nope", "pw")
    bad = tmp_path / "bad"
    bad.write_text("{not json")
    with pytest.raises(KeyringError, match="is not a biomask keyring"):
        Keyring.open(bad, "pw")


def test_create_refuses_overwrite(tmp_path: Path) -> None:
    Keyring.create(tmp_path / "k", "pw")
    with pytest.raises(KeyringError, match="already exists"):
        Keyring.create(tmp_path / "k", "pw")


def test_rotate_keeps_old_keys(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path / "k", "pw")
    old = ring.primary_key_id
    old_seed = DeterministicPrf(ring.derive("tokenize", "d")).seeds([b"v"])
    new = ring.rotate()
    assert new != old
    again = Keyring.open(tmp_path / "k", "pw")
    assert again.primary_key_id == new
    assert again.key_ids == [old, new]
    kept = DeterministicPrf(again.derive("tokenize", "d", key_id=old)).seeds([b"v"])
    assert (kept == old_seed).all()
    fresh = DeterministicPrf(again.derive("tokenize", "d")).seeds([b"v"])
    assert not (fresh == old_seed).all()


def test_unknown_key_id() -> None:
    with pytest.raises(KeyringError, match="key id deadbeef is not in this keyring"):
        Keyring.ephemeral().derive("tokenize", "d", key_id="deadbeef")


def test_domains_and_purposes_are_independent() -> None:
    ring = Keyring.ephemeral()
    seeds = {
        (p, d): DeterministicPrf(ring.derive(p, d)).seeds([b"v"]).tobytes()
        for p in ("tokenize", "hash")
        for d in ("subject", "person")
    }
    assert len(set(seeds.values())) == 4


def test_handles_refuse_pickling_and_hide_bytes() -> None:
    ring = Keyring.ephemeral()
    handle = ring.derive("tokenize", "subject")
    secret = handle._secret()
    for obj in (ring, handle, DeterministicPrf(handle)):
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(obj)
    assert secret.hex() not in repr(handle) and "hidden" in repr(handle)
    assert secret.hex() not in str(ring)
    assert copy.deepcopy(handle) is handle


def test_keyring_file_is_json_with_ids(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path / "k", "pw")
    doc = json.loads((tmp_path / "k").read_text())
    assert doc["format"] == "biomask-keyring"
    assert doc["primary"] == ring.primary_key_id
    assert doc["kdf"]["name"] == "scrypt"


# -- hardening: KDF, header MAC, old files, locks, worker handles ------------------------------


def _v1_keyring(path: Path, pw: str, n: int = 2**15) -> tuple[str, bytes]:
    """A version 1 file as biomask wrote it before: scrypt N=2^15, no MAC, unprefixed AAD."""
    import base64
    import secrets

    from biomask.keys.keyring import _derive_kek, _wrap

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    kdf = {"name": "scrypt", "salt": b64(secrets.token_bytes(16)), "n": n, "r": 8, "p": 1}
    kek = _derive_kek(pw, kdf)
    master, seed = secrets.token_bytes(32), secrets.token_bytes(32)
    doc = {
        "format": "biomask-keyring",
        "version": 1,
        "keyring_id": "00112233aabbccdd",
        "kdf": kdf,
        "primary": "0a0b0c0d",
        "keys": [
            {
                "id": "0a0b0c0d",
                "created": "2025-01-01T00:00:00+00:00",
                "wrapped": b64(_wrap(kek, master, "00112233aabbccdd/0a0b0c0d")),
            }
        ],
        "signing": {
            "id": "5151aaaa",
            "wrapped": b64(_wrap(kek, seed, "00112233aabbccdd/sign/5151aaaa")),
            "public": "",
        },
    }
    path.write_text(json.dumps(doc))
    return "0a0b0c0d", master


def test_new_keyrings_use_scrypt_2_17_and_a_header_mac(tmp_path: Path) -> None:
    Keyring.create(tmp_path / "k", "pw")
    doc = json.loads((tmp_path / "k").read_text())
    assert doc["version"] == 2 and doc["kdf"]["n"] == 2**17 and doc["kdf"]["r"] == 8
    assert len(doc["mac"]) == 64


def test_a_version_1_keyring_opens_and_rotate_upgrades_it(tmp_path: Path) -> None:
    kid, master = _v1_keyring(tmp_path / "k", "pw")
    ring = Keyring.open(tmp_path / "k", "pw")
    assert ring.primary_key_id == kid and ring._masters[kid] == master
    before = ring.derive("tokenize", "subject")
    new = ring.rotate()
    doc = json.loads((tmp_path / "k").read_text())
    assert doc["version"] == 2 and doc["kdf"]["n"] == 2**17 and "mac" in doc
    again = Keyring.open(tmp_path / "k", "pw")
    assert again.key_ids == [kid, new] and again.primary_key_id == new
    assert again.derive("tokenize", "subject", key_id=kid) == before  # old tokens still agree
    assert again._upgrade_pw is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n", 2**22, r"scrypt parameter n=4194304 is outside 16384\.\.262144"),
        ("n", 100_000, "n=100000 is not a power of two"),
        ("n", 2**17 + 1, r"n=131073 is not a power of two"),
        ("n", "32768", "scrypt parameter n=32768 is outside"),
        ("r", 64, r"scrypt parameter r=64 is outside 1\.\.16"),
        ("p", 0, "scrypt parameter p=0 is outside"),
        ("name", "argon9", "unsupported KDF 'argon9'"),
        ("salt", "!!", "the KDF salt is not base64"),
    ],
)
def test_kdf_parameters_from_the_file_are_bounded(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    import time

    Keyring.create(tmp_path / "k", "pw")
    doc = json.loads((tmp_path / "k").read_text())
    doc["kdf"][field] = value
    (tmp_path / "k").write_text(json.dumps(doc))
    t0 = time.perf_counter()
    with pytest.raises(KeyringError, match=message) as info:
        Keyring.open(tmp_path / "k", "pw")
    assert time.perf_counter() - t0 < 1.0  # refused before any scrypt work
    assert str(info.value).startswith(f"keyring {tmp_path / 'k'}: ")


@pytest.mark.parametrize(
    "edit",
    ["primary", "created", "drop key", "new field"],
)
def test_any_header_change_without_the_passphrase_is_refused(tmp_path: Path, edit: str) -> None:
    ring = Keyring.create(tmp_path / "k", "pw")
    old = ring.primary_key_id
    ring.rotate()
    doc = json.loads((tmp_path / "k").read_text())
    if edit == "primary":  # roll primary back to the old key
        doc["primary"] = old
    elif edit == "created":
        doc["keys"][0]["created"] = "2030-01-01T00:00:00+00:00"
    elif edit == "drop key":
        doc["keys"] = doc["keys"][:1]
        doc["primary"] = old
    else:  # a field another version adds is covered too
        doc["token_key_id"] = old
    (tmp_path / "k").write_text(json.dumps(doc))
    with pytest.raises(KeyringError) as info:
        Keyring.open(tmp_path / "k", "pw")
    assert str(info.value) == (
        f"{tmp_path / 'k'} was changed without the passphrase: its header MAC does not match "
        "(primary key, key list, dates or another field edited or rolled back)"
    )


def test_a_version_2_file_cannot_be_downgraded_to_drop_its_mac(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path / "k", "pw")
    old = ring.primary_key_id
    ring.rotate()
    doc = json.loads((tmp_path / "k").read_text())
    doc.update(version=1, primary=old)
    del doc["mac"]
    (tmp_path / "k").write_text(json.dumps(doc))
    with pytest.raises(KeyringError):
        Keyring.open(tmp_path / "k", "pw")


def test_rotate_refuses_when_the_file_changed_since_it_was_opened(tmp_path: Path) -> None:
    Keyring.create(tmp_path / "k", "pw")
    a = Keyring.open(tmp_path / "k", "pw")
    b = Keyring.open(tmp_path / "k", "pw")
    a.rotate()
    with pytest.raises(KeyringError, match="changed since it was opened"):
        b.rotate()
    assert len(Keyring.open(tmp_path / "k", "pw").key_ids) == 2  # a's key kept


def test_create_and_rotate_hold_a_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl
    import os

    from biomask.keys import keyring as kr

    ring = Keyring.create(tmp_path / "k", "pw")
    lock = tmp_path / ".k.lock"
    assert (lock.stat().st_mode & 0o777) == 0o600
    waits: list[float] = []
    real = kr._flock
    monkeypatch.setattr(
        kr,
        "_flock",
        lambda fd, *, timeout, what: waits.append(timeout) or real(fd, timeout=0.2, what=what),
    )
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process is rotating
    try:
        with pytest.raises(KeyringError) as info:
            ring.rotate()
        assert str(info.value) == (
            f"keyring {tmp_path / 'k'} is locked by another writer; retry when it is done"
        )
        with pytest.raises(KeyringError, match="locked by another writer"):
            Keyring.create(tmp_path / "k", "pw")
    finally:
        os.close(fd)
    assert waits == [10.0, 10.0]  # a real writer waits ten seconds before giving up
    ring.rotate()  # free again
    assert len(Keyring.open(tmp_path / "k", "pw").key_ids) == 2


def test_worker_handle_masks_but_cannot_sign_and_needs_its_token() -> None:
    ring = Keyring.ephemeral()
    sealed, token = ring.worker_handle()
    worker = Keyring.from_worker_handle(sealed, token)
    assert worker.derive("tokenize", "s") == ring.derive("tokenize", "s")
    for secret in ring._masters.values():
        assert secret not in sealed
    with pytest.raises(KeyringError, match="worker's key handle: it masks, but cannot sign"):
        worker.signing_key()
    with pytest.raises(KeyringError, match="cannot sign"):
        worker.chain_key()
    _, other_token = ring.worker_handle()
    with pytest.raises(KeyringError, match="does not open with its token"):
        Keyring.from_worker_handle(sealed, other_token)


def test_fingerprint_is_the_sha256_of_the_public_key() -> None:
    import hashlib

    ring = Keyring.ephemeral()
    want = "sha256:" + hashlib.sha256(ring.public_key_raw()).hexdigest()
    assert ring.signing_key_fingerprint == want


def test_token_key_is_stable_across_rotation_and_old_files_use_their_first_key(
    tmp_path: Path,
) -> None:
    path = tmp_path / "k.json"
    ring = Keyring.create(path, "pw")
    first = ring.primary_key_id
    tok = ring.derive_token("tokenize", "subject")._secret()
    ring.rotate()
    ring.rotate()
    again = Keyring.open(path, "pw")
    assert again.token_key_id == first != again.primary_key_id
    assert again.derive_token("tokenize", "subject")._secret() == tok
    # a keyring file written before the field existed (its MAC covers the fields it has):
    # its first (oldest) key
    from biomask.keys.keyring import _header_mac

    doc = json.loads(path.read_text())
    del doc["token_key"], doc["mac"]
    doc["mac"] = _header_mac(again._kek, doc)
    path.write_text(json.dumps(doc))
    assert Keyring.open(path, "pw").token_key_id == first
    # rotate-tokens moves it to a new key, saved
    moved = Keyring.open(path, "pw").rotate_tokens()
    reopened = Keyring.open(path, "pw")
    assert reopened.token_key_id == moved == reopened.primary_key_id
    assert reopened.derive_token("tokenize", "subject")._secret() != tok
    doc = json.loads(path.read_text())
    doc["token_key"] = first  # moved back without the passphrase: the MAC refuses it
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyringError, match="changed without the passphrase"):
        Keyring.open(path, "pw")


def test_the_entity_key_is_pinned_through_every_rotation_and_covered_by_the_mac(
    tmp_path: Path,
) -> None:
    path = tmp_path / "k.json"
    ring = Keyring.create(path, "pw")
    first = ring.entity_key_id
    assert first == ring.token_key_id == ring.primary_key_id
    ring.rotate()
    Keyring.open(path, "pw").rotate_tokens()
    Keyring.open(path, "pw").rotate()
    again = Keyring.open(path, "pw")
    assert again.entity_key_id == first != again.token_key_id
    assert json.loads(path.read_text())["entity_key"] == first
    # a view under another token key keeps the pinned entity key and cannot rotate
    view = again.tokens_under(first)
    assert view.token_key_id == first == view.entity_key_id
    with pytest.raises(KeyringError, match="view cannot rotate"):
        view.rotate_tokens()
    with pytest.raises(KeyringError, match="not in this keyring"):
        again.tokens_under("00000000")
    # moved without the passphrase: the MAC refuses it
    doc = json.loads(path.read_text())
    doc["entity_key"] = again.token_key_id
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyringError, match="changed without the passphrase"):
        Keyring.open(path, "pw")


def test_a_keyring_file_without_an_entity_key_pins_its_token_key(tmp_path: Path) -> None:
    """Key stores named before the field existed keep their names: the names were the
    tokens, so the entity key is the file's token key (its first key without one)."""
    from biomask.keys.keyring import _header_mac

    path = tmp_path / "k.json"
    ring = Keyring.create(path, "pw")
    ring.rotate_tokens()
    token_key = ring.token_key_id
    doc = json.loads(path.read_text())
    del doc["entity_key"], doc["mac"]
    doc["mac"] = _header_mac(ring._kek, doc)
    path.write_text(json.dumps(doc))
    opened = Keyring.open(path, "pw")
    assert opened.entity_key_id == token_key
    opened.rotate_tokens()  # saved with the field now, still pinned
    assert Keyring.open(path, "pw").entity_key_id == token_key
    del doc["token_key"], doc["mac"]
    doc["mac"] = _header_mac(ring._kek, doc)
    path.write_text(json.dumps(doc))
    assert Keyring.open(path, "pw").entity_key_id == opened.key_ids[0]
