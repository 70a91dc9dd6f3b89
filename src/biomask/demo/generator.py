"""Synthetic enrolment data: subjects, captures, operator notes and their ground truth.

The demo, the benchmarks and the free-text PII tests all need data that looks like a real
biometric enrolment export without being one. Everything here is fake by construction:
names come from the lists in ``biomask/demo/data`` (disjoint from the pseudonym pools, so a
masked name can never be mistaken for a surviving original), e-mail domains are reserved
``example`` names, and phone numbers follow national formats with fictional or random
subscriber digits.

Two constraints shape the code:

* **Determinism.** One seed gives byte-identical tables on every run. All randomness flows
  from :class:`numpy.random.SeedSequence` children (and, for the per-note text, a
  :class:`random.Random` seeded from one of them), consumed in a fixed order.
* **Speed.** The structured columns are built column-at-a-time with numpy and Arrow
  compute (fixed-width strings are assembled as byte matrices and handed to Arrow as
  buffers), so the 1M/5M-row memory benchmarks spend their time in the code under test,
  not here. Only the operator notes are composed per row, because free text is.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from biomask.masking.checkdigits import icao_check_digit

__all__ = [
    "CAPTURES_SCHEMA_BASE",
    "FILLERS",
    "LOCALES",
    "NOTES_TRUTH_SCHEMA",
    "STAFF_SENTENCES",
    "STRUCTURED_SCHEMA",
    "SUBJECTS_SCHEMA",
    "SUBJECT_SENTENCES",
    "DemoData",
    "SourceNames",
    "generate",
    "generate_structured",
    "iter_structured_batches",
    "source_names",
    "to_ascii",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
ByteMatrix = npt.NDArray[np.uint8]

SUBJECTS_SCHEMA = pa.schema(
    [
        ("subject_id", pa.string()),
        ("full_name", pa.string()),
        ("date_of_birth", pa.date32()),
        ("gender", pa.string()),
        ("nationality", pa.string()),
        ("passport_number", pa.string()),
        ("email", pa.string()),
        ("phone", pa.string()),
        ("address_city", pa.string()),
    ]
)
"""Columns of :attr:`DemoData.subjects`, in order."""

CAPTURES_SCHEMA_BASE = pa.schema(
    [
        ("capture_id", pa.string()),
        ("subject_id", pa.string()),
        ("capture_ts", pa.timestamp("us", tz="UTC")),
        ("device_serial", pa.string()),
        ("gps_lat", pa.float64()),
        ("gps_lon", pa.float64()),
        ("age", pa.int32()),
        ("modality", pa.string()),
        ("quality_score", pa.float32()),
    ]
)
"""Columns every captures table has; ``operator_notes`` and ``template`` follow when asked."""

NOTES_TRUTH_SCHEMA = pa.schema(
    [
        ("capture_id", pa.string()),
        ("pii", pa.list_(pa.string())),
        ("pii_kinds", pa.list_(pa.string())),
        ("subject_id", pa.string()),
    ]
)
"""Ground truth of the PII planted in each capture's ``operator_notes``."""

STRUCTURED_SCHEMA = pa.schema(
    list(SUBJECTS_SCHEMA) + [f for f in CAPTURES_SCHEMA_BASE if f.name != "subject_id"]
)
"""The flat benchmark table: a subject's columns followed by one capture's columns."""

# Rows per independently seeded block of the structured stream. Fixed, so that row i has
# the same values whatever batch size a caller streams with.
_CHUNK = 65_536
_MAX_SUBJECTS = 10**8  # SUBJ- ids have 8 digits; they are a permutation of the row index
_TS_LOW = np.datetime64("2015-01-01T00:00:00", "s")
_TS_HIGH = np.datetime64("2025-12-31T23:59:59", "s")
_DOB_LOW = np.datetime64("1940-01-01", "D")  # oldest: 85 at the end of 2025
_DOB_HIGH = np.datetime64("2007-12-31", "D")  # youngest: 18 by the end of 2025

_DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)
_LETTERS = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
_ALNUM = np.concatenate([_DIGITS, _LETTERS])
_HEX = np.frombuffer(b"0123456789ABCDEF", dtype=np.uint8)
# Placeholders in fixed-width templates; literal text never uses these characters.
_HOLES: dict[str, npt.NDArray[np.uint8]] = {"#": _DIGITS, "?": _LETTERS, "*": _ALNUM, "%": _HEX}

LOCALES = ("en", "es", "de", "fr", "pl", "tr", "ar", "zh", "in", "ng", "hy", "vi", "pt")


@dataclass(frozen=True)
class _Country:
    iso3: str
    locale: str
    weight: float
    cities: tuple[tuple[str, float, float], ...]
    # (international, national) pairs with the same placeholders in the same order
    phones: tuple[tuple[str, str], ...]


# fmt: off
_COUNTRIES: tuple[_Country, ...] = (
    _Country("GBR", "en", 16, (("London", 51.5074, -0.1278), ("Manchester", 53.4808, -2.2426),
             ("Birmingham", 52.4862, -1.8904), ("Glasgow", 55.8642, -4.2518),
             ("Leeds", 53.8008, -1.5491)),
             (("+44 20 7946 0###", "020 7946 0###"), ("+44 7700 900###", "07700 900###"),
              ("+44 161 496 0###", "0161 496 0###"))),
    _Country("DEU", "de", 11, (("Berlin", 52.5200, 13.4050), ("Hamburg", 53.5511, 9.9937),
             ("München", 48.1351, 11.5820), ("Köln", 50.9375, 6.9603),
             ("Frankfurt am Main", 50.1109, 8.6821)),
             (("+49 30 ######", "030 ######"), ("+49 30 #######", "030 #######"),
              ("+49 89 #######", "089 #######"), ("+49 151 ########", "0151 ########"))),
    _Country("FRA", "fr", 9, (("Paris", 48.8566, 2.3522), ("Lyon", 45.7640, 4.8357),
             ("Marseille", 43.2965, 5.3698), ("Toulouse", 43.6047, 1.4442),
             ("Lille", 50.6292, 3.0573)),
             (("+33 1 ## ## ## ##", "01 ## ## ## ##"), ("+33 6 ## ## ## ##", "06 ## ## ## ##"),
              ("+33 4 ## ## ## ##", "04 ## ## ## ##"))),
    _Country("ESP", "es", 8, (("Madrid", 40.4168, -3.7038), ("Barcelona", 41.3874, 2.1686),
             ("Valencia", 39.4699, -0.3763), ("Sevilla", 37.3891, -5.9845),
             ("Málaga", 36.7213, -4.4214)),
             (("+34 91# ### ###", "91# ### ###"), ("+34 6## ## ## ##", "6## ## ## ##"))),
    _Country("USA", "en", 7, (("New York", 40.7128, -74.0060), ("Chicago", 41.8781, -87.6298),
             ("Houston", 29.7604, -95.3698), ("San Francisco", 37.7749, -122.4194),
             ("Washington", 38.9072, -77.0369)),
             (("+1 (202) 555-01##", "(202) 555-01##"), ("+1 212-555-01##", "212-555-01##"),
              ("+1 (312) 555-01##", "(312) 555-01##"), ("+1 415 555 01##", "415 555 01##"))),
    _Country("POL", "pl", 6, (("Warszawa", 52.2297, 21.0122), ("Kraków", 50.0647, 19.9450),
             ("Łódź", 51.7592, 19.4560), ("Wrocław", 51.1079, 17.0385),
             ("Gdańsk", 54.3520, 18.6466)),
             (("+48 22 ### ## ##", "22 ### ## ##"), ("+48 5## ### ###", "5## ### ###"))),
    _Country("TUR", "tr", 6, (("İstanbul", 41.0082, 28.9784), ("Ankara", 39.9334, 32.8597),
             ("İzmir", 38.4237, 27.1428), ("Bursa", 40.1885, 29.0610)),
             (("+90 212 ### ## ##", "0212 ### ## ##"), ("+90 5## ### ## ##", "05## ### ## ##"))),
    _Country("IND", "in", 5, (("Mumbai", 19.0760, 72.8777), ("Delhi", 28.7041, 77.1025),
             ("Bengaluru", 12.9716, 77.5946), ("Chennai", 13.0827, 80.2707),
             ("Kolkata", 22.5726, 88.3639)),
             (("+91 9#### #####", "09#### #####"), ("+91 22 #### ####", "022 #### ####"))),
    _Country("CHN", "zh", 4, (("Beijing", 39.9042, 116.4074), ("Shanghai", 31.2304, 121.4737),
             ("Guangzhou", 23.1291, 113.2644), ("Shenzhen", 22.5431, 114.0579),
             ("Chengdu", 30.5728, 104.0668)),
             (("+86 10 #### ####", "010 #### ####"), ("+86 13# #### ####", "13# #### ####"))),
    _Country("NGA", "ng", 4, (("Lagos", 6.5244, 3.3792), ("Abuja", 9.0765, 7.3986),
             ("Kano", 12.0022, 8.5920), ("Ibadan", 7.3775, 3.9470)),
             (("+234 803 ### ####", "0803 ### ####"), ("+234 1 ### ####", "01 ### ####"))),
    _Country("ARM", "hy", 3, (("Yerevan", 40.1792, 44.4991), ("Gyumri", 40.7942, 43.8453),
             ("Vanadzor", 40.8128, 44.4883)),
             (("+374 10 ######", "010 ######"), ("+374 9# ######", "09# ######"))),
    _Country("BRA", "pt", 3, (("São Paulo", -23.5505, -46.6333),
             ("Rio de Janeiro", -22.9068, -43.1729), ("Brasília", -15.8267, -47.9218),
             ("Belo Horizonte", -19.9167, -43.9345)),
             (("+55 11 9####-####", "(11) 9####-####"), ("+55 (21) ####-####", "(21) ####-####"))),
    _Country("PRT", "pt", 3, (("Lisboa", 38.7223, -9.1393), ("Porto", 41.1579, -8.6291),
             ("Braga", 41.5454, -8.4265), ("Coimbra", 40.2033, -8.4103)),
             (("+351 21 ### ####", "21 ### ####"), ("+351 91# ### ###", "91# ### ###"))),
    _Country("MEX", "es", 3, (("Ciudad de México", 19.4326, -99.1332),
             ("Guadalajara", 20.6597, -103.3496), ("Monterrey", 25.6866, -100.3161)),
             (("+52 55 #### ####", "55 #### ####"), ("+52 33 #### ####", "33 #### ####"))),
    _Country("EGY", "ar", 2.5, (("Cairo", 30.0444, 31.2357), ("Alexandria", 31.2001, 29.9187),
             ("Giza", 30.0131, 31.2089)),
             (("+20 2 #### ####", "02 #### ####"), ("+20 10 #### ####", "010 #### ####"))),
    _Country("MAR", "ar", 2.5, (("Casablanca", 33.5731, -7.5898), ("Rabat", 34.0209, -6.8416),
             ("Marrakech", 31.6295, -7.9811), ("Fès", 34.0181, -5.0078)),
             (("+212 5 22 ## ## ##", "05 22 ## ## ##"), ("+212 6 ## ## ## ##", "06 ## ## ## ##"))),
    _Country("VNM", "vi", 2, (("Hà Nội", 21.0278, 105.8342),
             ("Thành phố Hồ Chí Minh", 10.8231, 106.6297), ("Đà Nẵng", 16.0544, 108.2022)),
             (("+84 24 #### ####", "024 #### ####"), ("+84 9# ### ## ##", "09# ### ## ##"))),
    _Country("IRL", "en", 2, (("Dublin", 53.3498, -6.2603), ("Cork", 51.8985, -8.4756),
             ("Galway", 53.2707, -9.0568)),
             (("+353 1 ### ####", "01 ### ####"), ("+353 87 ### ####", "087 ### ####"))),
    _Country("AUT", "de", 2, (("Wien", 48.2082, 16.3738), ("Graz", 47.0707, 15.4395),
             ("Linz", 48.3069, 14.2858)),
             (("+43 1 #######", "01 #######"), ("+43 664 #######", "0664 #######"))),
    _Country("CAN", "en", 2, (("Toronto", 43.6532, -79.3832), ("Montréal", 45.5019, -73.5674),
             ("Vancouver", 49.2827, -123.1207)),
             (("+1 (416) 555-01##", "(416) 555-01##"), ("+1 514-555-01##", "514-555-01##"))),
)
# fmt: on

_EMAIL_DOMAINS = (
    "example.com",
    "example.org",
    "example.net",
    "mail.example.com",
    "post.example.net",
    "inbox.example.org",
    "mail.example",
    "webpost.example",
    "corp.example",
    "staff.acme.example",
    "uni-lyon.example",
    "telco.example",
)
_EMAIL_DOMAIN_WEIGHTS = (18, 12, 10, 14, 8, 8, 8, 6, 5, 4, 4, 3)
_STAFF_DOMAINS = ("enrol.example", "registry.example.org", "ops.example.net")

# ASCII transliteration for e-mail local parts: NFKD drops most accents; these letters have
# no decomposition and need an explicit spelling.
_TRANSLIT = str.maketrans(
    {
        "ł": "l",
        "Ł": "L",
        "ø": "o",
        "Ø": "O",
        "đ": "d",
        "Đ": "D",
        "ı": "i",
        "ß": "ss",
        "æ": "ae",
        "Æ": "AE",
        "œ": "oe",
        "Œ": "OE",
        "þ": "th",
        "ð": "d",
    }
)


def to_ascii(text: str) -> str:
    """Accent-free ASCII spelling of a name ("Łukasz Şahin" -> "Lukasz Sahin").

    Used for e-mail addresses (which real people write without accents) and for the
    notes' accent-dropping spelling variant.
    """
    decomposed = unicodedata.normalize("NFKD", text.translate(_TRANSLIT))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


# ---------------------------------------------------------------------------------------
# Source names


@dataclass(frozen=True)
class SourceNames:
    """The demo's own name lists, as Arrow arrays plus per-(locale, sex) index groups.

    ``given``/``family`` hold the names as written (accents kept); ``*_ascii`` the
    lower-case ASCII spelling used in e-mail addresses. ``*_groups[(locale, sex)]`` are the
    indices usable for a person of that sex ("f" or "m"; entries marked "*" are in both).
    """

    given: pa.Array
    given_ascii: pa.Array
    given_groups: dict[tuple[str, str], IntArray]
    family: pa.Array
    family_ascii: pa.Array
    family_groups: dict[tuple[str, str], IntArray]


def _read_list(name: str) -> list[tuple[str, str, str]]:
    text = (resources.files("biomask.demo") / "data" / name).read_text("utf-8")
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        locale, sex, value = line.split("\t")
        rows.append((locale, sex, value))
    return rows


def _groups(rows: list[tuple[str, str, str]]) -> dict[tuple[str, str], IntArray]:
    out: dict[tuple[str, str], IntArray] = {}
    for loc in LOCALES:
        for sex in ("f", "m"):
            idx = [i for i, (lo, s, _) in enumerate(rows) if lo == loc and s in (sex, "*")]
            if not idx:  # a locale without gendered entries falls back to all of its names
                idx = [i for i, (lo, _, _) in enumerate(rows) if lo == loc]
            out[(loc, sex)] = np.asarray(idx, dtype=np.int64)
    return out


@lru_cache(maxsize=1)
def source_names() -> SourceNames:
    """Load ``demo/data/given_names.txt`` and ``family_names.txt`` (cached).

    Each line is ``locale<TAB>sex<TAB>Name``; ``#`` lines are comments.
    """
    given = _read_list("given_names.txt")
    family = _read_list("family_names.txt")
    return SourceNames(
        given=pa.array([r[2] for r in given], pa.string()),
        given_ascii=pa.array([to_ascii(r[2]).lower() for r in given], pa.string()),
        given_groups=_groups(given),
        family=pa.array([r[2] for r in family], pa.string()),
        family_ascii=pa.array([to_ascii(r[2]).lower() for r in family], pa.string()),
        family_groups=_groups(family),
    )


# ---------------------------------------------------------------------------------------
# Vectorized string building


def _strings(mat: ByteMatrix) -> pa.StringArray:
    """An Arrow string array from an ``(n, width)`` matrix of ASCII codes, without copies
    through Python objects (the fast path for every fixed-width identifier)."""
    n, width = mat.shape
    data = np.ascontiguousarray(mat, dtype=np.uint8).reshape(-1)
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)[: n + 1]
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def _digits(values: IntArray, width: int) -> ByteMatrix:
    """Zero-padded decimal digits of non-negative integers as an ``(n, width)`` matrix."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((values[:, None] // powers) % 10 + 48).astype(np.uint8)


def _prefixed(prefix: str, values: IntArray, width: int) -> pa.StringArray:
    head = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    mat = np.hstack([np.broadcast_to(head, (len(values), head.size)), _digits(values, width)])
    return _strings(mat)


def _render(
    options: Sequence[Sequence[str]], choice: IntArray, rng: np.random.Generator
) -> list[pa.Array]:
    """Fill fixed-width templates row by row, vectorized per template.

    Each option is a tuple of templates with the same placeholders in the same order
    (``#`` digit, ``?`` letter, ``*`` letter or digit, ``%`` hex digit); ``choice`` picks an
    option per row. The random characters are drawn once per row and written into every
    template of the tuple, which is how a phone number's international and national
    spellings share their digits.

    Returns
    -------
    list of pa.Array
        One string array per template position, in row order.
    """
    n = len(choice)
    width = len(options[0])
    parts: list[list[pa.Array]] = [[] for _ in range(width)]
    order: list[IntArray] = []
    for k, option in enumerate(options):
        rows = np.flatnonzero(choice == k)
        if rows.size == 0:
            continue
        order.append(rows)
        holes = [c for c in option[0] if c in _HOLES]
        vals = np.empty((rows.size, len(holes)), dtype=np.uint8)
        if holes:
            u = rng.random((rows.size, len(holes)))
            for j, h in enumerate(holes):
                alphabet = _HOLES[h]
                vals[:, j] = alphabet[(u[:, j] * alphabet.size).astype(np.int64)]
        for t, template in enumerate(option):
            raw = np.frombuffer(template.encode("ascii"), dtype=np.uint8)
            mat = np.broadcast_to(raw, (rows.size, raw.size)).copy()
            pos = [i for i, c in enumerate(template) if c in _HOLES]
            if pos:
                mat[:, pos] = vals
            parts[t].append(_strings(mat))
    perm = np.concatenate(order)
    inverse = np.empty(n, dtype=np.int64)
    inverse[perm] = np.arange(n, dtype=np.int64)
    idx = pa.array(inverse)
    return [pa.concat_arrays(p).take(idx) for p in parts]


def _join(*parts: pa.Array | str) -> pa.Array:
    """Element-wise concatenation of string arrays and literals."""
    return pc.binary_join_element_wise(*parts, "")


def _permute(index: IntArray, half: int, keys: npt.NDArray[np.uint64]) -> IntArray:
    """A keyed bijection of ``[0, 10**(2*half))``: balanced Feistel network on two halves.

    Identifiers must be unique and must not look sequential (a sequential id leaks the
    enrolment order); a permutation of the row index gives both, and it works on any
    slice of rows, so the streamed 5M-row table needs no global set of used ids.
    """
    base = np.uint64(10**half)
    left = (index.astype(np.uint64) // base).astype(np.uint64)
    right = (index.astype(np.uint64) % base).astype(np.uint64)
    with np.errstate(over="ignore"):
        for k in keys:
            x = (right + k) * np.uint64(0x9E3779B97F4A7C15)
            x ^= x >> np.uint64(29)
            x *= np.uint64(0xBF58476D1CE4E5B9)
            x ^= x >> np.uint64(32)
            left, right = right, (left + x % base) % base
    return (left * base + right).astype(np.int64)


def _icao_check(text: str) -> int:
    """ICAO 9303 check digit of ``text`` as an int (:func:`biomask.masking.checkdigits`).

    Strict: a field holds only ``0-9 A-Z <`` (upper case), which the demo's data keeps.
    """
    if any(not ("0" <= c <= "9" or "A" <= c <= "Z" or c == "<") for c in text):
        raise ValueError("an ICAO 9303 field holds only 0-9, A-Z and <")
    return int(icao_check_digit(text))


def _passports(rng: np.random.Generator, n: int) -> pa.StringArray:
    """8 document-number characters plus their ICAO 9303 check digit, vectorized."""
    style = rng.random(n) < 0.6
    letters = _LETTERS[rng.integers(0, 26, size=(n, 8))]
    digits = _DIGITS[rng.integers(0, 10, size=(n, 8))]
    alnum = _ALNUM[rng.integers(0, 36, size=(n, 8))]
    # style 1: two letters then six digits ("AB1234567" with the check); style 2: any alnum
    body = np.where(style[:, None], np.hstack([letters[:, :2], digits[:, 2:]]), alnum)
    values = np.where(body >= 65, body.astype(np.int64) - 55, body.astype(np.int64) - 48)
    check = (values * np.array([7, 3, 1, 7, 3, 1, 7, 3])).sum(axis=1) % 10 + 48
    return _strings(np.hstack([body, check.astype(np.uint8)[:, None]]))


# ---------------------------------------------------------------------------------------
# Subjects


@dataclass(frozen=True)
class _SubjectParts:
    """A subjects table plus the pieces the notes and captures are built from."""

    table: pa.Table
    given_idx: IntArray
    middle_idx: IntArray  # -1: no middle name
    family_idx: IntArray
    gender: npt.NDArray[np.str_]
    phone_intl: pa.Array
    phone_national: pa.Array
    dob: npt.NDArray[np.datetime64]
    home_lat: FloatArray
    home_lon: FloatArray


_CITY_NAMES = [c[0] for co in _COUNTRIES for c in co.cities]
_CITY_LAT = np.array([c[1] for co in _COUNTRIES for c in co.cities])
_CITY_LON = np.array([c[2] for co in _COUNTRIES for c in co.cities])
_CITY_START = np.cumsum([0] + [len(co.cities) for co in _COUNTRIES])
_COUNTRY_P = np.array([co.weight for co in _COUNTRIES]) / sum(co.weight for co in _COUNTRIES)


def _pick(
    rng: np.random.Generator,
    groups: dict[tuple[str, str], IntArray],
    locale: IntArray,
    female: npt.NDArray[np.bool_],
) -> IntArray:
    """One name index per row from the (locale, sex) group of that row, in one gather."""
    pools = [groups[(loc, s)] for loc in LOCALES for s in ("m", "f")]
    flat = np.concatenate(pools)
    sizes = np.array([p.size for p in pools], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    key = locale * 2 + female
    offset = (rng.random(len(locale)) * sizes[key]).astype(np.int64)
    return flat[starts[key] + offset]


def _subjects(
    rng: np.random.Generator, start: int, n: int, id_keys: npt.NDArray[np.uint64]
) -> _SubjectParts:
    names = source_names()
    sid = _prefixed("SUBJ-", _permute(np.arange(start, start + n), 4, id_keys), 8)

    gender_code = rng.choice(3, size=n, p=[0.495, 0.495, 0.01])  # F, M, X
    gender = np.array(["F", "M", "X"])[gender_code]
    # a non-binary subject's name is drawn from either list
    female = np.where(gender_code == 2, rng.random(n) < 0.5, gender_code == 0)

    country = rng.choice(len(_COUNTRIES), size=n, p=_COUNTRY_P)
    country_locale = np.array([LOCALES.index(c.locale) for c in _COUNTRIES])[country]
    diaspora = rng.random(n) < 0.12
    locale = np.where(diaspora, rng.integers(0, len(LOCALES), size=n), country_locale)

    given_idx = _pick(rng, names.given_groups, locale, female)
    family_idx = _pick(rng, names.family_groups, locale, female)
    middle_idx = _pick(rng, names.given_groups, locale, female)
    clash = middle_idx == given_idx
    middle_idx[clash] = (middle_idx[clash] + 1) % len(names.given)  # never "Anna Anna"
    middle_idx[rng.random(n) >= 0.12] = -1

    given = names.given.take(pa.array(given_idx))
    family = names.family.take(pa.array(family_idx))
    has_middle = middle_idx >= 0
    middle = names.given.take(pa.array(np.where(has_middle, middle_idx, 0)))
    middle = pc.if_else(pa.array(has_middle), middle, pa.scalar(None, pa.string()))
    full_name = pc.binary_join_element_wise(given, middle, family, " ", null_handling="skip")

    # ages 18-85 at the end of 2025, skewed towards working age
    span = int((_DOB_HIGH - _DOB_LOW).astype(np.int64))
    dob = _DOB_HIGH - (rng.beta(1.6, 2.6, size=n) * span).astype(np.int64).astype("timedelta64[D]")
    dob_year = dob.astype("datetime64[Y]").astype(np.int64) + 1970

    passport = _passports(rng, n)

    g_ascii = names.given_ascii.take(pa.array(given_idx))
    f_ascii = names.family_ascii.take(pa.array(family_idx))
    initial = pc.utf8_slice_codeunits(g_ascii, 0, 1)
    yy = _strings(_digits(dob_year % 100, 2))
    nn = pc.cast(pa.array(rng.integers(1, 100, size=n)), pa.string())
    domain = pa.array(_EMAIL_DOMAINS).take(
        pa.array(
            rng.choice(
                len(_EMAIL_DOMAINS),
                size=n,
                p=np.array(_EMAIL_DOMAIN_WEIGHTS) / sum(_EMAIL_DOMAIN_WEIGHTS),
            )
        )
    )
    local = pc.choose(
        pa.array(rng.choice(7, size=n, p=[0.32, 0.14, 0.08, 0.08, 0.14, 0.14, 0.10])),
        _join(g_ascii, ".", f_ascii),
        _join(initial, f_ascii, yy),
        _join(g_ascii, "_", f_ascii),
        _join(f_ascii, ".", g_ascii),
        _join(g_ascii, f_ascii, nn),
        _join(g_ascii, ".", f_ascii, nn),
        _join(initial, ".", f_ascii),
    )
    email = _join(local, "@", domain)

    phone_options = [fmt for co in _COUNTRIES for fmt in co.phones]
    phone_start = np.cumsum([0] + [len(co.phones) for co in _COUNTRIES])
    # someone living abroad still mostly has a number from their own country
    phone_country = np.where(
        rng.random(n) < 0.9, country, rng.choice(len(_COUNTRIES), size=n, p=_COUNTRY_P)
    )
    per = np.diff(phone_start)[phone_country]
    phone_choice = phone_start[phone_country] + (rng.random(n) * per).astype(np.int64)
    phone_intl, phone_national = _render(phone_options, phone_choice, rng)
    phone = pc.if_else(pa.array(rng.random(n) < 0.85), phone_intl, phone_national)

    city_country = np.where(rng.random(n) < 0.9, country, rng.choice(len(_COUNTRIES), size=n))
    n_cities = np.diff(_CITY_START)[city_country]
    city = _CITY_START[city_country] + (rng.random(n) * n_cities).astype(np.int64)

    table = pa.Table.from_arrays(
        [
            sid,
            full_name,
            pa.array(dob, pa.date32()),
            pa.array(gender, pa.string()),
            pa.array([c.iso3 for c in _COUNTRIES]).take(pa.array(country)),
            passport,
            email,
            phone,
            pa.array(_CITY_NAMES).take(pa.array(city)),
        ],
        schema=SUBJECTS_SCHEMA,
    )
    return _SubjectParts(
        table=table,
        given_idx=given_idx,
        middle_idx=middle_idx,
        family_idx=family_idx,
        gender=gender,
        phone_intl=phone_intl,
        phone_national=phone_national,
        dob=dob,
        home_lat=_CITY_LAT[city],
        home_lon=_CITY_LON[city],
    )


# ---------------------------------------------------------------------------------------
# Captures


def _device_fleet(rng: np.random.Generator, size: int) -> pa.Array:
    """Serials like ``DV-7F3A-22918``: the booths' devices, shared by many captures."""
    return _render([("DV-%%%%-#####",)], np.zeros(size, dtype=np.int64), rng)[0]


def _ymd(days: npt.NDArray[np.datetime64]) -> tuple[IntArray, IntArray, IntArray]:
    year = days.astype("datetime64[Y]").astype(np.int64) + 1970
    month_start = days.astype("datetime64[M]")
    month = month_start.astype(np.int64) % 12 + 1
    day = (days - month_start.astype("datetime64[D]")).astype(np.int64) + 1
    return year, month, day


def _capture_columns(
    rng: np.random.Generator,
    *,
    dob: npt.NDArray[np.datetime64],
    home_lat: FloatArray,
    home_lon: FloatArray,
    fleet: pa.Array,
) -> dict[str, pa.Array | npt.NDArray[np.generic]]:
    """Per-capture columns for captures whose subjects' DOB and home are given row-wise.

    The timestamp is drawn between the later of the subject's 18th birthday and 2015-01-01
    and the end of 2025; age is then computed from the calendar dates, so that a masking
    step that shifts both dates by one offset provably preserves it.
    """
    n = len(dob)
    by, bm, bd = _ymd(dob)
    # 18th birthday: same month and day 18 years on (29 Feb rolls to 1 Mar)
    month_index = (by + 18 - 1970) * 12 + (bm - 1)
    adult = month_index.astype("datetime64[M]").astype("datetime64[D]") + (bd - 1)
    low = np.maximum(adult.astype("datetime64[s]"), _TS_LOW)
    width = (_TS_HIGH - low).astype(np.int64)
    ts = low + (rng.random(n) * width).astype(np.int64).astype("timedelta64[s]")
    cy, cm, cd = _ymd(ts.astype("datetime64[D]"))
    before_birthday = (cm < bm) | ((cm == bm) & (cd < bd))
    age = (cy - by - before_birthday).astype(np.int32)

    at_home = rng.random(n) < 0.65
    site = rng.integers(0, len(_CITY_NAMES), size=n)
    lat = np.where(at_home, home_lat, _CITY_LAT[site]) + rng.normal(0.0, 0.03, size=n)
    lon = np.where(at_home, home_lon, _CITY_LON[site]) + rng.normal(0.0, 0.03, size=n)

    modality = pa.array(["face", "fingerprint", "iris"]).take(
        pa.array(rng.choice(3, size=n, p=[0.5, 0.35, 0.15]))
    )
    quality = rng.beta(6.0, 2.0, size=n).astype(np.float32)
    device = fleet.take(pa.array(rng.integers(0, len(fleet), size=n)))
    return {
        "capture_ts": ts.astype("datetime64[us]"),
        "device_serial": device,
        "gps_lat": lat,
        "gps_lon": lon,
        "age": age,
        "modality": modality,
        "quality_score": quality,
    }


def _capture_arrays(
    ids: pa.Array, subject_id: pa.Array, cols: dict[str, pa.Array | npt.NDArray[np.generic]]
) -> list[pa.Array]:
    return [
        ids,
        subject_id,
        pa.array(cols["capture_ts"], pa.timestamp("us", tz="UTC")),
        cols["device_serial"],
        pa.array(cols["gps_lat"], pa.float64()),
        pa.array(cols["gps_lon"], pa.float64()),
        pa.array(cols["age"], pa.int32()),
        cols["modality"],
        pa.array(cols["quality_score"], pa.float32()),
    ]


def _templates(
    rng: np.random.Generator,
    owner: IntArray,
    n_subjects: int,
    quality: npt.NDArray[np.float32],
    dim: int,
    planted: IntArray,
) -> pa.FixedSizeListArray:
    """Unit-norm float32 embeddings: a subject centroid plus capture noise.

    Noise grows as quality drops, so same-subject cosine similarity is ~0.85-0.95 for good
    captures and lower for poor ones, while different subjects sit near 0: enough
    structure for a matcher or a training loop to find. A few subjects are planted
    duplicates (:func:`_plant_duplicates`): one person enrolled under two ids.
    """
    centroids = rng.standard_normal((n_subjects, dim), dtype=np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    emb = rng.standard_normal((len(owner), dim), dtype=np.float32)
    # drawn after every other template draw, so the other subjects' templates are the
    # same with or without the planted duplicates
    _plant_duplicates(rng, centroids, planted)
    emb *= ((0.3 + 0.6 * (1.0 - quality)) / np.sqrt(dim)).astype(np.float32)[:, None]
    emb += centroids[owner]
    emb /= np.sqrt(np.einsum("ij,ij->i", emb, emb))[:, None]
    return pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), dim)


def _duplicate_pairs(rng: np.random.Generator, n_subjects: int) -> IntArray:
    """``(k, 2)`` subject indices: the second of each pair is the first under a new id.

    One pair per 200 subjects (at least one from 4 subjects up), from the templates' own
    generator, so the identity commands have something real to find in the demo.
    """
    k = max(1, n_subjects // 200) if n_subjects >= 4 else 0
    if k == 0:
        return np.zeros((0, 2), dtype=np.int64)
    return rng.choice(n_subjects, size=2 * k, replace=False).astype(np.int64).reshape(2, k).T


def _plant_duplicates(
    rng: np.random.Generator, centroids: npt.NDArray[np.float32], pairs: IntArray
) -> None:
    """Make each pair's second centroid a near copy of the first (cosine about 0.94)."""
    if not len(pairs):
        return
    dim = centroids.shape[1]
    jitter = rng.standard_normal((len(pairs), dim), dtype=np.float32) * np.float32(
        0.35 / np.sqrt(dim)
    )
    moved = centroids[pairs[:, 0]] + jitter
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    centroids[pairs[:, 1]] = moved


# ---------------------------------------------------------------------------------------
# Operator notes

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_FINGERS = (
    "left index",
    "right index",
    "left thumb",
    "right thumb",
    "left middle",
    "right ring",
    "left little",
)

# Text with no PII at all. Words here must never be source names (a test checks it), so
# that the ground truth is unambiguous.
FILLERS: tuple[str, ...] = (
    "Subject wore glasses; recapture requested.",
    "Lighting poor at booth {booth}.",
    "Fingerprint quality low on {finger}.",
    "Fingerprint quality low on {finger}; finger was dry.",
    "Iris capture repeated twice because of reflections.",
    "Face image retaken: subject was not looking at the camera.",
    "Sensor cleaned before the second attempt.",
    "Queue was long; capture completed at {hh}:{mm}.",
    "Enrolment started on {day} {month} and finished the same day.",
    "Subject requested an interpreter.",
    "Contact lenses removed before iris capture.",
    "Headscarf adjusted for the face capture, with consent.",
    "Device rebooted after a timeout at booth {booth}.",
    "Quality score accepted after manual review.",
    "Minor scar on {finger} noted; no impact on matching.",
    "Follow-up appointment scheduled for {day} {month}.",
    "Background too bright; moved to booth {booth}.",
    "All ten fingers captured.",
    "Left iris partially occluded by eyelid; accepted.",
    "Power cut for {minutes} minutes; capture resumed.",
    "Re-enrolment after template mismatch at the border.",
    "Ticket {ticket} raised for the scanner.",
    "Photo rejected twice for shadows, third attempt fine.",
    "Applicant arrived {minutes} minutes late.",
)

# Sentences about the subject. Placeholders: {name} (a name variant), {passport}, {email},
# {phone}, {booth}; every placeholder except {booth} plants PII.
SUBJECT_SENTENCES: tuple[str, ...] = (
    "{name} presented passport {passport} at booth {booth}.",
    "Passport {passport} checked against the face image; match confirmed for {name}.",
    "{name} asked that the receipt be sent to {email}.",
    "Please call {name} back on {phone} about the recapture.",
    "{name} wore glasses; recapture requested.",
    "Document no. {passport} scanned twice (glare).",
    "Spoke with {name} about the low quality score.",
    "Email on file ({email}) bounced; corrected by the applicant.",
    "Contact number given by {name}: {phone}.",
    "Applicant {name}, passport {passport}, enrolled at booth {booth}.",
    "{name} could not be reached on {phone}.",
    "Confirmation sent to {email} for {name}.",
    "Mobile {phone} verified by SMS code.",
    "{name} was nervous; capture took longer than usual.",
)
STAFF_SENTENCES: tuple[str, ...] = (
    "Checked by {staff}.",
    "Supervisor {staff} approved the exception.",
    "Handed over to {staff} for the iris capture.",
    "Second opinion from {staff}: accepted.",
)

_TITLES = {"F": ("Ms", "Mrs", "Ms", "Dr"), "M": ("Mr", "Mr", "Dr"), "X": ("Mx", "Dr")}
_Piece = tuple[str, str | None]  # (text, PII kind or None)


@dataclass(frozen=True)
class _Person:
    given: str
    middle: str | None
    family: str
    gender: str


def _name_variant(r: random.Random, p: _Person) -> list[_Piece]:
    """One way an operator writes a person's name, as pieces with PII kinds.

    Ground-truth rule: every given or family name word is its own PERSON string, exactly
    as written; titles and bare initials are not PII strings.
    """
    g, f = p.given, p.family
    k = r.random()
    if k < 0.25:
        parts = [g, p.middle, f] if p.middle and r.random() < 0.5 else [g, f]
        out: list[_Piece] = []
        for i, word in enumerate(w for w in parts if w):
            if i:
                out.append((" ", None))
            out.append((word, "PERSON"))
        return out
    if k < 0.35:
        return [(g.upper(), "PERSON"), (" ", None), (f.upper(), "PERSON")]
    if k < 0.45:
        fam = f.upper() if r.random() < 0.5 else f
        return [(fam, "PERSON"), (", ", None), (g, "PERSON")]
    if k < 0.62:
        return [(r.choice(_TITLES[p.gender]) + " ", None), (f, "PERSON")]
    if k < 0.70:
        return [(g[0] + ". ", None), (f, "PERSON")]
    if k < 0.80:
        return [(g, "PERSON")]
    if k < 0.86:
        return [(f, "PERSON")]
    if k < 0.96:
        # operators often drop accents; falls back to the plain spelling when there are none
        return [(to_ascii(g), "PERSON"), (" ", None), (to_ascii(f), "PERSON")]
    return [(g.lower(), "PERSON"), (" ", None), (f.lower(), "PERSON")]


@cache
def _parse(template: str) -> tuple[tuple[str, str | None], ...]:
    """A sentence template as (literal, placeholder) pairs; parsed once per template."""
    out: list[tuple[str, str | None]] = []
    rest = template
    while "{" in rest:
        head, _, tail = rest.partition("{")
        key, _, rest = tail.partition("}")
        out.append((head, key))
    out.append((rest, None))
    return tuple(out)


def _fill(r: random.Random, template: str, values: dict[str, list[_Piece]]) -> list[_Piece]:
    """Splice value pieces (PII, with their kinds) into a sentence template."""
    out: list[_Piece] = []
    for literal, key in _parse(template):
        out.append((literal, None))
        if key is not None:
            out.extend(values[key] if key in values else [(_free(r, key), None)])
    return out


def _free(r: random.Random, key: str) -> str:
    """Values for the non-PII placeholders (booths, times, dates, tickets)."""
    if key == "booth":
        return str(r.randint(1, 12))
    if key == "finger":
        return r.choice(_FINGERS)
    if key == "hh":
        return f"{r.randint(8, 18):02d}"
    if key == "mm":
        return f"{r.randint(0, 59):02d}"
    if key == "day":
        return str(r.randint(1, 28))
    if key == "month":
        return r.choice(_MONTHS)
    if key == "minutes":
        return str(r.randint(2, 45))
    if key == "ticket":
        return f"INC-{r.randint(1000, 9999)}"
    raise KeyError(key)


def _note(
    r: random.Random,
    subject: _Person,
    contact: dict[str, str],
    staff: list[tuple[_Person, str]],
) -> tuple[str | None, list[str], list[str]]:
    """Compose one operator note and list the PII planted in it."""
    u = r.random()
    if u < 0.06:
        return None, [], []
    sentences: list[list[_Piece]] = []
    if u < 0.30:
        for template in r.sample(FILLERS, r.randint(1, 3)):
            sentences.append(_fill(r, template, {}))
    else:
        n_pii = r.choices((1, 2, 3), weights=(5, 3, 1))[0]
        for template in r.sample(SUBJECT_SENTENCES, n_pii):
            phone = contact["phone_intl"] if r.random() < 0.7 else contact["phone_national"]
            if r.random() < 0.1:
                phone = phone.replace(" ", "")
            values: dict[str, list[_Piece]] = {
                "name": _name_variant(r, subject),
                "passport": [(contact["passport"], "DOCUMENT_NUMBER")],
                "email": [(contact["email"], "EMAIL_ADDRESS")],
                "phone": [(phone, "PHONE_NUMBER")],
            }
            sentences.append(_fill(r, template, values))
        if r.random() < 0.2:
            person = r.choice(staff)[0]
            sentences.append(
                _fill(r, r.choice(STAFF_SENTENCES), {"staff": _name_variant(r, person)})
            )
        for template in r.sample(
            FILLERS, r.randint(0, 4 - len(sentences)) if len(sentences) < 4 else 0
        ):
            sentences.append(_fill(r, template, {}))
        r.shuffle(sentences)
    pieces = [p for i, s in enumerate(sentences) for p in ([(" ", None)] if i else []) + s]
    if u >= 0.30 and r.random() < 0.15:
        person, email = r.choice(staff)
        pieces += [
            ("\n-- \n", None),
            (person.given, "PERSON"),
            (" ", None),
            (person.family, "PERSON"),
            ("\n", None),
            (email, "EMAIL_ADDRESS"),
        ]
    text = "".join(t for t, _ in pieces)
    pii = [t for t, kind in pieces if kind]
    kinds = [kind for _, kind in pieces if kind]
    return text, pii, kinds


def _staff(rng: np.random.Generator, size: int) -> list[tuple[_Person, str]]:
    """The enrolment operators: people too, so their names are PII in the ground truth."""
    names = source_names()
    locale = rng.integers(0, len(LOCALES), size=size)
    female = rng.random(size) < 0.5
    gi = _pick(rng, names.given_groups, locale, female)
    fi = _pick(rng, names.family_groups, locale, female)
    dom = rng.integers(0, len(_STAFF_DOMAINS), size=size)
    given, family = names.given.to_pylist(), names.family.to_pylist()
    out = []
    for g, f, fem, d in zip(gi.tolist(), fi.tolist(), female.tolist(), dom.tolist(), strict=True):
        person = _Person(given[g], None, family[f], "F" if fem else "M")
        local = f"{to_ascii(person.given)}.{to_ascii(person.family)}".lower()
        out.append((person, f"{local}@{_STAFF_DOMAINS[d]}"))
    return out


def _notes(
    rng: np.random.Generator, parts: _SubjectParts, owner: IntArray
) -> tuple[pa.Array, list[list[str]], list[list[str]]]:
    """Notes for captures owned by ``owner`` (subject row numbers), with ground truth."""
    names = source_names()
    given, family = names.given.to_pylist(), names.family.to_pylist()
    t = parts.table
    people = [
        _Person(given[g], given[m] if m >= 0 else None, family[f], str(sex))
        for g, m, f, sex in zip(
            parts.given_idx.tolist(),
            parts.middle_idx.tolist(),
            parts.family_idx.tolist(),
            parts.gender.tolist(),
            strict=True,
        )
    ]
    contacts = [
        {"passport": p, "email": e, "phone_intl": pi, "phone_national": pn}
        for p, e, pi, pn in zip(
            t["passport_number"].to_pylist(),
            t["email"].to_pylist(),
            parts.phone_intl.to_pylist(),
            parts.phone_national.to_pylist(),
            strict=True,
        )
    ]
    staff = _staff(rng, int(np.clip(len(people) // 100, 12, 200)))
    r = random.Random(int(rng.integers(0, 2**63 - 1)))
    texts: list[str | None] = []
    pii: list[list[str]] = []
    kinds: list[list[str]] = []
    for s in owner.tolist():
        text, found, found_kinds = _note(r, people[s], contacts[s], staff)
        texts.append(text)
        pii.append(found)
        kinds.append(found_kinds)
    return pa.array(texts, pa.string()), pii, kinds


# ---------------------------------------------------------------------------------------
# Public API


@dataclass(frozen=True)
class DemoData:
    """A synthetic two-table enrolment export and the ground truth of its free text.

    Attributes
    ----------
    subjects:
        One row per enrolled person (:data:`SUBJECTS_SCHEMA`).
    captures:
        One row per biometric capture (:data:`CAPTURES_SCHEMA_BASE`, then
        ``operator_notes`` and ``template`` when generated); ``subject_id`` references
        ``subjects``.
    notes_truth:
        One row per capture (:data:`NOTES_TRUTH_SCHEMA`): every PII string planted in that
        capture's ``operator_notes``, exactly as written, with its kind (PERSON,
        EMAIL_ADDRESS, PHONE_NUMBER, DOCUMENT_NUMBER) and the capture's subject. Empty
        when notes were not generated.
    """

    subjects: pa.Table
    captures: pa.Table
    notes_truth: pa.Table
    #: planted duplicates (``subject_id``, ``duplicate_id``): one person under two ids
    planted_duplicates: pa.Table | None = None


def _seeds(seed: int, *path: int) -> list[np.random.Generator]:
    """Independent generators per concern, so switching one feature off (notes,
    templates) leaves every other column unchanged."""
    children = np.random.SeedSequence([seed, *path]).spawn(6)
    return [np.random.default_rng(c) for c in children]


def _id_keys(seed: int, domain: int) -> npt.NDArray[np.uint64]:
    return np.random.default_rng([seed, 0xB10, domain]).integers(0, 2**63, size=4, dtype=np.uint64)


def generate(
    rows: int = 1000,
    *,
    seed: int = 7,
    captures_per_subject: float = 3.0,
    with_notes: bool = True,
    with_templates: bool = True,
    template_dim: int = 512,
) -> DemoData:
    """Generate a synthetic enrolment export.

    Parameters
    ----------
    rows:
        Number of subjects (at least 1).
    seed:
        Same seed, same arguments: byte-identical tables.
    captures_per_subject:
        Mean captures per subject; every subject has at least one (1 + Poisson(mean - 1)).
    with_notes:
        Add ``operator_notes`` and fill ``notes_truth``; without, both are absent/empty.
    with_templates:
        Add the ``template`` column (unit-norm float32 embeddings).
    template_dim:
        Length of each template.

    Returns
    -------
    DemoData
    """
    if not 1 <= rows <= _MAX_SUBJECTS:
        raise ValueError(f"rows must be between 1 and {_MAX_SUBJECTS:,} (8-digit subject ids)")
    if template_dim < 1:
        raise ValueError("template_dim must be at least 1")
    r_subj, r_cnt, r_cap, r_fleet, r_notes, r_tpl = _seeds(seed, 1)
    parts = _subjects(r_subj, 0, rows, _id_keys(seed, 1))

    extra = max(captures_per_subject - 1.0, 0.0)
    counts = 1 + r_cnt.poisson(extra, size=rows)
    owner = np.repeat(np.arange(rows, dtype=np.int64), counts)
    cols = _capture_columns(
        r_cap,
        dob=parts.dob[owner],
        home_lat=parts.home_lat[owner],
        home_lon=parts.home_lon[owner],
        fleet=_device_fleet(r_fleet, int(np.clip(rows // 40, 8, 5000))),
    )
    # an export lists captures in time order, not grouped by subject
    order = np.argsort(np.asarray(cols["capture_ts"]), kind="stable")
    owner = owner[order]
    cols = {
        k: (v.take(pa.array(order)) if isinstance(v, pa.Array) else v[order])
        for k, v in cols.items()
    }
    ids = _prefixed("CAP-", _permute(np.arange(len(owner)), 5, _id_keys(seed, 2)), 10)
    subject_id = parts.table["subject_id"].combine_chunks().take(pa.array(owner))
    arrays = _capture_arrays(ids, subject_id, cols)
    fields = list(CAPTURES_SCHEMA_BASE)

    if with_notes:
        notes, pii, kinds = _notes(r_notes, parts, owner)
        arrays.append(notes)
        fields.append(pa.field("operator_notes", pa.string()))
        truth = pa.Table.from_arrays(
            [
                ids,
                pa.array(pii, pa.list_(pa.string())),
                pa.array(kinds, pa.list_(pa.string())),
                subject_id,
            ],
            schema=NOTES_TRUTH_SCHEMA,
        )
    else:
        truth = NOTES_TRUTH_SCHEMA.empty_table()
    dups = None
    if with_templates:
        quality = np.asarray(cols["quality_score"], dtype=np.float32)
        planted = _duplicate_pairs(np.random.default_rng([seed, 0xD0B]), rows)
        arrays.append(_templates(r_tpl, owner, rows, quality, template_dim, planted))
        fields.append(pa.field("template", pa.list_(pa.float32(), template_dim)))
        sid = parts.table["subject_id"].combine_chunks()
        dups = pa.table(
            {
                "subject_id": sid.take(pa.array(planted[:, 0])),
                "duplicate_id": sid.take(pa.array(planted[:, 1])),
            }
        )
    captures = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    return DemoData(
        subjects=parts.table, captures=captures, notes_truth=truth, planted_duplicates=dups
    )


def _structured_chunk(seed: int, chunk: int, start: int, n: int, fleet: pa.Array) -> pa.RecordBatch:
    r_subj, _, r_cap, *_ = _seeds(seed, 2, chunk)
    parts = _subjects(r_subj, start, n, _id_keys(seed, 1))
    cols = _capture_columns(
        r_cap, dob=parts.dob, home_lat=parts.home_lat, home_lon=parts.home_lon, fleet=fleet
    )
    ids = _prefixed("CAP-", _permute(np.arange(start, start + n), 5, _id_keys(seed, 2)), 10)
    capture = _capture_arrays(ids, parts.table["subject_id"].combine_chunks(), cols)
    subject = [c.combine_chunks() for c in parts.table.columns]
    return pa.RecordBatch.from_arrays(
        [*subject, capture[0], *capture[2:]], schema=STRUCTURED_SCHEMA
    )


def iter_structured_batches(
    rows: int, batch_size: int = 100_000, *, seed: int = 7
) -> Iterator[pa.RecordBatch]:
    """Stream the flat benchmark table (:data:`STRUCTURED_SCHEMA`) in batches.

    Memory stays bounded by ``batch_size`` plus one internal block of 65,536 rows, so 5M
    rows can be written to Parquet on a small machine. Row ``i`` has the same values for
    any ``batch_size``: rows are generated in fixed, independently seeded blocks and only
    re-cut into batches here.
    """
    if not 0 <= rows <= _MAX_SUBJECTS:
        raise ValueError(f"rows must be between 0 and {_MAX_SUBJECTS:,} (8-digit subject ids)")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    _, _, _, r_fleet, *_ = _seeds(seed, 2)
    fleet = _device_fleet(r_fleet, 2000)
    pending: list[pa.RecordBatch] = []
    have = 0
    for chunk, start in enumerate(range(0, rows, _CHUNK)):
        batch = _structured_chunk(seed, chunk, start, min(_CHUNK, rows - start), fleet)
        if have == 0 and batch.num_rows == batch_size:
            yield batch
            continue
        pending.append(batch)
        have += batch.num_rows
        while have >= batch_size:
            table = pa.Table.from_batches(pending).combine_chunks()
            yield table.slice(0, batch_size).to_batches()[0]
            pending = table.slice(batch_size).to_batches()
            have -= batch_size
    if have:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def generate_structured(rows: int, *, seed: int = 7) -> pa.Table:
    """The flat benchmark table in memory: subjects joined with one capture each.

    No notes and no templates, so it measures the structured operators alone. Same values
    as :func:`iter_structured_batches` with the same seed.
    """
    batches = list(iter_structured_batches(rows, _CHUNK, seed=seed))
    return pa.Table.from_batches(batches, schema=STRUCTURED_SCHEMA)
