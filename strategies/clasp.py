"""ClaSP-style selection: class-stratified predictive entropy with scheduled power noise.

After ClaSP PE (Lüth, Traub et al., "Finally outshining the random baseline", arXiv 2601.13677, 2026), built from
the paper's description of its two parts:

* **Class-stratified querying.** Plain predictive entropy ranks cases by uncertainty summed or averaged over all
  voxels, so the liver and stomach decide and an adrenal gland never does. Here every case gets one entropy per
  organ (:func:`class_entropies`: the mean predictive entropy over the voxels where that organ is in play), and the
  budget is shared out over the organs in turn: each pick serves the next organ, the organs least represented in
  the labelled set first, and takes the case most uncertain about *that* organ.
* **Scheduled power noise.** Top-k of a score picks near-duplicates early, when the model knows little. Power
  sampling (Kirsch et al., 2023) draws cases with probability proportional to ``score ** beta`` instead; it is the
  top-k of ``log(score) + g / beta`` with Gumbel noise ``g``. The noise scale ``1 / beta`` decays with the share of
  the budget spent (:class:`NoiseSchedule`): diverse early, exploiting later.

Where ours differs from the paper: it queries whole cases, not 3D patches (a radiologist labels a whole scan here);
its entropy comes from flip-TTA members of our networks, not nnU-Net's; the schedule is linear in the labelled
fraction rather than per AL loop, so that a live server, which has no fixed number of loops, can use it; organs are
served least-labelled first. Every pick records what it drew, so a selection can be replayed (as TorchIO does).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from amoslabel.organs import ORGANS

#: The probability above which an organ is "in play" at a voxel, though not the argmax (where a miss would hide).
IN_PLAY = 0.1


def class_entropies(probabilities: np.ndarray) -> Dict[int, float]:
    """Per organ id, the mean predictive entropy (bits) over the voxels where the organ is the argmax or has
    probability above :data:`IN_PLAY`; organs in play nowhere are left out.

    Args:
        probabilities: (C, z, y, x) class probabilities (C = background + 15 organs), e.g. a mean over members.
    """
    p = np.clip(np.asarray(probabilities, np.float32), 1e-8, 1.0)
    entropy = -(p * np.log2(p)).sum(axis=0)
    hard = p.argmax(axis=0)
    out: Dict[int, float] = {}
    for organ in ORGANS:
        region = (hard == organ.id) | (p[organ.id] > IN_PLAY)
        if region.any():
            out[organ.id] = float(entropy[region].mean())
    return out


@dataclass(frozen=True)
class NoiseSchedule:
    """The Gumbel noise scale (``1 / beta`` of power sampling) as the labelled share of the pool grows: ``start`` with
    nothing labelled, falling linearly to ``end`` once ``until`` of the pool is labelled."""

    start: float = 1.0
    end: float = 0.0
    until: float = 0.5

    def scale(self, labelled_fraction: float) -> float:
        progress = min(max(labelled_fraction / self.until, 0.0), 1.0) if self.until > 0 else 1.0
        return self.start + (self.end - self.start) * progress


@dataclass
class Pick:
    """One selected case and why: the organ it served, its entropy for that organ, and the noise drawn."""

    case: str
    organ: int
    entropy: float
    noise: float


@dataclass
class Selection:
    """The picks of one query, with the noise scale used and the organ order (enough to replay it)."""

    picks: List[Pick]
    noise_scale: float
    organ_order: List[int]
    seed: Optional[int] = None

    @property
    def cases(self) -> List[str]:
        return [p.case for p in self.picks]

    def as_json(self) -> Dict[str, object]:
        return {
            "noise_scale": self.noise_scale,
            "organ_order": self.organ_order,
            "seed": self.seed,
            "picks": [asdict(p) for p in self.picks],
        }


@dataclass
class ClaspSelector:
    """Selects ``k`` cases from per-case, per-organ entropies (see the module docstring)."""

    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)

    def organ_order(self, labelled_cases: Mapping[int, int], offset: int = 0) -> List[int]:
        """Organs in the fewest labelled cases first; among equals, round-robin from organ ``offset + 1`` on (a
        query continues the turn where the one before stopped)."""
        n = len(ORGANS)
        return sorted(
            (o.id for o in ORGANS), key=lambda organ: (labelled_cases.get(organ, 0), (organ - 1 - offset) % n)
        )

    def select(
        self,
        entropies: Mapping[str, Mapping[int, float]],
        k: int,
        labelled_fraction: float,
        labelled_cases: Mapping[int, int],
        offset: int = 0,
        seed: Optional[int] = None,
    ) -> Selection:
        """The ``k`` picks: organ by organ in :meth:`organ_order`, round-robin, each taking the not-yet-picked case
        with the highest ``log(entropy) + scale * Gumbel``; organs no candidate has in play are skipped.

        Args:
            entropies: case -> organ id -> entropy (:func:`class_entropies`) for every candidate case.
            k: how many cases to pick (fewer when there are fewer candidates).
            labelled_fraction: the share of the pool already labelled (drives the noise schedule).
            labelled_cases: organ id -> how many labelled cases have that organ.
            offset: where the organs' round-robin starts (e.g. how many cases were picked before).
            seed: the noise's seed; the same inputs and seed give the same selection.
        """
        rng = random.Random(seed)
        scale = self.schedule.scale(labelled_fraction)
        # one Gumbel draw per (case, organ), so a case's noise for an organ does not depend on the order of picks
        noise = {
            (case, organ): -math.log(-math.log(rng.random() or 1e-12) or 1e-12) * scale
            for case in sorted(entropies)
            for organ in sorted(entropies[case])
        }
        order = self.organ_order(labelled_cases, offset)
        served = [o for o in order if any(o in e for e in entropies.values())]
        picks: List[Pick] = []
        left = set(entropies)
        turn = 0
        while left and len(picks) < k:
            if not served:  # nothing in play anywhere: fall back to the noise alone, case by case
                case = max(sorted(left), key=lambda c: rng.random())
                picks.append(Pick(case, 0, 0.0, 0.0))
                left.discard(case)
                continue
            organ = served[turn % len(served)]
            turn += 1
            candidates = [c for c in sorted(left) if organ in entropies[c]]
            if not candidates:
                served.remove(organ)
                continue
            case = max(candidates, key=lambda c: _key(entropies[c][organ], noise[(c, organ)]))
            picks.append(Pick(case, organ, float(entropies[case][organ]), float(noise[(case, organ)])))
            left.discard(case)
        return Selection(picks, scale, order, seed)


def _key(entropy: float, noise: float) -> float:
    return math.log(max(entropy, 1e-12)) + noise


def organ_case_counts(labels: Sequence[np.ndarray]) -> Dict[int, int]:
    """Per organ id, how many of the label maps have that organ."""
    out = {o.id: 0 for o in ORGANS}
    for label in labels:
        present = np.unique(np.asarray(label))
        for organ in present[(present > 0) & (present <= len(ORGANS))]:
            out[int(organ)] += 1
    return out
