"""Typed settings for the command line: dataclasses, YAML files and ``key=value`` overrides.

The library never needs these: the CLI translates them into keyword arguments. Unknown keys
and values of the wrong type are :class:`ConfigError` naming the key and the file.
"""
from __future__ import annotations

import importlib.resources
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

if typing.TYPE_CHECKING:
    from importlib.resources.abc import Traversable
else:
    Traversable = Any

import yaml

from cmemd.errors import ConfigError


@dataclass
class DataConfig:
    dataset: str = "sysu"  # a name in cmemd.data.registry.DATASETS: sysu | regdb | llcm
    root: str = "data/synth_sysu"
    trial: int = 1  # RegDB trial 1..10 (one model per trial)
    height: int = 288
    width: int = 144
    num_ids: int = 8  # P identities per batch
    num_instances: int = 4  # K images per modality per identity
    steps_per_epoch: Optional[int] = None  # None: the field's convention (largest modality // (P*K))
    num_workers: int = 2
    cache: bool = True  # decoded-image cache (uint8, pre-resized, memory-mapped)
    cache_dir: Optional[str] = None
    pad: int = 10
    flip: bool = True
    random_erasing: float = 0.5
    channel_aug: float = 0.5  # probability of the channel augmentation of channel_aug_kind
    channel_aug_kind: str = "cmemd"  # cmemd (ours) | caj (CAJ's code, ICCV 2021): see data/transforms.py


@dataclass
class ModelSettings:
    arch: str = "resnet50"
    width: int = 64
    pretrained: Optional[str] = None  # None | "imagenet" | path to a torchvision-format state dict
    modality_specific_stages: int = 3  # stem + layer1 + layer2
    last_stride: int = 1
    pooling: str = "gem"
    num_stripes: int = 6
    local_dim: int = 512
    accumulate: str = "prefix"  # prefix | cumsum | none
    use_local: bool = True  # MGS on/off
    accumulated_heads: bool = True  # BN-neck + identity classifier on each accumulated feature
    test_feature: str = "concat"  # concat | global | local
    non_local: bool = False  # AGW's non-local blocks (2 in layer2, 3 in layer3)


@dataclass
class LossSettings:
    label_smoothing: float = 0.0
    alignment: str = "cmemd"  # cmemd | all-pairs | hetero-center | mmd | none
    lambda_align: float = 2.0  # on the scale-safe cost (docs/method.md)
    align_granularities: str = "all"  # all (global + local + accumulated) | global
    align_feature: str = "pooled"  # pooled (pre-BN) | bn (BN-neck outputs) | centered (pooled minus batch mean)
    emd_cost: str = "euclidean"  # euclidean | sqeuclidean | cosine
    emd_normalize: bool = True  # L2-normalise before the cost: scale-safe (docs/method.md)
    emd_solver: str = "exact"  # exact | sinkhorn
    sinkhorn_eps: float = 0.05
    sinkhorn_iters: int = 200
    lambda_dl: float = 0.1
    dl_variant: str = "plain"  # plain | cross
    dl_on_global: bool = False
    lambda_triplet: float = 0.0  # weighted-regularisation triplet (AGW baseline)
    lambda_accum_ce: float = 1.0  # identity loss on the accumulated features (with model.accumulated_heads)


@dataclass
class OptimSettings:
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1  # heads (classifiers, BN-necks, reductions)
    backbone_lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    epochs: int = 80
    warmup_epochs: int = 10
    milestones: list[int] = field(default_factory=lambda: [20, 50])
    gamma: float = 0.1
    grad_clip: Optional[float] = None
    amp: str = "none"  # none | fp16 | bf16
    channels_last: bool = False


@dataclass
class EvalSettings:
    modes: list[str] = field(default_factory=lambda: ["all", "indoor"])  # SYSU search modes
    shots: int = 1
    trials: int = 10  # SYSU gallery draws / LLCM samples, trials 0..n-1
    directions: list[str] = field(default_factory=lambda: ["t2v", "v2t"])  # LLCM: t2v | v2t | v2t-authors
    method: str = "python-random"  # python-random | official
    rand_perm: Optional[str] = None
    batch_size: int = 128
    flip: bool = False  # test-time flip: average each image's feature with its horizontal mirror's
    # k-reciprocal re-ranking: when on, every table is reported plain AND re-ranked (labelled); never silently on
    rerank: bool = False
    rerank_k1: int = 20
    rerank_k2: int = 6
    rerank_lambda: float = 0.3


@dataclass
class RunSettings:
    out_dir: str = "runs/default"
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: Optional[int] = None
    log_every: int = 20
    checkpoint_every_steps: int = 0  # 0: only at the end of each epoch
    max_minutes: Optional[float] = None  # wall-clock budget: stop after the epoch that crosses it
    selection: str = "none"  # none | val (validation split; never the test set)
    diagnostics_ids: int = 30  # modality gap + plan purity on this many val ids after each epoch (0: off)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSettings = field(default_factory=ModelSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    run: RunSettings = field(default_factory=RunSettings)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------- parsing

def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; ConfigError names the key on failure."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            return None
        return _coerce(value, args[0], key, source)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            return value.lower() in ("true", "yes", "1", "on")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif tp is list or origin is list:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value if value.strip().startswith("[") else f"[{value}]")
            except yaml.YAMLError:
                pass  # reported below as a wrong type
        if isinstance(value, (list, tuple)):
            args = typing.get_args(tp)
            return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)] if args else list(value)
    else:
        return value
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{source}: {key} must be {name}, got {value!r} ({type(value).__name__})")


def _merge(obj: Any, values: dict, prefix: str, source: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {prefix or 'the top level'} must be a mapping, got {type(values).__name__}")
    types_ = _field_types(type(obj))
    for k, v in values.items():
        key = f"{prefix}{k}"
        if k not in types_:
            raise ConfigError(f"{source}: unknown key {key!r}; valid keys here: {sorted(types_)}")
        cur = getattr(obj, k)
        if is_dataclass(cur):
            _merge(cur, v, key + ".", source)
        else:
            setattr(obj, k, _coerce(v, types_[k], key, source))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults, then the YAML config (a file or a packaged name, which may name a ``base`` of its own), then
    ``key=value`` overrides. See :func:`resolve_config` for how a name is found."""
    cfg = TrainConfig()
    if path is not None:
        for layer_source, layer in _yaml_chain(resolve_config(path)):
            _merge(cfg, layer, "", layer_source)
    apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


# ---------------------------------------------------------------------- packaged configs

def _packaged_dir() -> Traversable:
    """The YAML configs shipped inside the package (``cmemd/configs``): a plain folder for wheel and editable installs."""
    return importlib.resources.files("cmemd").joinpath("configs")


def packaged_configs() -> dict[str, str]:
    """``{name: one-line description}`` of the configs shipped with the package (the first sentence of each file's
    leading comment), sorted by name."""
    out = {}
    for entry in sorted(_packaged_dir().iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml") and entry.is_file():
            out[entry.name[: -len(".yaml")]] = _description(entry.read_text(encoding="utf-8"))
    return out


def _description(text: str) -> str:
    """The first sentence of a YAML file's leading ``#`` comment block ('' when it has none)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    para = " ".join(x for x in lines if x)
    return re.split(r"(?<=\.)\s", para, maxsplit=1)[0] if para else ""


def resolve_config(ref: str | Path | Traversable, relative_to: Optional[Traversable | Path] = None) -> Traversable | Path:
    """Find a config: an existing file first (relative to ``relative_to`` when given, e.g. the folder of the file
    naming it as ``base``), else a packaged config by name (``sysu_cmemd`` or ``sysu_cmemd.yaml``). The repository's
    old location ``configs/NAME.yaml`` still names the packaged ``NAME``. ConfigError lists the packaged names."""
    if not isinstance(ref, (str, Path)):  # already resolved (a packaged Traversable)
        return ref
    path = Path(ref)
    if relative_to is not None and not path.is_absolute():
        candidate = relative_to.joinpath(str(ref))
        if candidate.is_file():
            return candidate
    elif path.is_file():
        return path
    name = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    old_location = path.parent.name == "configs"  # configs/NAME.yaml, before the configs moved into the package
    if name and (len(path.parts) == 1 or old_location):
        packaged = _packaged_dir().joinpath(f"{name}.yaml")
        if packaged.is_file():
            return packaged
    where = f" (looked beside {relative_to} too)" if relative_to is not None else ""
    raise ConfigError(f"{ref}: config file not found{where}, and it is not the name of a packaged config; "
                      f"give a YAML file or one of: {', '.join(packaged_configs())} (`cmemd configs` describes them)")


def _yaml_chain(path: Traversable | Path, depth: int = 0) -> list[tuple[str, dict]]:
    if depth > 8:
        raise ConfigError(f"{path}: 'base' chain is too deep (a cycle?)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data:, model:, ...)")
    base = data.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a file name (relative to this file) or a packaged config's name, "
                          f"got {base!r}")
    # a packaged config's base is looked up beside it, i.e. among the packaged configs
    parent = path.parent if isinstance(path, Path) else _packaged_dir()
    chain = _yaml_chain(resolve_config(base, relative_to=parent), depth + 1) if base else []
    return chain + [(str(path), data)]


def apply_overrides(cfg: TrainConfig, overrides: list[str] | tuple[str, ...]) -> TrainConfig:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars, then type-checked)."""
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key=value, e.g. optim.lr=0.05")
        key, raw = ov.split("=", 1)
        parts = key.strip().split(".")
        try:
            value: Any = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {ov!r}: the value is not valid YAML ({str(e).splitlines()[0]}); "
                              "write a number, a word, or a list like [10, 20]") from None
        nested: Any = value
        for p in reversed(parts):
            nested = {p: nested}
        _merge(cfg, nested, "", "command line")
    return cfg


_CHOICES = {
    "data.channel_aug_kind": ("cmemd", "caj"),
    "model.pooling": ("gem", "avg"),
    "model.accumulate": ("prefix", "cumsum", "none"),
    "model.test_feature": ("concat", "global", "local"),
    "loss.alignment": ("cmemd", "all-pairs", "hetero-center", "mmd", "none"),
    "loss.align_granularities": ("all", "global"),
    "loss.align_feature": ("pooled", "bn", "centered"),
    "loss.emd_cost": ("euclidean", "sqeuclidean", "cosine"),
    "loss.emd_solver": ("exact", "sinkhorn"),
    "loss.dl_variant": ("plain", "cross"),
    "optim.optimizer": ("sgd", "adamw"),
    "optim.amp": ("none", "fp16", "bf16"),
    "eval.method": ("python-random", "official"),
    "run.selection": ("none", "val"),
}


def validate(cfg: TrainConfig) -> None:
    """Check enumerated choices and ranges; ConfigError names the key."""
    from cmemd.data.llcm import DIRECTIONS
    from cmemd.data.registry import DATASETS, known

    if cfg.data.dataset not in DATASETS:
        raise ConfigError(f"data.dataset must be one of {tuple(DATASETS)}, got {cfg.data.dataset!r} (known: {known()})")
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        v = getattr(getattr(cfg, section), name)
        if v not in choices:
            raise ConfigError(f"{key} must be one of {choices}, got {v!r}")
    for m in cfg.eval.modes:
        if m not in ("all", "indoor"):
            raise ConfigError(f"eval.modes entries must be 'all' or 'indoor', got {m!r}")
    if not cfg.eval.directions:
        raise ConfigError(f"eval.directions: give at least one of {DIRECTIONS}")
    for d in cfg.eval.directions:
        if d not in DIRECTIONS:
            raise ConfigError(f"eval.directions entries must be one of {DIRECTIONS} (LLCM), got {d!r}")
    if cfg.eval.shots not in (1, 10):
        raise ConfigError(f"eval.shots must be 1 or 10, got {cfg.eval.shots}")
    if cfg.eval.rerank_k1 < 1 or cfg.eval.rerank_k2 < 1 or not 0.0 <= cfg.eval.rerank_lambda <= 1.0:
        raise ConfigError(f"eval.rerank_k1 / eval.rerank_k2 must be >= 1 and eval.rerank_lambda in [0, 1], got "
                          f"{cfg.eval.rerank_k1} / {cfg.eval.rerank_k2} / {cfg.eval.rerank_lambda}")
    if not 1 <= cfg.data.trial <= 10:
        raise ConfigError(f"data.trial must be in 1..10 (RegDB trial), got {cfg.data.trial}")
    if not 0 <= cfg.model.modality_specific_stages <= 4:
        raise ConfigError(f"model.modality_specific_stages must be in 0..4, got {cfg.model.modality_specific_stages}")
    for key in ("data.num_ids", "data.num_instances", "data.height", "data.width", "optim.epochs"):
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) < 1:
            raise ConfigError(f"{key} must be >= 1")


def config_from_dict(d: dict, source: str = "checkpoint") -> TrainConfig:
    """Rebuild a TrainConfig from :meth:`TrainConfig.to_dict` output (e.g. stored in a checkpoint)."""
    cfg = TrainConfig()
    _merge(cfg, d, "", source)
    return cfg


def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


__all__ = [
    "TrainConfig", "DataConfig", "ModelSettings", "LossSettings", "OptimSettings", "EvalSettings", "RunSettings",
    "load_config", "resolve_config", "packaged_configs", "apply_overrides", "validate", "config_from_dict", "dump_config",
]
