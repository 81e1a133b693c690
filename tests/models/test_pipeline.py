"""The whole run through the CLI, as a user would: finetune, predict, eval, merge."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.artifacts import load_artifact
from models.cli import main
from models.config import load_run_config
from models.errors import Cancelled, ConfigError
from models.pipeline import finetune
from models.train import Progress

pytestmark = pytest.mark.slow


def _overrides(root: Path, out: Path, objective: str = "drm") -> list[str]:
    return [
        f"data.path={root}",
        f"data.descriptions={root / 'descriptions.json'}",
        "data.ood_splits=[ood_test]",
        f"objective.name={objective}",
        "train.epochs=2",
        "train.batch_size=8",
        "train.lr=0.001",
        "wise.alphas=[0, 0.5, 1]",
        f"output_dir={out}",
    ]


@pytest.mark.parametrize("objective", ["ce", "flyp", "drm"])
def test_finetune_writes_a_complete_card(shapes_root: Path, tmp_path: Path, objective: str) -> None:
    cfg = load_run_config(None, _overrides(shapes_root, tmp_path / "m", objective))
    result = finetune(cfg)
    card = result.card
    assert [p["alpha"] for p in card["wise"]["curve"]] == [0.0, 0.5, 1.0]
    assert card["wise"]["selected_alpha"] in (0.0, 0.5, 1.0)
    assert set(card["metrics"]["zeroshot"]) == {"val", "test", "ood_test"}
    assert set(card["metrics"]["zeroshot"]["val"]) == {"default", "concept", "dual"}
    assert card["dataset"]["fingerprint"] and card["versions"]["torch"] == torch.__version__
    assert card["descriptions"]["circle"] and card["templates"]
    # Description diagnostics for every objective: DRM's cached p_c, or a pass of their own.
    diagnostics = card["description_diagnostics"]
    assert set(diagnostics["per_class"]) == set(card["classnames"])
    assert sum(c["n"] for c in diagnostics["per_class"].values()) == diagnostics["images"]
    loaded = load_artifact(tmp_path / "m", verify=True)
    images = torch.randn(3, 3, 32, 32)
    assert torch.equal(loaded.classifier(images), result.artifact.classifier.eval()(images))


def test_drm_without_descriptions_is_refused(shapes_root: Path, tmp_path: Path) -> None:
    overrides = [o for o in _overrides(shapes_root, tmp_path) if "descriptions" not in o]
    with pytest.raises(ConfigError, match="data.descriptions"):
        finetune(load_run_config(None, overrides))


def test_the_training_open_is_confined_to_data_within(shapes_root: Path, tmp_path: Path) -> None:
    # The worker checks the dataset before training; the training step opens it again, and a
    # class folder swapped for a link out in between must not be followed either.
    from shutil import copytree, rmtree

    from models.errors import DataError
    from models.pipeline import prepare_data, run_key

    root = copytree(shapes_root, tmp_path / "set")
    outside = copytree(root / "train", tmp_path / "outside")
    overrides = _overrides(root, tmp_path / "m") + [f"data.within={root}"]
    cfg = load_run_config(None, overrides)
    assert prepare_data(cfg)[0].classnames
    classname = sorted(p.name for p in (root / "train").iterdir())[0]
    rmtree(root / "train" / classname)
    (root / "train" / classname).symlink_to(outside / classname)
    with pytest.raises(DataError, match="outside"):
        prepare_data(cfg)
    # Confinement is not part of what a checkpoint must match.
    assert run_key(cfg) == run_key(load_run_config(None, _overrides(root, tmp_path / "m")))


def test_cli_finetune_predict_eval_merge(shapes_root: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "m"
    args = ["finetune", "--no-progress"]
    for item in _overrides(shapes_root, out):
        args += ["--set", item]
    assert main(args) == 0
    assert (out / "config.yaml").is_file()
    image = shapes_root / "ood_test" / "circle" / "0000.png"
    assert main(["predict", str(out), str(image), "--top-k", "2"]) == 0
    assert str(image) in capsys.readouterr().out
    assert main(["eval", str(out), "--data", str(shapes_root), "--splits", "ood_test"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0.0 <= metrics["ood_test"]["dual"]["top1"] <= 1.0
    assert main(["report", str(out), "--png", str(tmp_path / "er.png")]) == 0
    text = capsys.readouterr().out
    assert "gain over zero-shot: ID (test)" in text and "description diagnostics:" in text
    assert (tmp_path / "er.png").read_bytes().startswith(b"\x89PNG")
    assert main(["report", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ood_splits"] == ["ood_test"]
    assert main(["merge", str(out), "--alpha", "0.5", "--out", str(tmp_path / "half")]) == 0
    half = load_artifact(tmp_path / "half")
    assert half.card["wise"]["selected_alpha"] == 0.5
    # The curve's alpha 0 reuses the zero-shot evaluation; an artifact merged at alpha 0 and
    # evaluated on its own must score exactly that.
    assert main(["merge", str(out), "--alpha", "0", "--out", str(tmp_path / "zero")]) == 0
    capsys.readouterr()
    zero_dir = str(tmp_path / "zero")
    assert main(["eval", zero_dir, "--data", str(shapes_root), "--splits", "val", "ood_test"]) == 0
    zero = json.loads(capsys.readouterr().out)
    card = load_artifact(out).card
    recorded = card["metrics"]["zeroshot"]
    assert card["wise"]["curve"][0]["metrics"] == recorded
    # "dual" is what the artifact serves, dual inference at its beta: the curve's column of the
    # head the rule chose (the default head is served as beta 1).
    served = card["wise"]["selected_head"]
    for split in ("val", "ood_test"):
        for head, curve_head in (("default", "default"), ("concept", "concept"), ("dual", served)):
            assert zero[split][head]["top1"] == recorded[split][curve_head]["top1"], (split, head)


def test_cli_reports_user_errors_in_one_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["finetune", "--set", "train.lr=-1"]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "x.png"]) == 2
    assert "not an artifact" in capsys.readouterr().err


def test_models_imports_no_framework() -> None:
    code = (
        "import sys, models, models.cli; "
        "bad = [m for m in ('fastapi', 'celery', 'sqlalchemy', 'pydantic_settings', 'service', "
        "'worker') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_should_stop_is_asked_between_evaluation_batches(shapes_root: Path, tmp_path: Path) -> None:
    """Issue 11 (4): evaluation ran to its end however long after a cancel; now each batch asks."""
    asked: list[int] = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) >= 2  # the second batch of the zero-shot evaluation

    cfg = load_run_config(None, _overrides(shapes_root, tmp_path / "m"))
    with pytest.raises(Cancelled, match="stopped during evaluation"):
        finetune(cfg, should_stop=should_stop)
    assert len(asked) == 2
    assert not (tmp_path / "m").exists()  # nothing written


def test_should_stop_is_asked_between_wise_ft_alphas(shapes_root: Path, tmp_path: Path) -> None:
    overrides = [*_overrides(shapes_root, tmp_path / "m"), "train.epochs=1"]
    overrides += [f"wise.alphas=[{', '.join(str(i / 100) for i in range(101))}]"]
    trained = {"done": False}

    def callback(progress: Progress) -> None:
        trained["done"] = progress.step == progress.total_steps

    # Stop as soon as training is over: the first thing asked then is the sweep's first alpha
    # (alpha 0 reuses the zero-shot evaluation, so 100 are left to evaluate).
    with pytest.raises(Cancelled, match="WiSE-FT sweep stopped after 0 of 100 alphas"):
        finetune(
            load_run_config(None, overrides),
            callback=callback,
            should_stop=lambda: trained["done"],
        )
    assert trained["done"]


@pytest.mark.parametrize("heads", ["[default, dual]", "[default]"])
def test_the_paired_rule_chooses_alpha_and_head_and_the_artifact_serves_that_head(
    shapes_root: Path, tmp_path: Path, heads: str
) -> None:
    overrides = _overrides(shapes_root, tmp_path / "m", "flyp")
    overrides += ["wise.selection=paired", f"wise.heads={heads}", "head.beta=0.5"]
    result = finetune(load_run_config(None, overrides))
    wise = result.card["wise"]
    head = wise["selected_head"]
    assert head in ("default", "dual") if "dual" in heads else head == "default"
    # the rule kept the per-image validation hits it needs, and nothing else
    for point in wise["curve"]:
        assert set(point["metrics"]["val"][head]["images"]) == {"n", "hits"}
        assert all("images" not in m for m in point["metrics"]["test"].values())
    assert result.card["beta"] == (1.0 if head == "default" else 0.5)
    loaded = load_artifact(tmp_path / "m", verify=True)
    assert loaded.classifier.beta == result.card["beta"]
    # the served output is the chosen head's at the selected alpha
    images = torch.randn(3, 3, 32, 32)
    classifier = loaded.classifier.eval()
    torch.testing.assert_close(classifier(images), classifier(images, head=head))


def test_keys_added_to_the_config_leave_checkpoint_keys_unchanged_at_their_defaults(
    tmp_path: Path,
) -> None:
    from models.config import to_dict
    from models.json_values import stable_hash
    from models.pipeline import ADDED_KEYS, run_key

    cfg = load_run_config(None, ["data.path=x", f"output_dir={tmp_path}"])
    before = to_dict(cfg)  # the key as computed before the keys existed
    del before["output_dir"]
    before["train"].pop("device")
    before["data"].pop("within")
    for section, key in ADDED_KEYS:
        before[section].pop(key)
    assert run_key(cfg) == stable_hash(before)[:16]
    changed = load_run_config(None, ["data.path=x", "objective.pc_head=default"])
    assert run_key(changed) != run_key(cfg)
