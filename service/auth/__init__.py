"""API keys, hashed at rest, with three scopes: ``predict``, ``train`` and ``admin``."""
