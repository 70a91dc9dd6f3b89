"""PII inside free text, replaced with the same tokens as the columns (the ``text`` op).

Modules: :mod:`~.engine` (Presidio and spaCy, set up offline and fast),
:mod:`~.recognizers` (what Presidio lacks for enrolment notes), :mod:`~.lexicon` (the
job's known values as keyed hashes), :mod:`~.operator` (the registered ``text`` operator),
:mod:`~.presidio_operator` (biomask tokens as a Presidio anonymizer operator). Draft
policies from sample data (which read the input) are :mod:`biomask.suggest`.
"""

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
