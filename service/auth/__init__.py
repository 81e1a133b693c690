"""API keys, hashed at rest, with two scopes: ``predict`` and ``train``."""
