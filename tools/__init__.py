"""Tooling around the production packages: the demo and the helpers that start the real API
and worker processes (tests, benchmarks, the demo). Not shipped in the wheel; it may import
``service``, ``worker`` and ``models``, and none of them imports it."""
