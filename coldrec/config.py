"""The training configuration: nested dataclasses loaded from TOML.

Precedence is defaults < config file < CLI flags. Unknown keys are rejected (with the
closest known key suggested), never ignored: a typo in a cron job's config must not silently
train another model. `TrainConfig.to_toml()` writes the config as used next to the weights.

    [features]  what the tables turn into (roles, vocabularies, normalisers)
    [model]     tower architecture and input dropout
    [loss]      which losses, their weights and options (coldrec.losses.LossConfig)
    [training]  optimiser, schedule, epochs, early stopping, seed, device

A later `coldrec pipeline` can reuse the same sections: `load_config_dict` validates any
subset of them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import math
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from coldrec.errors import ConfigError, InputNotFound
from coldrec.losses import LossConfig

ROLES = ("categorical", "multi_hot", "numeric", "vector", "text", "ignore")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
NORMALISATIONS = ("layernorm", "batchnorm", "none")
SCHEDULES = ("cosine", "constant")
OBJECTIVES = ("twotower", "dropoutnet")
DEVICES = ("auto", "cpu", "cuda")
SELECT_ON = ("recall", "mean_views")
# Keys of earlier versions, removed because no default or documented use needed them (the
# probes that added them were not adopted: bench/LOG.md). A config naming one is refused with
# this reason; a saved model's copy of them is dropped on load.
REMOVED_KEYS = {
    "model.content_aux_weight": "removed in 0.2: the auxiliary content loss never helped on validation",
    "training.restore_best": "removed in 0.2: the best validation epoch's weights are always kept",
}


@dataclass
class FeaturesConfig:
    """How content tables, ids and statistics become model inputs."""

    id_min_count: int = 1  # ids with fewer train samples have no id embedding (cold slot)
    vocab_min_count: int = 2  # categorical/multi-hot values rarer than this share the OOV slot
    max_bag_size: int = 32  # multi-hot lists and text token bags are truncated to this many
    text_buckets: int = 4096  # hash buckets of a `text` column's token bag
    log1p_columns: list[str] = field(default_factory=list)  # numeric content columns to log1p
    # > 0: every numeric content column ALSO gets an embedding of its quantile bucket (this many
    # buckets, boundaries fitted on the training content; nulls have their own bucket). 0 = off.
    numeric_buckets: int = 0
    stats_log1p: bool = True  # log1p every non-negative stats column before standardising
    # Role overrides by column name ("title") or qualified ("items.title"):
    # categorical | multi_hot | numeric | vector | text | ignore.
    roles: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        _positive(self, "id_min_count", "vocab_min_count", "max_bag_size", "text_buckets", section="features")
        if self.numeric_buckets < 0:
            raise ConfigError(f"features.numeric_buckets must be >= 0, got {self.numeric_buckets}", hint="use 0 (off) or a bucket count such as 10")
        for column, role in self.roles.items():
            if role not in ROLES:
                raise ConfigError(
                    f"features.roles: column '{column}' has unknown role '{role}'",
                    hint=f"use one of {', '.join(ROLES)}",
                )


@dataclass
class ModelConfig:
    """Two towers: content encoder ⊕ preference encoder -> MLP -> L2-normalised vector."""

    dim: int = 64  # output embedding size
    hidden: list[int] = field(default_factory=lambda: [256, 128])  # MLP hidden widths
    activation: str = "relu"
    normalisation: str = "layernorm"  # after each hidden layer
    embedding_dim: int = 32  # per content feature (categorical, bags, numeric, vectors)
    id_dim: int = 32  # id embedding size (ignored with objective = "dropoutnet")
    content_skip: bool = True  # additive content branch: linear(content) added to the MLP output
    mlp_dropout: float = 0.0  # ordinary dropout between MLP layers
    user_dropout_rate: float = 0.5  # P(user's whole preference block is zeroed), per sample
    item_dropout_rate: float = 0.5  # P(item's whole preference block is zeroed), per sample
    # Click profiles: a user's, per value of every small-vocabulary item content column (and
    # per quantile bucket of every numeric one), log(share of the user's train clicks / share
    # of all train clicks), smoothed; part of the user's preference block (zero when cold).
    # item_profile: the same for an item's clickers over the user content columns.
    user_profile: bool = True
    item_profile: bool = True
    profile_smoothing: float = 5.0  # clicks' worth of the global shares mixed into each profile
    # Served scores add profile_match x (user's click profile . item's content values): a
    # naive-Bayes content match next to the cosine, in cosine units (x loss.scale in logits).
    # Not trained; served through (profile_match_rank + 2) extra vector dimensions. Needs
    # user_profile; 0 disables it. 0.025 was best on MovieLens-100K validation (cold items +7%).
    profile_match: float = 0.025
    # At most this many extra dimensions carry the match: when the item values have more
    # slots, both sides are projected onto the items' top principal directions (the served
    # score is then close to, not exactly, the match). 0 = every slot, exactly.
    profile_match_rank: int = 24
    # A user without a click profile (new, or no train click) is matched with the profile
    # their content predicts: for each of their content values, the mean (clipped) profile
    # of the train users who have it, averaged over their columns, times profile_impute.
    # Served only (the tower still sees an empty profile); needs profile_match. 0 disables.
    # 2 on MovieLens-100K validation: cold users +3%, the warm test's new users up, NDCG kept.
    profile_impute: float = 2.0
    # Served scores also add popularity_prior x log((c + 1) / (c_max + 1)), c = the item's
    # train clicks in the last popularity_days days (before the last train sample; 0 = all
    # days), c_max the largest c: a trending prior, <= 0; a new item (no id row) gets the
    # value new_item_prior says. Not trained; served through one more vector dimension.
    # Ranks items for a user, never users for an item. 0 disables it.
    popularity_prior: float = 0.1
    popularity_days: float = 30.0
    # The prior a new item is served with: this quantile of the known items' values, or
    # their mean if that is higher. 0.75 ranks a new item like a known item in the upper
    # quarter; the mean (the value before this key) is about the median, where a new item
    # competes with the tail and, in a mixed catalogue, is rarely recommended.
    new_item_prior: float = 0.75
    # Fit profile_match, profile_impute and popularity_prior on the validation split at the
    # end of `coldrec train` (coldrec.term_weights): the values above are where the search
    # starts, and what is served when this is false or there is no validation split.
    fit_served: bool = True

    def validate(self) -> None:
        _positive(self, "dim", "embedding_dim", "id_dim", section="model")
        if any(width <= 0 for width in self.hidden):
            raise ConfigError(f"model.hidden must hold positive widths, got {self.hidden}", hint="e.g. hidden = [256, 128]")
        _choice(self, "activation", ACTIVATIONS, "model")
        _choice(self, "normalisation", NORMALISATIONS, "model")
        if not (0.0 <= self.profile_match < 1.0):
            raise ConfigError(f"model.profile_match must be in [0, 1), got {self.profile_match}", hint="e.g. 0.025 (cosine units), or 0 to disable")
        if not (0.0 <= self.popularity_prior < 10.0):
            raise ConfigError(f"model.popularity_prior must be in [0, 10), got {self.popularity_prior}", hint="e.g. 0.1 (cosine units per unit of log popularity), or 0 to disable")
        if not (self.popularity_days >= 0.0 and math.isfinite(self.popularity_days)):
            raise ConfigError(f"model.popularity_days must be >= 0, got {self.popularity_days}", hint="e.g. 30, or 0 for every train click")
        if not (0.0 <= self.new_item_prior <= 1.0):
            raise ConfigError(f"model.new_item_prior must be a quantile in [0, 1], got {self.new_item_prior}", hint="e.g. 0.75 (a known item in the upper quarter), or 0 for the known items' mean")
        if not (0.0 <= self.profile_impute <= 10.0):
            raise ConfigError(f"model.profile_impute must be in [0, 10], got {self.profile_impute}", hint="e.g. 2 (averaged profiles are flatter than one user's), or 0 to disable")
        if self.profile_match_rank < 0:
            raise ConfigError(f"model.profile_match_rank must be >= 0, got {self.profile_match_rank}", hint="e.g. 24, or 0 for every slot")
        if not (self.profile_smoothing > 0.0 and math.isfinite(self.profile_smoothing)):
            raise ConfigError(f"model.profile_smoothing must be > 0, got {self.profile_smoothing}", hint="e.g. 5.0 (clicks' worth of the global shares)")
        for name in ("user_dropout_rate", "item_dropout_rate", "mlp_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {value}", hint="e.g. 0.5")


@dataclass
class TrainingConfig:
    """The optimisation loop."""

    objective: str = "twotower"  # "twotower" | "dropoutnet" (MSE to pretrained U·Vᵀ)
    # Exposed-not-clicked samples per click drawn into each epoch (coldrec.batches): every
    # click is trained on once per epoch, the other exposures are sampled, each weighted by
    # the inverse of its sampling rate. A rate above negatives / clicks takes every sample.
    # 4 across the worlds of bench/worlds.py: validation as with every sample (within 1%),
    # 7x less training where 2% of exposures are clicked (docs/benchmarks.md).
    negative_rate: float = 4.0
    epochs: int = 10
    batch_size: int = 1024  # global batch (split across ranks under torchrun)
    lr: float = 3e-3
    weight_decay: float = 1e-5
    schedule: str = "cosine"  # "cosine" | "constant"
    warmup_steps: int = 0
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    recall_k: int = 20  # validation metric Recall@K
    # Was 0 after the MovieLens-100K selection, when the epoch was chosen on warm-only
    # validation and stopping at its early peak left the content path under-trained. 2 across the worlds of bench/worlds.py: the same best epochs as without early stopping
    # (now chosen on the content-only views too), in 50-90% of the epochs.
    patience: int = 2  # epochs without improvement before stopping; 0 disables early stopping
    # A wall-time budget for the epochs (cron): no epoch starts that the last one's time says
    # would end past it; the best epoch so far is kept. 0 = no budget.
    max_minutes: float = 0.0
    max_valid_users: int = 20000  # validation users sampled for Recall@K (deterministic)
    exclude_train_positives: bool = True  # in validation, skip items the user clicked in train
    # The validation number that picks the best epoch (and drives patience): "recall" = Recall@K
    # as served; "mean_views" = mean of that, Recall@K with every item's preference block zeroed
    # (content-only items) and with every user's zeroed (content-only users). "mean_views" since
    # the MovieLens-100K selection: validation slices hold few cold items, so Recall@K alone
    # could restore an epoch whose content path was under-trained.
    select_on: str = "mean_views"

    def validate(self) -> None:
        _positive(self, "epochs", "batch_size", "recall_k", "max_valid_users", section="training")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ConfigError(f"training.lr must be a positive number, got {self.lr}", hint="e.g. lr = 0.003")
        for name in ("weight_decay", "grad_clip", "warmup_steps", "patience", "negative_rate", "max_minutes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"training.{name} must be >= 0, got {getattr(self, name)}")
        _choice(self, "schedule", SCHEDULES, "training")
        _choice(self, "objective", OBJECTIVES, "training")
        _choice(self, "device", DEVICES, "training")
        _choice(self, "select_on", SELECT_ON, "training")


@dataclass
class TrainConfig:
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)  # validated when built (frozen)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def validate(self) -> "TrainConfig":
        self.features.validate()
        self.model.validate()
        self.training.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "TrainConfig":
        return build_section(cls, data, source, "")


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < the TOML file at `path` < `overrides` ({"training.epochs": 3, ...}).

    Unknown sections or keys raise ConfigError with a close-match suggestion. Overrides whose
    value is None are skipped (an unset CLI flag).
    """
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise InputNotFound("no such config file", path=path, hint="check the --config path")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"not valid TOML ({error})", path=path, hint="fix the syntax") from None
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"'{section}' must be a table", path=source)
        data[section][key] = value
    return TrainConfig.from_dict(data, source=source).validate()


def load_config_dict(data: dict[str, Any], sections: tuple[str, ...], *, source: str = "config") -> TrainConfig:
    """Validate only `sections` of `data` (for commands that share some of these keys)."""
    unknown = [name for name in data if name not in sections]
    if unknown:
        raise ConfigError(f"unknown section '{unknown[0]}'", path=source, hint=suggest(unknown[0], sections))
    return TrainConfig.from_dict(data, source=source)


def without_removed(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict ({"model": {...}, ...}) without the REMOVED_KEYS, for models saved before."""
    return {section: {k: v for k, v in body.items() if f"{section}.{k}" not in REMOVED_KEYS} if isinstance(body, dict) else body
            for section, body in data.items()}


def build_section(cls: type, data: Any, source: str, prefix: str) -> Any:
    """An options dataclass from a TOML table: unknown keys (with the closest known one
    suggested) and values of the wrong type are refused, naming `prefix` + the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"'{prefix.rstrip('.')}' must be a table", path=source, hint="use [section] headers")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if f"{prefix}{key}" in REMOVED_KEYS:
            raise ConfigError(f"'{prefix}{key}' {REMOVED_KEYS[prefix + key]}", path=source, hint="delete the line")
        if key not in names:
            kind = "section" if not prefix else "key"
            raise ConfigError(f"unknown {kind} '{prefix}{key}'", path=source, hint=suggest(key, names, prefix))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = build_section(hint, value, source, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, hint, f"{prefix}{key}", source)
    try:
        return cls(**kwargs)
    except ConfigError as error:  # LossConfig checks its combinations as it is built
        raise ConfigError(error.message, path=error.path or source, column=error.column, hint=error.hint) from None


def _coerce(value: Any, hint: Any, name: str, source: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):  # X | None: TOML has no null, so the value is an X
        (hint,) = [arg for arg in get_args(hint) if arg is not type(None)]
        origin = get_origin(hint)
    fix = f'quote it: {name.rsplit(".", 1)[-1]} = "{value}"' if isinstance(value, (dt.date, dt.time)) and hint is str else "fix the value's type"
    bad = ConfigError(f"'{name}' should be {_type_name(hint)}, got {value!r}", path=source, hint=fix)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    if origin is list:
        (inner,) = get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(v, inner, name, source) for v in value]
    if origin is dict:
        _, inner = get_args(hint)
        if not isinstance(value, dict):
            raise bad
        return {str(k): _coerce(v, inner, f"{name}.{k}", source) for k, v in value.items()}
    return value


def _type_name(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is list:
        return f"a list of {_type_name(get_args(hint)[0])}"
    if origin is dict:
        return "a table"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def suggest(key: str, names: list[str] | tuple[str, ...], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.5)
    if close:
        return f"did you mean '{prefix}{close[0]}'?"
    return f"known: {', '.join(prefix + n for n in names)}"


def _positive(obj: Any, *names: str, section: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{section}.{name} must be positive, got {value}", hint=f"set {section}.{name} >= 1")


def _choice(obj: Any, name: str, choices: tuple[str, ...], section: str) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise ConfigError(
            f"{section}.{name} must be one of {', '.join(choices)}, got '{value}'",
            hint=suggest(str(value), choices),
        )


# --------------------------------------------------------------------------- writing


def dump_toml(data: dict[str, Any]) -> str:
    """TOML for a dict of sections holding scalars, lists and flat tables (what we write)."""
    lines: list[str] = []
    for section, body in data.items():
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in body.items() if isinstance(v, dict)}
        lines.append(f"[{section}]")
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars.items())
        for name, table in tables.items():
            lines.append("")
            lines.append(f"[{section}.{_toml_key(name)}]")
            lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items())
        lines.append("")
    return "\n".join(lines)


def _toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "_-" for c in key):
        return key
    return _toml_string(key)


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
