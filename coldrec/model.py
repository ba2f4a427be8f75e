"""The DropoutNet two-tower model.

Each tower reads two blocks:
- content: one embedding (bag) per categorical / multi-hot / text column, one linear map for
  the numeric block (value + missing flag per column) and one per dense vector column (with
  `features.numeric_buckets`, also one embedding per numeric column's quantile bucket);
- preference: the id embedding (row 0, the cold slot, is fixed at zero) ⊕ the standardised
  point-in-time statistics (zeros when there are none).
Their concatenation goes through an MLP to a `dim`-wide vector that is L2-normalised, so the
score of (user, item) is a cosine. With `content_skip` a linear map of the content block is
added to the MLP output: an additive, LightFM-like sum of per-feature embeddings that every
training row trains, whether or not its preference block was dropped.

Input dropout (DropoutNet): in training, per sample, the whole preference block of the user
is zeroed with probability `user_dropout_rate`, independently the item's with
`item_dropout_rate`. Content is never dropped and nothing is rescaled: serving a cold entity
feeds exactly these zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coldrec.config import ModelConfig
from coldrec.features import EntitySpec, profile_width
from coldrec.served import ServedTerms

EMBEDDING_INIT_STD = 0.1
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def _embedding(rows: int, width: int, init: bool = True) -> nn.Embedding:
    if not init:  # weights about to be loaded: skip drawing rows x width normals
        return nn.Embedding(rows, width, padding_idx=0, _weight=torch.empty(rows, width))
    embedding = nn.Embedding(rows, width, padding_idx=0)
    nn.init.normal_(embedding.weight, std=EMBEDDING_INIT_STD)
    with torch.no_grad():
        embedding.weight[0].zero_()
    return embedding


def _embedding_bag(rows: int, width: int, init: bool = True) -> nn.EmbeddingBag:
    if not init:
        return nn.EmbeddingBag(rows, width, mode="mean", padding_idx=0, _weight=torch.empty(rows, width))
    bag = nn.EmbeddingBag(rows, width, mode="mean", padding_idx=0)
    nn.init.normal_(bag.weight, std=EMBEDDING_INIT_STD)
    with torch.no_grad():
        bag.weight[0].zero_()
    return bag


class Tower(nn.Module):
    """content ⊕ preference -> MLP (+ linear content skip) -> L2-normalised (batch, dim)."""

    def __init__(self, spec: EntitySpec, config: ModelConfig, *, normalize: bool = True, profile_width: int = 0, init: bool = True) -> None:
        super().__init__()
        self.normalize = normalize
        width = config.embedding_dim
        self.encoders = nn.ModuleDict()
        for index, column in enumerate(spec.columns):
            key = f"col{index}"
            if column.role in ("categorical", "numeric_bucket"):
                self.encoders[key] = _embedding(column.cardinality, width, init)
            elif column.role in ("multi_hot", "text"):
                self.encoders[key] = _embedding_bag(column.cardinality, width, init)
            elif column.role == "vector":
                self.encoders[key] = nn.Linear(column.length, width)
        numeric = len(spec.numeric_columns)
        if numeric:
            self.encoders["num"] = nn.Linear(2 * numeric, width)  # value + missing flag per column
        self.content_keys = list(self.encoders.keys())
        self.content_width = width * len(self.content_keys)
        # The pretrained vectors of objective "dropoutnet" are inputs, not parameters.
        id_dim = spec.pretrained_dim or config.id_dim
        self.id_embedding = _embedding(spec.n_ids, id_dim, init)
        if spec.pretrained_dim:
            self.id_embedding.weight.requires_grad_(False)
        self.stats_width = len(spec.stats_columns)
        # model.user_profile / item_profile: per id row, the sum of its train clicks' profile
        # rows of the other side and their count; the global click shares. Filled by `coldrec
        # train`, saved with the weights.
        self.profile_width = profile_width
        self.profile_smoothing = config.profile_smoothing
        if profile_width:
            self.register_buffer("profile_sum", torch.zeros(spec.n_ids, profile_width))
            self.register_buffer("profile_count", torch.zeros(spec.n_ids))
            self.register_buffer("profile_prior", torch.ones(profile_width))
        self.preference_width = id_dim + self.stats_width + profile_width
        layers: list[nn.Module] = []
        in_width = self.content_width + self.preference_width
        for hidden in config.hidden:
            layers.append(nn.Linear(in_width, hidden))
            if config.normalisation == "layernorm":
                layers.append(nn.LayerNorm(hidden))
            elif config.normalisation == "batchnorm":
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(ACTIVATIONS[config.activation]())
            if config.mlp_dropout > 0:
                layers.append(nn.Dropout(config.mlp_dropout))
            in_width = hidden
        layers.append(nn.Linear(in_width, config.dim))
        self.mlp = nn.Sequential(*layers)
        self.content_skip = (
            nn.Linear(self.content_width, config.dim, bias=False)
            if config.content_skip and self.content_width
            else None
        )
        self.profile_skip = nn.Linear(profile_width, config.dim, bias=False) if profile_width else None

    def content(self, inputs: dict[str, Tensor]) -> Tensor:
        """(batch, content_width): every content feature embedded, concatenated."""
        parts = [self.encoders[key](inputs[key]) for key in self.content_keys]  # each (batch, width)
        if not parts:
            return inputs["id"].new_zeros((inputs["id"].shape[0], 0), dtype=torch.float32)
        return torch.cat(parts, dim=1)

    def preference(self, inputs: dict[str, Tensor]) -> Tensor:
        """(batch, preference_width): id embedding ⊕ stats (⊕ profile); all zeros for a cold entity."""
        parts = [self.id_embedding(inputs["id"]), inputs["stats"]]
        if self.profile_width:
            parts.append(inputs["profile"] if "profile" in inputs else self.profile(inputs))  # (TwoTower.embed computes it once)
        return torch.cat(parts, dim=1)

    def profile(self, inputs: dict[str, Tensor]) -> Tensor:
        """(batch, profile_width): log(smoothed click shares / global shares); 0 for a cold id.

        In training, `profile_minus` (batch, width) / `profile_count_minus` (batch,) remove the
        sample's own click from its user's profile (leave one out), so the profile never
        contains the positive it is scored against.
        """
        ids = inputs["id"]
        total = self.profile_sum.index_select(0, ids)  # (batch, width)
        count = self.profile_count.index_select(0, ids)  # (batch,)
        if "profile_minus" in inputs:
            total = (total - inputs["profile_minus"]).clamp(min=0.0)  # float sums: never below 0
            count = (count - inputs["profile_count_minus"]).clamp(min=0.0)
        a = self.profile_smoothing
        shares = (total + a * self.profile_prior) / (count + a).unsqueeze(1)  # (batch, width)
        return torch.log(shares / self.profile_prior)

    def forward(self, inputs: dict[str, Tensor], drop: Tensor | None = None) -> Tensor:
        """inputs: key -> (batch, ...); drop: (batch,) bool, True zeroes that row's preference."""
        content = self.content(inputs)  # (batch, content_width)
        preference = self.preference(inputs)  # (batch, preference_width)
        if drop is not None:
            preference = preference * (~drop).unsqueeze(1).to(preference.dtype)  # no rescaling
        hidden = torch.cat([content, preference], dim=1)  # (batch, content + preference)
        out = self.mlp(hidden)  # (batch, dim)
        if self.content_skip is not None:
            out = out + self.content_skip(content)  # additive content branch
        if self.profile_skip is not None:
            out = out + self.profile_skip(preference[:, -self.profile_width :])  # (dropped with the block)
        return F.normalize(out, dim=1) if self.normalize else out  # (batch, dim)


class TwoTower(nn.Module):
    """A user tower and an item tower; input dropout is drawn here in training mode.

    Served vectors (`embed`, `content_view`) are the tower outputs with the served score
    terms appended (coldrec.served); training sees the tower outputs alone.
    """

    def __init__(self, user_spec: EntitySpec, item_spec: EntitySpec, config: ModelConfig, *, normalize: bool = True, init: bool = True) -> None:
        super().__init__()
        self.config = config
        self.user = Tower(user_spec, config, normalize=normalize, profile_width=profile_width(item_spec) if config.user_profile else 0, init=init)
        self.item = Tower(item_spec, config, normalize=normalize, profile_width=profile_width(user_spec) if config.item_profile else 0, init=init)
        self.terms = ServedTerms(config, user_spec, item_spec, enabled=normalize)  # none for dropoutnet's regressions

    @property
    def output_dim(self) -> int:
        return self.config.dim + self.terms.width

    def dropout_masks(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(batch,) bool masks: True = drop that row's user (item) preference block."""
        draw_device = generator.device if generator is not None else device
        uniform = torch.rand((2, batch), generator=generator, device=draw_device).to(device)  # (2, batch)
        return uniform[0] < self.config.user_dropout_rate, uniform[1] < self.config.item_dropout_rate

    def forward(
        self,
        user_inputs: dict[str, Tensor],
        item_inputs: dict[str, Tensor],
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """-> user (batch, dim), item (batch, dim); dropout masks only when training."""
        user_drop = item_drop = None
        if self.training:
            batch = user_inputs["id"].shape[0]
            user_drop, item_drop = self.dropout_masks(batch, user_inputs["id"].device, generator)
        return self.user(user_inputs, user_drop), self.item(item_inputs, item_drop)

    def content_view(self, side: str, inputs: dict[str, Tensor], *, served: bool = True) -> Tensor:
        """(batch, output_dim): every row of one side with its preference block dropped (cold
        view), as served (`served=False`: the tower's training output, (batch, dim))."""
        tower = self.user if side == "user" else self.item
        drop = torch.ones(inputs["id"].shape[0], dtype=torch.bool, device=inputs["id"].device)
        out = tower(inputs, drop)
        return self.terms.apply(side, out, inputs, drop, self.user) if served else out

    def embed(self, side: str, inputs: dict[str, Tensor]) -> Tensor:
        """Serving: (batch, output_dim) embeddings of one side, no dropout."""
        tower = self.user if side == "user" else self.item
        if side == "user" and self.terms.get("match") is not None:
            inputs = {**inputs, "profile": tower.profile(inputs)}  # for the tower and the match
        return self.terms.apply(side, tower(inputs, None), inputs, None, self.user)


# --------------------------------------------------------------------------- the model directory

MODEL_FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
SPEC_FILE = "spec.json"
CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.json"
TRAIN_LOG_FILE = "train_log.jsonl"


# Weights written before the served terms had a module of their own (coldrec 0.1, Nov 2026).
LEGACY_KEYS = {
    **{name: f"terms.match.{name}" for name in ("item_value_edges", "match_basis", "user_value_edges", "impute_map")},
    **{name: f"terms.prior.{name}" for name in ("item_popularity", "popularity_floor")},
}


def build_model(spec, config: ModelConfig, *, normalize: bool = True, init: bool = True) -> TwoTower:
    """A fresh TwoTower for a FeatureSpec (weights initialised from the global torch RNG;
    init=False leaves the embedding tables uninitialised, for weights loaded next)."""
    return TwoTower(spec.user, spec.item, config, normalize=normalize, init=init)


def model_state(model: TwoTower, loss: nn.Module | None) -> dict[str, Tensor]:
    """Every tensor to save: model.* and loss.* (the pointwise bias), contiguous, on CPU."""
    state = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if loss is not None:
        state.update({f"loss.{k}": v.detach().cpu().contiguous() for k, v in loss.state_dict().items()})
    return state


def write_model_files(
    directory,
    *,
    spec,
    config,
    state: dict[str, Tensor],
    normalize: bool,
    metrics: dict,
    train_log: list[dict],
) -> str:
    """Write weights, spec.json, config.toml, metrics.json and train_log.jsonl into `directory`.

    Returns the weights' sha256 prefix (also recorded in spec.json and checked on load).
    """
    import dataclasses
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from coldrec import __version__
    from coldrec.io import content_fingerprint

    directory = Path(directory)
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "coldrec", "format_version": str(MODEL_FORMAT_VERSION)})
    digest = content_fingerprint(directory / WEIGHTS_FILE)
    document = {
        "format_version": MODEL_FORMAT_VERSION,
        "coldrec_version": __version__,
        "objective": config.training.objective,
        "normalize": normalize,
        "weights_sha256": digest,
        "model": dataclasses.asdict(config.model),
        "features": spec.to_dict(),
    }
    (directory / SPEC_FILE).write_text(json.dumps(document))
    (directory / CONFIG_FILE).write_text(config.to_toml())
    (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    (directory / TRAIN_LOG_FILE).write_text("".join(json.dumps(line, default=float) + "\n" for line in train_log))
    return digest


class LoadedModel:
    """A trained model ready to serve: eval-mode TwoTower, its FeatureSpec and config.

    `embed_users(table, stats=..., cold=...)` / `embed_items(...)` turn a content table
    (one row per id, the training columns) into L2-normalised float32 vectors.
    """

    def __init__(self, model: TwoTower, spec, config, directory, metrics: dict) -> None:
        self.model = model
        self.spec = spec
        self.config = config
        self.directory = directory
        self.metrics = metrics

    @property
    def dim(self) -> int:
        return self.model.output_dim

    def embed_users(self, table, *, stats=None, cold: bool = False, batch_size: int = 8192, device: str = "cpu", path="users", stats_path="stats"):
        return self.embed("user", table, stats=stats, cold=cold, batch_size=batch_size, device=device, path=path, stats_path=stats_path)

    def embed_items(self, table, *, stats=None, cold: bool = False, batch_size: int = 8192, device: str = "cpu", path="items", stats_path="stats"):
        return self.embed("item", table, stats=stats, cold=cold, batch_size=batch_size, device=device, path=path, stats_path=stats_path)

    def embed(self, side: str, table, *, stats=None, cold: bool = False, batch_size: int = 8192, device: str = "cpu", path="table", stats_path="stats"):
        """-> (embeddings (n, dim) float32 L2-normalised, cold_mask (n,) bool).

        `table`: a polars DataFrame with `{side}_id` and the content columns used in
        training (unseen categories are fine). `stats`: latest statistics (id + stat
        columns, optionally `day`/`as_of`: the latest row per id is used); None = no stats.
        `cold=True` zeroes the preference block of every row (content only). cold_mask[r]
        is True when row r had no id embedding and no stats.
        """
        import numpy as np

        from coldrec.features import encode_for_serving, slice_inputs

        inputs, cold_mask = encode_for_serving(self.spec.side(side), table, stats=stats, cold=cold, path=path, stats_path=stats_path)
        self.model.to(device)
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(cold_mask), batch_size):
                batch = {k: v.to(device) for k, v in slice_inputs(inputs, start, start + batch_size).items()}
                outputs.append(F.normalize(self.model.embed(side, batch), dim=1).float().cpu())  # (batch, dim)
        if outputs:
            vectors = torch.cat(outputs).numpy()
        else:
            vectors = np.zeros((0, self.dim), dtype=np.float32)
        return vectors.astype(np.float32, copy=False), cold_mask


def load_model(model_dir) -> LoadedModel:
    """Load a model directory written by `coldrec train` (safetensors only: nothing unpickled).

    Raises InputNotFound for a missing directory or file, IncompatibleModel for another
    format version, a corrupt or tampered weights file or mismatched tensors.
    """
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from coldrec.config import TrainConfig, without_removed
    from coldrec.errors import ColdrecError, IncompatibleModel, InputNotFound
    from coldrec.features import FeatureSpec
    from coldrec.io import content_fingerprint

    directory = Path(model_dir)
    if not directory.is_dir():
        raise InputNotFound("no such model directory", path=directory, hint="point --model at a directory written by `coldrec train`")
    for name in (SPEC_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise IncompatibleModel(f"not a coldrec model directory (no {name})", path=directory, hint="point at a directory written by `coldrec train`")
    try:
        document = json.loads((directory / SPEC_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise IncompatibleModel(f"corrupt {SPEC_FILE} ({error})", path=directory / SPEC_FILE, hint="retrain the model") from None
    version = document.get("format_version") if isinstance(document, dict) else None
    if version != MODEL_FORMAT_VERSION:
        raise IncompatibleModel(
            f"model format version {version!r} (written by coldrec {document.get('coldrec_version', '?') if isinstance(document, dict) else '?'}), this coldrec reads version {MODEL_FORMAT_VERSION}",
            path=directory,
            hint="retrain the model with this coldrec version, or use the version that wrote it",
        )
    expected = document.get("weights_sha256")
    if expected and content_fingerprint(directory / WEIGHTS_FILE) != expected:
        raise IncompatibleModel("corrupt weights file (checksum mismatch)", path=directory / WEIGHTS_FILE, hint="copy the model again or retrain it")
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except Exception as error:  # noqa: BLE001 - safetensors raises several types on corrupt files
        raise IncompatibleModel(f"corrupt weights file ({str(error).splitlines()[0] if str(error) else type(error).__name__})", path=directory / WEIGHTS_FILE, hint="copy the model again or retrain it") from None
    try:
        spec = FeatureSpec.from_dict(document["features"])
        # Models written before model.profile_match_rank existed served every slot; before
        # model.popularity_prior, no prior; before model.profile_impute, no imputed profile.
        saved = without_removed({"model": document["model"]})["model"]
        model_config = ModelConfig(**{"profile_match_rank": 0, "popularity_prior": 0.0, "profile_impute": 0.0, **saved})
    except (KeyError, TypeError) as error:
        raise IncompatibleModel(f"malformed {SPEC_FILE} ({error})", path=directory / SPEC_FILE, hint="retrain the model") from None
    config = TrainConfig(model=model_config)
    if (directory / CONFIG_FILE).is_file():
        try:
            config = TrainConfig.from_dict(without_removed(__import__("tomllib").loads((directory / CONFIG_FILE).read_text())), source=str(directory / CONFIG_FILE))
        except (ColdrecError, ValueError):
            pass  # spec.json alone suffices to serve; config.toml is for people and reruns
        config.model = model_config
    # init=False: the embedding tables are not drawn at random only to be overwritten (at
    # millions of ids that was a noticeable share of a `coldrec embed` run).
    model = build_model(spec, model_config, normalize=bool(document.get("normalize", True)), init=False)
    model_part = {LEGACY_KEYS.get(k[len("model."):], k[len("model."):]): v for k, v in state.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_part, strict=True)
    except RuntimeError as error:
        raise IncompatibleModel(f"weights do not match spec.json ({str(error).splitlines()[0]})", path=directory / WEIGHTS_FILE, hint="retrain the model") from None
    model.eval()
    metrics = {}
    if (directory / METRICS_FILE).is_file():
        try:
            metrics = json.loads((directory / METRICS_FILE).read_text())
        except json.JSONDecodeError:
            metrics = {}
    return LoadedModel(model, spec, config, directory, metrics)
