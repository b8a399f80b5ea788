"""The training configuration: one validated schema, loadable from TOML/YAML, overridable by key=value."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from mixrec.registry import INDEX_BACKENDS, LOSSES, POOLINGS



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # floats finite


class RelationConfig(_Strict):
    """Per-task settings: the edge weight omega of eq. 4 and an optional degree correction."""

    weight: float = Field(1.0, ge=0, description="task weight omega_T in eq. 4")
    degree_exponent: float = Field(0.0, description="multiply the weight by (src_deg * dst_deg) ** -exponent / mean")
    edge_weight: str = Field("default", description="name of a registered omega(e) function "
                                                    "(mixrec.train.sampler.register_edge_weight)")


class NegativesConfig(_Strict):
    """One-sided negatives (section 3.3): destinations of the positive's type."""

    batch: int = Field(256, ge=0, description="negatives taken from other positives of the same batch")
    uniform: int = Field(1024, ge=0, description="negatives drawn uniformly from the destination type")
    two_sided: bool = Field(False, description="also corrupt the source side: other sources of the batch and "
                            "`uniform` sources drawn uniformly, scored against the positive's destination "
                            "(the paper samples one-sided, destinations only)")
    cross_partition: int = Field(65536, ge=0, description="partitioned training: up to this many rows of the "
                                 "destination type's other partitions, sampled per bucket (trained, then written "
                                 "back), join the uniform negatives, which are then drawn over the whole type; 0 "
                                 "draws them from the bucket's own destination partition (PyTorch-BigGraph's scheme)")

    @model_validator(mode="after")
    def _some(self):
        if self.batch + self.uniform == 0:
            raise ValueError("negatives.batch + negatives.uniform must be > 0")
        return self


class WeightSetConfig(_Strict):
    """A named set of mixture weights (eq. 5): the tasks T' it is computed from and its temperature."""

    relations: Optional[list[str]] = Field(None, description="tasks T'; None means all training tasks")
    gamma: float = Field(0.1, gt=0, description="temperature gamma_T of eq. 5")
    form: Literal["sum", "responsibility"] = Field(
        "sum", description="'sum': eq. 5 as printed; 'responsibility': softmax per edge before summing")


class IndexConfig(_Strict):
    """Nearest-neighbour index over all destination component vectors (FAISS)."""

    kind: str = Field("flat", description="a registered index backend (mixrec.registry.INDEX_BACKENDS): "
                      "'flat' (exact), 'hnsw', 'ivf'")
    hnsw_m: int = Field(32, ge=4)
    ef_search: int = Field(256, ge=1, description="HNSW efSearch; raised to at least k*C_d at query time")
    merge: Literal["round_robin", "rescore"] = Field(
        "rescore", description="how per-component neighbour lists become one list: 'rescore' (default: their "
        "union ranked by the exact pooled score, score_pooling; the exact ranking whenever its top k is among "
        "the lists), 'round_robin' (section 3.5: max_c w_sc / rank)")
    ef_construction: int = Field(200, ge=8)
    nlist: int = Field(0, ge=0, description="IVF lists; 0 picks 4*sqrt(n)")
    nprobe: int = Field(16, ge=1)
    device: Literal["cpu", "auto", "cuda"] = Field(
        "cpu", description="search on a GPU ('cuda'; 'auto' when FAISS has GPU support and sees a GPU); "
                           "flat and ivf only, hnsw stays on the CPU")

    @field_validator("kind")
    @classmethod
    def _registered_kind(cls, v: str) -> str:
        return INDEX_BACKENDS.check(v)


class EarlyStopping(_Strict):
    """Stop when validation recall has not improved for `patience` epochs."""

    patience: int = Field(3, ge=0, description="epochs without improvement before stopping; 0 disables. "
                          "Only active when the dataset has a valid split")
    k: int = Field(20, ge=1)
    max_users: int = Field(5000, ge=1, description="validation users sampled for the check")


class DistributedConfig(_Strict):
    """Data-parallel training over torch.distributed (``torchrun ... -m mixrec.train.distributed``)."""

    sync_every: int = Field(16, ge=1, description="local batches between two all-reduces of the table updates")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="'auto': nccl on cuda, gloo on cpu")


class InitConfig(_Strict):
    """Where multi-component types start: random, or the interest clusters of a single-vector model."""

    user_components: Literal["random", "clusters"] = Field(
        "random", description="'clusters': k-means of each node's engaged item vectors from a single-vector model "
                              "(PinnerSage-style); the components start at the centroids, items at that model's vectors")
    from_model: Optional[str] = Field(None, description="directory of a trained model with one component per type "
                                      "and the same ids; None: pre-train one for `pretrain_epochs`")
    pretrain_epochs: int = Field(3, ge=1, description="epochs of the single-vector pre-training")
    kmeans_iters: int = Field(10, ge=1, description="Lloyd iterations of the per-node k-means")


class ComponentsRule(_Strict):
    """A per-node number of components from its training edges (slots beyond it are tied copies)."""

    min_edges_per_component: int = Field(0, ge=0, description="c_u = largest divisor of C <= min(C, max(1, "
                                         "n_u // m)); 0 keeps C for every node")


class PruneConfig(_Strict):
    """Components left out of retrieval and exact scoring after training (weight 0 in every weight set)."""

    min_weight: float = Field(0.0, ge=0, le=1, description="drop components whose eq. 5 weight is below this")
    max_cosine: float = Field(1.0, ge=-1, le=1, description="drop a component whose cosine to a kept one of the "
                              "same node is above this (1.0: off)")


class Config(_Strict):
    """Everything that defines a mixrec model and its training run."""

    dim: int = Field(128, ge=1, description="dimension n of every component vector")
    components: dict[str, int] = Field(default_factory=lambda: {"user": 1, "item": 1},
                                       description="components.<entity type> = C for that type (default 1: the "
                                       "best configuration measured on ml1m, gowalla and yelp_cat, docs/quality.md; "
                                       "on multi-behaviour data (tmall_mb) components.user = 4 with dim 64 and "
                                       "init.user_components = clusters does better)")
    epochs: int = Field(20, ge=0)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(0.2, gt=0, description="row-wise Adagrad learning rate")
    margin: float = Field(0.5, ge=0, description="lambda of eq. 3")
    loss: str = Field(
        "softmax", description="'softmax' (default): sampled softmax over the positive and its negatives, logits = "
                               "pooled score / temperature - log Q; 'margin': the ranking loss of eq. 3 (the paper); or any name "
                               "registered in mixrec.registry.LOSSES")
    temperature: float = Field(0.1, gt=0, description="softmax loss: temperature of the pooled cosine scores")
    logq: bool = Field(True, description="softmax loss: subtract the log of each candidate's expected count "
                       "among the negatives (in-batch by popularity plus uniform: mixed negative sampling); "
                       "partitioned training applies a per-bucket log-Q from the bucket's edge counts")
    pooling: str = Field("regsmoothmax", description="pooling of the positive score (eq. 2 by default); "
                         "any name registered in mixrec.registry.POOLINGS")
    negative_pooling: Optional[str] = Field(None, description="pooling of negatives; default smoothmax "
                                                "(max when pooling=max, mean when pooling=mean)")
    score_pooling: str = Field("smoothmax", description="pooling used to rank all items exactly")
    routing: Literal["none", "soft", "hard"] = Field(
        "none", description="how a positive's source components score its negatives: 'none' (the paper: every "
        "component, pooled), 'soft' (the responsibility-weighted sum of the components, responsibilities "
        "softmax(per-component positive score / gamma), held constant), 'hard' (the component the positive "
        "selects); the positive keeps its pooling")
    gamma: float = Field(0.1, gt=0, description="smoothmax temperature (eq. 1, 2)")
    theta: float = Field(0.1, ge=0, le=1, description="regularisation of eq. 2")
    theta_form: Literal["mean", "sum"] = Field(
        "mean", description="'mean': theta weights the average similarity (the text's intent, default); "
                            "'sum': eq. 2 as printed (theta weights the sum)")
    negatives: NegativesConfig = Field(default_factory=NegativesConfig)
    relations: dict[str, RelationConfig] = Field(default_factory=dict, description="relations.<name>.weight etc.")
    init_scale: float = Field(0.1, gt=0, description="std of the initial components; with cosine scores "
                              "the effective step is lr / init_scale")
    workers: int = Field(1, ge=1, description="HOGWILD worker processes")
    compile: bool = Field(False, description="compile the closed-form training step with torch.compile "
                          "(needs a C++ compiler; 10-40 s of compilation per process, then fewer, fused "
                          "kernels per batch); falls back to the eager step with a warning when it fails")
    device: str = Field("cpu", pattern=r"^(cpu|auto|cuda(:\d+)?)$",
                        description="where training runs: 'cpu', 'cuda', 'cuda:N', or 'auto' (cuda when available)")
    seed: int = 0
    weight_sets: dict[str, WeightSetConfig] = Field(default_factory=lambda: {"all": WeightSetConfig()})
    index: IndexConfig = Field(default_factory=IndexConfig)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    eval_every: int = Field(0, ge=0, description="log validation recall every N epochs (0: only with early stopping)")
    partitions: dict[str, int] = Field(default_factory=dict, description="partitions.<entity type> = P; P > 1 "
                                       "for any type trains from disk bucket by bucket (default 1: in memory)")
    edge_chunks: int = Field(1, ge=1, description="partitioned training: each bucket's edges are split into this "
                             "many random parts and an epoch trains the first part of every bucket, then the "
                             "second, ... (PyTorch-BigGraph's num_edge_chunks): sources and destinations meet "
                             "all partitions in turn more often, for that many more partition swaps")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    init: InitConfig = Field(default_factory=InitConfig)
    components_rule: ComponentsRule = Field(default_factory=ComponentsRule)
    prune: PruneConfig = Field(default_factory=PruneConfig)

    @field_validator("components", "partitions")
    @classmethod
    def _positive_per_type(cls, v: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        for k, c in v.items():
            if int(c) < 1:
                raise ValueError(f"{info.field_name}.{k} must be >= 1, got {c}")
        return {k: int(c) for k, c in v.items()}

    @field_validator("loss")
    @classmethod
    def _registered_loss(cls, v: str) -> str:
        return LOSSES.check(v)

    @field_validator("pooling", "negative_pooling", "score_pooling")
    @classmethod
    def _registered_pooling(cls, v: Optional[str]) -> Optional[str]:
        return v if v is None else POOLINGS.check(v)

    # ----------------------------------------------------------------- helpers
    def components_of(self, entity_type: str) -> int:
        return self.components.get(entity_type, 1)

    def partitions_of(self, entity_type: str) -> int:
        return self.partitions.get(entity_type, 1)

    @property
    def applies_log_q(self) -> bool:
        """True when the loss subtracts log Q (one registered with ``log_q``, e.g. the sampled softmax, with
        ``logq``): edge shares are needed."""
        return LOSSES.get(self.loss).log_q and self.logq

    @property
    def partitioned(self) -> bool:
        """True when some entity type is split into partitions (disk-backed training)."""
        return any(p > 1 for p in self.partitions.values())

    def relation(self, name: str) -> RelationConfig:
        return self.relations.get(name, RelationConfig())

    def neg_pooling(self) -> str:
        if self.negative_pooling:
            return self.negative_pooling
        return {"max": "max", "mean": "mean"}.get(self.pooling, "smoothmax")

    def check_names(self, entity_types: list[str], relations: list[str]) -> None:
        """Refuse ``components.*`` / ``partitions.*`` keys naming no entity type and ``relations.*`` keys naming
        no relation of the dataset (a typo would otherwise train silently with the default). The default
        ``components`` entries are not the user's and pass on datasets of other types."""
        defaults = Config.model_fields["components"].default_factory()
        problems = [f"{field}.{k}: no entity type {k!r}; the dataset has {sorted(entity_types)}"
                    for field, given in (("components", self.components), ("partitions", self.partitions))
                    for k, v in given.items() if k not in entity_types
                    and not (field == "components" and defaults.get(k) == v)]
        problems += [f"relations.{k}: no relation {k!r}; the dataset has {sorted(relations)}"
                     for k in self.relations if k not in relations]
        if problems:
            raise ConfigError("invalid configuration for this dataset\n  " + "\n  ".join(problems))

    # ----------------------------------------------------------------- I/O
    @classmethod
    def load(cls, path: str | Path) -> "Config":
        """Read a TOML, YAML or JSON file."""
        return cls.from_dict(read_mapping(path), source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "Config":
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(_describe(e, source)) from None

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> "Config":
        """Apply ``key=value`` overrides with dotted keys (``components.user=5``)."""
        data = self.model_dump()
        items = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        for key, value in items.items():
            _set_dotted(data, key, _parse_value(value) if isinstance(value, str) else value)
        return Config.from_dict(data, source="--set")

    def value_at(self, key: str) -> Any:
        """The value of a dotted key (``negatives.uniform``, ``components.user``), as ``with_overrides`` names it."""
        node: Any = self
        for part in key.split("."):
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        return node

    def to_toml(self) -> str:
        import tomli_w
        return tomli_w.dumps(_drop_none(self.model_dump()))

    def save(self, path: str | Path) -> None:
        from mixrec.io import atomic_file
        with atomic_file(path, "w") as fh:
            fh.write(self.to_toml())


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range (the message names the field)."""


def read_mapping(path: str | Path) -> dict:
    path = Path(path)
    text = path.read_text()
    try:
        if path.suffix in (".toml",):
            return tomllib.loads(text)
        if path.suffix in (".yaml", ".yml"):
            return yaml.safe_load(text) or {}
        if path.suffix == ".json":
            return json.loads(text)
    except Exception as e:  # syntax errors carry their line numbers
        raise ConfigError(f"{path}: cannot parse: {e}") from None
    raise ConfigError(f"{path}: unknown config format {path.suffix!r}; use .toml, .yaml or .json")


def _describe(e: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        lines.append(f"  {loc}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` strings (what ``--set`` takes) as ``{dotted key: parsed value}``, in order."""
    return {k: _parse_value(v) for k, v in map(_split_override, items)}


def _split_override(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set components.user=5")
    k, v = item.split("=", 1)
    return k.strip(), v.strip()


def _parse_value(v: str) -> Any:
    try:
        return yaml.safe_load(v)
    except yaml.YAMLError:
        return v


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p) if isinstance(node, dict) else None
        if nxt is None:
            nxt = {}
            node[p] = nxt
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i + 1])} is not a section")
        node = nxt
    node[parts[-1]] = value


def _drop_none(d):
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d
