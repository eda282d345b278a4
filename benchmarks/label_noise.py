"""Noisy preference labels: finding flipped pairs and training through them.

On the demo's preference pairs (`qrm demo`'s features of the embedded SmolLM2-135M-Instruct; 245
training pairs, 65 held-out pairs of unseen prompts), flip a known 20 % of the training labels with a
fixed seed, then measure:

1. how well each strength measure finds the flipped pairs (ROC AUC): the QRM's own probability
   P(R_chosen > R_rejected) from its reward distributions (the demo's heads, gating fitted on the noisy
   pairs), and the mean and the std of the expected-reward margins of a 10-member bootstrap ensemble
   (heads refitted on resampled ratings, gating on resampled noisy pairs; Secrets of RLHF II);
2. the held-out pair accuracy of gating networks fitted on the noisy labels: plain Bradley-Terry, each
   remedy (label smoothing 0.1, adaptive margin 1, flip below 0.5, drop below 0.5; the strengths are the
   QRM's own probability, as `gating: {strength: probability}` computes them), and the clean labels
   (upper bound); how much of the accuracy the noise cost the best remedy recovers;
3. the time of the 10-member bootstrap ensemble vs one fit (heads with the fast solver + gating).

The remedies' settings are fixed in advance, not tuned on the held-out pairs. Everything is repeated for
`--seeds` noise seeds and averaged. Targets: best AUC >= 0.85; the best remedy recovers >= half of the
accuracy the noise cost. Run: `.venv/bin/python benchmarks/label_noise.py` (features are extracted once
into --output-dir and re-used; ~15 min on an idle 2-core CPU, most of it the gating fits).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parent.parent
REMEDIES = {
    "label smoothing 0.1": {"label_smoothing": 0.1},
    "adaptive margin 1.0": {"adaptive_margin": 1.0},
    "flip below 0.5": {"flip_below": 0.5},
    "drop below 0.5": {"drop_below": 0.5},
}


def demo_features(output_dir: Path):
    """The demo run's features (extract + heads stages of `qrm train demo.yaml`) and the held-out pairs."""
    from qrm_hf.training.demo import demo_config
    from qrm_hf.training.demo_data import DEMO_DATA
    from qrm_hf.training.pipeline import _read_state, _write_state, build_plan, stage_status
    from qrm_hf.training.stages import DatasetSpec, ExtractionSettings, extract_features

    config = demo_config(output_dir)
    state = _read_state(output_dir)
    for stage in build_plan(config):
        if not (stage.name.startswith("extract") or stage.name == "fit-quantiles"):
            continue
        if stage_status(stage, state) != "up to date":
            print(f"running {stage.name} (once; re-used by later runs)", flush=True)
            state[stage.name] = {"fingerprint": stage.fingerprint(), "complete": False}
            _write_state(output_dir, state)
            stage.run()
            state[stage.name] = {"fingerprint": stage.fingerprint(), "complete": True}
            _write_state(output_dir, state)
    heldout = output_dir / "features" / "preference" / "pairs_heldout"
    if (
        not (heldout / "manifest.json").exists()
        or not json.loads((heldout / "manifest.json").read_text())["complete"]
    ):
        spec = DatasetSpec(
            name="pairs_heldout", kind="preference", source=str(DEMO_DATA / "pairs_heldout.jsonl"),
            prompt="prompt", chosen="chosen", rejected="rejected",
        )  # fmt: skip
        settings = ExtractionSettings(max_length=1024, batch_size=8)
        extract_features(config.backbone, spec, heldout, settings=settings)
    features = output_dir / "features"
    return config, features / "attribute" / "ratings_train", features / "preference" / "pairs_train", heldout


def fit_gating_network(heads, pairs, settings, strength=None):
    """A `BradleyTerryGating` network on all `pairs` (no validation split) with `settings`."""
    from qrm_hf.training.gating import BradleyTerryGating, gating_sizes
    from qrm_hf.training.rewards import expected_rewards

    coef, intercept, names = heads
    gating = BradleyTerryGating(
        gating_sizes(names, coef.shape[-1], settings),
        learning_rate=settings.learning_rate,
        batch_size=settings.batch_size,
        epochs=settings.epochs,
        weight_decay=settings.weight_decay,
        validation_fraction=0.0,
        seed=settings.seed,
        label_smoothing=settings.label_smoothing,
        adaptive_margin=settings.adaptive_margin,
        flip_below=settings.flip_below,
        drop_below=settings.drop_below,
    )
    identity = torch.eye(len(names))
    chosen = expected_rewards(coef, identity, pairs.chosen, intercept)
    rejected = expected_rewards(coef, identity, pairs.rejected, intercept)
    return gating.fit(pairs.prompt, chosen, rejected, strength=strength).network_


def as_model(heads, network):
    from qrm_hf.training.bootstrap import HeadEnsemble

    coef, intercept, names = heads
    return HeadEnsemble(coef[None], intercept[None], torch.eye(len(names)), [network], [])


def accuracy(model, pairs) -> float:
    from qrm_hf.evaluation import pairwise_accuracy

    margins = model.margins(pairs)[0].numpy()
    return pairwise_accuracy(margins, np.zeros_like(margins))


def log_loss(model, pairs) -> float:
    """Held-out Bradley-Terry loss, mean -log sigmoid(margin): also sees how confident the ranking is."""
    return float(torch.nn.functional.softplus(-model.margins(pairs)[0].double()).mean())


def own_probability(model, pairs) -> np.ndarray:
    from qrm_hf.preference import preference_probability

    _, chosen = model.score(pairs.chosen, pairs.prompt)
    _, rejected = model.score(pairs.rejected, pairs.prompt)
    return preference_probability(chosen[0].double(), rejected[0].double()).numpy()


def plot(path: Path, flipped, probability, ensemble_mean) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, values, bins, label, edge in (
        (axes[0], probability, np.linspace(0, 1, 21), "QRM's P(R_chosen > R_rejected)", 0.5),
        (axes[1], ensemble_mean, 25, "bootstrap ensemble: mean margin", 0.0),
    ):
        bins = np.histogram_bin_edges(values, bins)
        axis.hist(values[~flipped], bins=bins, color="tab:blue", alpha=0.75, label="label kept")
        axis.hist(values[flipped], bins=bins, color="tab:red", alpha=0.75, label="label flipped (20 %)")
        axis.axvline(edge, color="black", linestyle="--", linewidth=1)
        axis.set(xlabel=label, ylabel="training pairs")
    axes[0].legend()
    fig.suptitle("Preference strength of the demo's training pairs, 20 % of labels flipped")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "outputs" / "bench_label_noise")
    parser.add_argument("--seeds", type=int, default=3, help="noise seeds to average over")
    parser.add_argument("--noise", type=float, default=0.2, help="fraction of training labels flipped")
    parser.add_argument("--ensemble", type=int, default=10, help="bootstrap ensemble size (0: none)")
    parser.add_argument(
        "--member-gating",
        choices=["refit", "shared"],
        default="refit",
        help="refit: each member refits the gating network on resampled noisy pairs (Secrets II's ensemble of "
        "reward models trained on the data); shared: members refit only the heads and share the plain noisy "
        "gating (10 gating fits cheaper, for a loaded machine)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (the gating fit's small matmuls run fastest on one)",
    )
    parser.add_argument("--plot", type=Path, help="histogram of the strengths (first seed) to this PNG")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from qrm_hf.training.bootstrap import PairFeatures, fit_bootstrap_heads
    from qrm_hf.training.quantile_regression import MultiQuantileRegressor
    from qrm_hf.training.settings import PAPER_LEVELS
    from qrm_hf.training.stages import load_heads

    config, ratings_dir, pairs_dir, heldout_dir = demo_features(args.output_dir)
    coef, intercept, info = load_heads(args.output_dir / "heads")
    heads = (coef, intercept, info["attribute_names"])
    train, heldout = PairFeatures.from_dirs(pairs_dir), PairFeatures.from_dirs(heldout_dir)
    settings = replace(config.gating, validation_fraction=0.0)
    n_flipped = int(round(args.noise * len(train)))
    print(
        f"Demo pairs: {len(train)} training ({n_flipped} flipped per seed), {len(heldout)} held-out; heads "
        f"{info['solver']} ({len(info['attribute_names'])} attributes x {len(info['quantile_levels'])} levels); "
        f"gating {settings.hidden_dim}x{settings.n_hidden}, {settings.epochs} epochs, batch {settings.batch_size}; "
        f"{args.seeds} noise seeds, ensemble members {args.member_gating} the gating, {torch.get_num_threads()} threads",
        flush=True,
    )
    clean_model = as_model(heads, fit_gating_network(heads, train, settings))
    clean, clean_loss = accuracy(clean_model, heldout), log_loss(clean_model, heldout)

    rows = {name: [] for name in ("auc_probability", "auc_mean", "auc_std", "plain", *REMEDIES)}
    losses = {name: [] for name in ("plain", *REMEDIES)}
    timings = {}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        flipped = np.zeros(len(train), dtype=bool)
        flipped[rng.choice(len(train), n_flipped, replace=False)] = True
        noisy = train.flipped(flipped)

        started = time.perf_counter()
        if args.ensemble:  # timed only to compare with the ensemble
            MultiQuantileRegressor(PAPER_LEVELS).fit(*_ratings(ratings_dir, info["attribute_names"]))
        heads_seconds = time.perf_counter() - started
        started = time.perf_counter()
        plain = as_model(heads, fit_gating_network(heads, noisy, settings))
        gating_seconds = time.perf_counter() - started
        started = time.perf_counter()
        refit = args.member_gating == "refit"
        ensemble = args.ensemble and fit_bootstrap_heads(
            ratings_dir, args.ensemble, seed=seed, estimator=MultiQuantileRegressor(PAPER_LEVELS),
            attribute_names=info["attribute_names"], pair_features=noisy if refit else None,
            gating_settings=settings, gating_network=None if refit else plain.gating[0],
        )  # fmt: skip
        ensemble_seconds = time.perf_counter() - started
        timings.setdefault("one", []).append(heads_seconds + gating_seconds)
        timings.setdefault("ensemble", []).append(ensemble_seconds)

        probability = own_probability(plain, noisy)
        rows["auc_probability"].append(roc_auc_score(flipped, -probability))
        if ensemble:
            strength = ensemble.strength(noisy)
            rows["auc_mean"].append(roc_auc_score(flipped, -strength.mean))
            rows["auc_std"].append(roc_auc_score(flipped, strength.std))
        else:  # --ensemble 0: the QRM's own strength only
            rows["auc_mean"].append(float("nan"))
            rows["auc_std"].append(float("nan"))
        rows["plain"].append(accuracy(plain, heldout))
        losses["plain"].append(log_loss(plain, heldout))
        for name, remedy in REMEDIES.items():
            network = fit_gating_network(heads, noisy, replace(settings, **remedy), strength=probability)
            rows[name].append(accuracy(as_model(heads, network), heldout))
            losses[name].append(log_loss(as_model(heads, network), heldout))
        if seed == 0 and args.plot and ensemble:
            plot(args.plot, flipped, probability, strength.mean)
        print(
            f"seed {seed}: AUC probability {rows['auc_probability'][-1]:.3f}, ensemble mean "
            f"{rows['auc_mean'][-1]:.3f}, std {rows['auc_std'][-1]:.3f}; held-out accuracy plain "
            f"{rows['plain'][-1]:.3f}, "
            + ", ".join(f"{name} {rows[name][-1]:.3f}" for name in REMEDIES)
            + "; held-out BT loss "
            + ", ".join(f"{name} {values[-1]:.4f}" for name, values in losses.items())
            + f"; one fit {timings['one'][-1]:.1f} s, ensemble {ensemble_seconds:.1f} s",
            flush=True,
        )

    mean = {name: float(np.mean(values)) for name, values in rows.items()}
    spread = {name: (float(np.min(values)), float(np.max(values))) for name, values in rows.items()}
    print(f"\nFinding the {n_flipped} flipped pairs among {len(train)} (ROC AUC, mean [min, max] over seeds)")
    labels = {
        "auc_probability": "QRM's own P(chosen > rejected)",
        "auc_mean": f"ensemble of {args.ensemble}: mean margin",
        "auc_std": f"ensemble of {args.ensemble}: std of margins",
    }
    for key, label in labels.items():
        print(f"  {label:<38} {mean[key]:.3f}  [{spread[key][0]:.3f}, {spread[key][1]:.3f}]")
    best_auc = max((key for key in labels if not np.isnan(mean[key])), key=mean.get)
    print(f"\nHeld-out pairs ({len(heldout)}), gating fitted on noisy labels: accuracy [min, max]; BT loss")
    print(f"  {'clean labels (upper bound)':<38} {clean:.3f}                  {clean_loss:.4f}")
    for name in ("plain", *REMEDIES):
        label = "plain Bradley-Terry" if name == "plain" else name
        print(
            f"  {label:<38} {mean[name]:.3f}  [{spread[name][0]:.3f}, {spread[name][1]:.3f}]  "
            f"{np.mean(losses[name]):.4f}"
        )
    loss_cost = np.mean(losses["plain"]) - clean_loss
    best_loss = min(REMEDIES, key=lambda name: np.mean(losses[name]))
    print(
        f"  BT loss: noise cost {loss_cost:+.4f}; best remedy {best_loss!r} recovers "
        f"{(np.mean(losses['plain']) - np.mean(losses[best_loss])) / loss_cost:.0%} of it"
    )
    cost = clean - mean["plain"]
    best = max(REMEDIES, key=mean.get)
    recovered = (mean[best] - mean["plain"]) / cost if cost > 0 else float("nan")
    print(
        f"  noise cost {cost:+.3f}; best remedy {best!r} recovers {recovered:.0%} of it"
        if cost > 0
        else f"  noise cost {cost:+.3f}: the noisy labels cost no held-out accuracy, nothing to recover"
    )
    one, many = float(np.median(timings["one"])), float(np.median(timings["ensemble"]))
    if not args.ensemble:
        many = float("nan")
    print(
        f"\nTime: one fit (heads, fast solver, + gating) {one:.1f} s; {args.ensemble}-member bootstrap ensemble "
        f"({'heads + gating' if args.member_gating == 'refit' else 'heads'} refitted) {many:.1f} s "
        f"({many / one:.1f}x), median over seeds"
    )
    auc_ok = mean[best_auc] >= 0.85
    remedy_ok = cost > 0 and recovered >= 0.5
    print(
        f"RESULT best AUC {mean[best_auc]:.3f} ({labels[best_auc]}) target >= 0.85: {'PASS' if auc_ok else 'FAIL'}; "
        f"noise cost {cost:+.3f}, best remedy {best} recovers "
        + (f"{recovered:.0%}" if cost > 0 else "n/a")
        + f" target >= 50%: {'PASS' if remedy_ok else 'FAIL'}; ensemble {many / one:.1f}x one fit"
    )
    return 0


def _ratings(directory, names):
    from qrm_hf.training.features import load_labelled

    return load_labelled([directory], names)


if __name__ == "__main__":
    sys.exit(main())
