"""``models list|rollback|import``: a model's versions (metrics, parent, promotion, which serves), rolling back, and
importing a pretrained model (nnU-Net v2 result folders, MONAI bundles) as a served pre-labeler."""

from __future__ import annotations

import os
from pathlib import Path

from amoslabel.config import load_config
from amoslabel.errors import InputError
from amoslabel.workspace import Workspace


def register(sub) -> None:
    mod = sub.add_parser("models", help="a model's versions, which one serves, rolling back; importing a model")
    actions = mod.add_subparsers(dest="action", required=True)
    for action, help_text in (("list", "a model's versions"), ("rollback", "serve an earlier (or later) version")):
        one = actions.add_parser(action, help=help_text)
        one.add_argument("model", help="a served model, e.g. unet")
        one.add_argument("version", nargs="?", type=int, help="for rollback: the version to serve")
        one.add_argument("--studies", type=Path, required=True, help="the studies folder the server runs on")
        one.add_argument("--reason", default=None, help="for rollback: why (kept in the history)")
        one.set_defaults(run=_models)
    imp = actions.add_parser("import", help="import a pretrained model as a served pre-labeler (restart to serve)")
    imp.add_argument("paths", nargs="+", type=Path, help="nnU-Net v2 result folder(s) (parts, in order), or a bundle")
    imp.add_argument("--format", required=True, choices=["nnunetv2", "monai-bundle"])
    imp.add_argument("--name", required=True, help="the model's name in /info, Slicer and OHIF")
    imp.add_argument(
        "--label-map", required=True, help="a shipped map (totalsegmentator_total, monai_wholebody_ct, amos) or YAML"
    )
    imp.add_argument("--folds", nargs="+", default=None, help="nnU-Net folds to use (default: every fold_* present)")
    imp.add_argument("--studies", type=Path, required=True, help="the studies folder the server runs on")
    imp.set_defaults(run=_import_model)
    fetch = actions.add_parser(
        "fetch", help="download an open model with its package's own downloader (or take it --from a file), import it"
    )
    fetch.add_argument("kind", choices=["totalsegmentator", "monai-bundle", "sam2"])
    fetch.add_argument("bundle", nargs="?", help="monai-bundle: the bundle's name, e.g. wholeBody_ct_segmentation")
    fetch.add_argument("--task", default="total", choices=["total", "total_mr"], help="TotalSegmentator: CT or MRI")
    fetch.add_argument("--fast", action="store_true", help="TotalSegmentator: its 3 mm model (one part, faster)")
    fetch.add_argument("--name", default=None, help="the model's name (default: totalseg, totalseg_mr, the bundle's)")
    fetch.add_argument("--from", dest="source", type=Path, default=None, help="a release zip or folder carried in")
    fetch.add_argument("--accept-licence", action="store_true", help="record that you accept the weights' terms")
    fetch.add_argument("--label-map", default=None, help="monai-bundle: its label map (shipped name or YAML)")
    fetch.add_argument("--version", default=None, help="monai-bundle: the bundle's version (default: the latest)")
    fetch.add_argument("--hub", default="monaihosting", choices=["monaihosting", "github", "ngc"])
    fetch.add_argument("--url", default=None, help="monai-bundle: a URL of the bundle's zip; sam2: of the .pt file")
    fetch.add_argument("--image-size", type=int, default=1024, help="sam2: its input size (1024 as trained)")
    fetch.add_argument("--studies", type=Path, required=True, help="the studies folder the server runs on")
    fetch.set_defaults(run=_fetch_model)


def _import_model(args) -> int:
    from models.pretrained.importer import import_model
    from models.prior_task import PRIOR_MODEL

    config = load_config()
    version = import_model(
        args.format,
        args.paths,
        args.name,
        args.label_map,
        Workspace(args.studies).models(config.storage.models_dir),
        reserved=[*config.models, *config.active.networks, PRIOR_MODEL],
        folds=args.folds,
        actor=os.environ.get("USER", "operator"),
    )
    meta = version.meta
    print(
        f"imported {version.tag}: {meta['imported']['format']}, fingerprint {meta['imported']['fingerprint'][:16]}, "
        f"label map {meta['label_map']['name']} ({len(meta['organs_mapped'])} organs)"
        f"{', fine-tunable' if meta.get('network') else ''}. Restart the server to serve it."
    )
    return 0


def _fetch_model(args) -> int:
    from models.pretrained.fetch import fetch_bundle, fetch_totalsegmentator
    from models.prior_task import PRIOR_MODEL

    config = load_config()
    models_dir = Workspace(args.studies).models(config.storage.models_dir)
    common = {
        "models_dir": models_dir,
        "name": args.name,
        "source": args.source,
        "reserved": [*config.models, *config.active.networks, PRIOR_MODEL],
        "actor": os.environ.get("USER", "operator"),
    }
    if args.kind == "sam2":
        from models.pretrained.sam2_weights import fetch_sam2

        version = fetch_sam2(models_dir, args.url, args.source, args.image_size, common["actor"])
        spec = version.meta["sam2"]
        print(
            f"fetched {version.tag}: {spec['config'].rsplit('/', 1)[-1]} at {spec['image_size']} pixels, sha256 "
            f"{version.meta['fetched']['sha256'][:16]}. Clicks use it with the request parameter engine=sam2, or "
            "for every click with --conf click_engine sam2 (or clicks.engine: sam2 in apps.yaml)"
        )
        return 0
    if args.kind == "totalsegmentator":
        version = fetch_totalsegmentator(args.task, args.fast, accept_licence=args.accept_licence, **common)
    else:
        if not args.bundle or not args.label_map:
            raise InputError("monai-bundle needs the bundle's name and --label-map (e.g. monai_wholebody_ct)")
        version = fetch_bundle(
            args.bundle, args.label_map, version=args.version, hub=args.hub, url=args.url, **common
        )  # fmt: skip
    meta = version.meta
    print(
        f"imported {version.tag}: fingerprint {meta['imported']['fingerprint'][:16]}, label map "
        f"{meta['label_map']['name']} ({len(meta['organs_mapped'])} organs). Restart the server to serve it; make it "
        f"the pre-labeler with --conf fallback_model {version.model} (or fallback_model: {{ct: ..., mri: ...}})"
    )
    return 0


def _models(args) -> int:
    from models.versions import ModelStore

    config = load_config()
    store = ModelStore(Workspace(args.studies).models(config.storage.models_dir), args.model)
    if args.action == "rollback":
        if args.version is None:
            raise InputError("rollback needs the version to serve, e.g. `models rollback unet 3`")
        version = store.set_champion(args.version, args.reason or "rollback", os.environ.get("USER", "operator"))
        print(f"{args.model}: version {version.number} serves now")
        return 0
    champion = store.champion()
    for number in store.numbers():
        meta = store.get(number).meta
        promotion = meta.get("promotion") or {}
        print(
            f"{'*' if champion and champion.number == number else ' '} v{number}  parent {meta.get('parent_version')}"
            f"  mDice {meta.get('val_mean_dice')}  mNSD {meta.get('val_mean_nsd')}"
            f"  cases {len(meta.get('training_cases', []))}  {promotion.get('reason', '')}"
        )
    for entry in store.champion_history():
        print(f"  {entry['at']}  v{entry['previous']} -> v{entry['version']} by {entry['by']}: {entry['reason']}")
    return 0
