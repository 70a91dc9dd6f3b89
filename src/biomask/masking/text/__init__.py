"""PII inside free text, replaced with the same tokens as the columns (the ``text`` op).

Modules: :mod:`~.engine` (Presidio and spaCy, set up offline and fast),
:mod:`~.recognizers` (what Presidio lacks for enrolment notes), :mod:`~.lexicon` (the
job's known values as keyed hashes), :mod:`~.operator` (the registered ``text`` operator),
:mod:`~.presidio_operator` (biomask tokens as a Presidio anonymizer operator). Draft
policies from sample data (which read the input) are :mod:`biomask.suggest`.
"""

from biomask.masking.text.engine import Detection, TextEngine, check_model, get_engine
from biomask.masking.text.lexicon import Lexicon
from biomask.masking.text.operator import (
    TextOperator,
    build_lexicon,
    lexicon_columns,
    linked_domains,
)

__all__ = [
    "Detection",
    "Lexicon",
    "TextEngine",
    "TextOperator",
    "build_lexicon",
    "check_model",
    "get_engine",
    "lexicon_columns",
    "linked_domains",
]
