"""Typed settings for the command line: dataclasses, YAML files and ``key=value`` overrides.

The library never needs these: the CLI translates them into keyword arguments. The ``model:`` and
``loss:`` sections are derived from the library's own ``ModelConfig`` and ``Objective``, and the
benchmark options of ``eval:`` from each registered benchmark's ``Options`` dataclass (every option
reachable, none restated); the enumerated choices are the library's constants. Unknown keys
and values of the wrong type are :class:`ConfigError` naming the key and the file.
"""

from __future__ import annotations

import importlib.resources
import inspect
import math
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, make_dataclass
from pathlib import Path
from typing import Any

if typing.TYPE_CHECKING:
    from importlib.abc import Traversable  # importlib.resources.abc from Python 3.11 on
else:
    Traversable = Any

import yaml

from cmemd.benchmarks.registry import BENCHMARKS, known
from cmemd.data.transforms import CHANNEL_AUG_KINDS
from cmemd.engine.objective import ALIGN_FEATURES, DL_VARIANTS, GRANULARITIES, Objective
from cmemd.engine.schedule import OPTIMIZERS
from cmemd.engine.trainer import AMP_MODES
from cmemd.errors import ConfigError, EvaluationError
from cmemd.losses.alignment import ALIGNMENT_LOSSES, COSTS, SOLVERS
from cmemd.models import ModelConfig
from cmemd.models.vtreid import ACCUMULATE, POOLINGS, TEST_FEATURES, TEST_GLOBALS, TEST_LOCALS


@dataclass
class DataConfig:
    dataset: str = "sysu"  # a name in cmemd.benchmarks.registry.BENCHMARKS (`cmemd data stats --help` lists them)
    root: str = "data/synth_sysu"
    trial: int = 1  # the numbered training split 1..10 of benchmarks that have them (one model per trial)
    height: int = 288
    width: int = 144
    num_ids: int = 8  # P identities per batch
    num_instances: int = 4  # K images per modality per identity
    steps_per_epoch: int | None = None  # None: the field's convention (largest modality // (P*K))
    # several processes (torchrun): global = the num_ids x (K+K) batch split over the ranks, one-GPU steps/epoch
    # (the recipe exactly); per_rank = num_ids ids on every rank (W x the batch), one-GPU steps/epoch
    ddp_batch: str = "global"
    num_workers: int = 2
    cache: bool = True  # decoded-image cache (uint8, pre-resized, memory-mapped)
    cache_dir: str | None = None
    pad: int = 10
    flip: bool = True
    random_erasing: float = 0.5
    channel_aug: float = 0.5  # probability of the channel augmentation of channel_aug_kind
    channel_aug_kind: str = "cmemd"  # cmemd (ours) | caj (CAJ's code, ICCV 2021): see data/transforms.py


def _section(name: str, entries: list[tuple[str, Any, Any]], doc: str) -> type:
    """A dataclass of ``(name, type, default)`` entries: a YAML section mirroring a library object, so that
    every library option is reachable from a config and nothing is listed twice."""

    def entry(n: str, tp: Any, default: Any) -> tuple[str, Any, Any]:
        if isinstance(default, (list, dict)):

            def fresh(d: Any = default) -> Any:  # each config gets its own copy of a list or dict default
                return type(d)(d)

            return (n, tp, field(default_factory=fresh))
        return (n, tp, field(default=default))

    cls = make_dataclass(name, [entry(*e) for e in entries])
    cls.__module__, cls.__doc__ = __name__, doc
    return cls


def _dataclass_entries(cls: type, exclude: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name], f.default) for f in fields(cls) if f.name not in exclude]


def _keyword_entries(fn: Any) -> list[tuple[str, Any, Any]]:
    hints = typing.get_type_hints(fn)
    return [
        (p.name, hints[p.name], p.default)
        for p in inspect.signature(fn).parameters.values()
        if p.kind == p.KEYWORD_ONLY
    ]


#: ``model:`` = every field of :class:`cmemd.models.ModelConfig` but ``num_classes`` (set from the data).
ModelSettings = _section(
    "ModelSettings",
    _dataclass_entries(ModelConfig, exclude=("num_classes",)),
    "The model section: the fields of cmemd.models.ModelConfig (num_classes comes from the data).",
)
#: ``loss:`` = every keyword of :class:`cmemd.engine.objective.Objective`.
LossSettings = _section(
    "LossSettings",
    _keyword_entries(Objective.__init__),
    "The loss section: the keyword arguments of cmemd.engine.objective.Objective.",
)


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
    grad_clip: float | None = None
    amp: str = "none"  # none | fp16 | bf16
    channels_last: bool = False


#: The ``eval:`` settings every benchmark shares; the rest of the section is derived from the benchmarks' options.
_EVAL_COMMON: list[tuple[str, Any, Any]] = [
    ("batch_size", int, 128),
    ("flip", bool, False),  # test-time flip: average each image's feature with its horizontal mirror's
    # k-reciprocal re-ranking: when on, every table is reported plain AND re-ranked (labelled); never silently on
    ("rerank", bool, False),
    ("rerank_k1", int, 20),
    ("rerank_k2", int, 6),
    ("rerank_lambda", float, 0.3),
]


def _option_entries() -> list[tuple[str, Any, Any]]:
    """Every registered benchmark's ``Options`` fields, each name once (benchmarks sharing a name share its type)."""
    out: dict[str, tuple[Any, Any, str]] = {}
    for b in BENCHMARKS.values():
        hints = typing.get_type_hints(b.Options)
        for f in fields(b.Options):
            # a field without a default has a default_factory (the Options are dataclasses with defaults)
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[operator]
            if f.name in out and out[f.name][0] != hints[f.name]:
                raise ConfigError(
                    f"eval.{f.name}: the benchmarks {out[f.name][2]} and {b.name} declare it with "
                    f"different types ({out[f.name][0]} and {hints[f.name]}); rename one option"
                )
            out.setdefault(f.name, (hints[f.name], default, b.name))
    return [(n, tp, d) for n, (tp, d, _) in out.items()]


_EVAL_CLASSES: dict[tuple, type] = {}


def eval_settings_class() -> type:
    """The ``eval:`` section: the common settings plus the ``Options`` fields of every registered benchmark
    (rebuilt when a benchmark is registered, so that a new benchmark's options need no edit here)."""
    key = tuple((n, b.Options) for n, b in BENCHMARKS.items())
    if key not in _EVAL_CLASSES:
        _EVAL_CLASSES[key] = _section(
            "EvalSettings",
            _option_entries() + _EVAL_COMMON,
            "The eval section: the benchmarks' protocol options and the common settings.",
        )
    return _EVAL_CLASSES[key]


#: The ``eval:`` section of the benchmarks registered at import (see :func:`eval_settings_class`).
EvalSettings = eval_settings_class()


@dataclass
class RunSettings:
    out_dir: str = "runs/default"
    seed: int = 0
    deterministic: bool = (
        False  # deterministic algorithms only (on CUDA also CUBLAS_WORKSPACE_CONFIG); see docs/reproduce.md
    )
    # cuDNN autotuning: null (auto) = on for CUDA training unless run.deterministic; true | false force it
    cudnn_benchmark: bool | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None
    log_every: int = 20
    checkpoint_every_steps: int = 0  # 0: only at the end of each epoch
    max_minutes: float | None = None  # wall-clock budget: stop after the epoch that crosses it (rank 0's clock)
    dist_timeout_minutes: float = 120.0  # several processes: how long a rank waits in a collective (rank 0 evaluating)
    selection: str = "none"  # none | val (validation split; never the test set)
    diagnostics_ids: int = 30  # modality gap + plan purity on this many val ids after each epoch (0: off)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    # model / loss / eval are built from library signatures at import (make_dataclass), which a type checker cannot
    # see into: Any here; the parser reads each section's fields from its instance
    model: Any = field(default_factory=ModelSettings)  # a ModelSettings instance
    loss: Any = field(default_factory=LossSettings)  # a LossSettings instance
    optim: OptimSettings = field(default_factory=OptimSettings)
    eval: Any = field(default_factory=lambda: eval_settings_class()())  # an eval_settings_class() instance
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
            items: list[Any] = list(value)
            item_type = typing.get_args(tp)
            if not item_type:
                return items
            return [_coerce(v, item_type[0], f"{key}[{i}]", source) for i, v in enumerate(items)]
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
    """The YAML configs shipped inside the package (``cmemd/configs``): a plain folder for wheel and editable
    installs."""
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


def resolve_config(ref: str | Path | Traversable, relative_to: Traversable | Path | None = None) -> Traversable | Path:
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
    raise ConfigError(
        f"{ref}: config file not found{where}, and it is not the name of a packaged config; "
        f"give a YAML file or one of: {', '.join(packaged_configs())} (`cmemd configs` describes them)"
    )


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
        raise ConfigError(
            f"{path}: base must be a file name (relative to this file) or a packaged config's name, got {base!r}"
        )
    # a packaged config's base is looked up beside it, i.e. among the packaged configs
    parent = path.parent if isinstance(path, Path) else _packaged_dir()
    chain = _yaml_chain(resolve_config(base, relative_to=parent), depth + 1) if base else []
    return [*chain, (str(path), data)]


def _yaml_value(raw: str, what: str, example_list: str) -> Any:
    """The value of a ``key=value`` string from the command line, parsed as YAML ('' for an empty one); ConfigError
    names ``what`` and how to write a value."""
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(
            f"{what}: the value is not valid YAML ({str(e).splitlines()[0]}); write a number, a word, or a list "
            f"like {example_list}"
        ) from None


def apply_overrides(cfg: TrainConfig, overrides: list[str] | tuple[str, ...]) -> TrainConfig:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars, then type-checked)."""
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key=value, e.g. optim.lr=0.05")
        key, raw = ov.split("=", 1)
        parts = key.strip().split(".")
        value = _yaml_value(raw, f"override {ov!r}", "[10, 20]")
        nested: Any = value
        for p in reversed(parts):
            nested = {p: nested}
        _merge(cfg, nested, "", "command line")
    return cfg


def _choices() -> dict[str, tuple[str, ...]]:
    """Enumerated settings and their choices, as the library defines them."""
    return {
        "data.channel_aug_kind": CHANNEL_AUG_KINDS,
        "model.pooling": POOLINGS,
        "model.accumulate": ACCUMULATE,
        "model.test_feature": TEST_FEATURES,
        "model.test_global": TEST_GLOBALS,
        "model.test_local": TEST_LOCALS,
        "loss.alignment": ALIGNMENT_LOSSES,
        "loss.align_granularities": GRANULARITIES,
        "loss.align_feature": ALIGN_FEATURES,
        "loss.emd_cost": COSTS,
        "loss.emd_solver": SOLVERS,
        "loss.dl_variant": DL_VARIANTS,
        "optim.optimizer": OPTIMIZERS,
        "optim.amp": AMP_MODES,
        "run.selection": SELECTIONS,
        "data.ddp_batch": DDP_BATCHES,
    }


#: run.selection: none (the last epoch) | val (best mAP on a validation split; never the test set)
SELECTIONS = ("none", "val")
#: data.ddp_batch: what a step's batch is with several processes (docs/reproduce.md)
DDP_BATCHES = ("global", "per_rank")


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: finite, between ``lo`` and ``hi`` (each end included unless
    ``*_open``; ``None``: unbounded). ``None`` itself passes for an Optional field; a list field's entries are each
    checked. ``meaning`` is said in the error so the user knows what the number is."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    meaning: str = ""

    def admits(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def outside(self, value: Any) -> list[Any]:
        """The numbers of ``value`` (one, or a list's entries; None and non-numbers are not this check's business)
        that the range does not admit."""
        return [
            v
            for v in (value if isinstance(value, list) else [value])
            if isinstance(v, (int, float)) and not self.admits(v)
        ]

    def describe(self, integer: bool) -> str:
        kind = "an integer" if integer else "a finite number"
        lo, hi = (x if isinstance(x, int) or x is None else f"{x:g}" for x in (self.lo, self.hi))
        if self.lo is not None and self.hi is not None:
            text = f"{kind} in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text = f"{kind} {'>' if self.lo_open else '>='} {lo}"
        else:
            text = kind
        return text + (f" ({self.meaning})" if self.meaning else "")


_POSITIVE, _NON_NEGATIVE, _COUNT = Range(0, lo_open=True), Range(0), Range(1)
_PROBABILITY = Range(0, 1, meaning="a probability")

#: The range of every numeric setting (tests/reliability/test_values.py checks that none is missing), written once
#: here and checked by :func:`validate` before any work, so that ``optim.lr=inf`` or ``data.num_workers=-1`` is an
#: error naming the key instead of a crash (or a silently meaningless run) later.
RANGES: dict[str, Range] = {
    "data.trial": Range(1, 10, meaning="the numbered training split"),
    "data.height": _COUNT,
    "data.width": _COUNT,
    "data.num_ids": Range(1, meaning="P, identities per batch"),
    "data.num_instances": Range(1, meaning="K, images per modality per identity"),
    "data.steps_per_epoch": Range(1, meaning="or null for the field's convention"),
    "data.num_workers": Range(0, meaning="0 loads in the main process"),
    "data.pad": _NON_NEGATIVE,
    "data.random_erasing": _PROBABILITY,
    "data.channel_aug": _PROBABILITY,
    "model.width": _COUNT,
    "model.modality_specific_stages": Range(0, 4),
    "model.last_stride": Range(1, 2),
    "model.gem_p": _POSITIVE,
    "model.num_stripes": _COUNT,
    "model.local_dim": _COUNT,
    "loss.label_smoothing": Range(0, 1, hi_open=True),
    "loss.lambda_align": Range(0, meaning="a loss weight; 0 turns the term off"),
    "loss.lambda_accum_ce": Range(0, meaning="a loss weight; 0 turns the term off"),
    "loss.lambda_dl": Range(0, meaning="a loss weight; 0 turns the term off"),
    "loss.lambda_triplet": Range(0, meaning="a loss weight; 0 turns the term off"),
    "loss.sinkhorn_eps": _POSITIVE,
    "loss.sinkhorn_iters": _COUNT,
    "optim.lr": Range(0, lo_open=True, meaning="the heads' learning rate"),
    "optim.backbone_lr": Range(0, meaning="0 freezes the backbone"),
    "optim.momentum": Range(0, 1, hi_open=True),
    "optim.weight_decay": _NON_NEGATIVE,
    "optim.epochs": _COUNT,
    "optim.warmup_epochs": _NON_NEGATIVE,
    "optim.milestones": Range(1, meaning="each entry an epoch"),
    "optim.gamma": Range(0, 1, lo_open=True, meaning="the learning-rate factor at each milestone"),
    "optim.grad_clip": Range(0, lo_open=True, meaning="or null for no clipping"),
    "eval.shots": Range(1, 10),
    "eval.trials": _COUNT,
    "eval.batch_size": _COUNT,
    "eval.rerank_k1": _COUNT,
    "eval.rerank_k2": _COUNT,
    "eval.rerank_lambda": Range(0, 1),
    "run.seed": Range(0, 2**32 - 1),
    "run.threads": Range(1, meaning="or null for the automatic policy"),
    "run.log_every": _COUNT,
    "run.checkpoint_every_steps": Range(0, meaning="0 saves at epoch ends only"),
    "run.max_minutes": Range(0, lo_open=True, meaning="or null for no budget"),
    "run.dist_timeout_minutes": Range(0, lo_open=True, meaning="how long a rank waits in a collective"),
    "run.diagnostics_ids": Range(0, meaning="0 turns the diagnostics off"),
}


def numeric_fields() -> dict[str, Any]:
    """``{"section.name": annotated type}`` of every int / float (or Optional / list of them) setting."""
    out = {}
    cfg = TrainConfig()  # the sections' classes (eval's follows the registered benchmarks)
    for section in _field_types(TrainConfig):
        for name, tp in _field_types(type(getattr(cfg, section))).items():
            args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
            base = typing.get_args(args[0])[0] if typing.get_origin(args[0]) is list else args[0]
            if base in (int, float):
                out[f"{section}.{name}"] = base
    return out


def _check_ranges(cfg: TrainConfig) -> None:
    defaults = TrainConfig()
    for key, base in numeric_fields().items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        rng = RANGES[key]
        if rng.outside(value):
            default = getattr(getattr(defaults, section), name)
            raise ConfigError(
                f"{key}={value!r}: must be {rng.describe(base is int)}; set it in the config or "
                f"override it ({key}=...; the default is {'null' if default is None else default})"
            )


def validate(cfg: TrainConfig) -> None:
    """Check enumerated choices and ranges; ConfigError names the key."""
    if cfg.data.dataset not in BENCHMARKS:
        raise ConfigError(
            f"data.dataset must be one of {tuple(BENCHMARKS)}, got {cfg.data.dataset!r} (known: {known()})"
        )
    for key, choices in _choices().items():
        section, name = key.split(".")
        v = getattr(getattr(cfg, section), name)
        if v not in choices:
            raise ConfigError(f"{key} must be one of {choices}, got {v!r}")
    _check_ranges(cfg)
    for b in BENCHMARKS.values():  # each benchmark checks its own options (choices, combinations)
        try:
            b.options(**{n: getattr(cfg.eval, n) for n in b.option_names()})
        except EvaluationError as e:
            raise ConfigError(f"eval.{e}") from None
    if cfg.data.num_ids < 2 and cfg.loss.lambda_dl > 0:
        raise ConfigError(
            f"data.num_ids={cfg.data.num_ids} with CM-DL (loss.lambda_dl={cfg.loss.lambda_dl:g}): CM-DL "
            "divides the within-identity spread by the spread between identity centres, which a batch of "
            "one identity does not have (the loss is ~1e6); set data.num_ids=2 or more, or loss.lambda_dl=0"
        )
    try:  # the library's own checks (ranges, combinations such as use_local=false with test_feature=concat)
        ModelConfig(num_classes=1, **asdict(cfg.model))
    except ConfigError as e:
        raise ConfigError(str(e).replace("ModelConfig.", "model.")) from None


def option_values(pairs: list[str] | tuple[str, ...], types: dict[str, Any], owner: str) -> dict[str, Any]:
    """A benchmark's protocol options from ``key=value`` strings (the CLI's arguments after the flags): each key one
    of ``types`` (``eval.key`` works too), each value parsed as YAML and type-checked as in a config, a numeric
    one checked against ``RANGES["eval.<key>"]``. ConfigError names the pair, and ``owner``'s options when the key
    is not one of them."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().removeprefix("eval.")
        if not sep or not key:
            raise ConfigError(
                f"{pair!r}: expected KEY=VALUE, e.g. trials=3 (the options of {owner}: "
                f"{', '.join(sorted(types)) or 'none'})"
            )
        if key not in types:
            raise ConfigError(
                f"{pair!r}: {key!r} is not an option of {owner}; its options: {', '.join(sorted(types)) or 'none'}"
            )
        value = _yaml_value(raw, repr(pair), "[all, indoor]")
        value = _coerce(value, types[key], key, "command line")
        rng = RANGES.get(f"eval.{key}")
        bad = rng.outside(value) if rng is not None else []
        if rng is not None and bad:
            raise ConfigError(f"{key}={value!r}: must be {rng.describe(isinstance(bad[0], int))}")
        out[key] = value
    return out


def config_from_dict(d: dict, source: str = "checkpoint") -> TrainConfig:
    """Rebuild a TrainConfig from :meth:`TrainConfig.to_dict` output (e.g. stored in a checkpoint)."""
    cfg = TrainConfig()
    _merge(cfg, d, "", source)
    return cfg


def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


__all__ = [
    "TrainConfig",
    "DataConfig",
    "ModelSettings",
    "LossSettings",
    "OptimSettings",
    "EvalSettings",
    "RunSettings",
    "load_config",
    "resolve_config",
    "packaged_configs",
    "apply_overrides",
    "validate",
    "config_from_dict",
    "dump_config",
    "eval_settings_class",
    "option_values",
    "Range",
    "RANGES",
    "numeric_fields",
]
