import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from biomask.masking.checkdigits import (
    icao_check_digit,
    icao_digits,
    icao_valid,
    luhn_check_digit,
    luhn_digits,
    luhn_valid,
)


def test_icao_specimen_values() -> None:
    assert icao_check_digit("L898902C3") == "6"
    assert icao_check_digit("740812") == "2"
    assert icao_check_digit("120415") == "9"
    assert icao_check_digit("AB<<<<") == icao_check_digit("AB0000")


def test_luhn_known() -> None:
    assert luhn_check_digit("7992739871") == "3"
    assert luhn_check_digit("411111111111111") == "1"


@given(
    st.lists(
        st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ<", min_size=9, max_size=9),
        min_size=1,
        max_size=20,
    )
)
def test_icao_appended_digit_validates(bodies: list[str]) -> None:
    arr = np.frombuffer("".join(bodies).encode(), dtype=np.uint8).reshape(len(bodies), 9)
    full = np.concatenate([arr, icao_digits(arr)[:, None].astype(np.uint8)], axis=1)
    assert icao_valid(full).all()


@given(st.lists(st.text(alphabet="0123456789", min_size=15, max_size=15), min_size=1, max_size=20))
def test_luhn_appended_digit_validates(bodies: list[str]) -> None:
    arr = np.frombuffer("".join(bodies).encode(), dtype=np.uint8).reshape(len(bodies), 15)
    full = np.concatenate([arr, luhn_digits(arr)[:, None].astype(np.uint8)], axis=1)
    assert luhn_valid(full).all()
