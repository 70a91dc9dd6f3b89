"""PII inside free text, replaced with the same tokens as the columns (the ``text`` op).

Modules: :mod:`~.engine` (Presidio and spaCy, set up offline and fast),
:mod:`~.recognizers` (what Presidio lacks for enrolment notes), :mod:`~.lexicon` (the
job's known values as keyed hashes), :mod:`~.operator` (the registered ``text`` operator),
:mod:`~.presidio_operator` (biomask tokens as a Presidio anonymizer operator) and
:mod:`~.suggest` (draft policies from sample data).
"""

# The operators package imports this package's operator module to register "text", and
# this package's modules import operator helpers from it: import it first, whichever of
# the two a program imports first, so neither sees the other half-initialized.
from biomask.masking import operators as _operators  # noqa: F401
from biomask.masking.text.engine import Detection, TextEngine, check_model, get_engine
from biomask.masking.text.lexicon import Lexicon
from biomask.masking.text.operator import TextOperator, linked_domains, prepare_lexicon

__all__ = [
    "Detection",
    "Lexicon",
    "TextEngine",
    "TextOperator",
    "check_model",
    "get_engine",
    "linked_domains",
    "prepare_lexicon",
]
