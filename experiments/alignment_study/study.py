"""Does CM-EMD align the modalities, and does its plan pick the pairs with small intra-identity variation?

    python experiments/alignment_study/study.py --jobs 2                 # every group in order, resumable, then the report
    python experiments/alignment_study/study.py --groups cost --jobs 2   # one group
    python experiments/alignment_study/study.py --report-only            # rebuild docs/results/alignment_study.md
    python experiments/alignment_study/study.py --groups core --rows full --seeds 1   # one run
    python experiments/alignment_study/study.py --backfill --groups space      # add newer test diagnostics from checkpoints

Groups (each run: train, evaluate with the SYSU-MM01 protocol, then diagnostics on the test ids):
  cost       the alignment-cost candidates at a short budget: feature norms and dead units per granularity
  core       baseline, + CM-EMD or all-pairs (global), full CM-EMD unaligned, and its alignment swapped (all-pairs,
             hetero-centre, Sinkhorn plan, cosine cost, lambda 0.5), seeds 0..4 at the study budget (pooled cost;
             the swapped rows were retired short of 5 seeds when the BN-neck cost replaced it: their
             counterparts on the BN-neck output are in the space group)
  settings   what separates the full model from the best earlier row: modality-specific stages, triplet,
             label smoothing (each switched alone on the full model, and the last two together), the accumulated
             features' classifiers, seeds 0..4
  space      + CM-EMD (global) with the cost on batch-centred pooled features (lambda 0.5, 1) or on the BN-neck
             output (lambda 1, 2; all-pairs, hetero-centre, the Sinkhorn plan and MMD at 1); the full model with
             its cost on the BN-neck outputs (lambda 1; all granularities, or the global one, alone or with CM-DL
             on it or the triplet, or with the baseline's whole recipe); seeds 0..4
  variation  the generator's view/pose variation at three levels, full CM-EMD against all-pairs, seeds 0..2
             (pooled cost; only seed 0 was run before the BN-neck cost replaced it)
  variation_bn  the same levels for + CM-EMD against + all-pairs, both on the BN-neck output of the global
             feature (the space group's best rows), seeds 0..3

Each finished run writes a small JSON file under docs/results/alignment_study/runs/ (commit it): a rerun on any
machine skips every run whose file is there with the same settings, so the study outlives a session.
Checkpoints of unfinished runs live under data/alignment_study/ and resume.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORK = ROOT / "data" / "alignment_study"
OUT = HERE
RUNS = HERE / "runs"
REPORT = HERE / "README.md"
COMMAND = "python experiments/alignment_study/study.py --jobs 2"

# The earlier ablation's budget (docs/results/ablation.md) was 1,600 steps of 8 x (4 + 4), which put the baseline at
# 19.5 ± 1.5 all-search Rank-1 on the 300-id set, just under the 20-70% band the study needs: 2,000 steps here.
BUDGET = ["optim.epochs=10", "optim.warmup_epochs=1", "optim.milestones=[8]", "data.steps_per_epoch=200",
          "eval.trials=10", "eval.shots=1", "run.log_every=20", "run.threads=1", "run.diagnostics_ids=30"]
SHORT = ["optim.epochs=2", "optim.warmup_epochs=1", "optim.milestones=[2]", "data.steps_per_epoch=100",
         "eval.trials=10", "eval.shots=1", "run.log_every=10", "run.threads=1", "run.diagnostics_ids=30"]
BASELINE = ["model.modality_specific_stages=1", "model.use_local=false", "model.test_feature=global",
            "loss.label_smoothing=0.1", "loss.alignment=none", "loss.lambda_dl=0", "loss.lambda_triplet=1"]
# The full model as METHOD writes it (no triplet), spelled out so that the rows stay put if the CPU config moves.
FULL = ["loss.alignment=cmemd", "loss.lambda_align=2", "loss.lambda_dl=0.1", "model.num_stripes=4",
        "loss.lambda_triplet=0", "loss.label_smoothing=0", "model.modality_specific_stages=3"]
PILOT_FULL = ["loss.alignment=cmemd", "loss.lambda_align=0.5", "loss.lambda_dl=0.1", "model.num_stripes=4"]
SPLIT = (3.0, 1.0, 2.0)  # train : val : test ids, as the earlier ablation (100 test ids of 300)

# group -> row -> (label, overrides); the cost group at the short budget on 80 ids, the rest at BUDGET on 300.
COST_ROWS = {
    "none": ("no alignment (reference norms)", PILOT_FULL + ["loss.lambda_align=0", "loss.emd_normalize=false"]),
    "euclidean": ("Euclidean on pooled features (the old default)", PILOT_FULL + ["loss.emd_cost=euclidean", "loss.emd_normalize=false"]),
    "euclidean_l2": ("Euclidean on L2-normalised pooled features", PILOT_FULL + ["loss.emd_cost=euclidean", "loss.emd_normalize=true"]),
    "cosine": ("cosine distance on pooled features", PILOT_FULL + ["loss.emd_cost=cosine"]),
    "euclidean_bn": ("Euclidean on BN-neck features", PILOT_FULL + ["loss.emd_cost=euclidean", "loss.emd_normalize=false",
                                                            "loss.align_feature=bn"]),
    "euclidean_l2_lambda2": ("Euclidean L2, lambda 2", PILOT_FULL + ["loss.emd_cost=euclidean", "loss.emd_normalize=true",
                                                           "loss.lambda_align=2"]),
    "euclidean_l2_lambda5": ("Euclidean L2, lambda 5", PILOT_FULL + ["loss.emd_cost=euclidean", "loss.emd_normalize=true",
                                                           "loss.lambda_align=5"]),
    "euclidean_l2_bn": ("Euclidean on L2-normalised BN-neck features", PILOT_FULL + [
        "loss.emd_cost=euclidean", "loss.emd_normalize=true", "loss.align_feature=bn"]),
    "euclidean_l2_bn_lambda2": ("Euclidean on L2-normalised BN-neck features, lambda 2", PILOT_FULL + [
        "loss.emd_cost=euclidean", "loss.emd_normalize=true", "loss.align_feature=bn", "loss.lambda_align=2"]),
    "euclidean_l2_centered_lambda2": ("Euclidean on L2-normalised batch-centred pooled features, lambda 2",
                                      PILOT_FULL + ["loss.emd_cost=euclidean", "loss.emd_normalize=true",
                                                    "loss.align_feature=centered", "loss.lambda_align=2"]),
    "euclidean_l2_centered": ("Euclidean on L2-normalised batch-centred pooled features", PILOT_FULL + [
        "loss.emd_cost=euclidean", "loss.emd_normalize=true", "loss.align_feature=centered"]),
    "euclidean_l2_noheads": ("Euclidean L2, no accumulated classifiers", PILOT_FULL + ["loss.emd_cost=euclidean",
                                                                                  "loss.emd_normalize=true",
                                                                                  "model.accumulated_heads=false"]),
}
# The alignment cost every alignment row uses, spelled out so the study stays the same if the config's default moves.
COST = ["loss.emd_cost=euclidean", "loss.emd_normalize=true", "loss.align_feature=pooled"]
CORE_ROWS = {  # in order of interest: with few seeds done, the main comparison is there first
    "baseline": ("baseline (AGW-style: stem-only split, CE+LS, WRT triplet, no alignment)", BASELINE),
    "full": ("full CM-EMD (MGS, CM-DL, 3 modality-specific stages)", FULL + COST),
    "full_allpairs": ("full, all-pairs alignment instead", FULL + COST + ["loss.alignment=all-pairs"]),
    "emd_global": ("+ CM-EMD (global feature)", BASELINE + ["loss.alignment=cmemd", "loss.lambda_align=2",
                                                          "loss.align_granularities=global"] + COST),
    "allpairs_global": ("+ all-pairs (global feature)", BASELINE + ["loss.alignment=all-pairs", "loss.lambda_align=2",
                                                                  "loss.align_granularities=global"] + COST),
    "full_none": ("full, no alignment (lambda 0: the reference norms)", FULL + COST + ["loss.lambda_align=0"]),
    "full_hetero": ("full, hetero-centre alignment instead", FULL + COST + ["loss.alignment=hetero-center"]),
    "full_sinkhorn": ("full, Sinkhorn plan instead of the exact one", FULL + COST + ["loss.emd_solver=sinkhorn"]),
    "full_cosine": ("full, cosine cost instead of Euclidean on the sphere", FULL + COST + ["loss.emd_cost=cosine"]),
    "full_lambda05": ("full, lambda_emd 0.5 (the raw cost's value)", FULL + COST + ["loss.lambda_align=0.5"]),
}
SETTINGS_ROWS = {
    "full_m1": ("full, stem-only modality split (1 stage)", FULL + COST + ["model.modality_specific_stages=1"]),
    "full_triplet": ("full + WRT triplet", FULL + COST + ["loss.lambda_triplet=1"]),
    "full_ls": ("full + label smoothing 0.1", FULL + COST + ["loss.label_smoothing=0.1"]),
    "full_noheads": ("full, no identity classifiers on the accumulated features", FULL + COST + ["model.accumulated_heads=false"]),
    "full_triplet_ls": ("full + WRT triplet + label smoothing 0.1", FULL + COST + ["loss.lambda_triplet=1",
                                                                               "loss.label_smoothing=0.1"]),
}
# Where the alignment acts, at the study's budget, on the simplest model (the baseline + CM-EMD on the global feature).
# The pooled features sit in a narrow cone (cosine 0.997 to their mean after `make demo`; norm 44 against a centred
# spread of 3.7), so on the sphere the loss's gradient is damped by the norm while the identity loss, through the
# BN-neck, is amplified by the small per-unit spread: centring first measures the cost at the scale the identity
# loss sees. The 200-step pilot (section 1) found lambda 2 too strong there; these rows test 0.5 and 1.
SPACE_ROWS = {
    f"centered{tag}_global": (f"+ CM-EMD (global feature), batch-centred, lambda {lam}",
                              BASELINE + ["loss.alignment=cmemd", f"loss.lambda_align={lam}",
                                          "loss.align_granularities=global", "loss.emd_cost=euclidean",
                                          "loss.emd_normalize=true", "loss.align_feature=centered"])
    for tag, lam in (("05", 0.5), ("1", 1))}
# The test feature is the BN-neck output, whose per-unit standardisation undid the pooled features' alignment in
# the rows above (notes, session 4): these rows measure the cost on the L2-normalised BN-neck outputs themselves.
# The 200-step pilot closed most of the gap at lambda 2 (ratio 0.78) but lost Rank-1 there (8.0 vs 14.4 at 0.5).
SPACE_ROWS.update({
    f"bn{tag}_global": (f"+ CM-EMD (global feature), on the BN-neck output, lambda {lam}",
                        BASELINE + ["loss.alignment=cmemd", f"loss.lambda_align={lam}",
                                    "loss.align_granularities=global", "loss.emd_cost=euclidean",
                                    "loss.emd_normalize=true", "loss.align_feature=bn"])
    for tag, lam in (("05", 0.5), ("1", 1), ("2", 2))})
SPACE_ROWS["bn1_allpairs_global"] = ("+ all-pairs (global feature), on the BN-neck output, lambda 1",
                                     SPACE_ROWS["bn1_global"][1] + ["loss.alignment=all-pairs"])
# The field's most common alignment in the same place: does the plan matter, or any pull between the modalities?
SPACE_ROWS["bn1_hetero_global"] = ("+ hetero-centre (global feature), on the BN-neck output, lambda 1",
                                   SPACE_ROWS["bn1_global"][1] + ["loss.alignment=hetero-center"])
# lambda for the two best alignments there (lambda 1 was not tuned for either): does CM-EMD catch hetero-centre?
SPACE_ROWS.update({f"bn{tag}_hetero_global": (f"+ hetero-centre (global feature), on the BN-neck output, lambda {lam}",
                                              SPACE_ROWS[f"bn{tag}_global"][1] + ["loss.alignment=hetero-center"])
                   for tag, lam in (("05", 0.5), ("2", 2))})
SPACE_ROWS["full_bn1"] = ("full CM-EMD, on the BN-neck outputs, lambda 1",
                          FULL + COST + ["loss.align_feature=bn", "loss.lambda_align=1"])
SPACE_ROWS["full_bn1_global"] = ("full CM-EMD, on the global BN-neck output only, lambda 1",
                                 FULL + COST + ["loss.align_feature=bn", "loss.lambda_align=1",
                                                "loss.align_granularities=global"])
# In the full model that alignment collapsed the global feature (its own Rank-1 about 1%, the concatenation kept
# by the holistic part: bench/test_space.py --test-feature global): the "discrimination degradation" CM-DL is for,
# on the global feature this time; and the triplet the baseline family has.
SPACE_ROWS["full_bn1_global_dl"] = ("full CM-EMD, on the global BN-neck output, lambda 1, CM-DL on the global too",
                                    SPACE_ROWS["full_bn1_global"][1] + ["loss.dl_on_global=true"])
SPACE_ROWS["full_bn1_global_triplet"] = ("full CM-EMD, on the global BN-neck output, lambda 1, + WRT triplet",
                                         SPACE_ROWS["full_bn1_global"][1] + ["loss.lambda_triplet=1"])
# With the triplet the global feature survived the alignment, but the unaligned holistic part brought the gap back
# into the concatenated test feature: the same with every granularity aligned on its BN-neck output.
SPACE_ROWS["full_bn1_triplet"] = ("full CM-EMD, on the BN-neck outputs, lambda 1, + WRT triplet",
                                  SPACE_ROWS["full_bn1"][1] + ["loss.lambda_triplet=1"])
# The paper's components on the recipe that works: the full model (MGS + CM-DL, every granularity aligned on its
# BN-neck output) with the baseline's triplet, label smoothing and stem-only split; does it add to `bn1_global`?
SPACE_ROWS["full_bn1_recipe"] = ("full CM-EMD, on the BN-neck outputs, lambda 1, with the baseline's recipe "
                                 "(+ WRT triplet, label smoothing 0.1, stem-only split)",
                                 SPACE_ROWS["full_bn1_triplet"][1] + ["loss.label_smoothing=0.1",
                                                                      "model.modality_specific_stages=1"])
# L_emd is the mean over the 9 granularities (global, 4 local, 4 accumulated; METHOD), so at lambda 1 each one,
# the global feature too, is aligned at 1/9 of the weight `bn1_global` gives its only one (the global part's modality
# probe stayed at 94-98%): lambda 9 gives each granularity that weight.
SPACE_ROWS["full_bn9_recipe"] = ("full CM-EMD, on the BN-neck outputs, lambda 9 (1 per granularity), with the "
                                 "baseline's recipe", SPACE_ROWS["full_bn1_recipe"][1] + ["loss.lambda_align=9"])
# The remaining alignments of the core rows, in the place that works: the entropic plan, and a kernel two-sample
# distance that couples no pairs at all.
SPACE_ROWS["bn1_sinkhorn_global"] = ("+ CM-EMD with the Sinkhorn plan (global feature), on the BN-neck output, lambda 1",
                                     SPACE_ROWS["bn1_global"][1] + ["loss.emd_solver=sinkhorn"])
SPACE_ROWS["bn1_mmd_global"] = ("+ MMD (global feature), on the BN-neck output, lambda 1",
                                SPACE_ROWS["bn1_global"][1] + ["loss.alignment=mmd"])
VARIATIONS = (0.2, 0.7)  # and the default 0.4: the core rows
VARIATION_ROWS = {f"{name}_v{v}": (f"{label}, variation {v}", CORE_ROWS[name][1])
                  for v in VARIATIONS for name, label in (("full", "full CM-EMD"), ("full_allpairs", "full, all-pairs"))}
# The same sweep for the alignment that works on this benchmark (section 3b): the baseline + CM-EMD against + all-pairs,
# both on the BN-neck output of the global feature; the default 0.4 is the space group's rows.
VARIATION_BN_ROWS = {f"{name}_v{v}": (f"{label}, variation {v}", SPACE_ROWS[name][1])
                     for v in VARIATIONS for name, label in (("bn1_global", "+ CM-EMD (global, BN-neck)"),
                                                             ("bn1_allpairs_global", "+ all-pairs (global, BN-neck)"))}
SEEDS5 = [0, 1, 2, 3, 4]


def row_variation(row: str) -> float:
    """The generator variation a variation-group row names (``<row>_v<level>``)."""
    return float(row.rsplit("_v", 1)[1])


GROUPS: dict[str, dict] = {
    "cost": {"ids": 80, "budget": SHORT, "seeds": [0], "rows": COST_ROWS, "variation": None,
             "title": "1. The alignment cost: can it be lowered by shrinking the features?",
             "about": "Short runs (200 steps, 80-id set, seed 0) of the full model with each candidate cost, lambda 0.5 "
                      "unless the row says otherwise: mean L2 norm of the pooled features each granularity aligns, "
                      "share of dead units (|x| <= 1e-5 for every image of the batch) and of zero entries, averaged "
                      "over the last epoch's steps (`norm_*`, `dead_*`, `zero_*` in metrics.jsonl). These runs counted "
                      "the accumulated features' units per prefix; a unit of their shared reduction silent for one "
                      "prefix but active for another is specialised, not dead, and training now logs both counts "
                      "(`dead_accum`: silent for every prefix; `dead_accum_prefix`)."},
    "core": {"ids": 300, "budget": BUDGET, "seeds": SEEDS5, "rows": CORE_ROWS, "variation": None,
             "title": "2. Core rows (5 seeds, paired)",
             "about": "300 ids (150 train + 50 val, both trained on; 100 test), 2,000 steps of 8 x (4 + 4) images "
                      "at 64x32 (ResNet-18 width 32), one thread per run. These rows use the pooled cost (L2-normalised "
                      "pooled features); when section 3b found the cost on the BN-neck output far better, the rows "
                      "that swap the full model's alignment (hetero-centre, Sinkhorn, cosine, lambda 0.5) were retired "
                      "short of 5 seeds: the swapped alignments are measured on the BN-neck output in section 3b.",
             "pairs": [("emd_global", "baseline"), ("emd_global", "allpairs_global"), ("full", "full_none"),
                       ("full", "baseline"), ("full", "full_allpairs"),
                       ("full", "full_hetero"), ("full", "full_sinkhorn"), ("full", "full_cosine"),
                       ("full", "full_lambda05")]},
    "settings": {"ids": 300, "budget": BUDGET, "seeds": SEEDS5, "rows": SETTINGS_ROWS, "variation": None,
                 "title": "3. The settings that separate the full model from the earlier best row",
                 "about": "The earlier ablation's best row differed from the full model in three settings; each is "
                          "switched alone here, paired against the core `full` row; the accumulated features' "
                          "identity classifiers, removed; and triplet with label smoothing together (the baseline's "
                          "recipe on the full model).",
                 "pairs": [("full_m1", "full"), ("full_triplet", "full"), ("full_ls", "full"), ("full_noheads", "full"),
                           ("full_triplet_ls", "full"), ("full_triplet_ls", "baseline")],
                 "pair_rows": CORE_ROWS, "pairs_from": ("core",)},
    "space": {"ids": 300, "budget": BUDGET, "seeds": SEEDS5, "rows": SPACE_ROWS, "variation": None,
              "title": "3b. Where the alignment acts: the pooled features, centred by their batch mean, or after the BN-neck",
              "about": "The baseline + CM-EMD on the global feature, with the cost on the batch-centred, "
                       "L2-normalised pooled features instead of the pooled ones, or on the L2-normalised BN-neck "
                       "output (the test feature); there, the other alignments (all-pairs, hetero-centre, the "
                       "Sinkhorn plan, MMD) and lambda 0.5 / 2; the full model with its cost on the BN-neck outputs "
                       "(with the triplet, or the baseline's whole recipe at lambda 1 and 9: L_emd is the mean over "
                       "its 9 granularities); paired with the core rows.",
              "pairs": [("centered05_global", "emd_global"), ("centered1_global", "emd_global"),
                        ("centered05_global", "baseline"), ("centered1_global", "baseline"),
                        ("bn1_global", "baseline"), ("bn2_global", "baseline"), ("bn1_global", "emd_global"),
                        ("bn1_global", "bn1_allpairs_global"), ("bn1_allpairs_global", "baseline"),
                        ("bn1_global", "bn1_hetero_global"), ("bn1_hetero_global", "baseline"),
                        ("full_bn1", "full"), ("full_bn1", "baseline"), ("full_bn1_global", "full"),
                        ("full_bn1_global", "baseline"), ("full_bn1_global", "bn1_global"),
                        ("full_bn1_global_dl", "full_bn1_global"), ("full_bn1_global_triplet", "full_bn1_global"),
                        ("full_bn1_global_dl", "full"), ("full_bn1_global_triplet", "full"),
                        ("full_bn1_global_triplet", "full_triplet"), ("full_bn1_global_triplet", "bn1_global"),
                        ("full_bn1_triplet", "full_bn1_global_triplet"), ("full_bn1_triplet", "full_triplet"),
                        ("full_bn1_triplet", "bn1_global"),
                        ("bn05_global", "bn1_global"), ("bn05_hetero_global", "bn1_hetero_global"),
                        ("bn2_hetero_global", "bn1_hetero_global"), ("bn05_global", "bn05_hetero_global"),
                        ("bn1_global", "bn1_sinkhorn_global"), ("bn1_sinkhorn_global", "baseline"),
                        ("bn1_global", "bn1_mmd_global"), ("bn1_mmd_global", "baseline"),
                        ("full_bn1_recipe", "bn1_global"), ("full_bn1_recipe", "full_bn1_triplet"),
                        ("full_bn1_recipe", "baseline"), ("full_bn9_recipe", "full_bn1_recipe"),
                        ("full_bn9_recipe", "bn1_global"), ("full_bn9_recipe", "baseline")],
              "pair_rows": {**CORE_ROWS, **SETTINGS_ROWS}, "pairs_from": ("core", "settings")},
    "variation": {"ids": 300, "budget": BUDGET, "seeds": [0, 1, 2], "rows": VARIATION_ROWS,
                  "variation": row_variation,
                  "title": "4. Intra-identity variation: does CM-EMD's advantage over all-pairs grow with it?",
                  "about": "The generator's `variation` (view / pose / box changes between images of one person) at "
                           "0.2 and 0.7 beside the calibrated default 0.4 (the core rows, seeds 0-2); same budget.",
                  "pairs": [(f"full_v{v}", f"full_allpairs_v{v}") for v in VARIATIONS]},
    "variation_bn": {"ids": 300, "budget": BUDGET, "seeds": [0, 1, 2, 3], "rows": VARIATION_BN_ROWS,
                     "variation": row_variation,
                     "title": "4b. Intra-identity variation, with the alignment on the BN-neck output",
                     "about": "The same sweep for the baseline + CM-EMD against + all-pairs, both on the L2-normalised "
                              "BN-neck output of the global feature, lambda 1 (the rows of section 3b); the default "
                              "0.4 is the space group's runs; same budget.",
                     "pairs": [("bn1_global_v0.2", "bn1_allpairs_global_v0.2"), ("bn1_global", "bn1_allpairs_global"),
                               ("bn1_global_v0.7", "bn1_allpairs_global_v0.7")],
                     "pair_rows": SPACE_ROWS, "pairs_from": ("space",)},
}


def synth_config(ids: int, variation: float | None):
    from cmemd.data.synth import SynthConfig

    kw = {} if variation is None else {"variation": variation}
    return SynthConfig(ids=ids, images_per_camera=(10, 12), seed=0, split=SPLIT, **kw)


def ensure_data(ids: int, variation: float | None) -> Path:
    from cmemd.data.synth import NUISANCE_FILE, generate_sysu

    cfg = synth_config(ids, variation)
    tag = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    root = WORK / f"synth_{ids}_{tag}"
    summary = root / "synth_summary.json"
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / ".data.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # shards started together: one generates, the others wait
        ok = summary.is_file() and json.loads(summary.read_text()).get("config") == cfg.to_dict()
        if not ok or not (root / NUISANCE_FILE).is_file():
            shutil.rmtree(root, ignore_errors=True)
            print(f"generating {ids} identities (variation {cfg.variation}) into {root}", flush=True)
            generate_sysu(root, cfg, workers=2)
    return root


def _stable(cfg_dict: dict) -> dict:
    """The settings that define a run (paths left out: they differ between machines)."""
    d = json.loads(json.dumps(cfg_dict))
    d["data"].pop("root", None), d["data"].pop("cache_dir", None), d["run"].pop("out_dir", None)
    return d


# Options added to the project after runs were saved, and why their value cannot change a saved run's outcome.
NEUTRAL_NEW_KEYS = {
    ("data", "channel_aug_kind"): "the study trains with data.channel_aug=0, so no channel augmentation of either kind",
}


def same_settings(saved: dict, new: dict) -> bool:
    """Whether a saved run is the run ``new`` asks for. An option the saved config does not have (added to the
    project later) matches when ``new`` leaves it at its default or it is listed in NEUTRAL_NEW_KEYS."""
    from cmemd.config import TrainConfig

    default = _stable(TrainConfig().to_dict())
    for section, values in new.items():
        old = saved.get(section, {})
        for key, value in values.items():
            if key in old:
                if old[key] != value:
                    return False
            elif value != default.get(section, {}).get(key) and (section, key) not in NEUTRAL_NEW_KEYS:
                return False
    return True


def run_path(group: str, row: str, seed: int) -> Path:
    return RUNS / group / row / f"seed{seed}.json"


def work_dir(group: str, row: str, seed: int) -> Path:
    """The run's training directory (checkpoints, metrics.jsonl); machine-local, not committed."""
    return WORK / group / row / f"seed{seed}"


def run_diagnostics(model, cfg, data: Path) -> dict[str, float]:
    """The flat diagnostics record of ``model`` on the SYSU-layout test set at ``data`` (queries + all-search pool),
    as the config's loss sees them."""
    from cmemd.app.run import config_diagnostics
    from cmemd.data.sysu import SYSUMM01
    from cmemd.engine.diagnostics import diagnostics_record, nuisance_of

    ds = SYSUMM01(data)
    test = ds.query() + ds.gallery_pool("all")
    return diagnostics_record(config_diagnostics(model, test, cfg, nuisance=nuisance_of(test, data)))


def write_run(done: Path, rec: dict) -> None:
    """Write a run file atomically (a half-written file would be read as a finished run)."""
    done.parent.mkdir(parents=True, exist_ok=True)
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    tmp.replace(done)


def run_one(group: str, row: str, seed: int) -> dict:
    from cmemd.config import load_config
    from cmemd.app.run import train

    g = GROUPS[group]
    label, overrides = g["rows"][row]
    data = ensure_data(g["ids"], g["variation"](row) if callable(g["variation"]) else g["variation"])
    out = work_dir(group, row, seed)
    cfg = load_config("synth_cmemd",
                      [f"data.root={data}", f"run.out_dir={out}", f"run.seed={seed}", *g["budget"], *overrides])
    done = run_path(group, row, seed)
    if done.is_file():
        rec = json.loads(done.read_text())
        if same_settings(rec.get("config", {}), _stable(cfg.to_dict())):
            return rec
        print(f"{group}/{row} seed {seed}: the saved run used other settings; running it again", flush=True)
    saved = out / "config.yaml"
    if saved.is_file():
        import yaml

        if not same_settings(_stable(yaml.safe_load(saved.read_text())), _stable(cfg.to_dict())):
            shutil.rmtree(out)
    t0 = time.time()
    outcome = train(cfg, resume=(out / "last.pt").exists(), progress=False)
    hist = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [h for h in hist if h.get("kind") == "epoch"]
    diags = [h for h in hist if h.get("kind") == "diag"]
    rec = {
        "group": group, "row": row, "label": label, "seed": seed, "overrides": overrides,
        "config": _stable(cfg.to_dict()), "seconds": time.time() - t0,
        "results": {name: {"mean": r.mean, "std": r.std, "trials": [t["R1"] for t in r.rows()]}
                    for name, r in outcome.results.items()},
        "test_diagnostics": run_diagnostics(outcome.model, cfg, data),
        "last_epoch": {k: v for k, v in epochs[-1].items() if k.startswith(("norm_", "dead_", "zero_", "align", "ce_", "loss"))},
        "epochs": [{k: v for k, v in e.items() if k.startswith(("norm_", "dead_", "zero_", "align", "epoch"))} for e in epochs],
        "val_diagnostics": diags,
        "data": data.name,
    }
    write_run(done, rec)
    shutil.rmtree(out / "tensorboard", ignore_errors=True)
    r1 = rec["results"]["sysu all-search single-shot"]["mean"]["R1"]
    print(f"{group}/{row} seed {seed}: all-search R1 {100 * r1:.2f}, "
          f"gap ratio {rec['test_diagnostics']['gap_centre_ratio']:.2f} ({time.time() - t0:.0f} s)", flush=True)
    return rec


def backfill(group: str, row: str, seed: int) -> str:
    """Add test diagnostics that a finished run's file lacks (a measure added after it ran), computed on the run's
    own checkpoint; the stored gap ratio, recomputed from the same checkpoint, must come back unchanged, which
    checks that the checkpoint is the run's. Returns what was done, one word."""
    import torch

    from cmemd.app.run import load_trained

    done, ckpt = run_path(group, row, seed), work_dir(group, row, seed) / "last.pt"
    if not done.is_file():
        return "not-run"
    rec = json.loads(done.read_text())
    if not ckpt.is_file():
        return "no-checkpoint"
    model, cfg = load_trained(ckpt)
    if not same_settings(rec["config"], _stable(cfg.to_dict())):
        return "other-settings"
    if {"gap_mixing", "gap_overlap_share"} <= rec["test_diagnostics"].keys():
        return "complete"
    torch.set_num_threads(1)
    new = run_diagnostics(model, cfg, Path(cfg.data.root))
    old = rec["test_diagnostics"]["gap_centre_ratio"]
    if abs(new["gap_centre_ratio"] - old) > 1e-4:
        sys.exit(f"{ckpt}: its gap ratio is {new['gap_centre_ratio']:.6f}, the run file {done} says {old:.6f}: "
                 "the checkpoint is not the run's (delete the checkpoint, or the run file to run it again)")
    rec["test_diagnostics"].update({k: v for k, v in new.items() if k not in rec["test_diagnostics"]})
    write_run(done, rec)
    return "backfilled"


def pixel_purity(ids: int = 80) -> None:
    """Plan purity of plans computed on the images themselves (test ids of the cost group's data): how much view
    structure a cross-modality cost can find at all, before any learning; then the ceiling (the most same-view
    mass any plan can put on the test ids' groups) of each 300-id set the study trains on."""
    import torch
    from PIL import Image

    from cmemd.data.records import modality_index
    from cmemd.data.sysu import SYSUMM01
    from cmemd.engine.diagnostics import NUISANCE_NUMBERS, nuisance_of
    from cmemd.evaluation.modality import plan_purity, sample_identity_groups

    root = ensure_data(ids, None)
    ds = SYSUMM01(root)
    recs = ds.query() + ds.gallery_pool("all")
    nz = nuisance_of(recs, root)
    x = np.stack([np.asarray(Image.open(r.path).convert("L").resize((16, 32)), np.float32).ravel() for r in recs])
    x = x - x.mean(1, keepdims=True)
    groups = sample_identity_groups([r.pid for r in recs], [modality_index(r.modality) for r in recs], 4, draws=4)
    for name, f in (("grey pixels, centred per image", x),
                    ("distance of each pixel from the image's median (a silhouette proxy)",
                     np.abs(x - np.median(x, 1, keepdims=True)))):
        res = plan_purity(torch.from_numpy(f), groups, nz["view"], {n: nz[n] for n in NUISANCE_NUMBERS})
        print(f"{name}: {res.format()}")
    # The ceiling depends on the data and the seeded groups only, not on a model: the same for every run of a set.
    for v in (None, *VARIATIONS):
        root = ensure_data(300, v)
        ds = SYSUMM01(root)
        recs = ds.query() + ds.gallery_pool("all")
        groups = sample_identity_groups([r.pid for r in recs], [modality_index(r.modality) for r in recs], 4, draws=4)
        views = nuisance_of(recs, root)["view"]
        onehot = torch.from_numpy(np.equal.outer(views, np.unique(views)).astype(np.float32))
        res = plan_purity(onehot, groups, views)
        print(f"300-id set, variation {synth_config(300, v).variation}: same-view mass uniform "
              f"{100 * res.same_view_uniform:.1f}%, most a plan can reach {100 * res.same_view_max:.1f}% "
              f"(x{res.max_ratio:.2f} uniform)")


def load_runs(group: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in GROUPS[group]["rows"]:
        runs = [json.loads(p.read_text()) for p in sorted((RUNS / group / row).glob("seed*.json"))]
        if runs:
            out[row] = runs
    return out


def plan(groups: list[str]) -> list[tuple[str, str, int]]:
    """Seed-major across the groups: every row of every group gets seed 0 before any gets seed 1, so a study cut
    short (it spans sessions) has the broad picture first and the seeds to resolve it after."""
    seeds = sorted({s for g in groups for s in GROUPS[g]["seeds"]})
    return [(g, row, seed) for seed in seeds for g in groups if seed in GROUPS[g]["seeds"] for row in GROUPS[g]["rows"]]


def write_report(wall: float | None = None) -> None:
    from report import write  # noqa: the report lives beside this script

    write(GROUPS, load_runs, REPORT, OUT, COMMAND, wall)


def _strip(argv: list[str], flags=("--jobs", "--shard")) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif not a.startswith(tuple(f + "=" for f in flags)):
            out.append(a)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", nargs="*", default=None, help=f"subset of {list(GROUPS)}")
    ap.add_argument("--rows", nargs="*", default=None)
    ap.add_argument("--seeds", nargs="*", type=int, default=None,
                    help="seeds to run (default: each group's planned ones; others run too when named)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--shard", default="1/1")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--pixel-purity", action="store_true", help="plan purity of plans on raw pixels (a reference)")
    ap.add_argument("--backfill", action="store_true",
                    help="add the test diagnostics finished runs' files lack, from their checkpoints (on the "
                         "machine that ran them); nothing is trained")
    args = ap.parse_args()
    if args.pixel_purity:
        pixel_purity()
        return
    if args.backfill:
        for g in args.groups or list(GROUPS):
            for row in args.rows or GROUPS[g]["rows"]:
                for seed in args.seeds or GROUPS[g]["seeds"]:
                    if row in GROUPS[g]["rows"]:
                        print(f"{g}/{row} seed {seed}: {backfill(g, row, seed)}", flush=True)
        write_report()
        return
    t0 = time.time()
    if args.report_only:
        write_report()
        return
    groups = args.groups or list(GROUPS)
    # explicit seeds run even beyond a group's planned ones: more pairs for one comparison
    runs = plan(groups) if args.seeds is None else [(g, r, s) for s in args.seeds for g in groups for r in GROUPS[g]["rows"]]
    todo = [(g, r, s) for g, r, s in runs if not args.rows or r in args.rows]
    if args.jobs > 1:
        for g in groups:  # data first, once
            var = GROUPS[g]["variation"]
            for v in ({var(r) for r in GROUPS[g]["rows"]} if callable(var) else {var}):
                ensure_data(GROUPS[g]["ids"], v)
        procs = [subprocess.Popen([sys.executable, __file__, *_strip(sys.argv[1:]), "--shard", f"{k}/{args.jobs}"])
                 for k in range(1, args.jobs + 1)]
        codes = [p.wait() for p in procs]
        write_report(time.time() - t0)
        if any(codes):
            sys.exit(f"shard exit codes {codes}: rerun the same command to finish (finished runs are kept)")
        return
    k, n = (int(v) for v in args.shard.split("/"))
    for g, row, seed in todo[k - 1::n]:
        run_one(g, row, seed)
    if n == 1:
        write_report(time.time() - t0)


if __name__ == "__main__":
    main()
