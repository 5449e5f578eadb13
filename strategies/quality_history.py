"""The quality estimator's versions: the one that serves, and retraining it from the team's own history.

Versions live beside the networks' (``<models_dir>/quality/v0001``, :class:`models.versions.ModelStore`): the
estimator's parameters as a weights-only ``model.pt``, what it learned from in ``meta.json``. The first version is
the cold start (``python -m bench.quality --publish STUDIES``: learned from simulated corrections); each retraining
from the store's history publishes a challenger, which serves only when it predicts the held-out history better.

Each retraining also measures the serving version on the history it did not learn from (:func:`unseen_by`: all of it
for the cold start, the held-out share for a version of the history; :func:`review.pass_policy.record_calibration`):
``review.pass_policy.threshold: auto`` chooses its threshold from that.

A unit of history is one organ of one final case: the features the scorer stored for the case while it was open
(``case_scores.components.organ_features``), and whether the organ failed: the Dice between the case's first
pre-label and its final label below 0.8. Organs that the pass policy let through with one approval are left out
(:func:`review.pass_policy.history_weights`): no other reader saw them, so a failure among them would be learnt as a
success.
"""

from __future__ import annotations

import logging
import zlib
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from sqlalchemy import select

from evaluation.error_detection import FAILURE_DICE
from evaluation.metrics import dice_of
from models.versions import ModelStore
from review import pass_policy
from review.schema import Case, CaseScore, LabelVersion
from review.store import ReviewStore
from strategies.quality import QualityEstimator, feature_vector

log = logging.getLogger(__name__)

QUALITY_MODEL = "quality"
HELD_OUT = 0.25  # the share of final cases (fixed by case id) on which a challenger meets the champion
MIN_UNITS = 30  # fewer units of history than this teach nothing: retraining waits


class QualitySource:
    """The serving estimator, loaded once per champion version; None when there is none or it does not load (the
    queue then keeps its usual order: review is never blocked by the estimator)."""

    def __init__(self, models_dir):
        self.store = ModelStore(models_dir, QUALITY_MODEL)
        self._loaded: Tuple[Optional[int], Optional[QualityEstimator]] = (None, None)
        self.problem: Optional[str] = None  # why the champion does not serve, for the log and the overview page

    def current(self) -> Optional[Tuple[int, QualityEstimator]]:
        champion = self.store.champion()
        if champion is None:
            return None
        if self._loaded[0] != champion.number:
            try:
                self._loaded = (champion.number, QualityEstimator.from_state_dict(self.store.load_weights(champion)))
                self.problem = None
            except Exception as error:  # a broken version must not stop scoring or review
                self.problem = f"quality estimator {champion.tag} does not load ({error}); the queue keeps its order"
                if self._loaded != (champion.number, None):
                    log.warning(self.problem)
                self._loaded = (champion.number, None)
        return (champion.number, self._loaded[1]) if self._loaded[1] is not None else None

    def version(self) -> Optional[int]:
        current = self.current()
        return current[0] if current else None


def publish(store: ModelStore, estimator: QualityEstimator, meta: dict, champion: bool, reason: str):
    """Publish ``estimator`` as the next version; make it the champion when ``champion``."""
    version = store.publish(estimator.state_dict(), {**meta, "largest_features": estimator.largest(8)})
    if champion:
        store.set_champion(version.number, reason, actor="quality estimator")
    return version


def history_units(store: ReviewStore) -> List[Tuple[str, int, List[float], bool]]:
    """(case, organ, features, failed) for every organ of every final case that was scored while open."""
    with store.read() as s:
        finals = s.execute(
            select(Case.id, LabelVersion.path)
            .join(LabelVersion, LabelVersion.id == Case.final_version)
            .where(Case.state == "final")
            .order_by(Case.id)
        ).all()
        first_prelabel = {
            case_id: path
            for case_id, path in s.execute(
                select(LabelVersion.case_id, LabelVersion.path)
                .where(LabelVersion.kind == "prelabel")
                .order_by(LabelVersion.id.desc())  # the dict keeps the last written: the first pre-label
            ).all()
        }
        stored = {
            row.case_id: row.components.get("organ_features", {}) for row in s.execute(select(CaseScore)).scalars()
        }
    out = []
    for case_id, final_path in finals:
        features, prelabel_path = stored.get(case_id), first_prelabel.get(case_id)
        if not features or not prelabel_path:
            continue
        try:
            final = sitk.GetArrayFromImage(sitk.ReadImage(final_path))
            prelabel = sitk.GetArrayFromImage(sitk.ReadImage(prelabel_path))
        except RuntimeError:
            log.warning("quality estimator: the labels of %s do not read; left out of its history", case_id)
            continue
        if final.shape != prelabel.shape:
            continue
        for organ_text, organ_features in features.items():
            organ = int(organ_text)
            if (final == organ).any():
                failed = dice_of(prelabel, final, organ) < FAILURE_DICE
                out.append((case_id, organ, feature_vector(organ, organ_features), failed))
    return out


def held_out(case_id: str) -> bool:
    """Whether the case is in the held-out share (fixed by its id, so champion and challenger meet on the same)."""
    return zlib.crc32(f"quality:{case_id}".encode()) / 2**32 < HELD_OUT


def log_loss(estimator: QualityEstimator, rows: np.ndarray, failed: np.ndarray) -> float:
    p = np.clip(estimator.probabilities(rows), 1e-6, 1 - 1e-6)
    return float(-np.mean(failed * np.log(p) + (1 - failed) * np.log(1 - p)))


def retrain(store: ReviewStore, models_dir) -> Dict[str, object]:
    """Fit a challenger on the history's training share; publish it, and promote it when its log loss on the
    held-out share beats the champion's (or there is no champion). Returns what happened, for the log."""
    every = history_units(store)
    with store.read() as s:
        weights = pass_policy.history_weights(s, {u[0] for u in every})
    # an organ the pass policy let through with one approval says nothing of its outcome: no reader but one saw it
    units = [u for u in every if weights.get((u[0], u[1]), 1.0) > 0]
    train = [u for u in units if not held_out(u[0])]
    test = [u for u in units if held_out(u[0])]
    if len(train) < MIN_UNITS or len({u[3] for u in train}) < 2 or len({u[3] for u in test}) < 2:
        return {"published": None, "why": f"{len(units)} units of history, too few (or one outcome) to learn from"}
    rows, failed = np.array([u[2] for u in train]), np.array([int(u[3]) for u in train])
    test_rows, test_failed = np.array([u[2] for u in test]), np.array([int(u[3]) for u in test])
    challenger = QualityEstimator.fit(rows, failed)
    source = QualitySource(models_dir)
    current = source.current()
    mine = log_loss(challenger, test_rows, test_failed)
    theirs = log_loss(current[1], test_rows, test_failed) if current else None
    better = theirs is None or mine < theirs
    why = (
        f"held-out log loss {mine:.4f}"
        + (f" against the champion's {theirs:.4f}" if theirs is not None else "")
        + ("; promoted" if better else "; the champion stays")
    )
    meta = {
        "source": "history",
        "training_cases": sorted({u[0] for u in train}),  # what its calibration must leave out (unseen_by)
        "units": len(train),
        "failing": int(failed.sum()),
        "held_out_units": len(test),
        "held_out_log_loss": mine,
        "champion_log_loss": theirs,
    }
    version = publish(source.store, challenger, meta, better, why)
    log.info("quality estimator: %s %s", version.tag, why)
    # the serving version on the history it did not learn from: what threshold: auto chooses from
    # (review.pass_policy); an audited organ stands for the organs it was drawn among
    serving, serving_version = (challenger, version) if better else (current[1], source.store.get(current[0]))
    unseen = unseen_by(serving_version.meta, units)
    with store.write() as s:
        pass_policy.record_calibration(
            s, serving_version.number, serving.probabilities(np.array([u[2] for u in unseen])).tolist(),
            [bool(u[3]) for u in unseen], len({u[0] for u in unseen}), [weights.get((u[0], u[1]), 1.0) for u in unseen],
        )  # fmt: skip
    return {"published": version.number, "promoted": better, "why": why, "calibrated_on": len(unseen)}


def unseen_by(meta: dict, units: List[Tuple[str, int, List[float], bool]]) -> List[Tuple[str, int, List[float], bool]]:
    """The units of history a version did not learn from, on which it is calibrated: every unit for a cold start
    (it learned from simulated corrections, none of the team's cases), those outside its ``training_cases`` for a
    version of the history (one published before it named them: the held-out share). The larger this history, the
    closer ``threshold: auto`` comes to the budget it is given (a split-conformal bound is coarse on few failures)."""
    if meta.get("source") != "history":
        return list(units)
    trained = meta.get("training_cases")
    if trained is None:
        return [u for u in units if held_out(u[0])]
    trained = set(trained)
    return [u for u in units if u[0] not in trained]
