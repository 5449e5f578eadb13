"""The ``evaluate`` command: score a folder of predictions against reference labels and write the report.

Outputs (in ``--out``): ``cases.csv`` (one row per case, every metric per organ), ``report.md`` (AMOS-style per-organ
tables, grouped by modality, scanner and in/out-of-distribution scanners when metadata gives them) and
``dice_boxplot.png`` / ``nsd_boxplot.png``.

A reference without a prediction is scored as an empty prediction (every organ present scores 0), as challenges do;
a prediction on another grid is an error for that case, never silently resampled.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from amoslabel.data.records import CaseRecords
from amoslabel.errors import InputError
from amoslabel.modality import ModalityEvidence, resolve_modality
from amoslabel.organs import ORGANS
from amoslabel.volume import Geometry, read_label, strip_volume_suffix
from evaluation.metrics import METRICS, CaseScores, evaluate_case, nan_mean

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
ID_COLUMNS = ("amos_id", "case_id", "case", "id", "image", "image_id")
SCANNER_COLUMNS = ("Manufacturer's Model Name", "ManufacturerModelName", "scanner", "model", "Scanner")
METRIC_TITLES = {"dice": "Dice", "nsd": "NSD", "hd95": "HD95 (mm)", "iou": "IoU", "accuracy": "Pixel accuracy"}


@dataclass
class CaseResult:
    """One scored case and what is known about it."""

    case_id: str
    modality: str
    scanner: str = ""
    distribution: str = ""
    scores: Optional[CaseScores] = None
    error: str = ""
    missing_prediction: bool = False


@dataclass
class Evaluation:
    """All cases of one prediction set."""

    name: str
    cases: List[CaseResult] = field(default_factory=list)

    @property
    def scored(self) -> List[CaseResult]:
        return [c for c in self.cases if c.scores is not None]

    def groups(self) -> Dict[str, List[CaseResult]]:
        """Cases by group: all, per modality, per scanner, in/out of distribution (empty groups left out)."""
        out: Dict[str, List[CaseResult]] = {"all": self.scored}
        for attribute, prefix in (("modality", ""), ("scanner", "scanner: "), ("distribution", "")):
            values = sorted({getattr(c, attribute) for c in self.scored if getattr(c, attribute)})
            if attribute == "modality" and len(values) < 2:
                continue
            for value in values:
                out[f"{prefix}{value}"] = [c for c in self.scored if getattr(c, attribute) == value]
        return out


def organ_means(cases: Sequence[CaseResult], metric: str) -> Dict[str, float]:
    """Each organ's mean of ``metric`` over cases where it is defined."""
    return {
        o.name: nan_mean(c.scores.per_organ[metric].get(o.name, math.nan) for c in cases if c.scores) for o in ORGANS
    }


def _volume_files(folder: Path) -> Dict[str, Path]:
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.endswith(VOLUME_SUFFIXES):
            files[strip_volume_suffix(path.name)] = path
    return files


def label_folder(labels: Optional[Path], studies: Optional[Path]) -> Path:
    """The reference labels: a folder, or a studies folder's final labels."""
    if labels is not None:
        folder = labels
    elif studies is not None:
        folder = studies / "labels" / "final"
    else:
        raise InputError("give a labels folder or a studies folder")
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder of label maps")
    return folder


class ScannerMetadata:
    """Scanner per case from a metadata CSV such as AMOS's ``labeled_data_meta_0000_0599.csv``."""

    def __init__(self, path: Path, id_column: Optional[str] = None, scanner_column: Optional[str] = None):
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise InputError(f"cannot read the metadata CSV {path}: {e}") from e
        if not rows:
            raise InputError(f"{path}: no rows")
        columns = list(rows[0])
        self.id_column = id_column or next((c for c in ID_COLUMNS if c in columns), None)
        self.scanner_column = scanner_column or next((c for c in SCANNER_COLUMNS if c in columns), None)
        for what, column in (("case id", self.id_column), ("scanner", self.scanner_column)):
            if column not in columns:
                raise InputError(f"{path}: no {what} column found among {columns}; name it with an option")
        self._by_id = {_case_key(r[self.id_column]): r[self.scanner_column].strip() for r in rows}

    def scanner(self, case_id: str) -> str:
        return self._by_id.get(_case_key(case_id), "")


def _case_key(value: str) -> str:
    # AMOS metadata gives ids as numbers ("13") where files are named amos_0013
    digits = re.findall(r"\d+", str(value))
    return str(int(digits[-1])) if digits else str(value).strip()


def training_scanners(dataset_json: Path, metadata: ScannerMetadata) -> List[str]:
    """Scanners of the training cases of an AMOS ``dataset.json``: the in-distribution scanners."""
    spec = json.loads(dataset_json.read_text())
    ids = [strip_volume_suffix(Path(item["image"]).name) for item in spec.get("training", [])]
    return sorted({s for s in (metadata.scanner(i) for i in ids) if s})


def _modality(case_id: str, studies: Optional[Path]) -> str:
    record = CaseRecords(studies).get(case_id) if studies is not None else {}
    modality, source = resolve_modality(ModalityEvidence(case_id=case_id, case_record=record))
    return modality if source != "default" else "ct"


def score_case(prediction: Optional[Path], reference: Path, case_id: str) -> CaseScores:
    """Read, check and score one pair (``prediction`` None scores an empty prediction)."""
    ref_image = read_label(reference, name=f"{case_id} reference")
    ref = sitk.GetArrayViewFromImage(ref_image)
    spacing = ref_image.GetSpacing()[::-1]  # arrays from SimpleITK are z, y, x
    if prediction is None:
        return evaluate_case(np.zeros_like(ref), ref, spacing)
    pred_image = read_label(prediction, name=f"{case_id} prediction")
    problem = Geometry.of(ref_image).mismatch(Geometry.of(pred_image))
    if problem:
        raise InputError(f"prediction is not on the reference's grid: {problem}")
    return evaluate_case(sitk.GetArrayViewFromImage(pred_image), ref, spacing)


def evaluate_folders(
    predictions: Path,
    labels: Path,
    name: str = "predictions",
    studies: Optional[Path] = None,
    metadata: Optional[ScannerMetadata] = None,
    in_distribution: Iterable[str] = (),
    progress: bool = True,
) -> Evaluation:
    """Score every reference label in ``labels`` against the same-named file in ``predictions``."""
    if not predictions.is_dir():
        raise InputError(f"{predictions} is not a folder of predictions")
    refs, preds = _volume_files(labels), _volume_files(predictions)
    if not refs:
        raise InputError(f"{labels} holds no label maps ({', '.join(VOLUME_SUFFIXES)})")
    extra = sorted(set(preds) - set(refs))
    if extra:
        log.warning("%d predictions have no reference and are ignored: %s", len(extra), ", ".join(extra[:10]))
    in_distribution = set(in_distribution)
    result = Evaluation(name)
    for case_id, ref_path in tqdm(refs.items(), desc=f"evaluate {name}", unit="case", disable=not progress):
        case = CaseResult(case_id, _modality(case_id, studies), missing_prediction=case_id not in preds)
        if metadata is not None:
            case.scanner = metadata.scanner(case_id)
            if in_distribution and case.scanner:
                case.distribution = "in-distribution" if case.scanner in in_distribution else "out-of-distribution"
        try:
            case.scores = score_case(preds.get(case_id), ref_path, case_id)
        except InputError as e:
            case.error = str(e.detail if hasattr(e, "detail") else e)
            log.error("%s: %s", case_id, case.error)
        result.cases.append(case)
    return result


def write_cases_csv(evaluation: Evaluation, path: Path) -> None:
    """One row per case: its groups, then every metric per organ and its mean."""
    header = ["case_id", "modality", "scanner", "distribution", "missing_prediction", "error", "overall_accuracy"]
    for metric in METRICS:
        header += [f"{metric}_{o.code}" for o in ORGANS] + [f"{metric}_mean"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for c in evaluation.cases:
            row = [c.case_id, c.modality, c.scanner, c.distribution, int(c.missing_prediction), c.error]
            if c.scores is None:
                writer.writerow(row + [""] * (len(header) - len(row)))
                continue
            row.append(_fmt(c.scores.overall_accuracy, 4))
            for metric in METRICS:
                values = c.scores.per_organ[metric]
                row += [_fmt(values.get(o.name, math.nan), 4) for o in ORGANS] + [_fmt(c.scores.mean(metric), 4)]
            writer.writerow(row)


def _fmt(value: float, digits: int) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def markdown_table(rows: Mapping[str, Mapping[str, float]], metric: str, counts: Mapping[str, int] = None) -> str:
    """An AMOS-style table: one row per entry, organ columns SPL ... PRO/UTE, then the mean."""
    percent = metric in ("dice", "nsd", "iou", "accuracy")
    head = "| | n | " + " | ".join(o.code for o in ORGANS) + f" | mean |\n|---|---:|{'---:|' * (len(ORGANS) + 1)}\n"
    lines = []
    for name, values in rows.items():
        cells = [values.get(o.name, math.nan) for o in ORGANS] + [nan_mean(values.values())]
        shown = [_fmt(v * 100 if percent else v, 2) or "-" for v in cells]
        n = "" if counts is None else str(counts.get(name, ""))
        lines.append(f"| {name} | {n} | " + " | ".join(shown) + " |")
    return head + "\n".join(lines) + "\n"


def write_markdown(evaluation: Evaluation, path: Path) -> None:
    groups = evaluation.groups()
    counts = {g: len(cases) for g, cases in groups.items()}
    parts = [
        f"# Evaluation: {evaluation.name}\n",
        f"{len(evaluation.scored)} cases scored, {sum(c.missing_prediction for c in evaluation.cases)} without a "
        f"prediction (scored as empty), {sum(bool(c.error) for c in evaluation.cases)} refused.\n",
        "Dice, NSD, IoU and accuracy in %. NSD uses each organ's tolerance (amoslabel/organs.py). An organ absent "
        "from both prediction and reference is left out of its means; absent from one of them, it scores 0 "
        "(HD95: the image diagonal).\n",
    ]
    for metric in METRICS:
        rows = {g: organ_means(cases, metric) for g, cases in groups.items()}
        parts.append(f"## {METRIC_TITLES[metric]}\n\n{markdown_table(rows, metric, counts)}")
    errors = [c for c in evaluation.cases if c.error]
    if errors:
        parts.append("## Refused cases\n\n" + "\n".join(f"- {c.case_id}: {c.error}" for c in errors) + "\n")
    path.write_text("\n".join(parts))


def write_boxplot(evaluation: Evaluation, metric: str, path: Path) -> None:
    """Box plot of one metric per organ over the scored cases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data, names = [], []
    for organ in ORGANS:
        values = [c.scores.per_organ[metric].get(organ.name, math.nan) for c in evaluation.scored]
        data.append([v for v in values if not math.isnan(v)])
        names.append(organ.code)
    fig, ax = plt.subplots(figsize=(11, 4), dpi=100)
    ax.boxplot([d if d else [math.nan] for d in data], showfliers=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=45)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel(METRIC_TITLES[metric])
    ax.set_title(f"{evaluation.name}: {METRIC_TITLES[metric]} per organ ({len(evaluation.scored)} cases)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(evaluation: Evaluation, out: Path) -> Dict[str, Path]:
    """Write the CSV, the markdown tables and the box plots; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out / "cases.csv",
        "markdown": out / "report.md",
        "dice_png": out / "dice_boxplot.png",
        "nsd_png": out / "nsd_boxplot.png",
    }
    write_cases_csv(evaluation, paths["csv"])
    write_markdown(evaluation, paths["markdown"])
    write_boxplot(evaluation, "dice", paths["dice_png"])
    write_boxplot(evaluation, "nsd", paths["nsd_png"])
    return paths


def summary(evaluation: Evaluation) -> Tuple[float, float]:
    """mDice and mNSD over all scored cases (means of the per-organ means, as AMOS reports them)."""
    cases = evaluation.scored
    return nan_mean(organ_means(cases, "dice").values()), nan_mean(organ_means(cases, "nsd").values())
