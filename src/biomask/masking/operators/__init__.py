"""Built-in column operators; importing this package registers them.

The ``text`` operator lives in :mod:`biomask.masking.text` and registers itself when that
package is imported; :func:`biomask.masking.registry.get_operator` imports both.
"""

from biomask.masking.operators import basic, encrypt, names, temporal, tokens

__all__ = ["basic", "encrypt", "names", "temporal", "tokens"]
