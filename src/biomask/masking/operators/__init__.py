"""Built-in operators; importing this package registers them."""

from biomask.masking.operators import basic, encrypt, names, temporal, tokens
from biomask.masking.text import operator as text  # registers "text"

__all__ = ["basic", "encrypt", "names", "temporal", "text", "tokens"]
