"""The peer in ``bench/peer.py``: BentoML serving the same artifact with the same transform.

Written as BentoML's documentation writes an image classifier: one service, one worker
process, the model loaded in ``__init__``, and batchable endpoints under BentoML's adaptive
batching, which merges the lists of concurrent requests into one call. Everything after the
HTTP layer is the code our own server runs: ``service.predict.cache.load`` (the artifact and
its eval transform, split as our server splits it), ``models.data.open_image`` and ``to_rgb``
(the same image policy and RGB decode; a large JPEG at a reduced scale when ours does so) and
``service.predict.service.forward`` (one forward pass, whose output also carries what our shift
monitor reads from the same pass: ``unpack`` keeps the probabilities, as our ``respond`` does).

Two endpoints, one per body format of the comparison:
- ``POST /classify``: multipart, one or more ``images`` file parts;
- ``POST /classify_b64``: JSON ``{"images": ["<base64>", ...]}``.
Each answers a list (one entry per image) of the top-k labels with probabilities.

Read from the environment (``bench/peer.py`` sets them): ``PEER_ARTIFACT`` (the artifact
folder), ``PEER_DEVICE``, ``PEER_MAX_BATCH``, ``PEER_TOP_K``, ``PEER_ENGINE`` (``torch``, as
BentoML's examples load a model, or ``onnxruntime``: our verified export of the artifact, made
under ``PEER_ONNX_DIR``, runs the passes, for a comparison of the two servers on one engine).
Run it alone with ``bentoml serve bench.peer_bento:PeerClassifier --port 3000`` from the
repository root.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import bentoml
import torch
from PIL import Image

from models.data import ImageLimits, open_image, to_rgb
from models.data.images import ACCEPTED_FORMATS
from models.monitoring import unpack
from service.predict.cache import Engine, LoadedModel, load, warm_up
from service.predict.service import DRAFT_MARGIN, forward

MAX_BATCH = int(os.environ.get("PEER_MAX_BATCH", "32"))
TOP_K = int(os.environ.get("PEER_TOP_K", "3"))
# The dispatcher refuses (503) a request it expects to miss this budget; the comparison is of
# throughput under closed-loop load, where every request is answered, so the budget is wide.
MAX_LATENCY_MS = 120_000
LIMITS = ImageLimits(max_pixels=40_000_000)


@bentoml.service(workers=int(os.environ.get("PEER_WORKERS", "1")), traffic={"timeout": 300})
class PeerClassifier:
    def __init__(self) -> None:
        name = os.environ.get("PEER_ENGINE", "torch")
        onnx_dir = Path(os.environ.get("PEER_ONNX_DIR", "onnx"))
        self.model: LoadedModel = load(
            "bench",
            1,
            Path(os.environ["PEER_ARTIFACT"]),
            os.environ.get("PEER_DEVICE", "cpu"),
            Engine(name, onnx_dir, int(os.environ.get("OMP_NUM_THREADS", "0"))),
        )
        if self.model.engine != name:
            raise RuntimeError(f"the artifact could not be served by {name} (see the log above)")
        warm_up(self.model)
        # As our server decodes with RCS_PREDICT_JPEG_DRAFT (peer.py --jpeg-draft sets both): a
        # JPEG far larger than the model's input at a reduced scale, so both run the same
        # transform.
        draft = os.environ.get("PEER_JPEG_DRAFT", "false") == "true"
        size = max(self.model.classifier.backbone.image_size)
        self.at_least = DRAFT_MARGIN * size if draft else None

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def classify(self, images: list[Image.Image]) -> list[list[dict[str, Any]]]:
        # BentoML hands over PIL images opened from the parts (by any of Pillow's plugins);
        # they decode here, as RGB, and only in the formats our policy opens.
        for image in images:
            if image.format not in ACCEPTED_FORMATS:
                raise ValueError(f"{image.format} is not an accepted image format")
        return self._top_k([to_rgb(image, self.at_least) for image in images])

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def classify_b64(self, images: list[str]) -> list[list[dict[str, Any]]]:
        return self._top_k(
            [open_image(base64.b64decode(text), LIMITS, at_least=self.at_least) for text in images]
        )

    def _top_k(self, images: list[Image.Image]) -> list[list[dict[str, Any]]]:
        transform = self.model.pixels or self.model.transform
        out = forward(self.model, torch.stack([transform(image) for image in images]))
        probs, _ = unpack(out, len(self.model.classnames))
        values, indices = probs.topk(min(TOP_K, probs.shape[1]), dim=1)
        names = self.model.classnames
        return [
            [
                {"label": names[j], "probability": float(p)}
                for p, j in zip(row_p.tolist(), row_i.tolist(), strict=True)
            ]
            for row_p, row_i in zip(values, indices, strict=True)
        ]
