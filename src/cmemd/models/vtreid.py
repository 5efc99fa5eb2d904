"""The two-stream visible-thermal re-id model with the multi-granularity structure (MGS).

Layout (``modality_specific_stages = m``; the five ResNet stages are
``stem (conv1+bn1+relu+maxpool), layer1, layer2, layer3, layer4``)::

    images --(per-sample modality)--> modality_parts[v]  = stages[0:m], one copy per modality
           --> shared                                 = stages[m:s], one copy for everything
           --> global_stream / local_stream           = stages[s:5], one copy per stream

with ``s = max(m, 3)``: the streams own layer3 + layer4 (as in the paper's figure) unless layer3 is
itself modality-specific (``m = 4``), in which case the streams own layer4 only. Everything after
the modality-specific part is shared by both modalities. ``m = 0``: no modality-specific part (the
``modality`` argument is then optional); ``m = 1``: stem only (AGW style); ``m = 3``: stem + layer1
+ layer2 (default, the paper's). With ``use_local=False`` there is only the global stream.

Routing: the batch is grouped by modality (slices when it already is, else one gather), each group
runs through its copy, and the outputs return in the original order, so a batch may mix
modalities in any order. Finding the groups from the ``modality`` tensor reads it on the host (a few
synchronisations on an accelerator); the trainer passes the batch's :class:`cmemd.layout.BatchLayout`
(``layout=``), computed on the host by the collate function, and the routing then reads nothing.
A training batch holding both modalities uses every trainable parameter (DDP needs no
``find_unused_parameters``); a single-modality batch leaves the other copy without gradient, which
is why the project's sampler always draws both modalities.

Heads. Global stream: g = pool(map) (C dims), BN-neck (bias frozen at zero) -> g_bn, classifier
(no bias) -> global_logits. Local stream: the final map is cut into S horizontal stripes (adaptive
pooling bins: stripe k covers rows floor(kH/S) .. ceil((k+1)H/S), so any H >= 1 works); f_k =
ReLU(BN(W_k · pool(stripe k))) with its own reduction W_k per stripe, then its own BN-neck and
classifier. Accumulated a_k: ``"prefix"`` = ReLU(BN(W_a · pool(rows of stripes 1..k))) with ONE
reduction W_a shared by all k; ``"cumsum"`` = f_1 + .. + f_k; ``"none"``. Holistic
h = concat_k(w_k f_k), w = softmax of S learnable logits initialised at 0 (equal weights).

CHOICE (documented, not from the paper): GeM uses a fixed p = 3 by default (``gem_learnable``
makes p a parameter); the prefix reduction only receives gradients from losses on
``accumulated_feats`` — use ``accumulate="cumsum"`` or ``"none"`` when no loss reads them, or DDP
will find unused parameters.
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cmemd.errors import CheckpointError, ConfigError
from cmemd.layout import BatchLayout
from cmemd.models.resnet import ARCHS, ResNet, agw_non_local, is_non_local_key, load_mapped_state_dict, read_state_dict
from cmemd.numerics import l2_normalize

__all__ = [
    "ModelConfig",
    "VTOutput",
    "VTReIDModel",
    "GeM",
    "build_model",
    "count_parameters",
    "load_pretrained_backbone",
    "STAGE_NAMES",
]

#: The five ResNet stages the model is cut at, with the torchvision modules each one holds.
STAGE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")
_STAGE_MODULES = {
    "stem": ("conv1", "bn1", "relu", "maxpool"),
    "layer1": ("layer1",),
    "layer2": ("layer2",),
    "layer3": ("layer3",),
    "layer4": ("layer4",),
}
POOLINGS = ("gem", "avg")
ACCUMULATE = ("prefix", "cumsum", "none")
TEST_FEATURES = ("concat", "global", "local")
TEST_GLOBALS = ("bn", "pooled")
TEST_LOCALS = ("pooled", "bn")
_ACCUMULATE, _TEST_FEATURES = ACCUMULATE, TEST_FEATURES


@dataclass
class ModelConfig:
    """Settings of :class:`VTReIDModel` (plain; the library needs no YAML).

    Attributes:
        num_classes: training identities (classifier outputs).
        arch: ``"resnet18" | "resnet34" | "resnet50" | "resnet101"``.
        width: ResNet base width (64 = torchvision; 32 = a CPU-sized model).
        modality_specific_stages: 0..4, see the module docstring [3 = stem + layer1 + layer2].
        last_stride: stride of layer4 [1].
        pooling: ``"gem"`` [default] or ``"avg"``.
        gem_p: GeM exponent [3.0]; ``gem_learnable`` makes it a parameter [False].
        num_stripes: S [6].
        local_dim: D_l [512].
        accumulate: ``"prefix"`` [default] | ``"cumsum"`` | ``"none"``.
        test_feature: ``"concat"`` [default] | ``"global"`` | ``"local"``.
        test_global: the global feature's form in the test feature: ``"bn"`` (the BN-neck output) [default]
            or ``"pooled"`` (before the BN-neck, where the alignment losses act; the BN-neck's per-unit
            standardisation can undo their alignment: docs/method.md).
        test_local: the holistic (local) part's form in the test feature: ``"pooled"`` (the stripe-weighted
            pooled local features, what CM-DL trains) [default] or ``"bn"`` (the stripe-weighted local BN-neck
            outputs, where ``loss.align_feature=bn`` aligns them).
        use_local: MGS on [True]; False gives the global-only model.
        accumulated_heads: a BN-neck + identity classifier on each accumulated feature [True]. Without
            them only alignment losses read the accumulated features, and those can be lowered by
            collapsing the features to a constant (docs/method.md).
        zero_init_residual: torchvision's option for the backbone init [False].
        non_local: AGW's non-local blocks (2 after the last blocks of layer2, 3 after those of layer3)
            in every copy of those stages [False]; newly initialised (identity) when weights are loaded.
            ResNet-18 has 2 blocks per stage, so it gets 2 + 2.
        pretrained: None [default], a torchvision-format file, or ``"imagenet"``; loaded into every
            backbone copy by :func:`build_model`.
    """

    num_classes: int
    arch: str = "resnet50"
    width: int = 64
    modality_specific_stages: int = 3
    last_stride: int = 1
    pooling: str = "gem"
    gem_p: float = 3.0
    gem_learnable: bool = False
    num_stripes: int = 6
    local_dim: int = 512
    accumulate: str = "prefix"
    test_feature: str = "concat"
    test_global: str = "bn"
    test_local: str = "pooled"
    use_local: bool = True
    accumulated_heads: bool = True
    zero_init_residual: bool = False
    non_local: bool = False
    pretrained: str | None = None

    def __post_init__(self) -> None:
        def bad(field: str, value: object, fix: str) -> ConfigError:
            return ConfigError(f"ModelConfig.{field}={value!r}: {fix}")

        if self.arch not in ARCHS:
            raise bad("arch", self.arch, f"use one of {sorted(ARCHS)}")
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise bad("num_classes", self.num_classes, "must be a positive int")
        if not isinstance(self.width, int) or self.width < 1:
            raise bad("width", self.width, "must be a positive int (64 for ImageNet weights)")
        if self.modality_specific_stages not in range(5):
            raise bad(
                "modality_specific_stages",
                self.modality_specific_stages,
                "must be 0..4 (0 shared, 1 stem, 2 +layer1, 3 +layer2, 4 +layer3)",
            )
        if self.last_stride not in (1, 2):
            raise bad("last_stride", self.last_stride, "must be 1 or 2")
        if self.pooling not in POOLINGS:
            raise bad("pooling", self.pooling, f"use one of {POOLINGS}")
        if not self.gem_p > 0:
            raise bad("gem_p", self.gem_p, "must be > 0")
        if not isinstance(self.num_stripes, int) or self.num_stripes < 1:
            raise bad("num_stripes", self.num_stripes, "must be a positive int")
        if not isinstance(self.local_dim, int) or self.local_dim < 1:
            raise bad("local_dim", self.local_dim, "must be a positive int")
        if self.accumulate not in _ACCUMULATE:
            raise bad("accumulate", self.accumulate, f"use one of {_ACCUMULATE}")
        if self.test_global not in TEST_GLOBALS:
            raise bad("test_global", self.test_global, f"use one of {TEST_GLOBALS}")
        if self.test_local not in TEST_LOCALS:
            raise bad("test_local", self.test_local, f"use one of {TEST_LOCALS}")
        if self.test_feature not in _TEST_FEATURES:
            raise bad("test_feature", self.test_feature, f"use one of {_TEST_FEATURES}")
        if not isinstance(self.non_local, bool):
            raise bad("non_local", self.non_local, "must be true (AGW's non-local blocks) or false")
        if not self.use_local and self.test_feature != "global":
            raise bad(
                "test_feature", self.test_feature, "use_local=False has no local features; set test_feature='global'"
            )


@dataclass
class VTOutput:
    """Everything one training forward produces (N = batch, C = backbone channels, S, D_l).

    Local quantities are stacked tensors ``N x S x D_l`` (stripe k at ``[:, k]``); ``local_logits``
    is a list of S tensors ``N x num_classes``. Local fields are None when ``use_local=False``;
    ``accumulated_feats`` is None when ``accumulate="none"``.
    """

    global_feat: Tensor  # N x C, pooled, pre-BN (CM-EMD cost is on this)
    global_bn: Tensor  # N x C
    global_logits: Tensor  # N x num_classes
    local_feats: Tensor | None = None  # N x S x D_l (f_k)
    local_bn: Tensor | None = None  # N x S x D_l (BN-neck of f_k)
    local_logits: list[Tensor] | None = None
    accumulated_feats: Tensor | None = None  # N x S x D_l (a_k)
    accumulated_bn: Tensor | None = None  # N x S x D_l (BN-neck of a_k, with accumulated_heads)
    accumulated_logits: list[Tensor] | None = None  # S tensors N x num_classes (BN-neck + classifier of a_k)
    holistic: Tensor | None = None  # N x (S*D_l)
    stripe_weights: Tensor | None = None  # S, softmax of the stripe logits


class GeM(nn.Module):
    """Generalised-mean pooling ``mean(clamp(x, eps)^p)^(1/p)`` over the spatial dims."""

    def __init__(self, p: float = 3.0, learnable: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        p_t = torch.tensor([float(p)])
        if learnable:
            self.p = nn.Parameter(p_t)
        else:
            self.register_buffer("p", p_t)
        self.eps = eps

    def rows(self, x: Tensor) -> Tensor:
        """Per-row powered means ``N x C x H`` (pool a union of rows by averaging these)."""
        return x.clamp(min=self.eps).pow(self.p).mean(dim=3)

    def finish(self, m: Tensor) -> Tensor:
        return m.pow(1.0 / self.p)

    def forward(self, x: Tensor) -> Tensor:
        return self.finish(self.rows(x).mean(dim=2))


class _AvgPool(nn.Module):
    """Average pooling with the same ``rows`` / ``finish`` interface as :class:`GeM`."""

    def rows(self, x: Tensor) -> Tensor:
        return x.mean(dim=3)

    def finish(self, m: Tensor) -> Tensor:
        return m

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


def _bn_neck(dim: int) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(dim)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    bn.bias.requires_grad_(False)  # BNNeck: shift-free so the classifier sees a centred feature
    return bn


def _classifier(dim: int, num_classes: int) -> nn.Linear:
    fc = nn.Linear(dim, num_classes, bias=False)
    nn.init.normal_(fc.weight, std=0.001)
    return fc


def _reduction(cin: int, cout: int) -> nn.Sequential:
    lin = nn.Linear(cin, cout, bias=False)  # a 1x1 conv on a pooled vector
    nn.init.kaiming_normal_(lin.weight, mode="fan_out", nonlinearity="relu")
    bn = nn.BatchNorm1d(cout)
    return nn.Sequential(lin, bn, nn.ReLU(inplace=True))


def _part(resnet: ResNet, stages: tuple[str, ...]) -> nn.Sequential:
    """A deep copy of some stages, keeping torchvision's child names (so keys map by prefix)."""
    mods = OrderedDict()
    for st in stages:
        for name in _STAGE_MODULES[st]:
            mods[name] = copy.deepcopy(getattr(resnet, name))
    return nn.Sequential(mods)


def _cumsum_stripes(f: Tensor) -> Tensor:
    """``f.cumsum(dim=1)`` (N x S x D); on CUDA under ``torch.use_deterministic_algorithms(True)`` as a product
    with a lower-triangular matrix of ones, because a floating-point CUDA cumsum has no deterministic kernel."""
    if f.is_cuda and torch.are_deterministic_algorithms_enabled():
        s = f.shape[1]
        return torch.einsum("ks,nsd->nkd", torch.ones(s, s, dtype=f.dtype, device=f.device).tril(), f)
    return f.cumsum(dim=1)


def _stripe_bounds(h: int, s: int) -> list[tuple[int, int]]:
    """Adaptive-pooling bins: row ranges of S stripes over H rows (overlapping if H < S)."""
    return [((k * h) // s, -((-(k + 1) * h) // s)) for k in range(s)]


class VTReIDModel(nn.Module):
    """Two-stream visible-thermal re-id model; see the module docstring for the layout.

    ``forward(x, modality)``: in training mode returns a :class:`VTOutput`; in eval mode the test
    feature (``feature_dim`` columns) chosen by ``cfg.test_feature``. ``forward_output`` always
    returns the :class:`VTOutput`.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        template = ARCHS[cfg.arch](
            width=cfg.width,
            last_stride=cfg.last_stride,
            zero_init_residual=cfg.zero_init_residual,
            non_local=agw_non_local(cfg.arch) if cfg.non_local else (0, 0, 0, 0),
        )
        m = cfg.modality_specific_stages
        s = max(m, 3)
        self.specific_stages = STAGE_NAMES[:m]
        self.shared_stages = STAGE_NAMES[m:s]
        self.stream_stages = STAGE_NAMES[s:]
        self.num_modalities = 2
        self.modality_parts = (
            nn.ModuleList([_part(template, self.specific_stages) for _ in range(self.num_modalities)])
            if m > 0
            else None
        )
        self.shared = _part(template, self.shared_stages) if self.shared_stages else None
        self.global_stream = _part(template, self.stream_stages)
        self.local_stream = _part(template, self.stream_stages) if cfg.use_local else None
        c = template.out_channels
        self.channels = c
        del template

        def pool() -> GeM | _AvgPool:
            return GeM(cfg.gem_p, cfg.gem_learnable) if cfg.pooling == "gem" else _AvgPool()

        self.global_pool = pool()
        self.global_neck = _bn_neck(c)
        self.global_classifier = _classifier(c, cfg.num_classes)
        if cfg.use_local:
            S, D = cfg.num_stripes, cfg.local_dim
            self.local_pool = pool()
            self.local_reduce = nn.ModuleList([_reduction(c, D) for _ in range(S)])
            self.local_necks = nn.ModuleList([_bn_neck(D) for _ in range(S)])
            self.local_classifiers = nn.ModuleList([_classifier(D, cfg.num_classes) for _ in range(S)])
            self.accum_reduce = _reduction(c, D) if cfg.accumulate == "prefix" else None
            # Identity supervision of each accumulated feature: without it an alignment loss alone can
            # collapse them to a constant (docs/method.md has the measurement).
            if cfg.accumulate != "none" and cfg.accumulated_heads:
                self.accum_necks = nn.ModuleList([_bn_neck(D) for _ in range(S)])
                self.accum_classifiers = nn.ModuleList([_classifier(D, cfg.num_classes) for _ in range(S)])
            self.stripe_logits = nn.Parameter(torch.zeros(S))

    # ----------------------------------------------------------------------------- properties
    @property
    def feature_dim(self) -> int:
        """Columns of the eval-mode test feature."""
        local = self.cfg.num_stripes * self.cfg.local_dim
        return {"global": self.channels, "local": local, "concat": self.channels + local}[self.cfg.test_feature]

    def stripe_weights(self) -> Tensor:
        """w = softmax of the S stripe logits (sums to 1)."""
        return torch.softmax(self.stripe_logits, dim=0)

    def backbone_key_map(self) -> dict[str, str]:
        """``{model state-dict key: torchvision ResNet key}`` for every backbone copy (non-local blocks,
        which no torchvision checkpoint holds, are left out)."""
        out: dict[str, str] = {}
        parts: list[tuple[str, nn.Module]] = []
        if self.modality_parts is not None:
            parts += [(f"modality_parts.{i}.", p) for i, p in enumerate(self.modality_parts)]
        if self.shared is not None:
            parts.append(("shared.", self.shared))
        parts.append(("global_stream.", self.global_stream))
        if self.local_stream is not None:
            parts.append(("local_stream.", self.local_stream))
        for prefix, part in parts:
            for k in part.state_dict():
                if not is_non_local_key(k):
                    out[prefix + k] = k
        return out

    # -------------------------------------------------------------------------------- forward
    def _route(self, x: Tensor, modality: Tensor | None, layout: BatchLayout | None = None) -> Tensor:
        if self.modality_parts is None:
            return x
        if layout is not None:
            layout.check(x.shape[0], "VTReIDModel.forward")
            return self._run_parts(
                self.modality_parts, x, list(layout.modality_counts), layout.modality_order, layout.modality_inverse
            )
        if modality is None:
            raise ConfigError(
                "VTReIDModel.forward: modality is required when "
                "modality_specific_stages > 0 (a tensor of 0 visible / 1 thermal)"
            )
        modality = torch.as_tensor(modality, device=x.device).long().reshape(-1)
        if modality.numel() != x.shape[0]:
            raise ConfigError(
                f"VTReIDModel.forward: modality has {modality.numel()} entries for "
                f"a batch of {x.shape[0]} images; give one value per image"
            )
        if modality.numel() and (int(modality.min()) < 0 or int(modality.max()) > 1):
            raise ConfigError(
                "VTReIDModel.forward: modality values must be 0 (visible) or "
                f"1 (thermal), got {sorted(set(modality.tolist()))}"
            )
        # Group the batch by modality: contiguous slices (views, no copy) when it already is, as the identity
        # sampler's batches are; otherwise one gather in and one gather back out.
        n = x.shape[0]
        order = torch.argsort(modality, stable=True)
        arange = torch.arange(n, device=x.device)
        grouped = bool(torch.equal(order, arange))
        counts = torch.bincount(modality, minlength=len(self.modality_parts)).tolist()
        if grouped:
            return self._run_parts(self.modality_parts, x, counts, None, None)
        inverse = torch.empty_like(order)
        inverse[order] = arange
        return self._run_parts(self.modality_parts, x, counts, order, inverse)

    @staticmethod
    def _run_parts(
        parts: nn.ModuleList, x: Tensor, counts: list[int], order: Tensor | None, inverse: Tensor | None
    ) -> Tensor:
        """Each modality's images through its copy in ``parts``: ``counts`` per modality after sorting by
        ``order`` (None: already sorted); ``inverse`` restores the batch order."""
        xs = x if order is None else x.index_select(0, order)
        ys = [part(chunk) for part, chunk in zip(parts, xs.split(counts)) if chunk.shape[0]]
        y = torch.cat(ys) if len(ys) > 1 else ys[0]
        return y if inverse is None else y.index_select(0, inverse)

    def forward_output(self, x: Tensor, modality: Tensor | None = None, layout: BatchLayout | None = None) -> VTOutput:
        """Run the model and return every feature and logit as a :class:`VTOutput`. ``layout``: the batch's
        :class:`cmemd.layout.BatchLayout` (tensors on ``x``'s device), which saves the routing's host reads."""
        z = self._route(x, modality, layout)
        if self.shared is not None:
            z = self.shared(z)
        g = self.global_pool(self.global_stream(z))
        g_bn = self.global_neck(g)
        out = VTOutput(global_feat=g, global_bn=g_bn, global_logits=self.global_classifier(g_bn))
        if self.local_stream is None:
            return out

        fmap = self.local_stream(z)
        rows = self.local_pool.rows(fmap)  # N x C x H
        bounds = _stripe_bounds(rows.shape[2], self.cfg.num_stripes)
        f = torch.stack(
            [
                red(self.local_pool.finish(rows[:, :, a:b].mean(dim=2)))
                for red, (a, b) in zip(self.local_reduce, bounds)
            ],
            dim=1,
        )
        f_bn = torch.stack([neck(f[:, k]) for k, neck in enumerate(self.local_necks)], dim=1)
        out.local_feats, out.local_bn = f, f_bn
        out.local_logits = [clf(f_bn[:, k]) for k, clf in enumerate(self.local_classifiers)]
        if self.cfg.accumulate == "prefix":
            assert self.accum_reduce is not None  # built in __init__ for accumulate="prefix"
            prefix = torch.stack(
                [self.local_pool.finish(rows[:, :, :b].mean(dim=2)) for _, b in bounds], dim=1
            )  # N x S x C
            n, s_, c = prefix.shape
            # One reduction for every k; its BN sees the N*S prefix features together.
            out.accumulated_feats = self.accum_reduce(prefix.reshape(n * s_, c)).reshape(n, s_, -1)
        elif self.cfg.accumulate == "cumsum":
            out.accumulated_feats = _cumsum_stripes(f)
        if out.accumulated_feats is not None and self.cfg.accumulated_heads:
            out.accumulated_bn = torch.stack(
                [neck(out.accumulated_feats[:, k]) for k, neck in enumerate(self.accum_necks)], dim=1
            )
            out.accumulated_logits = [clf(out.accumulated_bn[:, k]) for k, clf in enumerate(self.accum_classifiers)]
        w = self.stripe_weights()
        out.stripe_weights = w
        out.holistic = (f * w.view(1, -1, 1)).flatten(1)
        return out

    def test_feature(self, out: VTOutput) -> Tensor:
        """The eval feature named by ``cfg.test_feature`` from a :class:`VTOutput`."""
        g = out.global_feat if self.cfg.test_global == "pooled" else out.global_bn
        if self.cfg.test_feature == "global":
            return g
        # ModelConfig allows a local test feature only with use_local=True, where forward_output fills these.
        assert out.holistic is not None and out.local_bn is not None and out.stripe_weights is not None
        local = out.holistic
        if self.cfg.test_local == "bn":  # the same stripe weights as the pooled holistic feature
            local = (out.local_bn * out.stripe_weights.view(1, -1, 1)).flatten(1)
        if self.cfg.test_feature == "local":
            return local
        return torch.cat([l2_normalize(g, dim=1), l2_normalize(local, dim=1)], dim=1)

    def forward(self, x: Tensor, modality: Tensor | None = None, layout: BatchLayout | None = None):
        out = self.forward_output(x, modality, layout)
        return out if self.training else self.test_feature(out)


def build_model(cfg: ModelConfig, *, progress: bool = True) -> VTReIDModel:
    """Build a :class:`VTReIDModel`; load ``cfg.pretrained`` into every backbone copy if set."""
    model = VTReIDModel(cfg)
    if cfg.pretrained:
        load_pretrained_backbone(model, cfg.pretrained, progress=progress)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def load_pretrained_backbone(
    model: VTReIDModel, source: str | os.PathLike, *, strict: bool = True, progress: bool = True
) -> VTReIDModel:
    """Copy a torchvision-format ResNet state dict into every backbone copy of ``model``.

    Each modality-specific copy, the shared part and each stream's layer3/layer4 copy get the
    same pretrained tensors; ``fc.*`` in the file is ignored (the heads are newly initialised).

    Args:
        source: a local file path or ``"imagenet"`` (see :func:`cmemd.models.resnet.read_state_dict`).
        strict: every backbone entry must be in the file and every non-``fc`` file entry used.

    Raises:
        CheckpointError: as :func:`cmemd.models.resnet.load_pretrained`.
    """
    if not isinstance(model, VTReIDModel):
        raise CheckpointError(
            f"load_pretrained_backbone: expected a VTReIDModel, got "
            f"{type(model).__name__}; use load_pretrained for a plain ResNet"
        )
    sd, where = read_state_dict(source, arch=model.cfg.arch, progress=progress)
    load_mapped_state_dict(
        model, sd, model.backbone_key_map(), where=where, strict=strict, allow_unused=lambda k: k.startswith("fc.")
    )
    return model
