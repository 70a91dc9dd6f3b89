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
