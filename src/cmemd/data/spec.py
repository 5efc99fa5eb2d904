"""What a dataset tells the rest of cmemd: one :class:`DatasetSpec` per dataset module, gathered in
:data:`cmemd.data.registry.DATASETS`.

Every place that used to ask "is this SYSU or RegDB?" (layout detection, ``cmemd data
stats/check/preview/synth``, training, ``cmemd eval``/``extract``/``eval-features``, the report)
asks the spec instead. The functions take a dataset root and plain keyword arguments, never a
config object. Evaluation functions take a ``featurize(records, desc) -> (N, D) array`` callable,
so a dataset decides which images are featurised without ever seeing a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from cmemd.data.records import ImageRecord

#: featurize(records, desc) -> (len(records), D) float array
Featurize = Callable[[Sequence[ImageRecord], str], np.ndarray]


@dataclass(frozen=True)
class EvalOutput:
    """What a dataset's ``evaluate`` returns.

    ``results``: ``{setting name: ProtocolResult}``. ``report``: one representative query set and
    gallery set as :class:`~cmemd.evaluation.features.FeatureSet` (every test image of each), their
    modalities and the removal rule, for the modality gap and the HTML report; None unless asked for.
    """

    results: dict[str, Any]
    report: Optional[dict[str, Any]] = None


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset as the rest of cmemd sees it.

    Attributes:
        name: the key in the registry and in configs (``data.dataset``).
        title: how people write it (``SYSU-MM01``).
        cameras: ``{modality: camera numbers}``; a camera number may appear under both modalities
            (LLCM's dual-mode cameras).
        on_disk: what the layout holds, quoted in errors about undetectable roots.
        detect: True when a root looks like this dataset (its own folders/files; never another's).
        stats: ``root -> (id counts, {split name: records})`` for ``cmemd data stats``.
        check: ``root -> (problems, records to decode)``: every structural problem at once.
        train_records: ``(root, *, trial, hold_out_val) -> records`` (pids = labels 0..N-1).
        test_sets: ``(root, *, trial) -> {name: records}``: the evaluation sets, named for files
            (``cmemd extract`` writes ``<name>.npz``).
        evaluate: ``(sets, featurize, *, trial, feature_name, rerank, return_features, options...) -> EvalOutput``
            on ``test_sets``; ``rerank`` is None or a ``cmemd.evaluation.ReRanking`` (each setting's plain result
            then its re-ranked one; a protocol without re-ranking raises EvaluationError).
        evaluate_features: ``(query FeatureSet, gallery FeatureSet, **options) -> ProtocolResult``
            for ``cmemd eval-features``.
        preview: ``(root, ids, per_camera) -> (column headers, [(row label, [path or None])])``.
        val_sets: ``root -> {name: records}`` of the held-out validation ids, shaped like ``test_sets``
            (``evaluate`` runs on it), or None for a dataset without a validation split.
        training_trials: RegDB-style numbered training splits (one model per trial); () for one split.
        synthesize: the generator of ``cmemd data synth --layout <name>`` (``(out, SynthConfig, workers)``).
        synth_defaults: SynthConfig defaults for this layout (``ids``, ``images_per_camera``).
        eval_options: the ``eval.*`` settings this dataset's protocol reads.
        val_options: the protocol options of the per-epoch validation (``run.selection=val``).
    """

    name: str
    title: str
    cameras: Mapping[str, tuple[int, ...]]
    on_disk: str
    detect: Callable[[Path], bool]
    stats: Callable[..., tuple[dict[str, int], dict[str, list[ImageRecord]]]]
    check: Callable[..., tuple[list[str], list[ImageRecord]]]
    train_records: Callable[..., list[ImageRecord]]
    test_sets: Callable[..., dict[str, list[ImageRecord]]]
    evaluate: Callable[..., EvalOutput]
    evaluate_features: Callable[..., Any]
    preview: Callable[..., tuple[list[str], list[tuple[str, list[Optional[str]]]]]]
    val_sets: Optional[Callable[..., dict[str, list[ImageRecord]]]] = None
    training_trials: tuple[int, ...] = ()
    synthesize: Optional[Callable[..., dict]] = None
    synth_defaults: Mapping[str, Any] = field(default_factory=dict)
    eval_options: tuple[str, ...] = ()
    val_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def has_val(self) -> bool:
        return self.val_sets is not None
