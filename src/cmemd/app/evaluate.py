"""Config -> evaluation: the test sets of the dataset's protocol, :func:`evaluate_model`, modality diagnostics,
``results.json`` (:func:`save_results`), the printed tables (:func:`format_all`) and :func:`load_trained` (a
``cmemd train`` checkpoint -> model and config)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmemd.benchmarks.base import Benchmark
from cmemd.benchmarks.registry import get_benchmark
from cmemd.benchmarks.sysu import MODALITY_PAIRS
from cmemd.config import TrainConfig, config_from_dict
from cmemd.data.records import ImageRecord
from cmemd.engine.checkpoint import RefusedCheckpointError, load_checkpoint, previous_path
from cmemd.engine.extract import extract_features
from cmemd.errors import CheckpointError

# ---------------------------------------------------------------------- evaluation


def dataset_of(cfg: TrainConfig, spec: Benchmark | None = None) -> Benchmark:
    """``spec`` when given, else the registry entry of ``cfg.data.dataset``: a run looks its dataset up once and
    passes the entry down; a helper called on its own (a notebook, a benchmark script) looks it up itself."""
    return spec if spec is not None else get_benchmark(cfg.data.dataset)


def evaluation_sets(
    cfg: TrainConfig, root: str | None = None, *, spec: Benchmark | None = None
) -> dict[str, list[ImageRecord]]:
    """The named test sets the protocol of ``cfg`` evaluates on ``root`` (default: the training root), as the
    benchmark (``spec``, default :func:`dataset_of`) names them (e.g. SYSU-MM01 ``query``, cam3/cam6, and
    ``gallery_pool``, every visible test image; each trial draws its gallery from it)."""
    return dataset_of(cfg, spec).test_sets(root or cfg.data.root, trial=cfg.data.trial)


def evaluation_records(
    cfg: TrainConfig, root: str | None = None, *, spec: Benchmark | None = None
) -> tuple[list[ImageRecord], ...]:
    """The record lists of :func:`evaluation_sets` in the dataset's order (SYSU-MM01: queries, pool)."""
    return tuple(evaluation_sets(cfg, root, spec=spec).values())


def feature_description(cfg: TrainConfig) -> str:
    t = cfg.model.test_feature
    g = "pooled (pre-BN) global" if cfg.model.test_global == "pooled" else "BN-neck global"
    h = "holistic, local BN-neck" if cfg.model.test_local == "bn" else "holistic"
    return f"{t} feature ({g}{f' + {h}' if t == 'concat' else ''})" if t != "local" else f"local ({h}) feature"


def eval_loader_settings(cfg: TrainConfig, device: Any, root: str | None = None) -> dict[str, Any]:
    """The data settings the test loader takes from ``cfg.data`` (as the training loader does): decoding
    workers, the decoded-image cache (under ``root``, default ``data.root``, unless ``data.cache_dir``) and
    pinned memory on a GPU. They change how fast features are extracted, never the features."""
    d = cfg.data
    return dict(
        num_workers=d.num_workers,
        use_cache=d.cache,
        cache_dir=d.cache_dir,
        dataset_root=root or d.root,
        pin_memory=torch.device(device).type == "cuda",
    )


def extraction_settings(
    cfg: TrainConfig, device: Any, root: str | None = None, flip: bool | None = None
) -> dict[str, Any]:
    """The keyword arguments of :func:`~cmemd.engine.extract.extract_features` for a model trained with ``cfg``:
    its input size, ``eval.batch_size``, test-time flip (``flip``, default ``eval.flip``) and the test loader's
    :func:`eval_loader_settings`. ``cmemd eval``, ``cmemd extract`` and the per-epoch validation all extract so."""
    return dict(
        height=cfg.data.height,
        width=cfg.data.width,
        batch_size=cfg.eval.batch_size,
        device=device,
        flip=cfg.eval.flip if flip is None else flip,
        **eval_loader_settings(cfg, device, root),
    )


def evaluate_model(
    model: torch.nn.Module,
    cfg: TrainConfig,
    *,
    root: str | None = None,
    device: Any = "cpu",
    progress: bool = True,
    return_features: bool = False,
    spec: Benchmark | None = None,
) -> Any:
    """Evaluate a model on the dataset of ``cfg`` (or ``root``) with the protocol in ``cfg.eval``.

    Returns ``{setting name: ProtocolResult}``, the benchmark's settings (e.g. SYSU-MM01's modes, features
    extracted once for the query and for the pool images the trials draw) with its ``eval.*`` options. With
    ``cfg.eval.rerank`` each setting is followed by its k-reciprocal re-ranked result, named
    ``"<setting>, re-ranked (k-reciprocal, k1=.., k2=.., λ=..)"``.
    With ``return_features=True`` returns ``(results, features)``, ``features`` = ``{"query": FeatureSet,
    "gallery": FeatureSet, "query_modality", "gallery_modality", "removal"}`` (every thermal test image against
    every visible one), for reports. ``spec``: the benchmark (default :func:`dataset_of`).
    """
    from cmemd.evaluation import ReRanking

    d, e = cfg.data, cfg.eval
    spec = dataset_of(cfg, spec)
    rerank = ReRanking(e.rerank_k1, e.rerank_k2, e.rerank_lambda) if e.rerank else None
    sets = evaluation_sets(cfg, root, spec=spec)
    kw = dict(progress=progress, **extraction_settings(cfg, device, root))

    def featurize(records, desc):
        return extract_features(model, records, desc=desc, **kw)

    feature = feature_description(cfg)
    feature += ", test-time flip on (mean with the mirrored image)" if e.flip else ", test-time flip off"
    out = spec.evaluate(
        sets,
        featurize,
        trial=d.trial,
        feature_name=feature,
        rerank=rerank,
        return_features=return_features,
        **{k: getattr(e, k) for k in spec.eval_options},
    )
    for res in out.results.values():  # results.json states it as a setting too
        res.settings["test_flip"] = bool(e.flip)
    return (out.results, out.report) if return_features else out.results


def modality_diagnostics(
    model: torch.nn.Module, root: str, *, height: int, width: int, device: Any = "cpu", batch_size: int = 256
) -> dict[str, float]:
    """Rank-1 and mAP within and across modalities on the SYSU test ids (no gallery draws).

    visible->visible: cams 1, 2 against cams 4, 5; thermal->thermal: cam3 against cam6;
    thermal->visible: every thermal image against every visible one (same-location removal).
    A large within/across gap that stays flat over training means the data (or the model) has
    no shared signal to learn, which is what calibrating the synthetic benchmark watches.
    """
    from cmemd.evaluation import evaluate

    sets = get_benchmark("sysu").test_sets(root)
    recs = sets["query"] + sets["gallery_pool"]
    feats = extract_features(model, recs, height=height, width=width, batch_size=batch_size, device=device)
    pids = np.array([r.pid for r in recs])
    cams = np.array([r.camid for r in recs])

    def run(q, g, removal="none"):
        r = evaluate(feats[q], pids[q], cams[q], feats[g], pids[g], cams[g], removal=removal, cmc="standard")
        return float(r.cmc[0]), float(r.mAP)

    out = {}
    for name, (qcams, gcams, removal) in MODALITY_PAIRS.items():
        out[f"{name}_R1"], out[f"{name}_mAP"] = run(np.isin(cams, qcams), np.isin(cams, gcams), removal)
    return out


def modality_gap_of(feats: dict[str, Any]):
    """:class:`~cmemd.evaluation.modality.ModalityGap` of the query and gallery features that
    ``evaluate_model(..., return_features=True)`` returns (every test image of both modalities)."""
    from cmemd.evaluation.modality import feature_sets_gap

    return feature_sets_gap(feats["query"], feats["gallery"], feats["query_modality"], feats["gallery_modality"])


def save_results(results: dict[str, Any], path: str | Path, modality_gap: Any = None) -> Path:
    """``results.json``: every protocol result by setting name, plus ``"modality_gap"`` when given."""
    from cmemd.evaluation.results import to_dict

    path = Path(path)
    tmp = path.with_suffix(".tmp")
    data = {k: to_dict(v) for k, v in results.items()}
    if modality_gap is not None:
        data["modality_gap"] = modality_gap.to_dict()
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    return path


def format_all(results: dict[str, Any]) -> str:
    from cmemd.evaluation.results import format_results

    return "\n\n".join(f"== {name}\n{format_results(r)}" for name, r in results.items())


# ---------------------------------------------------------------------- checkpoints -> models


def _read_named_checkpoint(checkpoint: str | Path) -> tuple[dict[str, Any], Path]:
    """The file the user named, as named: a damaged one is an error that points at its ``.prev`` twin (if any)
    instead of quietly reading that one."""
    try:
        return load_checkpoint(checkpoint, map_location="cpu", fallback=False)
    except RefusedCheckpointError:
        raise
    except CheckpointError as e:
        prev = previous_path(checkpoint)
        if Path(checkpoint).exists() and prev.is_file():
            raise CheckpointError(
                f"{e}. The previous checkpoint of the run is {prev}: pass that file to use it"
            ) from None
        raise


def load_trained(checkpoint: str | Path, device: Any = "cpu") -> tuple[torch.nn.Module, TrainConfig]:
    """The model and config stored in a ``cmemd train`` checkpoint, weights verified to fit.

    A file that is not a cmemd checkpoint, a damaged one, one that needs more than tensors and plain
    data to load (refused unread), a training state without a model, or weights that do not fit the
    stored architecture are :class:`CheckpointError` (never a silent fallback to freshly initialised
    weights, nor to the ``.prev`` file beside it: that fallback is for ``--resume`` only).
    """
    from cmemd.models import ModelConfig, build_model

    state, used = _read_named_checkpoint(checkpoint)
    for key in ("model", "model_config", "config"):
        if key not in state:
            raise CheckpointError(f"{used}: no {key!r} entry; this is not a checkpoint written by `cmemd train`")
    mc = dict(state["model_config"])
    mc["pretrained"] = None  # the weights come from the checkpoint, never from ImageNet
    model = build_model(ModelConfig(**mc))
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{used}: weights do not fit the stored architecture: {str(e).splitlines()[0]}") from None
    cfg = config_from_dict(state["config"], source=str(used))
    return model.to(device).eval(), cfg
