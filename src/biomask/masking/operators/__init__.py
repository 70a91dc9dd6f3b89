"""Built-in operators; importing this package registers them."""

from biomask.masking.operators import basic, names, temporal, tokens

__all__ = ["basic", "names", "temporal", "tokens"]
