"""``models list|rollback``: a model's versions (metrics, parent, promotion, which serves), and rolling back."""

from __future__ import annotations

import os
from pathlib import Path

from amoslabel.config import load_config
from amoslabel.errors import InputError
from amoslabel.workspace import Workspace


def register(sub) -> None:
    mod = sub.add_parser("models", help="a model's versions and which one serves; roll back to an earlier one")
    mod.add_argument("action", choices=["list", "rollback"])
    mod.add_argument("model", help="a served model, e.g. unet")
    mod.add_argument("version", nargs="?", type=int, help="for rollback: the version to serve")
    mod.add_argument("--studies", type=Path, required=True, help="the studies folder the server runs on")
    mod.add_argument("--reason", default=None, help="for rollback: why (kept in the history)")
    mod.set_defaults(run=_models)


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
