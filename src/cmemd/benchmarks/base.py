"""The contract of a benchmark: :class:`Benchmark` (typed methods) and its per-benchmark ``Options`` dataclass.

A benchmark is a dataset's reader (``cmemd.data``) plus its evaluation protocol (built on ``cmemd.evaluation``):
it names its training records and test sets, evaluates a model through a ``featurize(records, desc)`` callback
(so it never sees a model), evaluates precomputed features (``cmemd eval-features``), and knows what its layout
looks like on disk (detection, stats, check, preview, the synthetic generator). Its protocol options are one
frozen dataclass (:attr:`Benchmark.Options`); ``config.py`` derives the ``eval:`` settings from it and the CLI
passes them as ``key=value``.

Adding a benchmark = one module that subclasses :class:`Benchmark` + one line in
:mod:`cmemd.benchmarks.registry` + its tests (docs/developing.md).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cmemd.data.records import ImageRecord
from cmemd.errors import DatasetError, EvaluationError
from cmemd.evaluation.features import FeatureSet
from cmemd.evaluation.rerank import ReRanking
from cmemd.evaluation.results import ProtocolResult

#: featurize(records, desc) -> (len(records), D) float array
Featurize = Callable[[Sequence[ImageRecord], str], np.ndarray]
#: preview rows: (column headers, [(row label, [image path or None per column])])
PreviewSheet = tuple[list[str], list[tuple[str, list[Path | None]]]]


@dataclass(frozen=True)
class EvalOutput:
    """What :meth:`Benchmark.evaluate` returns.

    ``results``: ``{setting name: ProtocolResult}``. ``report``: one representative query set and
    gallery set as :class:`~cmemd.evaluation.features.FeatureSet` (every test image of each), their
    modalities and the removal rule, for the modality gap and the HTML report; None unless asked for.
    """

    results: dict[str, ProtocolResult]
    report: dict[str, Any] | None = None


@dataclass(frozen=True)
class NoOptions:
    """A benchmark whose protocol takes no option."""


def feature_set(feats: np.ndarray, records: Sequence[ImageRecord]) -> FeatureSet:
    """Features of ``records`` with their ids, cameras and paths."""
    return FeatureSet(
        feats,
        np.array([r.pid for r in records], np.int64),
        np.array([r.camid for r in records], np.int64),
        np.array([r.path for r in records], dtype=str),
    )


def thermal_query_report(
    query_feats: np.ndarray,
    query: Sequence[ImageRecord],
    gallery_feats: np.ndarray,
    gallery: Sequence[ImageRecord],
    removal: Any,
) -> dict[str, Any]:
    """The ``report`` of an :class:`EvalOutput`: thermal queries against the visible gallery (every test image of
    each), with the protocol's removal rule, for the modality gap and the HTML report."""
    return {
        "query": feature_set(query_feats, query),
        "gallery": feature_set(gallery_feats, gallery),
        "removal": removal,
        "query_modality": "thermal",
        "gallery_modality": "visible",
    }


def refuse_rerank(title: str, rerank: ReRanking | None) -> None:
    """Raise :class:`EvaluationError` when a protocol without re-ranking is asked for it."""
    if rerank:
        raise EvaluationError(
            f"k-reciprocal re-ranking is not implemented for the {title} protocol yet; evaluate "
            "without eval.rerank / --rerank"
        )


class Benchmark:
    """A benchmark as the rest of cmemd sees it (subclass it; one instance per benchmark in the registry).

    Class attributes:
        name: the key in the registry and in configs (``data.dataset``).
        title: how people write it (``SYSU-MM01``).
        cameras: ``{modality: camera numbers}``; a camera number may appear under both modalities
            (a dual-sensor camera).
        on_disk: what the layout holds, quoted in errors about undetectable roots.
        Options: the frozen dataclass of the protocol's options (the ``eval.*`` settings it reads);
            ``val_options`` are the ones of the per-epoch validation (``run.selection=val``).
        training_trials: numbered training splits (one model per trial); () for one split.
        synth_defaults: SynthConfig defaults for this layout (``ids``, ``images_per_camera``).
        has_val: whether :meth:`val_sets` exists (a held-out validation split).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    cameras: ClassVar[Mapping[str, tuple[int, ...]]]
    on_disk: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    val_options: ClassVar[Mapping[str, Any]] = {}
    training_trials: ClassVar[tuple[int, ...]] = ()
    synth_defaults: ClassVar[Mapping[str, Any]] = {}
    has_val: ClassVar[bool] = False
    #: the generator of ``cmemd data synth --layout <name>`` (``(out, SynthConfig, workers)``), or None
    synthesize: ClassVar[Callable[..., dict] | None] = None

    # ------------------------------------------------------------------ options
    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The names of the protocol's options (the ``eval.*`` keys this benchmark reads)."""
        return tuple(f.name for f in dataclasses.fields(cls.Options))

    @classmethod
    def options(cls, **values: Any) -> Any:
        """An :attr:`Options` instance; an unknown name raises :class:`EvaluationError` listing the known ones."""
        unknown = sorted(set(values) - set(cls.option_names()))
        if unknown:
            raise EvaluationError(
                f"{cls.title}: unknown option(s) {unknown}; its options are {list(cls.option_names()) or 'none'}"
            )
        return cls.Options(**values)

    @classmethod
    def feature_option_names(cls) -> tuple[str, ...]:
        """The protocol options :meth:`evaluate_features` takes (its keyword arguments but the common ones)."""
        sig = inspect.signature(cls.evaluate_features)
        return tuple(
            n
            for n, p in sig.parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in ("feature_name", "rerank")
        )

    @property
    def eval_options(self) -> tuple[str, ...]:
        """The ``eval.*`` settings :meth:`evaluate` reads (the fields of :attr:`Options`)."""
        return self.option_names()

    # ------------------------------------------------------------------ the layout on disk
    def detect(self, root: Path) -> bool:
        """True when ``root`` looks like this benchmark's layout (its own folders/files; never another's)."""
        raise NotImplementedError

    def stats(self, root: str | Path) -> tuple[dict[str, int], dict[str, list[ImageRecord]]]:
        """``(id counts, {split name: records})`` for ``cmemd data stats``."""
        raise NotImplementedError

    def check(self, root: str | Path) -> tuple[list[str], list[ImageRecord]]:
        """``(problems, records to decode)``: every structural problem at once."""
        raise NotImplementedError

    def preview(self, root: str | Path, ids: int, per_camera: int) -> PreviewSheet:
        """The contact sheet's column headers and rows."""
        raise NotImplementedError

    # ------------------------------------------------------------------ records
    def train_records(
        self, root: str | Path, *, trial: int | None = None, hold_out_val: bool = False
    ) -> list[ImageRecord]:
        """The training records (pids = labels 0..N-1); ``hold_out_val`` keeps the validation ids out."""
        raise NotImplementedError

    def test_sets(self, root: str | Path, *, trial: int | None = None) -> dict[str, list[ImageRecord]]:
        """The evaluation sets, named for files (``cmemd extract`` writes ``<name>.npz``)."""
        raise NotImplementedError

    def val_sets(self, root: str | Path) -> dict[str, list[ImageRecord]]:
        """The held-out validation ids' sets, shaped like :meth:`test_sets` (:meth:`evaluate` runs on them)."""
        raise DatasetError(f"{self.title} has no validation split; select nothing (run.selection=none)")

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self,
        sets: Mapping[str, Sequence[ImageRecord]],
        featurize: Featurize,
        *,
        trial: int | None = None,
        feature_name: str | None = None,
        rerank: ReRanking | None = None,
        return_features: bool = False,
        **options: Any,
    ) -> EvalOutput:
        """Evaluate on :meth:`test_sets` (or :meth:`val_sets`), featurising through ``featurize``.

        ``rerank``: None or a ReRanking (each setting's plain result, then its re-ranked one); ``options``:
        the fields of :attr:`Options`.
        """
        raise NotImplementedError

    def evaluate_features(
        self,
        query: FeatureSet,
        gallery: FeatureSet,
        *,
        feature_name: str | None = None,
        rerank: ReRanking | None = None,
        trial: int | None = None,
    ) -> ProtocolResult:
        """``cmemd eval-features``: the protocol on precomputed query and gallery features.

        A benchmark adds its protocol options as keyword-only arguments with defaults (they are what
        :meth:`feature_option_names` lists and ``cmemd eval-features`` accepts)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the wrong-layout guard
    #: every registered benchmark, filled by :mod:`cmemd.benchmarks.registry` (for the wrong-layout message)
    catalogue: ClassVar[dict[str, Benchmark]] = {}

    def refuse_other_layout(self, root: str | Path) -> None:
        """Raise :func:`wrong_layout`'s error when ``root`` looks like another benchmark's layout."""
        err = wrong_layout(root, self, self.catalogue.values())
        if err is not None:
            raise err


def wrong_layout(root: str | Path, expected: Benchmark, known: Sequence[Benchmark] | Any) -> DatasetError | None:
    """A :class:`DatasetError` naming the benchmark ``root`` looks like when it is not ``expected``'s layout
    (raised before the reader lists every missing folder); None when ``root`` looks like ``expected`` or like
    none or several of ``known``."""
    root = Path(root)
    if expected.detect(root):
        return None
    others = [b for b in known if b.name != expected.name and b.detect(root)]
    if len(others) != 1:
        return None
    other = others[0]
    return DatasetError(
        f"{root}: this looks like a {other.title} root ({other.on_disk}), not {expected.title} "
        f"({expected.on_disk}); use data.dataset={other.name} (or --layout {other.name}), or point "
        f"data.root at the {expected.title} folder"
    )


__all__ = [
    "Benchmark",
    "EvalOutput",
    "Featurize",
    "NoOptions",
    "PreviewSheet",
    "feature_set",
    "thermal_query_report",
    "refuse_rerank",
    "wrong_layout",
]
