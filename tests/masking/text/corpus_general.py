"""General prose, not in the demo's style: support tickets, CV headers, letters.

Written for biomask's tests and ``bench/text.py`` (no public dataset is copied). Records
are generated from templates with a seeded RNG, and every planted PII string is recorded
with its kind, so a masker can be scored (:func:`biomask.masking.text.quality.measure`) and
each output checked against its template (:attr:`Record.pattern`): the text outside the
slots must come back unchanged, every slot must change, and a date slot in a row with no
entity must read ``<DATE>``.

Formats planted: US phone numbers with extensions, dots, dashes, parentheses and
``001`` prefixes, international and UK national numbers; card numbers of 14-19 digits
(Visa, Mastercard 5- and 2-series, Amex, JCB, Discover, UnionPay, Diners) grouped or not;
US SSNs, UK National Insurance numbers and IBANs without a context word; dates of birth
and other dates in ISO, numeric, "24 Feb 1988" and "February 24, 1988" forms.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

GIVEN = [
    "Amara",
    "Kenji",
    "Soledad",
    "Tomasz",
    "Ngozi",
    "Lars",
    "Farida",
    "Mateo",
    "Aiko",
    "Dmitri",
    "Leilani",
    "Oksana",
    "Rashid",
    "Ingrid",
    "Thandiwe",
    "Bogdan",
    "Yusuf",
    "Camila",
    "Eero",
    "Priyanka",
    "Kwame",
    "Svetlana",
    "Haruto",
    "Zeynep",
    "Bongani",
]
FAMILY = [
    "Okonkwo",
    "Tanaka",
    "Villalobos",
    "Wisniewski",
    "Eze",
    "Lindqvist",
    "Haddad",
    "Ferreira",
    "Nakamura",
    "Volkov",
    "Kahale",
    "Shevchenko",
    "Johansson",
    "Ndlovu",
    "Popescu",
    "Restrepo",
    "Virtanen",
    "Mbeki",
    "Gallardo",
    "Oyelaran",
    "Szymanski",
    "Achterberg",
    "Rautio",
    "Khumalo",
    "Baptiste",
]
TITLES = ("Mr", "Ms", "Dr", "Mrs")

TEMPLATES = (
    # support tickets
    "Ticket {n}: customer {NAME} called from {PHONE} about a double charge on card {CARD}. "
    "Please call back before {DATE}.",
    "Hi team, {NAME} (DOB {DATE}) cannot log in since the update. Reach them at {EMAIL} or "
    "{PHONE}.",
    "Refund of 40 dollars issued to {IBAN} for {NAME}; everybody in billing was impressed "
    "by the quick fix.",
    "Caller confirmed {SSN} and asked us to update the postal address. I'd argue we should "
    "browse the older tickets first.",
    "Agent note: {NAME} didn't get the confirmation e-mail, so I resent it to {EMAIL}.",
    "Escalation: the card {CARD} was declined twice on {DATE}; {NAME} thought it was fraud.",
    "Chat summary: {NAME} asked why the app logged them out. Told them we'll look into it "
    "and call {PHONE}.",
    "Payment reference {n}. Card on file {CARD}, holder {NAME}, expires next spring.",
    # CV headers
    "{NAME}\n{EMAIL} | {PHONE}\nDate of birth: {DATE}\nNational Insurance: {NINO}",
    "Curriculum vitae of {NAME}, born {DATE}. Mobile {PHONE}. I can concentrate on detail "
    "and enjoy teamwork.",
    "Profile: {NAME} | {PHONE} | {EMAIL}. Available from {DATE}.",
    "{NAME} - software tester\nSSN {SSN} - DOB {DATE}\nPhone {PHONE}",
    # letters
    "Dear {TITLE} {FAMILY},\nThank you for your letter of {DATE}. We have updated your "
    "account and everybody here hopes the matter is closed.\nYours sincerely,\n{NAME2}",
    "Dear {TITLE} {FAMILY}, we could not reach you on {PHONE}. Please call us back; we "
    "didn't want to close the case without you.",
    "To whom it may concern: {NAME} worked with us until {DATE} and we were impressed by "
    "their work. Contact me at {EMAIL}.\nKind regards,\n{NAME2}",
    "Dear {TITLE} {FAMILY}, the transfer to {IBAN} was made on {DATE}. If you have "
    "questions, call {PHONE}.",
)

_SLOT = re.compile(r"\{([A-Z0-9]+|n)\}")


@dataclass
class Record:
    text: str
    pii: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    dates: list[str] = field(default_factory=list)
    #: the record as a regex: literal text, and one group per PII or date slot
    pattern: str = ""
    #: per group of :attr:`pattern`: the original value and its kind
    slots: list[tuple[str, str]] = field(default_factory=list)


def _luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def _card(rng: random.Random) -> str:
    prefix, length = rng.choice(
        [
            ("4", 16),
            ("51", 16),
            ("55", 16),
            ("2221", 16),
            ("2720", 16),
            ("34", 15),
            ("37", 15),
            ("3528", 16),
            ("3589", 19),
            ("6011", 16),
            ("62", 17),
            ("62", 19),
            ("36", 14),
        ]
    )
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    num = body + _luhn_digit(body)
    style = rng.choice(["plain", "space", "dash"])
    if style == "plain" or length not in (15, 16):
        return num
    sep = " " if style == "space" else "-"
    groups = (
        [num[:4], num[4:10], num[10:]]
        if length == 15
        else [num[i : i + 4] for i in range(0, 16, 4)]
    )
    return sep.join(groups)


def _d(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _phone(rng: random.Random) -> str:
    a, b, c = str(rng.randint(201, 989)), str(rng.randint(201, 989)), _d(rng, 4)
    ext = str(rng.randint(1, 99999))
    return rng.choice(
        [
            f"{a}-{b}-{c}x{ext}",
            f"({a}){b}-{c}x{ext}",
            f"{a}.{b}.{c}x{ext}",
            f"001-{a}-{b}-{c}x{ext}",
            f"+1-{a}-{b}-{c}",
            f"({a}) {b}-{c}",
            f"{a}.{b}.{c}",
            f"+44 20 {_d(rng, 4)} {_d(rng, 4)}",
            f"07700 {_d(rng, 6)}",
            f"+49 30 {_d(rng, 7)}",
            f"0044 161 {_d(rng, 3)} {_d(rng, 4)}",
        ]
    )


def _ssn(rng: random.Random) -> str:
    return f"{rng.randint(1, 665):03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _nino(rng: random.Random) -> str:
    first = rng.choice("ABCEHJKLMPRSTWXYZ")
    second = rng.choice("ABCEHJKLMPRSTWXYZ")
    return f"{first}{second} {_d(rng, 2)} {_d(rng, 2)} {_d(rng, 2)} {rng.choice('ABCD')}"


def _iban(rng: random.Random) -> str:
    bban = "WEST" + _d(rng, 14)
    numeric = "".join(str(int(ch, 36)) for ch in bban + "GB00")
    check = 98 - int(numeric) % 97
    raw = f"GB{check:02d}{bban}"
    return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4)) if rng.random() < 0.5 else raw


_MONTHS = [
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
]


def _date(rng: random.Random) -> str:
    y, m, d = rng.randint(1950, 2024), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice(
        [
            f"{y:04d}-{m:02d}-{d:02d}",
            f"{d:02d}/{m:02d}/{y:04d}",
            f"{d} {_MONTHS[m - 1][:3]} {y}",
            f"{_MONTHS[m - 1]} {d}, {y}",
            f"{d} {_MONTHS[m - 1]} {y}",
        ]
    )


def build(n: int = 400, seed: int = 21) -> list[Record]:
    """``n`` records, the templates in turn, with fresh PII for each."""
    rng = random.Random(seed)
    out: list[Record] = []
    for i in range(n):
        template = TEMPLATES[i % len(TEMPLATES)]
        given, family = rng.choice(GIVEN), rng.choice(FAMILY)
        other = f"{rng.choice(GIVEN)} {rng.choice(FAMILY)}"
        email = f"{given.lower()}.{family.lower()}{rng.randint(1, 99)}@mail.example.com"
        values = {
            "NAME": f"{given} {family}",
            "NAME2": other,
            "FAMILY": family,
            "TITLE": rng.choice(TITLES),
            "EMAIL": email,
        }
        rec = Record("")
        parts: list[str] = []
        pattern: list[str] = []
        last = 0
        for m in _SLOT.finditer(template):
            lit = template[last : m.start()]
            parts.append(lit)
            pattern.append(re.escape(lit))
            slot = m.group(1)
            last = m.end()
            if slot == "n":
                v = str(rng.randint(1000, 99999))
                parts.append(v)
                pattern.append(re.escape(v))
                continue
            if slot == "TITLE":
                parts.append(values["TITLE"])
                pattern.append(re.escape(values["TITLE"]))
                continue
            gen = {
                "PHONE": _phone,
                "CARD": _card,
                "SSN": _ssn,
                "NINO": _nino,
                "IBAN": _iban,
                "DATE": _date,
            }.get(slot)
            v = gen(rng) if gen is not None else values[slot]
            kind = {"NAME": "PERSON", "NAME2": "PERSON", "FAMILY": "PERSON"}.get(slot, slot)
            parts.append(v)
            pattern.append(r"(.+?)")
            rec.slots.append((v, kind))
            if kind == "DATE":
                rec.dates.append(v)
            else:
                rec.pii.append(v)
                rec.kinds.append(kind)
        tail = template[last:]
        parts.append(tail)
        pattern.append(re.escape(tail))
        rec.text = "".join(parts)
        rec.pattern = "".join(pattern)
        out.append(rec)
    return out
