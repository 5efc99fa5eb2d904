"""The training objective: the model's named output in, the total loss and its named terms out.

L = CE_g + mean_k CE_k + lambda_align * L_align + lambda_dl * L_dl (+ lambda_triplet * WRT),
as docs/method.md writes it. Which alignment (CM-EMD or an alternative) and on which granularities
are options, so every variant compared is a setting of one objective.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cmemd.engine.terms import LoggedTerms
from cmemd.errors import ConfigError
from cmemd.evaluation.modality import feature_health_tensors
from cmemd.layout import BatchLayout
from cmemd.losses.alignment import AlignmentOptions, make_alignment_loss
from cmemd.losses.classification import cross_entropy, cross_entropy_label_smooth
from cmemd.losses.triplet import wrt_triplet

ALIGN_FEATURES = ("pooled", "bn", "centered")
GRANULARITIES = ("all", "global")  # all = global + local + accumulated
DL_VARIANTS = ("plain", "cross")


def aligned_features(out: Any, granularities: str = "all", feature: str = "pooled") -> list[Tensor]:
    """The features an alignment loss sees, one ``(N, D)`` tensor per granularity: the global feature,
    then (``granularities="all"``, when the model has them) each local and each accumulated feature.
    ``feature="pooled"``: the pooled features before the BN-neck; ``"bn"``: the BN-neck outputs (the
    accumulated features have BN-necks only with their classifiers; else their pooled form is used);
    ``"centered"``: the pooled features minus their batch mean (both modalities), which removes the direction
    every all-positive pooled feature shares."""
    bn = feature == "bn"
    feats = [out.global_bn if bn else out.global_feat]
    local = getattr(out, "local_feats", None)
    if granularities == "all" and local is not None:
        feats += list((out.local_bn if bn else local).unbind(1))
        acc = getattr(out, "accumulated_bn", None) if bn else None
        acc = acc if acc is not None else getattr(out, "accumulated_feats", None)
        if acc is not None:
            feats += list(acc.unbind(1))
    if feature == "centered":
        feats = [f - f.mean(0, keepdim=True) for f in feats]
    return feats


def health_terms(out: Any) -> dict[str, Tensor]:
    """Mean norm, dead-unit and zero-entry shares of the pooled (pre-BN) global, local and accumulated features
    (:func:`cmemd.evaluation.modality.feature_health`). Local units are per stripe (each stripe has its own
    reduction). The prefix-accumulated features come from ONE shared reduction, so ``dead_accum`` counts its
    units silent for every image AND every prefix; ``dead_accum_prefix`` counts the
    (prefix, unit) pairs silent for every image, which grows when the prefixes specialise. The values are 0-d
    tensors on the features' device (``float()`` them to read)."""
    terms = {}
    for name, attr in (("global", "global_feat"), ("local", "local_feats"), ("accum", "accumulated_feats")):
        x = getattr(out, attr, None)
        if x is not None:
            h = feature_health_tensors(x, shared_units=name == "accum")
            terms[f"norm_{name}"], terms[f"dead_{name}"], terms[f"zero_{name}"] = h
            if name == "accum":
                terms["dead_accum_prefix"] = feature_health_tensors(x)[1]
    return terms


class Objective(nn.Module):
    """Composes the loss terms over a model output (``VTOutput``-like: attributes by name).

    Args:
        label_smoothing: epsilon of the identity cross-entropy (0 = plain CE).
        alignment: ``cmemd`` | ``all-pairs`` | ``hetero-center`` | ``mmd`` | ``none``.
        lambda_align: weight of the alignment loss.
        align_granularities: ``all`` (global + each local + each accumulated feature, each one
            granularity) or ``global``.
        align_feature: which feature the alignment sees: ``pooled`` (pre-BN, the paper's figure),
            ``bn`` (the BN-neck outputs) or ``centered`` (pooled minus the batch mean); see
            :func:`aligned_features`.
        emd_cost, emd_normalize, emd_solver, sinkhorn_eps, sinkhorn_iters: the cost and plan options
            (cost/normalize apply to every alignment loss alike -- MMD takes ``normalize`` -- so a
            comparison is between alignment strategies, not scalings).
        lambda_accum_ce: weight of the identity loss on the accumulated features (mean over their S
            classifiers), a term of its own beside ``ce_local`` (mean over the S local classifiers, weight 1
            as docs/method.md writes it); used when the model has accumulated classifiers.
        lambda_dl: weight of CM-DL on the holistic feature (the global one when there is no
            local stream); ``dl_variant`` ``plain`` | ``cross``; ``dl_on_global`` adds it on the global feature.
        lambda_triplet: weight of the weighted-regularisation triplet on the global feature.
    """

    def __init__(
        self,
        *,
        label_smoothing: float = 0.0,
        alignment: str = "cmemd",
        lambda_align: float = 2.0,
        align_granularities: str = "all",
        align_feature: str = "pooled",
        emd_cost: str = "euclidean",
        emd_normalize: bool = True,
        emd_solver: str = "exact",
        sinkhorn_eps: float = 0.05,
        sinkhorn_iters: int = 200,
        lambda_accum_ce: float = 1.0,
        lambda_dl: float = 0.1,
        dl_variant: str = "plain",
        dl_on_global: bool = False,
        lambda_triplet: float = 0.0,
    ) -> None:
        super().__init__()
        if align_granularities not in GRANULARITIES:
            raise ConfigError(f"align_granularities must be one of {GRANULARITIES}, got {align_granularities!r}")
        if dl_variant not in DL_VARIANTS:
            raise ConfigError(f"dl_variant must be one of {DL_VARIANTS}, got {dl_variant!r}")
        if align_feature not in ALIGN_FEATURES:
            raise ConfigError(f"align_feature must be one of {ALIGN_FEATURES}, got {align_feature!r}")
        self.label_smoothing, self.lambda_accum_ce = label_smoothing, lambda_accum_ce
        self.lambda_align, self.align_granularities = lambda_align, align_granularities
        self.align_feature = align_feature
        # every option goes to the factory; each loss takes the ones it reads (AlignmentOptions)
        self.align = make_alignment_loss(
            alignment,
            AlignmentOptions(
                cost=emd_cost,
                normalize=emd_normalize,
                solver=emd_solver,
                eps=sinkhorn_eps,
                sinkhorn_iters=sinkhorn_iters,
            ),
        )
        from cmemd.losses import CMDLLoss

        self.lambda_dl, self.dl_on_global = lambda_dl, dl_on_global
        self.cmdl = CMDLLoss(cross=dl_variant == "cross")
        self.lambda_triplet = lambda_triplet

    def unused_parameters(self, model: nn.Module) -> list[str]:
        """Names of the parameters of ``model`` (a :class:`cmemd.models.VTReIDModel`, or one wrapping it as
        ``.module``) that no term of this objective gives a gradient, whatever the batch: the stripe weights
        without CM-DL (``lambda_dl=0``: only the holistic feature reads them), the accumulated classifiers
        without their identity loss (``lambda_accum_ce=0``), their BN-necks unless an alignment reads the
        accumulated BN-neck outputs too, and the prefix reduction when neither reads the accumulated features.
        Frozen BN-neck biases are not listed (they are not trainable)."""
        net = getattr(model, "module", model)
        if getattr(net, "local_stream", None) is None:
            return []
        align_all = self._aligns() and self.align_granularities == "all"
        unused = []
        if self.lambda_dl <= 0:
            unused.append("stripe_logits")
        heads = getattr(net, "accum_classifiers", None) is not None
        accum_ce = heads and self.lambda_accum_ce > 0
        if heads and not accum_ce:
            unused.append("accum_classifiers")
            if not (align_all and self.align_feature == "bn"):
                unused.append("accum_necks")
        if getattr(net, "accum_reduce", None) is not None and not (accum_ce or align_all):
            unused.append("accum_reduce")
        prefixes = tuple(unused)
        return [
            name
            for name, p in net.named_parameters()
            if p.requires_grad and (name in prefixes or name.startswith(tuple(f"{x}." for x in prefixes)))
        ]

    def freeze_unused(self, model: nn.Module) -> list[str]:
        """Set ``requires_grad=False`` on :meth:`unused_parameters` (they stay in the model and its checkpoints, at
        their initial values, as an unused parameter always did: the optimiser skips a parameter without a
        gradient). DistributedDataParallel then never waits for their gradients, without the cost of
        ``find_unused_parameters``. Returns the names of the frozen modules (``stripe_logits``, ...)."""
        net = getattr(model, "module", model)
        names = self.unused_parameters(net)
        params = dict(net.named_parameters())
        for name in names:
            params[name].requires_grad_(False)
        return sorted({n.split(".")[0] for n in names})

    def _aligns(self) -> bool:
        """Whether the alignment term is computed: a weight and a loss that reads the features (not ``none``)."""
        return self.lambda_align > 0 and bool(getattr(self.align, "aligns", True))

    def _ce(self, logits: Tensor, pids: Tensor, layout: BatchLayout | None) -> Tensor:
        if self.label_smoothing > 0:
            return cross_entropy_label_smooth(logits, pids, self.label_smoothing, layout)
        return cross_entropy(logits, pids)  # deterministic on CUDA under run.deterministic=true

    def forward(
        self, out: Any, pids: Tensor, modalities: Tensor, layout: BatchLayout | None = None
    ) -> tuple[Tensor, LoggedTerms]:
        """``(total loss, terms)``; the terms are a :class:`cmemd.engine.terms.LoggedTerms` (floats when read,
        read all at once). ``layout``: the batch's :class:`cmemd.layout.BatchLayout` (tensors on the output's
        device), with which the objective makes no host-device synchronisation."""
        terms: dict[str, Tensor] = {}
        terms["ce_global"] = self._ce(out.global_logits, pids, layout)
        total = terms["ce_global"]
        local = getattr(out, "local_feats", None)
        if getattr(out, "local_logits", None):
            terms["ce_local"] = torch.stack([self._ce(lg, pids, layout) for lg in out.local_logits]).mean()
            total = total + terms["ce_local"]
        if getattr(out, "accumulated_logits", None) and self.lambda_accum_ce > 0:
            terms["ce_accum"] = torch.stack([self._ce(lg, pids, layout) for lg in out.accumulated_logits]).mean()
            total = total + self.lambda_accum_ce * terms["ce_accum"]

        if self._aligns():
            feats = aligned_features(out, self.align_granularities, self.align_feature)
            res = self.align(feats, pids, modalities, layout=layout)
            terms["align"] = res.loss
            per = res.per_granularity.detach()
            terms["align_global"] = per[0]
            if per.numel() > 1:
                assert local is not None  # more than one granularity: the model has local features
                s = local.shape[1]
                terms["align_local"] = per[1 : 1 + s].mean()
                if per.numel() > 1 + s:
                    terms["align_accum"] = per[1 + s :].mean()
            total = total + self.lambda_align * res.loss

        if self.lambda_dl > 0:
            holistic = getattr(out, "holistic", None)
            dl = self.cmdl(holistic if holistic is not None else out.global_feat, pids, modalities, layout=layout)
            if self.dl_on_global and holistic is not None:
                dl = dl + self.cmdl(out.global_feat, pids, modalities, layout=layout)
            terms["cmdl"] = dl
            total = total + self.lambda_dl * dl

        if self.lambda_triplet > 0:
            terms["triplet"] = wrt_triplet(out.global_feat, pids)
            total = total + self.lambda_triplet * terms["triplet"]

        logged = LoggedTerms({"loss": total.detach()})
        for k, v in terms.items():
            logged[k] = v.detach()
        for k, v in health_terms(out).items():
            logged[k] = v
        return total, logged
