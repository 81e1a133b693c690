"""A scoring of candidate descriptions (an evaluation of kind ``candidates``) run by the
worker in-process, then its proposal accepted as a new version."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.config import load_run_config
from models.data.synthetic import DESCRIPTIONS
from models.description_scoring import score_dataset
from service.datasets import service as datasets
from service.db.tables import DescriptionSet, Evaluation
from service.descriptions import candidates
from service.descriptions import service as description_sets
from service.errors import Conflict, InvalidRequest
from service.evaluations import service as evaluations
from tests.service.support import dataset_name, make_settings, worker_context
from worker import evaluations as runner
from worker.runner import WorkerContext

POOL = {
    **{c: list(t) for c, t in DESCRIPTIONS.items()},
    "circle": [*DESCRIPTIONS["circle"], "a plain coloured background"],
}


@pytest.fixture
def ctx(tmp_path: Path, shapes_root: Path) -> WorkerContext:
    return worker_context(make_settings(tmp_path, shapes_root))


def new_scoring(ctx: WorkerContext, shapes_root: Path, **body: object) -> str:
    with ctx.sessions() as session:
        dataset = datasets.register_path(
            session, ctx.settings, "key-test", dataset_name(), str(shapes_root)
        )
        request = candidates.ScoreRequest(
            dataset=dataset.id, model="test-tiny-vit", **{"candidates": POOL, **body}
        )

        def make() -> Evaluation:
            return candidates.build_scoring(session, ctx.settings, request)

        row, _ = evaluations.store(session, make, "digest", lambda _: None, "test", None)
        return row.id


def test_the_worker_scores_as_the_library_does_and_the_proposal_is_accepted(
    ctx: WorkerContext, shapes_root: Path
) -> None:
    evaluation_id = new_scoring(ctx, shapes_root, templates=True)
    with ctx.sessions() as session, pytest.raises(Conflict, match="queued"):
        candidates.accept(session, candidates.AcceptRequest(evaluation=evaluation_id, name="s"))
    assert runner.run_evaluation(ctx, evaluation_id).status == "succeeded"
    with ctx.sessions() as session:
        row = session.get(Evaluation, evaluation_id)
        assert row is not None and row.results is not None
        scores = row.results["scores"]
        # The same numbers as the library on the same images (the job's seed builds the same
        # tiny backbone), and the pool as validated: inline candidates plus templates.
        cfg = load_run_config(None, [f"data.path={shapes_root}"])
        expected = score_dataset(cfg, row.config["candidates"])
        assert scores["proposed"] == expected["proposed"]
        assert scores["per_class"] == expected["per_class"]
        assert scores["split"] == "train" and scores["candidates"] == 6 + 4 * 4
        made = candidates.accept(
            session, candidates.AcceptRequest(evaluation=evaluation_id, name="shapes")
        )
        assert made.status == "accepted" and made.descriptions == scores["proposed"]
        assert made.provenance is not None and made.provenance["evaluation"] == evaluation_id
        # A choice among the scored candidates; a text it did not score is refused.
        chosen = {"cross": [DESCRIPTIONS["cross"][0]]}
        again = candidates.AcceptRequest(
            evaluation=evaluation_id, name="shapes", descriptions=chosen
        )
        second = candidates.accept(session, again)
        assert second.version == 2 and second.descriptions["cross"] == chosen["cross"]
        bad = again.model_copy(update={"descriptions": {"cross": ["never scored"]}})
        with pytest.raises(InvalidRequest, match="did not score"):
            candidates.accept(session, bad)
        assert session.query(DescriptionSet).count() == 2


def test_a_stored_pool_is_scored_and_never_trained_on(
    ctx: WorkerContext, shapes_root: Path
) -> None:
    with ctx.sessions() as session:
        pool = description_sets.create(session, "pool", POOL, description_sets.CANDIDATES)
        for ref in ("pool", "pool/1", pool.id):
            with pytest.raises(InvalidRequest, match="pool of candidates"):
                description_sets.resolve(session, ref, "descriptions")
    evaluation_id = new_scoring(ctx, shapes_root, candidates=None, pool="pool")
    assert runner.run_evaluation(ctx, evaluation_id).status == "succeeded"
    with ctx.sessions() as session:
        row = session.get(Evaluation, evaluation_id)
        assert row is not None and row.config["description_set"] == pool.id
        assert row.config["candidates"] == POOL


def test_the_migration_keeps_every_stored_set_accepted(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    from service.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0004")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO description_sets (id, name, name_key, version, descriptions, "
                "created_at) VALUES ('desc-1', 'shapes', 'shapes', 1, '{\"a\": [\"x\"]}', 0)"
            )
        )
    upgrade(url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT status, provenance FROM description_sets")).one()
    engine.dispose()
    assert tuple(row) == ("accepted", None)
