"""The training objective: the model's named output in, the total loss and its named terms out.

L = CE_g + mean_k CE_k + lambda_align * L_align + lambda_dl * L_dl (+ lambda_triplet * WRT),
as METHOD.md writes it. Which alignment (CM-EMD or an alternative) and on which granularities
are options, so the ablation rows are settings of one objective.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cmemd.errors import ConfigError
from cmemd.losses.alignment import make_alignment_loss
from cmemd.losses.classification import cross_entropy_label_smooth
from cmemd.losses.triplet import wrt_triplet


class Objective(nn.Module):
    """Composes the loss terms over a model output (``VTOutput``-like: attributes by name).

    Args:
        label_smoothing: epsilon of the identity cross-entropy (0 = plain CE).
        alignment: ``cmemd`` | ``all-pairs`` | ``hetero-center`` | ``mmd`` | ``none``.
        lambda_align: weight of the alignment loss.
        align_granularities: ``all`` (global + each local + each accumulated feature, each one
            granularity) or ``global``.
        emd_cost, emd_normalize, emd_solver, sinkhorn_eps: the CM-EMD cost and plan options
            (cost/normalize also apply to all-pairs and hetero-centre).
        lambda_dl: weight of CM-DL on the holistic feature (the global one when there is no
            local stream); ``dl_variant`` ``plain`` | ``cross``; ``dl_on_global`` adds it on the global feature.
        lambda_triplet: weight of the weighted-regularisation triplet on the global feature.
    """

    def __init__(
        self,
        *,
        label_smoothing: float = 0.0,
        alignment: str = "cmemd",
        lambda_align: float = 0.5,
        align_granularities: str = "all",
        emd_cost: str = "euclidean",
        emd_normalize: bool = False,
        emd_solver: str = "exact",
        sinkhorn_eps: float = 0.05,
        lambda_dl: float = 0.1,
        dl_variant: str = "plain",
        dl_on_global: bool = False,
        lambda_triplet: float = 0.0,
    ) -> None:
        super().__init__()
        if align_granularities not in ("all", "global"):
            raise ConfigError(f"align_granularities must be 'all' or 'global', got {align_granularities!r}")
        self.label_smoothing = label_smoothing
        self.lambda_align, self.align_granularities = lambda_align, align_granularities
        if alignment == "cmemd":
            kw: dict[str, Any] = dict(cost=emd_cost, normalize=emd_normalize, solver=emd_solver, eps=sinkhorn_eps)
        elif alignment in ("all-pairs", "hetero-center"):
            kw = dict(cost=emd_cost, normalize=emd_normalize)
        elif alignment == "mmd":
            kw = dict(normalize=emd_normalize)
        else:
            kw = {}
        self.alignment_name = alignment
        self.align = make_alignment_loss(alignment, **kw)
        from cmemd.losses import CMDLLoss

        self.lambda_dl, self.dl_on_global = lambda_dl, dl_on_global
        self.cmdl = CMDLLoss(cross=dl_variant == "cross")
        self.lambda_triplet = lambda_triplet

    def _ce(self, logits: Tensor, pids: Tensor) -> Tensor:
        if self.label_smoothing > 0:
            return cross_entropy_label_smooth(logits, pids, self.label_smoothing)
        return nn.functional.cross_entropy(logits, pids)

    def forward(self, out: Any, pids: Tensor, modalities: Tensor) -> tuple[Tensor, dict[str, float]]:
        terms: dict[str, Tensor] = {}
        terms["ce_global"] = self._ce(out.global_logits, pids)
        total = terms["ce_global"]
        local = getattr(out, "local_feats", None)
        if getattr(out, "local_logits", None):
            # every fine granularity is classified: the S local and (when present) S accumulated features
            fine = list(out.local_logits) + list(getattr(out, "accumulated_logits", None) or [])
            terms["ce_local"] = torch.stack([self._ce(lg, pids) for lg in fine]).mean()
            total = total + terms["ce_local"]

        if self.lambda_align > 0 and self.alignment_name != "none":
            feats = [out.global_feat]
            if self.align_granularities == "all" and local is not None:
                feats += list(local.unbind(1))
                acc = getattr(out, "accumulated_feats", None)
                if acc is not None:
                    feats += list(acc.unbind(1))
            res = self.align(feats, pids, modalities)
            terms["align"] = res.loss
            per = res.per_granularity.detach()
            terms["align_global"] = per[0]
            if per.numel() > 1:
                s = local.shape[1]
                terms["align_local"] = per[1:1 + s].mean()
                if per.numel() > 1 + s:
                    terms["align_accum"] = per[1 + s:].mean()
            total = total + self.lambda_align * res.loss

        if self.lambda_dl > 0:
            holistic = getattr(out, "holistic", None)
            dl = self.cmdl(holistic if holistic is not None else out.global_feat, pids, modalities)
            if self.dl_on_global and holistic is not None:
                dl = dl + self.cmdl(out.global_feat, pids, modalities)
            terms["cmdl"] = dl
            total = total + self.lambda_dl * dl

        if self.lambda_triplet > 0:
            terms["triplet"] = wrt_triplet(out.global_feat, pids)
            total = total + self.lambda_triplet * terms["triplet"]

        logged = {"loss": float(total.detach())}
        logged.update({k: float(v.detach()) for k, v in terms.items()})
        return total, logged
