"""Active-learning scores per case, computed in the background and kept in the review store.

For each case not yet final, :class:`CaseScorer` runs every scoring member (trained networks with flip TTA, and the
atlas prior) on one grid and records:

* **uncertainty**: the predictive entropy (bits) of the members' mean, averaged over the predicted foreground;
* **attention**: the AbdomenAtlas-style attention (:mod:`strategies.attention`), in mL, with its parts; the map
  itself is saved as the case's label tagged ``attention`` so that Slicer, OHIF and the review pages can show it;
* **foreground** (mL) and a **descriptor** (:mod:`strategies.diversity`).

:class:`ScoringWorker` keeps scores fresh in one low-priority thread: a case is rescored when it has no score, or
when the set of member versions changed since (after each training); it never runs inside a request. The queue
priority of each case is the configured weighted sum of its normalised scores, with a reason naming the parts.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from sqlalchemy import select

from amoslabel.config import ActiveLearningSettings
from review.queries import prelabels
from review.schema import Case, CaseScore
from review.states import CLOSED
from review.store import ReviewStore, utcnow
from review.workflow import Workflow
from strategies.anatomy import AnatomyPrior, learn
from strategies.attention import AttentionSettings, attention, heat_image
from strategies.clasp import class_entropies
from strategies.diversity import describe, diversity_scores
from strategies.members import MemberOutput
from strategies.quality import QualityEstimator, expected_failures, organ_features

log = logging.getLogger(__name__)

# how often the idle worker reads the served versions: a new one (a training ended) makes every open case's score
# stale, and the queue should follow it within seconds, not at the next interval
VERSION_CHECK_S = 5.0
Members = Callable[[str, str], tuple]  # (scan path, modality) -> (outputs, grid image, scan on grid)


def predictive_entropy(outputs: Sequence[MemberOutput]) -> float:
    """Mean over the predicted foreground of the entropy (bits) of the members' mean class probabilities."""
    mean = np.mean([o.probabilities for o in outputs], axis=0)
    foreground = mean.argmax(axis=0) > 0
    if not foreground.any():
        return 0.0
    p = np.clip(mean[:, foreground], 1e-8, 1.0)
    return float((-(p * np.log2(p)).sum(axis=0)).mean())


class CaseScorer:
    """Computes and stores one case's scores."""

    def __init__(
        self,
        store: ReviewStore,
        settings: ActiveLearningSettings,
        members: Members,
        locate_image: Callable[[str], Optional[str]],
        modality_of: Callable[[str], str],
        save_attention: Optional[Callable[[str, sitk.Image], None]] = None,
        anatomy: Optional[Callable[[], Optional[AnatomyPrior]]] = None,
        quality: Optional[Callable[[], Optional[Tuple[int, QualityEstimator]]]] = None,
    ):
        self.store, self.settings, self.members = store, settings, members
        self.locate_image, self.modality_of = locate_image, modality_of
        self.save_attention, self.anatomy, self.quality = save_attention, anatomy, quality

    def score(self, case_id: str) -> Optional[Dict[str, Any]]:
        path = self.locate_image(case_id)
        if not path:
            return None
        prelabel = prelabels(self.store, case_id).get(case_id)
        computed = self.compute(path, self.modality_of(case_id), prelabel=prelabel[1] if prelabel else None)
        if computed is None:
            return None
        row, heat = computed
        if prelabel:
            row["members"]["prelabel"] = prelabel[0]  # a newer pre-label makes the score stale
        if self.save_attention is not None:
            self.save_attention(case_id, heat)
        store_score(self.store, case_id, row)
        return row

    def compute(
        self, path: str, modality: str, outputs: Optional[tuple] = None, prelabel: Optional[str] = None
    ) -> Optional[Tuple[Dict, sitk.Image]]:
        """One scan's scores and attention heat, stored nowhere (a cohort run computes on workers, stores on its
        driver). ``outputs``: the members' (outputs, grid, scan on grid) when computed already; ``prelabel``: the
        case's pre-label file, whose organs the quality estimator judges (else the members' own prediction)."""
        outputs, grid, scan = outputs if outputs is not None else self.members(path, modality)
        if not outputs:
            return None
        thresholds = AttentionSettings(self.settings.std_threshold, self.settings.entropy_threshold)
        prior = self.anatomy() if self.anatomy else None
        networks = [n for n, o in enumerate(outputs) if o.name != "prior"]
        result = attention([o.probabilities for o in outputs], grid, prior, scan, thresholds, entropy_from=networks)
        voxel_ml = float(np.prod(grid.GetSpacing())) / 1000.0
        mean = np.mean([o.probabilities for o in outputs], axis=0)
        # ClaSP's per-organ entropy from the networks alone when there are any (the smoothed atlas is unsure everywhere)
        sharp = np.mean([outputs[n].probabilities for n in networks], axis=0) if networks else mean
        descriptor = describe(sitk.ReadImage(path), "ct" if modality == "CT" else "mri")
        # the quality estimator's inputs, kept with the score: the team's history trains it from them later
        atlas = next((o.probabilities for o in outputs if o.name == "prior"), None)
        network_probabilities = [outputs[n].probabilities for n in networks]
        judged = on_grid(prelabel, grid) if prelabel else None
        judged = sharp.argmax(0) if judged is None else judged
        features = organ_features(judged, network_probabilities, grid, prior, atlas, scan, result.graded())
        row = {
            "members": {o.name: o.version for o in outputs},
            "attention_ml": result.score_ml,
            "uncertainty": predictive_entropy(outputs),
            "foreground_ml": float((mean.argmax(axis=0) > 0).sum()) * voxel_ml,
            "descriptor": list(descriptor.values()),
            "components": {
                **result.components(),
                "reason": result.reason(),
                "class_entropy": {str(organ): round(v, 5) for organ, v in class_entropies(sharp).items()},
                "organ_features": {str(o): {k: round(v, 5) for k, v in f.items()} for o, f in features.items()},
            },
        }
        estimator = self.quality() if self.quality else None
        if estimator is not None:
            version, model = estimator
            predicted = model.predict(features)
            row["members"]["quality"] = version
            row["components"]["quality"] = {str(o): q.as_json() for o, q in predicted.items()}
            row["components"]["expected_failures"] = round(expected_failures(predicted), 4)
        return row, heat_image(result, grid)


def on_grid(label_file: str, grid: sitk.Image) -> Optional[np.ndarray]:
    """A label file resampled (nearest neighbour, physical space) onto the scoring grid; None when it does not read."""
    try:
        label = sitk.ReadImage(label_file)
    except RuntimeError:
        log.warning(
            "active learning: pre-label %s unreadable; the quality estimate judges the members' own", label_file
        )
        return None
    return sitk.GetArrayFromImage(sitk.Resample(label, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0))


def store_score(store: ReviewStore, case_id: str, row: Dict[str, Any]) -> None:
    """Keep a case's scores (replacing the ones it had): the server's scorer and a cohort run both store here."""
    with store.write() as s:
        existing = s.get(CaseScore, case_id)
        if existing is None:
            s.add(CaseScore(case_id=case_id, computed=utcnow(), **row))
        else:
            existing.computed = utcnow()
            for key, value in row.items():
                setattr(existing, key, value)


def scores(store: ReviewStore) -> Dict[str, CaseScore]:
    """Every stored score, by case."""
    with store.read() as s:
        return {row.case_id: row for row in s.execute(select(CaseScore)).scalars()}


def open_cases(store: ReviewStore) -> List[str]:
    """Cases still to annotate or review (everything not final or withdrawn)."""
    with store.read() as s:
        return list(s.execute(select(Case.id).where(Case.state.not_in(CLOSED)).order_by(Case.id)).scalars())


def final_cases(store: ReviewStore) -> List[str]:
    with store.read() as s:
        return list(s.execute(select(Case.id).where(Case.state == "final")).scalars())


def combined(store: ReviewStore, weights: Dict[str, float]) -> Dict[str, tuple]:
    """case -> (priority, reason): the weighted sum of each score divided by its largest value among open cases."""
    table = scores(store)
    candidates = [c for c in open_cases(store) if c in table]
    if not candidates:
        return {}
    parts: Dict[str, Dict[str, float]] = {
        "attention": {c: table[c].attention_ml for c in candidates},
        "uncertainty": {c: table[c].uncertainty for c in candidates},
    }
    if weights.get("diversity"):
        pool = {c: row.descriptor for c, row in table.items() if row.descriptor}
        finals = [c for c in final_cases(store) if c in pool]
        parts["diversity"] = {c: v for c, v in diversity_scores(pool, finals).items() if c in candidates}
    out = {}
    for case in candidates:
        total, reasons = 0.0, []
        for name, values in parts.items():
            weight = weights.get(name, 0.0)
            top = max(values.values(), default=0.0)
            if weight and top > 0 and case in values:
                total += weight * values[case] / top
                reasons.append(f"{name} {values[case] / top:.2f}")
        detail = table[case].components.get("reason", "")
        out[case] = (total, "; ".join(reasons) + (f" — {detail}" if detail else ""))
    return out


def best_unlabelled(store: ReviewStore, key: Callable[[CaseScore], float], candidates: Sequence[str]) -> Optional[str]:
    """The candidate with the highest ``key`` (one pass, top-1: no full sort of a large pool)."""
    table = scores(store)
    best = heapq.nlargest(1, (c for c in candidates if c in table), key=lambda c: key(table[c]))
    return best[0] if best else None


class ScoringWorker:
    """One background thread that rescoring stale cases, at a lowered CPU priority."""

    def __init__(
        self,
        scorer: CaseScorer,
        workflow: Workflow,
        settings: ActiveLearningSettings,
        member_versions: Callable[[], Dict[str, Optional[int]]],
        may_run: Callable[[], bool] = lambda: True,
        prioritise: Callable[[], int] = lambda: 0,
    ):
        self.scorer, self.workflow, self.settings = scorer, workflow, settings
        self.member_versions = member_versions
        self.prioritise = prioritise  # sets the queue's order from the scores (strategies.queue_order)
        self._finals_seen: Optional[int] = None
        self.may_run = may_run  # only the team's leader scores (amoslabel.cluster.leadership)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._versions_seen: Optional[Dict[str, Optional[int]]] = None
        self.passes = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="al-scoring", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look now (new images, or a training that ended), not at the next interval."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def stale(self) -> List[str]:
        versions = self._versions_seen = self.member_versions()
        table = scores(self.workflow.store)
        latest = {case: version for case, (version, _) in prelabels(self.workflow.store).items()}

        def used(case: str) -> dict:  # the versions its score was computed with (the prior has none)
            return {k: v for k, v in table[case].members.items() if k not in ("prior", "prelabel")}

        return [
            c
            for c in open_cases(self.workflow.store)
            if c not in table or used(c) != versions or table[c].members.get("prelabel") != latest.get(c)
        ]

    def run_once(self) -> int:
        """Score every stale case, then refresh the queue priorities. Returns how many cases were scored."""
        done = 0
        for case_id in self.stale():
            if self._stop.is_set():
                break
            try:
                if self.scorer.score(case_id) is not None:
                    done += 1
            except Exception:  # one bad scan must not stop the others; it is retried next pass
                log.exception("active learning: scoring %s failed", case_id)
        finals = len(final_cases(self.workflow.store))
        if done or finals != self._finals_seen:  # an order may follow the finals too (ClaSP's turns, its noise)
            self.prioritise()
            self._finals_seen = finals
        if done:
            log.info("active learning: scored %d case(s)", done)
        self.passes += 1
        return done

    def _run(self) -> None:
        try:  # Linux nice is per thread: interactive requests keep their priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (OSError, AttributeError):
            pass
        while not self._stop.is_set():
            if self.may_run():
                self.run_once()
            self._wait_for_work()

    def _wait_for_work(self) -> None:
        """Until woken, until a model version changes (a training here or on another server of a team ended: the
        store is the one place that knows), or for ``interval_s`` at most."""
        deadline = time.monotonic() + self.settings.interval_s
        while (left := deadline - time.monotonic()) > 0:
            if self._wake.wait(min(left, VERSION_CHECK_S)):
                break
            if self._versions_seen is not None and self.member_versions() != self._versions_seen:
                break
        self._wake.clear()


def learn_anatomy(final_labels: Sequence[str]) -> Optional[AnatomyPrior]:
    """The anatomical prior of the current final labels (None while there are none)."""
    pairs = []
    for path in final_labels:
        try:
            pairs.append((sitk.ReadImage(path), None))
        except RuntimeError:
            log.warning("active learning: final label %s unreadable; left out of the anatomical prior", path)
    return learn(pairs) if pairs else None
