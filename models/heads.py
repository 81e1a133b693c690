"""Zero-shot heads and the classifier that serves them.

A head row is a class embedding: encode each of the class's prompts, L2-normalise, average,
L2-normalise again. The *default* head uses template prompts ("a photo of a {c}."), the
*concept* head the class's core-feature descriptions. Dual inference blends the two softmaxes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbone import Backbone, encode_text
from models.errors import ConfigError
from models.templates import fill

HEAD_NAMES = ("default", "concept", "dual")
TEXT_BATCH = 256


def default_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    return [[fill(t, c) for t in templates] for c in classnames]


def concept_prompts(
    classnames: Sequence[str], descriptions: Mapping[str, Sequence[str]]
) -> list[list[str]]:
    missing = [c for c in classnames if not descriptions.get(c)]
    if missing:
        raise ConfigError(f"classes without descriptions: {missing}", key="data.descriptions")
    return [list(descriptions[c]) for c in classnames]


def encode_texts(backbone: Backbone, texts: Sequence[str], device: torch.device) -> Tensor:
    """L2-normalised text embeddings, in batches, without gradients, in eval mode.

    A head is an inference-time quantity: with the tower in training mode, dropout (0.1 in
    Hugging Face text towers) would make every head, and every p_c and prediction computed from
    it, depend on the random state. Each module's mode is restored afterwards, so batch-norm
    layers kept in eval mode during training stay so.
    """
    modes = [(module, module.training) for module in backbone.model.modules()]
    backbone.model.eval()
    chunks = []
    try:
        with torch.no_grad():
            for start in range(0, len(texts), TEXT_BATCH):
                tokens = backbone.tokenizer(list(texts[start : start + TEXT_BATCH])).to(device)
                chunks.append(F.normalize(encode_text(backbone.model, tokens).float(), dim=-1))
    finally:
        for module, training in modes:
            module.training = training
    return torch.cat(chunks)


def class_embeddings(
    backbone: Backbone, prompts: Sequence[Sequence[str]], device: torch.device
) -> Tensor:
    """One row per class: the renormalised mean of its normalised prompt embeddings.

    Each distinct text is encoded once, so classes given the same texts get bit-identical rows
    (a text's embedding otherwise varies in its last bits with its place in a batch).
    """
    unique = list(dict.fromkeys(p for group in prompts for p in group))
    embedded = encode_texts(backbone, unique, device)
    index = {text: i for i, text in enumerate(unique)}
    rows = [embedded[[index[p] for p in group]].mean(dim=0) for group in prompts]
    return F.normalize(torch.stack(rows), dim=-1)


def blend(default_logits: Tensor, concept_logits: Tensor | None, beta: float) -> Tensor:
    """Dual inference: beta * softmax(default) + (1 - beta) * softmax(concept)."""
    p_default = default_logits.float().softmax(dim=-1)
    if concept_logits is None or beta == 1.0:
        return p_default  # exact, not merely close: beta = 1 must equal the default head
    return beta * p_default + (1.0 - beta) * concept_logits.float().softmax(dim=-1)


class Classifier(nn.Module):
    """An open_clip model with its default and concept heads, and dual inference.

    The heads are buffers derived from the text tower (``refresh_heads`` rebuilds them after the
    tower changes, e.g. after a WiSE-FT merge). With ``learned_head`` the default head is instead
    a trainable parameter initialised from the zero-shot head (the ``ce`` objective's head).
    ``heads`` passes precomputed (default, concept) rows instead of encoding the prompts.
    """

    default_head: Tensor
    concept_head: Tensor
    clip: Any  # see backbone.ClipModel

    def __init__(
        self,
        backbone: Backbone,
        classnames: Sequence[str],
        templates: Sequence[str],
        descriptions: Mapping[str, Sequence[str]],
        beta: float = 0.5,
        learned_head: bool = False,
        heads: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.clip = backbone.model
        self.classnames = tuple(classnames)
        self.templates = tuple(templates)
        self.descriptions = {c: tuple(descriptions[c]) for c in classnames}
        self.beta = beta
        self.learned_head = learned_head
        device = self.device
        if heads is None:
            default = class_embeddings(backbone, self.default_prompts(), device)
            concept = class_embeddings(backbone, self.concept_prompts(), device)
        else:  # precomputed (a loaded artifact): skip encoding every prompt again
            default, concept = (h.to(device) for h in heads)
        if learned_head:
            self.default_head = nn.Parameter(default)  # type: ignore[assignment]
        else:
            self.register_buffer("default_head", default)
        self.register_buffer("concept_head", concept)

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    def default_prompts(self) -> list[list[str]]:
        return default_prompts(self.classnames, self.templates)

    def concept_prompts(self) -> list[list[str]]:
        return concept_prompts(self.classnames, self.descriptions)

    def refresh_heads(self) -> None:
        """Rebuild the text-derived heads from the current text tower."""
        device = self.device
        with torch.no_grad():
            if not self.learned_head:
                self.default_head.copy_(
                    class_embeddings(self.backbone, self.default_prompts(), device)
                )
            self.concept_head.copy_(class_embeddings(self.backbone, self.concept_prompts(), device))

    def image_features(self, images: Tensor) -> Tensor:
        return F.normalize(self.clip.encode_image(images), dim=-1)

    def logits_from_features(self, features: Tensor, head: str = "default") -> Tensor:
        rows = self.default_head if head == "default" else self.concept_head
        scale = self.clip.logit_scale.exp()
        return scale * features.float() @ rows.float().t()

    def probs_from_features(self, features: Tensor, head: str = "dual") -> Tensor:
        if head not in HEAD_NAMES:
            raise ConfigError(f"head must be one of {list(HEAD_NAMES)}, got {head!r}")
        if head == "dual":
            default = self.logits_from_features(features, "default")
            return blend(default, self.logits_from_features(features, "concept"), self.beta)
        return self.logits_from_features(features, head).float().softmax(dim=-1)

    def forward(self, images: Tensor, head: str = "dual") -> Tensor:
        """Class probabilities (dual inference with ``beta`` by default)."""
        return self.probs_from_features(self.image_features(images), head)
