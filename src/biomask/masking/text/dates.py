"""Dates and timestamps in free text: found, shifted by days, written back in their format.

A note that says "DOB 1988-02-24" beside a ``date_of_birth`` column that the policy shifts
both leaks the real date and contradicts its own row. The ``text`` operator therefore
finds every date in a note (:func:`find_dates`) and, in a row bound to an entity, moves it
by that entity's offset (:meth:`DateMatch.shifted`), so the note agrees with the row's
shifted columns.

Formats (each also with a time after it, ``T10:15``, `` 10:15:30``, which is kept: a shift
is a whole number of days):

* ISO ``1988-02-24`` and ``1988/02/24``;
* numeric ``24/02/1988``, ``24.02.1988``, ``24-02-1988`` (also two-digit years): the day and
  month order is the rule's ``date_order`` (``DMY`` by default, ``MDY`` for US data); a
  value that is only valid the other way round (``02/24/1988`` under ``DMY``) is read that
  way round;
* ``24 Feb 1988``, ``24th February 1988``, ``24-Feb-1988``, ``February 24, 1988``,
  ``Feb 24th 1988``;
* without a year, ``5 July`` and ``July 5`` (a month name with a capital): shifted within a
  leap reference year, so ``29 February`` is a date and the year is never written.

Written back "in its own format": the same separators, the same zero-padding, the month as
a number, an abbreviation or a full name in the same case, ``th``-style suffixes recomputed,
two-digit years kept two-digit.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import regex

__all__ = ["DATE_ORDERS", "DateMatch", "find_dates"]

DATE_ORDERS = ("DMY", "MDY")

_MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
_MONTH_NUM: dict[str, int] = {}
for _i, _m in enumerate(_MONTHS, 1):
    _MONTH_NUM[_m] = _i
    _MONTH_NUM[_m[:3]] = _i
_MONTH_NUM["sept"] = 9
_MON = r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"  # noqa: E501
_MONTH_NAME = rf"(?i:(?P<mon>{_MON}))(?P<dot>\.)?"
_SUFFIX = r"(?P<suf>st|nd|rd|th)?"
_TIME = r"(?:(?:T|[ \t]|,[ \t]|[ \t]at[ \t])\d{1,2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:[ \t]?(?:Z|UTC|[AaPp]\.?[Mm]\.?|[+\-]\d{2}:?\d{2}))?)?"  # noqa: E501
_L = r"(?<![\w/.\-:+])"
_R = r"(?![\w/]|[.\-:]\d)"

_PATTERNS: tuple[tuple[str, regex.Pattern[str]], ...] = (
    (
        "iso",
        regex.compile(
            rf"{_L}(?P<y>\d{{4}})(?P<s1>[-/])(?P<m>\d{{1,2}})(?P=s1)(?P<d>\d{{1,2}}){_TIME}{_R}"
        ),
    ),
    (
        "numeric",
        regex.compile(
            rf"{_L}(?P<a>\d{{1,2}})(?P<s1>[/.\-])(?P<b>\d{{1,2}})(?P=s1)(?P<y>\d{{4}}|\d{{2}})"
            rf"{_TIME}{_R}"
        ),
    ),
    (
        "day_month",
        regex.compile(
            rf"(?<![\w.])(?P<d>\d{{1,2}}){_SUFFIX}(?P<s1>[ \t]+(?:of[ \t]+)?|-)"
            rf"{_MONTH_NAME}(?:(?P<s2>,?[ \t]+|-)(?P<y>\d{{4}}))?(?![\w])"
        ),
    ),
    (
        "month_day",
        regex.compile(
            rf"(?<![\w.])(?i:(?P<mon>{_MON}))(?P<dot>\.)?(?P<s1>[ \t]+)(?P<d>\d{{1,2}}){_SUFFIX}"
            rf"(?:(?P<s2>,?[ \t]+)(?P<y>\d{{4}}))?(?![\w]|[.:]\d)"
        ),
    ),
)
_REFERENCE_YEAR = 2000  # a leap year: "29 February" without a year is still a date


def _suffix(day: int) -> str:
    if 11 <= day % 100 <= 13:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def _like(word: str, model: str) -> str:
    """``word`` in the case of ``model`` (``FEB``, ``feb``, ``Feb``)."""
    if model.isupper():
        return word.upper()
    if model.islower():
        return word.lower()
    return word[:1].upper() + word[1:].lower()


def _num(value: int, model: str) -> str:
    return f"{value:0{len(model)}d}" if model.startswith("0") else str(value)


@dataclass(frozen=True)
class DateMatch:
    """One date found in a text: where it is, what it is, and how it was written."""

    start: int
    end: int
    #: the date as written
    written: str
    date: _dt.date
    has_year: bool
    #: (start, end, kind) of the parts to rewrite, relative to :attr:`written`: kind is
    #: ``d``, ``m`` (number), ``mon`` (name), ``suf`` or ``y``
    parts: tuple[tuple[int, int, str], ...]

    def shifted(self, days: int) -> str:
        """The date moved by ``days``, written in the format it was written in."""
        new = self.date + _dt.timedelta(days=days)
        text = self.written
        out: list[str] = []
        last = 0
        for a, b, kind in self.parts:
            out.append(text[last:a])
            old = text[a:b]
            if kind == "d":  # numeric formats keep their width ("31/12" -> "03/10")
                out.append(f"{new.day:0{len(old)}d}")
            elif kind == "dn":  # "5 July", "05 July"
                out.append(_num(new.day, old))
            elif kind == "m":
                out.append(f"{new.month:0{len(old)}d}")
            elif kind == "suf":
                out.append(_like(_suffix(new.day), old))
            elif kind == "mon":
                full = _MONTHS[new.month - 1]
                if old.lower() in _MONTHS:  # written in full ("May" reads as full too)
                    name = full
                elif old.lower() == "sept" and new.month == 9:
                    name = "sept"
                else:
                    name = full[:3]
                out.append(_like(name, old))
            else:  # y
                out.append(f"{new.year % 100:02d}" if len(old) == 2 else f"{new.year:04d}")
            last = b
        out.append(text[last:])
        return "".join(out)


def _make(
    m: regex.Match[str], y: int, mo: int, d: int, has_year: bool, groups: dict[str, str]
) -> DateMatch | None:
    try:
        date = _dt.date(y, mo, d)
    except ValueError:
        return None
    a = m.start()
    parts = sorted(
        (m.start(g) - a, m.end(g) - a, kind) for g, kind in groups.items() if m.start(g) >= 0
    )
    return DateMatch(a, m.end(), m.group(), date, has_year, tuple(parts))


def _year(text: str) -> int:
    y = int(text)
    if len(text) == 2:  # two-digit years: 00-49 -> 2000s, 50-99 -> 1900s (as strptime's %y)
        y += 2000 if y < 69 else 1900
    return y


def find_dates(text: str, order: str = "DMY") -> list[DateMatch]:
    """Every date in ``text`` (see the module docstring), non-overlapping, by start.

    ``order`` (``DMY`` or ``MDY``) reads ambiguous numeric dates; a numeric date that is
    valid only in the other order is read in that order, and one valid in neither is not
    a date (``31/31/2020``).
    """
    if order not in DATE_ORDERS:
        raise ValueError(f"date_order must be one of {', '.join(DATE_ORDERS)}, not {order!r}")
    found: list[DateMatch] = []
    taken = bytearray(len(text) + 1)  # characters already in a date: linear, not quadratic
    for kind, pattern in _PATTERNS:
        for m in pattern.finditer(text):
            if taken.find(1, m.start(), m.end()) != -1:
                continue
            got: DateMatch | None = None
            if kind == "iso":
                got = _make(
                    m, int(m["y"]), int(m["m"]), int(m["d"]), True, {"y": "y", "m": "m", "d": "d"}
                )
            elif kind == "numeric":
                a, b = int(m["a"]), int(m["b"])
                y = _year(m["y"])
                first = ("a", "b") if order == "DMY" else ("b", "a")
                for dg, mg in (first, first[::-1]):
                    d, mo = (a, b) if dg == "a" else (b, a)
                    got = _make(m, y, mo, d, True, {dg: "d", mg: "m", "y": "y"})
                    if got is not None:
                        break
            else:
                mon = _MONTH_NUM[m["mon"].lower().rstrip(".")]
                has_year = m["y"] is not None
                if not has_year and not m["mon"][:1].isupper():
                    continue  # "may 5" is a verb and a number; "May 5" and "5 May" are dates
                groups = {"d": "dn", "mon": "mon", "suf": "suf", "y": "y"}
                y = int(m["y"]) if has_year else _REFERENCE_YEAR
                got = _make(m, y, mon, int(m["d"]), has_year, groups)
                if got is not None and kind == "day_month" and m["dot"] and not has_year:
                    # "on 5 July." : the dot ends the sentence, not an abbreviation
                    cut = m.end() - 1
                    got = DateMatch(got.start, cut, got.written[:-1], got.date, has_year, got.parts)
            if got is not None:
                found.append(got)
                taken[got.start : got.end] = b"\x01" * (got.end - got.start)
    return sorted(found, key=lambda g: g.start)
