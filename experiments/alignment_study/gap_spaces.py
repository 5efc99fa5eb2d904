"""Modality gap of a trained model in each of its feature spaces: does the alignment close the gap where it acts
(the pooled features, L2-normalised) even where the test feature (BN-neck) keeps it?

    python experiments/alignment_study/gap_spaces.py runs/demo            # the run's own data root, test ids
    python experiments/alignment_study/gap_spaces.py runs/demo --split train   # the ids the model trained on (where the loss acted)
    python experiments/alignment_study/gap_spaces.py RUN_DIR --root DATA  # another SYSU-layout root

Prints the gap ratio (and its parts, with the distance between identities' centres), the modality probe and the
within/cross-modality Rank-1 (cmemd.evaluation.modality) of the test feature, the global feature as pooled /
L2-normalised / batch-centred / standardised / BN-neck, and of each local stripe and accumulated prefix
(L2-normalised), on the test (or training) ids of the SYSU-MM01 layout.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def l2(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def identity_separation(x: np.ndarray, pids: np.ndarray, mods: np.ndarray) -> float:
    """Root mean squared distance between different identities' centres within one modality (averaged over the
    two modalities), on L2-normalised features as modality_gap measures: the scale the modality gap is to be read
    against for retrieval."""
    x = l2(x)
    out = []
    for m in np.unique(mods):
        ids = np.unique(pids[mods == m])
        c = np.stack([x[(pids == i) & (mods == m)].mean(0) for i in ids])
        d2 = ((c[:, None] - c[None]) ** 2).sum(-1)
        out.append(d2[~np.eye(len(ids), dtype=bool)].mean())
    return float(np.sqrt(np.mean(out)))


def main() -> None:
    from cmemd.app.evaluate import load_trained
    from cmemd.data.records import modality_index
    from cmemd.data.sysu import SYSUMM01
    from cmemd.engine.extract import extract_outputs
    from cmemd.evaluation.modality import modality_gap

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a training run's out_dir (its last.pt is read)")
    ap.add_argument("--root", default=None, help="SYSU-layout data root [the run's data.root]")
    ap.add_argument("--split", choices=("test", "train"), default="test",
                    help="test ids (query + all-search gallery pool) or the training ids (train + val lists)")
    args = ap.parse_args()
    model, cfg = load_trained(args.run / "last.pt")
    ds = SYSUMM01(args.root or cfg.data.root)
    recs = ds.thermal() + ds.visible() if args.split == "test" else ds.train(include_val=True)
    f = extract_outputs(model, recs, ("test", "global_feat", "global_bn", "local_feats", "accumulated_feats"),
                        height=cfg.data.height, width=cfg.data.width, batch_size=256)
    pids = np.array([r.pid for r in recs])
    mods = np.array([modality_index(r.modality) for r in recs])
    cams = np.array([r.camid for r in recs])
    g = f["global_feat"]
    # modality_gap L2-normalises every feature first, so "pooled" and "pooled, L2" are one space
    spaces = {f"test ({cfg.model.test_feature})": f["test"], "global pooled (L2)": g,
              "global pooled, centred + L2": l2(g - g.mean(0)),
              "global pooled, standardised": (g - g.mean(0)) / g.std(0).clip(1e-6), "global BN-neck": f["global_bn"]}
    for name, key in (("local stripe", "local_feats"), ("accumulated prefix", "accumulated_feats")):
        if key in f:
            spaces.update({f"{name} {k + 1}, L2": l2(f[key][:, k]) for k in range(f[key].shape[1])})
    print(f"{args.run}: {len(set(pids))} {args.split} ids, {len(recs)} images")
    # gap ratio = centre distance / spread; "x sep" = centre distance / identity separation (between identities'
    # centres, same modality): below 1, an identity's thermal centre is nearer its visible one than other ids' are
    print(f"{'feature':34s} {'gap ratio':>9s} {'centre d':>8s} {'spread':>7s} {'id sep':>7s} {'x sep':>6s} "
          f"{'probe':>6s} {'v->v':>6s} {'t->t':>6s} {'t->v':>6s}")
    for name, x in spaces.items():
        m = modality_gap(x, pids, mods, cams)
        sep = identity_separation(np.asarray(x, np.float64), pids, mods)
        print(f"{name:34s} {m.centre_ratio:9.2f} {m.centre_distance:8.3f} {m.spread:7.3f} {sep:7.3f} "
              f"{m.centre_distance / sep:6.2f} {m.probe_accuracy:6.3f} {m.r1_v2v:6.3f} {m.r1_t2t:6.3f} {m.r1_t2v:6.3f}")


if __name__ == "__main__":
    main()
