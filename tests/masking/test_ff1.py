"""FF1: the NIST samples, cross-checks against libffx, and properties."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biomask.masking.ff1 import FF1, check_domain, decrypt_strings, encrypt_strings

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "ff1-nist-samples.json").read_text())
ALPHA36 = "0123456789abcdefghijklmnopqrstuvwxyz"


@pytest.mark.parametrize("sample", VECTORS["samples"], ids=lambda s: f"sample{s['n']}")
def test_nist_samples(sample: dict[str, object]) -> None:
    key = bytes.fromhex(VECTORS["keys"][sample["key"]])
    radix = int(sample["radix"])  # type: ignore[arg-type]
    tweak = bytes.fromhex(str(sample["tweak"]))
    cipher = FF1(key, radix)
    alpha = ALPHA36[:radix]
    assert encrypt_strings(cipher, [sample["pt"]], alpha, tweak) == [sample["ct"]]
    assert decrypt_strings(cipher, [sample["ct"]], alpha, tweak) == [sample["pt"]]


@pytest.mark.parametrize(
    ("radix", "length", "keylen", "tweak"),
    [
        (10, 9, 16, b""),
        (10, 16, 32, b"domain"),
        (10, 31, 16, b"t"),  # long halves: the exact big-integer path
        (16, 11, 24, b""),
        (26, 7, 32, b"passport"),
        (36, 9, 16, b"doc"),
        (36, 20, 32, b"x" * 20),
        (62, 8, 16, b""),
    ],
)
def test_matches_libffx(radix: int, length: int, keylen: int, tweak: bytes) -> None:
    ffx = pytest.importorskip("ffx")
    rng = random.Random(radix * 1000 + length)
    key = bytes(rng.randrange(256) for _ in range(keylen))
    alpha = (ALPHA36 + "ABCDEFGHIJKLMNOPQRSTUVWXYZ")[:radix]
    # 8 cases x 12,500 = 100k random inputs over radixes 10, 16, 26, 36 and 62
    values = ["".join(rng.choice(alpha) for _ in range(length)) for _ in range(12_500)]
    ours = encrypt_strings(FF1(key, radix), values, alpha, tweak)
    ref = ffx.FF1(key, alphabet=alpha) if radix > 36 else ffx.FF1(key, radix=radix)
    theirs = [ref.encrypt(v if radix > 36 else v.lower(), tweak=tweak) for v in values]
    assert ours == theirs


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([10, 26, 36, 2]),
    st.integers(0, 30),
    st.lists(st.integers(0, 2**32), min_size=1, max_size=40),
    st.binary(max_size=24),
)
def test_roundtrip_and_shape(radix: int, extra: int, seeds: list[int], tweak: bytes) -> None:
    length = {10: 6, 26: 5, 36: 4, 2: 20}[radix] + extra
    rng = np.random.default_rng(seeds[0])
    x = rng.integers(0, radix, size=(len(seeds), length))
    c = FF1(bytes(range(16)), radix)
    y = c.encrypt(x, tweak)
    assert y.shape == x.shape and y.min() >= 0 and y.max() < radix
    assert (c.decrypt(y, tweak) == x).all()
    assert (c.encrypt(x, tweak) == y).all()


def test_tweak_changes_output() -> None:
    c = FF1(bytes(16), 10)
    x = np.arange(90).reshape(10, 9) % 10
    assert not (c.encrypt(x, b"a") == c.encrypt(x, b"b")).all()


def test_small_domain_is_refused_with_reason() -> None:
    with pytest.raises(
        ValueError, match=r"refused on a domain of 10\^5 = 100,000 values: NIST SP 800-38G"
    ):
        check_domain(10, 5)
    with pytest.raises(ValueError, match="use irreversible tokenize, or a longer field"):
        FF1(bytes(16), 26).encrypt(np.zeros((1, 4), dtype=np.int64))
    check_domain(10, 6)


def test_key_is_never_shown_or_pickled() -> None:
    import pickle

    c = FF1(b"\x01" * 16, 10)
    assert "0101" not in repr(c) and "hidden" in repr(c)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(c)


def test_column_api_matches_string_api() -> None:
    import pyarrow as pa

    from biomask.masking.ff1 import decrypt_array, encrypt_array

    rng = random.Random(3)
    values = [
        "".join(rng.choice(ALPHA36) for _ in range(rng.choice([6, 9, 12]))) for _ in range(500)
    ]
    c = FF1(bytes(range(32)), 36)
    col = encrypt_array(c, pa.array(values), ALPHA36, b"t")
    assert col.to_pylist() == encrypt_strings(c, values, ALPHA36, b"t")
    assert decrypt_array(c, col, ALPHA36, b"t").to_pylist() == values
    with pytest.raises(ValueError, match="outside the alphabet"):
        encrypt_array(c, pa.array(["ABC-123"]), ALPHA36)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(20, 64),
    seed=st.integers(0, 2**32 - 1),
    tweak=st.sampled_from([b"", b"i+", b"a tweak longer than one block"]),
)
def test_encrypt_bits_is_the_numeral_permutation(n: int, seed: int, tweak: bytes) -> None:
    """The integer fast path gives exactly FF1 on the rows of bits, both ways."""
    from biomask.masking.ff1 import _from_bits, _to_bits

    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2**63, 50, dtype=np.uint64) >> np.uint64(64 - n) << np.uint64(1)
    values |= rng.integers(0, 2, 50, dtype=np.uint64)  # reach bit 0 and the top bit
    values &= np.uint64((1 << n) - 1)
    cipher = FF1(bytes(range(32)), 2)
    got = cipher.encrypt_bits(values, n, tweak)
    want = _from_bits(cipher.encrypt(_to_bits(values, n), tweak))
    assert np.array_equal(got, want)
    assert np.array_equal(cipher.decrypt_bits(got, n, tweak), values)


def test_encrypt_bits_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="radix-2"):
        FF1(bytes(32), 10).encrypt_bits(np.zeros(1, np.uint64), 32)
    with pytest.raises(ValueError, match=r"below 2\*\*20"):
        FF1(bytes(32), 2).encrypt_bits(np.array([2**20], np.uint64), 20)
    with pytest.raises(ValueError, match=r"domain of 2\^19 = 524,288 values"):
        FF1(bytes(32), 2).encrypt_bits(np.zeros(1, np.uint64), 19)
