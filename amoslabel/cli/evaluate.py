"""``evaluate``: score predictions against reference labels; write CSV, AMOS-style tables and plots."""

from __future__ import annotations

from pathlib import Path

from amoslabel.errors import InputError


def register(sub) -> None:
    ev = sub.add_parser("evaluate", help="score predictions against reference labels; write CSV, tables and plots")
    ev.add_argument("predictions", type=Path, help="folder of predicted label maps, named like the references")
    refs = ev.add_mutually_exclusive_group(required=True)
    refs.add_argument("--labels", type=Path, help="folder of reference label maps")
    refs.add_argument("--studies", type=Path, help="a studies folder: score against its final labels")
    ev.add_argument("--out", type=Path, required=True, help="folder for cases.csv, report.md and the box plots")
    ev.add_argument("--name", default=None, help="name of the prediction set in the report")
    ev.add_argument("--metadata", type=Path, help="CSV with a scanner per case (e.g. AMOS labeled_data_meta_*.csv)")
    ev.add_argument("--id-column", default=None, help="metadata column holding the case id")
    ev.add_argument("--scanner-column", default=None, help="metadata column holding the scanner model")
    ev.add_argument(
        "--in-distribution",
        action="append",
        default=[],
        metavar="SCANNER",
        help="a scanner seen in training (repeat); the others are out-of-distribution",
    )
    ev.add_argument("--train-split", type=Path, help="dataset.json whose training cases' scanners are in-distribution")
    ev.set_defaults(run=_evaluate)


def _evaluate(args) -> int:
    from evaluation.report import ScannerMetadata, evaluate_folders, label_folder, summary, training_scanners
    from evaluation.report import write_report

    metadata = None
    in_distribution = list(args.in_distribution)
    if args.metadata is not None:
        metadata = ScannerMetadata(args.metadata, args.id_column, args.scanner_column)
        if args.train_split is not None:
            in_distribution += training_scanners(args.train_split, metadata)
    elif args.in_distribution or args.train_split:
        raise InputError("--in-distribution and --train-split need --metadata (the scanner of each case)")
    labels = label_folder(args.labels, args.studies)
    evaluation = evaluate_folders(
        args.predictions, labels, args.name or args.predictions.name, args.studies, metadata, in_distribution
    )
    paths = write_report(evaluation, args.out)
    mdice, mnsd = summary(evaluation)
    print(f"{len(evaluation.scored)} cases: mDice {mdice:.4f}  mNSD {mnsd:.4f}")
    for kind, path in paths.items():
        print(f"  {kind}: {path}")
    return 3 if any(c.error for c in evaluation.cases) else 0
