"""Integrations: Ray for scale-out (``biomask.integrations.ray``) and the PyTorch training
feed (``biomask.integrations.torch``). Both are optional extras and import lazily."""

__all__: list[str] = []
