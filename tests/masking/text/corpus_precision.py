"""Enrolment prose whose people are called by ordinary words (written for biomask).

Seven known people (the ``subjects`` table of the corpus) have names that are also common
English words: Hope Bell, Rose Mireles, Will Young, May Grant, Mark Page, Frank Hall and
Grace Long. The corpus mixes

* sentences that use those words as words ("the booth bell rang", "sales rose", "the
  queue was long"): the masked sentence must equal the original;
* sentences that name the people (full names in any case and order, titles, initials,
  "FAMILY, Given", signatures): every name part must be replaced, by the pseudonym the
  ``full_name`` column gives that person, and nothing else may change.

:func:`build` returns the people and, per sentence, the original and a function that
gives the expected output from the people's pseudonyms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

PEOPLE = [
    ("Hope", "Bell"),
    ("Rose", "Mireles"),
    ("Will", "Young"),
    ("May", "Grant"),
    ("Mark", "Page"),
    ("Frank", "Hall"),
    ("Grace", "Long"),
]

# the words as words: every sentence must come back unchanged
WORD_SENTENCES = [
    "The booth bell rang twice before the capture.",
    "Sales rose after the new kiosks opened.",
    "Young children need a booster seat in front of the camera.",
    "We hope the sensor works again tomorrow.",
    "Applicants may bring a second document if the first is damaged.",
    "Please mark the left index as damaged in the record.",
    "The applicant gave frank feedback about the waiting area.",
    "Turn to the photo page of the passport before scanning.",
    "The hall was crowded at noon, so capture took longer.",
    "The queue was long; capture completed late.",
    "The operator will recapture the iris after a short break.",
    "Supervisors grant access to the second booth on request.",
    "The grant covers two new fingerprint scanners.",
    "Her hope was that the recapture would be quick.",
    "A rose pattern on the scarf confused the face detector.",
    "The bell above the door was disconnected for the capture.",
    "Long sleeves were rolled up for the fingerprint capture.",
    "The young applicant was accompanied by a guardian.",
    "Nobody expected the light to change so much by evening.",
    "The temperature rose sharply in the afternoon.",
    "It may take a week before the card is printed.",
    "The page was torn, so the document was photographed instead.",
    "There is little hope of a better image from this sensor.",
    "A check mark appears when the template is accepted.",
    "The main hall reopened after lunch.",
    "It was a long wait for everybody in the queue.",
    "The grace period for recapture is two weeks.",
    "Staff will call the applicant when the card is ready.",
    "The applicant was frank about an old injury to the thumb.",
    "Sales of the new kiosks rose in every region.",
    "Volunteer 12 guided the applicants to the booths.",
    "Officer on duty checked the queue every hour.",
    "Subject declined the iris capture.",
    "Visitor badges were handed out at the entrance.",
    "Hope is not a plan, so the scanner was recalibrated.",
    "Will the operator recapture the left thumb?",
    "Mark the template as provisional until the recapture.",
    "Grant access only after the document check.",
    "Frank answers help us fix the booth faster.",
    "Young applicants wait in the family area.",
    "Rose petals were stuck to the sensor glass.",
    "Page two of the form was left blank.",
]
CARRIERS = [
    "{s}",
    "At booth {n}: {s}",
    "Shift {n}. {s}",
    "{s} (ticket {n})",
    "Note {n} - {s}",
    "Morning: {s}",
    "Update {n}. {s}",
    "Evening shift: {s}",
    "Report {n}: {s}",
    "{s} Logged at desk {n}.",
    "Batch {n}. {s}",
    "Reminder: {s}",
]

# the people named: G/F are the given and family names, replaced by the pseudonym's
NAME_SENTENCES = [
    "{G} {F} presented a passport at booth 4.",
    "Spoke with Ms {F} about the low quality score.",
    "{FU}, {G} was nervous during the capture.",
    "{g}. {F} could not be reached by phone.",
    "Handed over to {fl} {gl} for the iris capture.",
    "Checked by {G} {F}; all ten fingers captured.",
    "The recapture for {G} {F} is booked for next week.",
    "Mr {F} asked that the receipt be sent by post.",
    "{GU} {FU} wore glasses; recapture requested.",
    "Applicant {G} {F} arrived early.",
    "Second opinion from Dr {F}: accepted.",
    "Thanks,\n-- \n{G} {F}",
]


@dataclass
class Sentence:
    text: str
    #: expected output from {(given, family): (pseudonym given, pseudonym family)}
    expect: Callable[[dict[tuple[str, str], tuple[str, str]]], str]
    is_name: bool


def _fill(template: str, g: str, f: str) -> str:
    return template.format(G=g, F=f, g=g[0], GU=g.upper(), FU=f.upper(), gl=g.lower(), fl=f.lower())


def build() -> tuple[list[str], list[Sentence]]:
    """The known people's full names and the corpus (>= 500 sentences)."""
    out: list[Sentence] = []
    n = 1
    for s in WORD_SENTENCES:
        for carrier in CARRIERS:
            text = carrier.format(s=s, n=n)
            out.append(Sentence(text, lambda _m, t=text: t, False))
            n += 1
    for g, f in PEOPLE:
        for template in NAME_SENTENCES:
            text = _fill(template, g, f)

            def expect(
                m: dict[tuple[str, str], tuple[str, str]],
                t: str = template,
                key: tuple[str, str] = (g, f),
            ) -> str:
                pg, pf = m[key]
                return _fill(t, pg, pf)

            out.append(Sentence(text, expect, True))
    return [f"{g} {f}" for g, f in PEOPLE], out
