"""robust-clip-offline: the tools that build the library's assets, apart from the library.

A distribution of its own (``offline/pyproject.toml``, ``pip install ./offline``); the ``models``
wheel does not carry it, and the library reaches it only lazily, through
``models.backbone.offline_builder`` (``python -m models build-offline-backbone``).

- The offline zero-shot backbone (real pretrained towers aligned LiT-style), built in three
  steps: ``assemble`` (the towers as one open_clip model), ``align`` (the contrastive training
  on cached tower outputs) and ``card`` (``backbone.json``: provenance and zero-shot figures);
  ``build`` runs them and writes the model folder.
- ``corpus``: the captioned renders it is aligned on; ``data``: the real image sources and the
  index ranges the corpus and the benchmarks may each use; ``tasks``: the benchmark's shift
  tasks, written as ordinary datasets.

Everything here needs the ``offline`` extra (``pip install 'robust-clip[offline]'``, see
``deps``). Nothing heavy is imported here, so importing a submodule stays cheap.
"""
