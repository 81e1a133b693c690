from __future__ import annotations

import torch

from models.heads import Classifier, blend, class_embeddings


def test_beta_one_equals_the_default_head_exactly(classifier: Classifier) -> None:
    images = torch.randn(5, 3, 32, 32)
    classifier.beta = 1.0
    dual = classifier(images, head="dual")
    default = classifier(images, head="default")
    assert torch.equal(dual, default)


def test_beta_blends_the_two_softmaxes(classifier: Classifier) -> None:
    images = torch.randn(5, 3, 32, 32)
    classifier.beta = 0.25
    expected = 0.25 * classifier(images, head="default") + 0.75 * classifier(images, head="concept")
    torch.testing.assert_close(classifier(images, head="dual"), expected)
    torch.testing.assert_close(classifier(images).sum(-1), torch.ones(5))


def test_blend_with_beta_zero_is_the_concept_head() -> None:
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(blend(a, b, 0.0), b.softmax(-1))


def test_head_rows_are_normalised_means_of_prompt_embeddings(classifier: Classifier) -> None:
    prompts = [["a photo of a circle.", "a circle."], ["a photo of a square.", "a square."]]
    rows = class_embeddings(classifier.backbone, prompts, torch.device("cpu"))
    torch.testing.assert_close(rows.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(rows, classifier.default_head[:2])


def test_concept_head_uses_every_description(classifier: Classifier) -> None:
    # "circle" has two descriptions; its row is their normalised mean.
    rows = class_embeddings(
        classifier.backbone, [classifier.descriptions["circle"]], torch.device("cpu")
    )
    torch.testing.assert_close(rows[0], classifier.concept_head[0])


def test_heads_are_computed_without_dropout_and_leave_every_mode_as_it_was(
    classifier: Classifier,
) -> None:
    """Text towers with dropout (Hugging Face ones: 0.1) must still give one head per model."""
    model = classifier.clip
    blocks = model.transformer.resblocks
    # Dropout after the first text block, as a Hugging Face tower has (active in train mode).
    blocks[0].register_forward_hook(
        lambda module, _, out: torch.nn.functional.dropout(out, 0.5, module.training)
    )
    model.train()
    blocks[1].eval()  # a layer kept in eval mode while training (frozen norm statistics)
    prompts = classifier.default_prompts()
    heads = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        heads.append(class_embeddings(classifier.backbone, prompts, classifier.device))
    assert torch.equal(heads[0], heads[1])
    assert model.training and blocks[0].training and not blocks[1].training
    model.eval()
    assert torch.equal(heads[0], class_embeddings(classifier.backbone, prompts, classifier.device))
