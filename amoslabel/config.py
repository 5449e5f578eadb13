"""``apps.yaml``: the app's one configuration, parsed once at start-up into typed, frozen objects.

Presets are configuration as data with inheritance (as nnU-Net plans are): a preset may name another in
``inherits`` and override only what differs, and inside a preset the MRI plan may inherit the CT plan. Inheritance
is resolved on the raw mapping, then the whole result is validated; an unknown key or a bad value raises
:class:`ConfigError` naming the key, and start-up stops.

Array axes follow MONAI's order after loading: ``x, y, z`` (AMOS and nnU-Net write patch sizes ``z, y, x``).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from amoslabel.organs import label_table
from amoslabel.workspace import PROJECT_ROOT

Modality = Literal["ct", "mri"]
MODALITIES: Tuple[str, ...] = ("ct", "mri")

DEFAULT_CONFIG_PATH = PROJECT_ROOT / "apps.yaml"


class ConfigError(ValueError):
    """apps.yaml, or a ``--conf`` override, is invalid. The message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Normalisation(_Strict):
    """Intensity normalisation for one modality.

    ``ct_window``: clip to ``window`` (HU), then ``(x - mean) / std`` (AMOS: [-991, 362], 50, 141).
    ``zscore_nonzero``: z-score over the non-zero voxels, zero elsewhere (AMOS MRI).
    """

    kind: Literal["ct_window", "zscore_nonzero"]
    window: Optional[Tuple[float, float]] = None
    mean: Optional[float] = None
    std: Optional[float] = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ct_window_needs_its_numbers(self) -> "Normalisation":
        if self.kind == "ct_window":
            if self.window is None or self.mean is None or self.std is None:
                raise ValueError("ct_window needs window, mean and std")
            if self.window[0] >= self.window[1]:
                raise ValueError(f"window must be [low, high] with low < high, got {list(self.window)}")
        return self


class ModalitySettings(_Strict):
    normalisation: Normalisation


class ModalityPlan(_Strict):
    """Resampling and patching for one modality in one preset (x, y, z)."""

    spacing: Tuple[float, float, float]
    patch_size: Tuple[int, int, int]

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, v: Tuple[float, float, float]) -> Tuple[float, float, float]:
        if any(s <= 0 for s in v):
            raise ValueError(f"spacing must be positive, got {list(v)}")
        return v

    @field_validator("patch_size")
    @classmethod
    def _patch_divisible(cls, v: Tuple[int, int, int]) -> Tuple[int, int, int]:
        # Both networks halve the resolution four times; 16 keeps every skip connection aligned.
        if any(p < 16 or p % 16 for p in v):
            raise ValueError(f"patch_size entries must be multiples of 16 and at least 16, got {list(v)}")
        return v


class InferenceSettings(_Strict):
    sw_overlap: float = Field(ge=0.0, lt=1.0)
    sw_batch_size: int = Field(ge=1)
    tta_flip: bool


class TrainSettings(_Strict):
    optimizer: Literal["sgd", "adamw"]
    loss: Literal["dice_ce", "dice_balanced_ce"]
    max_epochs: int = Field(ge=1)
    iterations_per_epoch: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    momentum: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    poly_power: float = Field(gt=0)
    foreground_fraction: float = Field(ge=0, le=1)
    val_fraction: float = Field(ge=0, lt=1)
    val_interval: int = Field(ge=1)
    cache: Literal["disk", "memory", "none"]
    augment: bool
    seed: int = Field(ge=0)
    log_every: int = Field(ge=1)


class NetworkSettings(_Strict):
    network: str
    params: Dict[str, Any] = Field(default_factory=dict)


class PresetConfig(_Strict):
    description: str
    plans: Dict[Modality, ModalityPlan]
    inference: InferenceSettings
    train: TrainSettings
    networks: Dict[str, NetworkSettings]

    @field_validator("plans")
    @classmethod
    def _both_modalities(cls, v: Dict[str, ModalityPlan]) -> Dict[str, ModalityPlan]:
        missing = [m for m in MODALITIES if m not in v]
        if missing:
            raise ValueError(f"a plan is needed for every modality; missing: {missing}")
        return v


class StorageSettings(_Strict):
    models_dir: Optional[str] = None
    max_image_voxels: int = Field(ge=1)
    max_upload_mb: int = Field(ge=1)


class PriorConfig(_Strict):
    """The atlas prior, model ``prior``: the pre-labeller before any network has a trained version."""

    label_maps: List[str] = Field(default_factory=list)
    max_final_labels: int = Field(default=50, ge=0)
    spacing_mm: float = Field(default=4.0, gt=0, le=20)
    smoothing_mm: float = Field(default=6.0, ge=0, le=50)
    threshold: float = Field(default=0.3, gt=0, le=1)

    def label_map_paths(self, base: Path) -> List[Path]:
        """The configured label maps, relative paths taken from ``base`` (the folder of apps.yaml)."""
        return [(base / p).resolve() if not Path(p).is_absolute() else Path(p) for p in self.label_maps]


class ConsensusRule(_Strict):
    """``unanimous``, or ``k_of_n`` with at least ``k`` approvals."""

    kind: Literal["unanimous", "k_of_n"] = "unanimous"
    k: int = Field(default=0, ge=0)


class PassPolicy(_Strict):
    """Opt-in: an organ the quality estimator predicts correct with high confidence needs one senior's approval
    instead of every reader's; a random share of those organs is audited (full review), which measures the policy."""

    # an organ whose predicted chance of failing is below this passes; "auto": the largest at which the open cases'
    # own predictions expect at most max_missed of the failing organs to pass (review/pass_policy.py)
    threshold: Union[float, Literal["auto"]]
    audit_fraction: float = Field(gt=0, le=1)  # of the organs that would pass, the share reviewed in full anyway
    max_missed: float = Field(default=0.02, gt=0, lt=1)  # with threshold auto: failing organs it may let through

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold_or_auto(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "auto":
            try:
                value = float(value)  # a number written as text ("0.05")
            except ValueError:
                pass
        if value == "auto" or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
            return value
        raise ValueError("a probability between 0 and 1, or auto")


class ReviewSettings(_Strict):
    """The review workflow: readers per case, rounds, leases, routing, consensus rules and the store."""

    reviewers_per_case: int = Field(default=3, ge=1, le=10)
    max_rounds: int = Field(default=3, ge=1)
    annotate_lease_minutes: float = Field(default=240, gt=0)
    review_lease_minutes: float = Field(default=120, gt=0)
    routing: Literal["least_loaded", "pool"] = "least_loaded"
    consensus: ConsensusRule = Field(default_factory=ConsensusRule)
    organ_rules: Dict[str, ConsensusRule] = Field(default_factory=dict)
    pass_policy: Optional[PassPolicy] = None  # off unless set (review/pass_policy.py)
    database: Optional[str] = None

    @model_validator(mode="after")
    def _rules_fit(self) -> "ReviewSettings":
        names = set(label_table())
        unknown = sorted(set(self.organ_rules) - names)
        if unknown:
            raise ValueError(f"organ_rules names unknown organs {unknown}")
        for name, rule in [("consensus", self.consensus)] + list(self.organ_rules.items()):
            if rule.kind == "k_of_n" and not 1 <= rule.k <= self.reviewers_per_case:
                raise ValueError(f"{name}: k_of_n needs 1 <= k <= reviewers_per_case ({self.reviewers_per_case})")
        return self


class ActiveLearningSettings(_Strict):
    """Scoring for active learning: how often, on what grid, and how the queue priority combines the scores."""

    enabled: bool = True
    interval_s: float = Field(default=60.0, gt=0)  # how often the scorer looks for new images and model versions
    grid_mm: float = Field(default=4.0, gt=0)  # the shared grid when no network is trained yet
    std_threshold: float = Field(default=0.1, gt=0, lt=1)
    entropy_threshold: float = Field(default=0.05, gt=0, lt=1)
    # uncertainty orders the queue by default: it needed the fewest cases in the simulation (docs/active-learning.md);
    # attention ordered worst there, and serves instead as the reviewers' map of probable errors
    weights: Dict[Literal["attention", "uncertainty", "diversity"], float] = Field(
        default_factory=lambda: {"attention": 0.0, "uncertainty": 1.0, "diversity": 0.0}
    )
    # the queues' order (strategies/queue_order.py): expected_failures (the quality estimator's; weighted until one
    # serves), weighted (by `weights`), foreground_random or clasp
    queue_order: Literal["expected_failures", "weighted", "foreground_random", "clasp"] = "expected_failures"


class RetrainingSettings(_Strict):
    """Iterative retraining: when it starts by itself, and when a challenger replaces the champion."""

    after_new_finals: int = Field(default=0, ge=0)  # train each model after this many new consensus finals; 0: off
    promotion_epsilon: float = Field(default=0.005, ge=0, lt=1)  # mDice a challenger may lose if its mNSD gains
    # Training waits between iterations while interactive inference runs (models/inference_gate.py):
    # auto = when training runs on a GPU, which the server's inference shares; always; never.
    pause_for_inference: Literal["auto", "always", "never"] = "auto"
    max_pause_s: float = Field(default=300.0, gt=0)  # longest single wait, so a stream of requests cannot stall it


class AuthSettings(_Strict):
    """Who may call the server: every request needs a user's token unless ``enabled`` is false, which start-up allows
    only on a loopback address (and warns about at every start)."""

    enabled: bool = True
    access_token_hours: float = Field(default=12.0, gt=0, le=24 * 30)  # what a login (POST /auth/token) is good for
    # the review pages' session cookie only over HTTPS (set it behind TLS: README, A team on several servers)
    cookie_secure: bool = False
    # other origins (scheme://host[:port]) whose pages may call this server with a user's credentials; the server's
    # own pages and the OHIF viewer it serves (same origin, through its proxy) need none
    cors_origins: List[str] = Field(default_factory=list)
    # failed logins before each further try of that user from that address waits (doubling up to login_max_delay_s)
    login_free_failures: int = Field(default=5, ge=1, le=100)
    login_max_delay_s: float = Field(default=300.0, ge=1, le=86400)

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: List[str]) -> List[str]:
        for origin in v:
            if origin == "*" or not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+", origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path, no wildcard)")
        return v


class ServingSettings(_Strict):
    """Fair shares of the server between its users."""

    infer_per_user: int = Field(default=2, ge=1, le=64)  # inference requests one user may have running (429 beyond)


class ClickSettings(_Strict):
    """The click model (interactive correction, :mod:`models.click_task`): a ``deepedit``-type model for 3D Slicer's
    and OHIF's click tools, learned from the final labels with MONAI DeepEdit's simulated clicks."""

    enabled: bool = True
    model: str = "deepedit"  # the name it is served and trained by
    base_model: str = "unet"  # the segmentor whose architecture it has, and whose serving version it starts from
    margin_mm: float = Field(default=40.0, gt=0, le=500)  # a click changes its organ at most this far from it
    context_mm: float = Field(default=24.0, ge=0, le=200)  # image the network sees beyond that box
    deepgrow_probability: float = Field(default=0.5, ge=0, le=1)  # share of training steps with simulated clicks
    max_interactions: int = Field(default=3, ge=1, le=20)  # click rounds simulated in one training step
    # what answers a click unless the request names one (``engine``): this model (amos), or SAM2 once its weights
    # are fetched (models fetch sam2; models/click_sam2.py)
    engine: Literal["amos", "sam2"] = "amos"


class AppConfig(_Strict):
    """The whole parsed configuration. ``preset`` names the active entry of ``presets``."""

    name: str
    labels: Dict[str, int]
    models: List[str]
    # what pre-labels for a network with no trained version: the atlas prior, or an imported model's name; one for
    # every scan, or one per modality ({ct: NAME, mri: NAME}; a modality left out gets the atlas prior)
    fallback_model: Union[str, Dict[Modality, str]] = "prior"
    device: str
    preset: str
    modalities: Dict[Modality, ModalitySettings]
    storage: StorageSettings
    prior: PriorConfig = Field(default_factory=PriorConfig)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    active_learning: ActiveLearningSettings = Field(default_factory=ActiveLearningSettings)
    retraining: RetrainingSettings = Field(default_factory=RetrainingSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    clicks: ClickSettings = Field(default_factory=ClickSettings)
    presets: Dict[str, PresetConfig]
    source_dir: str = ""  # folder of the apps.yaml read; filled in by load_config, not written in the file

    @field_validator("labels")
    @classmethod
    def _labels_are_amos(cls, v: Dict[str, int]) -> Dict[str, int]:
        expected = label_table()
        if v != expected:
            diff = sorted(set(v.items()) ^ set(expected.items()), key=lambda kv: kv[1])
            raise ValueError(f"labels must be the 15 AMOS organs with their fixed ids; differs at {diff}")
        return v

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {v!r}")
        return v

    @model_validator(mode="after")
    def _cross_references(self) -> "AppConfig":
        if self.preset not in self.presets:
            raise ValueError(f"preset {self.preset!r} is not one of presets: {sorted(self.presets)}")
        for name, preset in self.presets.items():
            missing = [m for m in self.models if m not in preset.networks]
            if missing:
                raise ValueError(f"presets.{name}.networks has no entry for served model(s) {missing}")
        if not self.models:
            raise ValueError("models: at least one model must be served")
        if self.clicks.enabled:
            if self.clicks.model in self.models or self.clicks.model == "prior":
                raise ValueError(f"clicks.model {self.clicks.model!r} is already the name of another model")
        return self

    @property
    def active(self) -> PresetConfig:
        """The preset in use."""
        return self.presets[self.preset]

    def fallback_for(self, modality: str) -> str:
        """The model that pre-labels a scan of ``modality`` while a network has no trained version."""
        if isinstance(self.fallback_model, str):
            return self.fallback_model
        return self.fallback_model.get(modality, "prior")  # type: ignore[call-overload]

    def fingerprint(self) -> str:
        """A short hash of the resolved configuration, recorded with every model version and pre-label."""
        blob = json.dumps(self.model_dump(mode="json", exclude={"source_dir"}), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def parse_fallback(text: str) -> Union[str, Dict[str, str]]:
    """``--conf fallback_model``: ``NAME`` for every scan, or ``ct=NAME,mri=NAME`` per modality."""
    if "=" not in text:
        return text.strip()
    pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
    return {key.strip().lower(): value.strip() for key, value in pairs}


# --conf key -> (path in the raw mapping, parser). "{preset}" is replaced by the preset in use.
_OVERRIDES: Dict[str, Tuple[str, Any]] = {
    "preset": ("preset", str),
    "device": ("device", str),
    "models": ("models", lambda s: [m.strip() for m in s.split(",") if m.strip()]),
    "fallback_model": ("fallback_model", parse_fallback),
    "models_dir": ("storage.models_dir", str),
    "tta": ("presets.{preset}.inference.tta_flip", str),
    "sw_overlap": ("presets.{preset}.inference.sw_overlap", str),
    "max_epochs": ("presets.{preset}.train.max_epochs", str),
    "iterations_per_epoch": ("presets.{preset}.train.iterations_per_epoch", str),
    "augment": ("presets.{preset}.train.augment", str),
    "review_database": ("review.database", str),
    "reviewers_per_case": ("review.reviewers_per_case", str),
    "retrain_after_finals": ("retraining.after_new_finals", str),
    "pause_for_inference": ("retraining.pause_for_inference", str),
    "auth": ("auth.enabled", str),
    "access_token_hours": ("auth.access_token_hours", str),
    "active_learning": ("active_learning.enabled", str),
    "clicks": ("clicks.enabled", str),
    "click_engine": ("clicks.engine", str),
}


# Keys that MONAI Label itself reads from --conf; accepted and left to it.
_MONAILABEL_KEYS = {"server_mode"}
OVERRIDABLE_KEYS = tuple(sorted(_OVERRIDES))


def load_config(path: Optional[Path] = None, overrides: Optional[Mapping[str, Any]] = None) -> AppConfig:
    """Read, resolve and validate ``apps.yaml``.

    Args:
        path: the YAML file; ``apps.yaml`` at the repository root by default.
        overrides: MONAI Label ``--conf`` pairs. Only :data:`OVERRIDABLE_KEYS` (and ``config``, the file path,
            handled by the caller) are accepted.

    Raises:
        ConfigError: the file cannot be read, or a key is unknown, or a value is invalid. The message names the key.
    """
    path = Path(path) if path else DEFAULT_CONFIG_PATH
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    raw.pop("source_dir", None)
    config = parse_config(raw, overrides, source=str(path))
    return config.model_copy(update={"source_dir": str(path.resolve().parent)})


def parse_config(raw: Mapping[str, Any], overrides: Optional[Mapping[str, Any]] = None, source: str = "apps.yaml"):
    """Validate an already-loaded mapping; see :func:`load_config`."""
    raw = copy.deepcopy(dict(raw))
    presets = raw.get("presets")
    if isinstance(presets, dict):
        raw["presets"] = {name: _resolve_preset(presets, name, []) for name in presets}
    applied = _apply_overrides(raw, overrides or {})
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e, source, applied)) from None


def _apply_overrides(raw: Dict[str, Any], overrides: Mapping[str, Any]) -> Dict[str, str]:
    """Write ``--conf`` values into the resolved mapping; returns {dotted path: --conf key} for error messages."""
    for key in overrides:
        if key == "config" or key in _MONAILABEL_KEYS:
            continue
        if key not in _OVERRIDES:
            hint = difflib.get_close_matches(key, _OVERRIDES, n=1)
            raise ConfigError(
                f"--conf {key}: unknown key"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; accepted: {', '.join(OVERRIDABLE_KEYS)}"
            )
    # preset first: the other overrides address the preset in use
    applied: Dict[str, str] = {}
    ordered = sorted(overrides.items(), key=lambda kv: kv[0] != "preset")
    for key, value in ordered:
        if key not in _OVERRIDES:
            continue
        dotted, parse = _OVERRIDES[key]
        dotted = dotted.replace("{preset}", str(raw.get("preset", "")))
        node = raw
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"--conf {key}: apps.yaml has no section {dotted.rsplit('.', 1)[0]!r} to override")
            node = node[part]
        node[parts[-1]] = parse(value) if isinstance(value, str) else value
        applied[dotted] = key
    return applied


def _deep_merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for k, v in override.items():
            merged[k] = _deep_merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return merged
    return copy.deepcopy(override)


def _resolve_preset(presets: Dict[str, Any], name: str, chain: List[str]) -> Any:
    """A preset merged with its ancestors, with its modality plans' own inheritance resolved."""
    entry = _raw_preset_chain(presets, name, chain)
    if isinstance(entry, dict) and isinstance(entry.get("plans"), dict):
        entry["plans"] = {m: _resolve_plan(entry["plans"], m, name, []) for m in entry["plans"]}
    return entry


def _raw_preset_chain(presets: Dict[str, Any], name: str, chain: List[str]) -> Any:
    """A preset merged with its ancestors, plan inheritance not yet resolved."""
    entry = presets.get(name)
    if not isinstance(entry, dict):
        return entry
    if name in chain:
        raise ConfigError(f"presets.{name}.inherits: inheritance cycle {' -> '.join(chain + [name])}")
    entry = dict(entry)
    parent = entry.pop("inherits", None)
    if parent is None:
        return entry
    if parent not in presets:
        raise ConfigError(f"presets.{name}.inherits: unknown preset {parent!r}; presets: {sorted(presets)}")
    base = _raw_preset_chain(presets, parent, chain + [name])
    child_plans = entry.get("plans") if isinstance(entry.get("plans"), dict) else {}
    merged = _deep_merge(base, entry)
    for modality, plan in child_plans.items():
        if isinstance(plan, dict) and "inherits" in plan:
            merged["plans"][modality] = copy.deepcopy(plan)
    return merged


def _resolve_plan(plans: Dict[str, Any], modality: str, preset: str, chain: List[str]) -> Any:
    plan = plans.get(modality)
    if not isinstance(plan, dict) or "inherits" not in plan:
        return plan
    if modality in chain:
        raise ConfigError(f"presets.{preset}.plans.{modality}.inherits: inheritance cycle")
    plan = dict(plan)
    parent = plan.pop("inherits")
    if parent not in plans:
        raise ConfigError(f"presets.{preset}.plans.{modality}.inherits: unknown plan {parent!r}")
    return _deep_merge(_resolve_plan(plans, parent, preset, chain + [modality]), plan)


def _describe(error: ValidationError, source: str, overridden: Mapping[str, str]) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        origin = f" (set by --conf {overridden[key]})" if key in overridden else ""
        if item["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{key}'")
        elif item["type"] == "missing":
            lines.append(f"  missing key '{key}'")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            given = item.get("input")
            shown = "" if isinstance(given, (dict, list)) else f" (got {given!r})"
            lines.append(f"  '{key}': {msg}{shown}{origin}"[:400])
    return "\n".join(lines)
