"""Ground truth: does a QRM recover reward distributions that are known exactly?

Real features of real texts, labels drawn from known distributions, so every prediction can be compared
with the truth itself rather than with a few noisy labels.

Set-up
    * Texts: the 259 hand-written (prompt, response) conversations of the demo data
      (``data/demo/source/prompts.yaml``: 70 prompts in 10 categories), encoded by the embedded
      SmolLM2-135M-Instruct exactly as ``qrm extract`` does (last-token hidden state; cached under
      ``outputs/ground_truth/``).
    * Truth, per response, on a [0, 1] scale, from two things a reader sees in the text: the topic of
      the prompt (its category) and the length of the answer, ``s = clip(log(words) / log(40), 0, 1)``:

        narrow      factual, math, coding questions     N(0.25 + 0.5 s, 0.04)
        wide        how-to and harmful requests          N(0.25 + 0.5 s, 0.15)
        two-humped  opinion, humour, borderline, blunt,  half the annotators (group A) N(0.75 + 0.2 s, 0.04),
                    political                            the other half (group B) N(0.25 - 0.2 s, 0.04):
                                                         opposite tastes that part further the longer the answer

    * Each training response gets 5 annotators (group drawn at random for two-humped ones); prompts
      are split 70/30 into train and held-out, stratified on the shape, over 5 seeded repetitions.
    * Models, fitted on the same features and labels: the QRM heads (`MultiQuantileRegressor`,
      19 levels, the paper's alpha 0.003; with ``--cv-alpha`` also the penalty chosen by 3-fold
      cross-validation, 18 more fits per repetition),
      ridge + cross-validated residual quantiles, and the heteroscedastic Gaussian (mean and log-std heads).

Reported on held-out responses, per shape (mean over responses and repetitions):
    * W1: the 1-Wasserstein distance between predicted and true quantile functions over the levels,
      ``mean_k |q_k - Q_true(tau_k)|`` (predictions sorted, as the model uses them);
    * CRPS (quantile-score form, `qrm_hf.evaluation.crps`) and the coverage of the central 80 % interval
      (`qrm_hf.evaluation.interval_coverage`), both on 200 fresh draws from the truth per response;
    * dip: the fraction of responses whose predicted quantiles show two humps, i.e. some gap between
      adjacent quantiles at least twice the median gap on its left and on its right (the implied density
      has a clear local minimum: never the case for one hump, whose gaps shrink towards the mode and
      grow after it).

Target: the QRM's W1 on two-humped responses at least 25 % below both baselines'.

Run: ``.venv/bin/python benchmarks/ground_truth.py [--repetitions 5]`` (a few minutes on an idle 2-core
CPU, most of it the first feature extraction). `tests/test_ground_truth.py` runs `run_study` on
synthetic features.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm

from qrm_hf.evaluation import crps, interval_coverage
from qrm_hf.training.demo_data import load_content
from qrm_hf.training.quantile_regression import (
    HeteroscedasticGaussian,
    MultiQuantileRegressor,
    RidgeResidualQuantiles,
)

ROOT = Path(__file__).resolve().parent.parent
LEVELS = np.round(np.linspace(0.05, 0.95, 19), 2)
SHAPES = ("narrow", "wide", "two-humped")
SHAPE_OF_CATEGORY = {
    "factual": "narrow",
    "math": "narrow",
    "coding": "narrow",
    "howto": "wide",
    "harmful": "wide",
    "opinion": "two-humped",
    "humor": "two-humped",
    "borderline": "two-humped",
    "blunt": "two-humped",
    "political": "two-humped",
}
MODE_SD = 0.04  # spread of each annotator group (and of the narrow shape)
WIDE_SD = 0.15
ANNOTATORS = 5
FRESH_DRAWS = 200
HELDOUT_FRACTION = 0.3
DIP_FACTOR = 2.0
TARGET = 0.25


# ------------------------------------------------------------------------------------------ the truth


def truth_parameters(shapes, length_scores):
    """Mixture of two normals per response: (means [n, 2], sd [n], weight of the first [n]).

    One-humped shapes use one component (weight 1)."""
    s = np.asarray(length_scores, dtype=float)
    shapes = np.asarray(shapes)
    centre = 0.25 + 0.5 * s
    means = np.column_stack([centre, centre])
    sd = np.where(shapes == "wide", WIDE_SD, MODE_SD)
    weight = np.ones(len(s))
    humped = shapes == "two-humped"
    means[humped] = np.column_stack([0.75 + 0.2 * s[humped], 0.25 - 0.2 * s[humped]])
    weight[humped] = 0.5
    return means, sd, weight


def true_quantiles(shapes, length_scores, levels=LEVELS) -> np.ndarray:
    """Exact quantiles [n, K] of each response's label distribution (bisection on the mixture CDF)."""
    means, sd, weight = truth_parameters(shapes, length_scores)
    levels = np.asarray(levels, dtype=float)

    def cdf(x):  # x [n, K]
        return weight[:, None] * norm.cdf((x - means[:, :1]) / sd[:, None]) + (
            1 - weight[:, None]
        ) * norm.cdf((x - means[:, 1:]) / sd[:, None])

    low = np.full((len(sd), len(levels)), means.min() - 10 * sd.max())
    high = np.full_like(low, means.max() + 10 * sd.max())
    for _ in range(60):  # interval / 2^60: exact to float precision
        middle = (low + high) / 2
        below = cdf(middle) < levels
        low, high = np.where(below, middle, low), np.where(below, high, middle)
    return (low + high) / 2


def draw_labels(rng, shapes, length_scores, draws: int) -> np.ndarray:
    """`draws` labels [n, draws] per response: each draw is an annotator of group A or B."""
    means, sd, weight = truth_parameters(shapes, length_scores)
    first = rng.random((len(sd), draws)) < weight[:, None]
    centre = np.where(first, means[:, :1], means[:, 1:])
    return centre + sd[:, None] * rng.normal(size=centre.shape)


# ------------------------------------------------------------------------------------------ measures


def wasserstein(predictions, truth) -> np.ndarray:
    """Mean over levels of |sorted prediction - true quantile|: [n, K], [n, K] -> [n]."""
    return np.abs(np.sort(predictions, axis=-1) - truth).mean(-1)


def has_dip(quantiles, factor: float = DIP_FACTOR) -> np.ndarray:
    """Two humps visible in quantiles [n, K]: some gap between adjacent quantiles >= `factor` x the median
    gap on its left and >= `factor` x the median gap on its right (at least two gaps on each side).

    One hump never qualifies: its gaps shrink towards the mode and grow after it, so every gap is at
    most the median on one of its sides. Medians, not minima, so one tiny gap of noisy estimates does not
    count as a hump.
    """
    gaps = np.diff(np.sort(np.asarray(quantiles, dtype=float), axis=-1), axis=-1)  # [n, K-1]
    dip = np.zeros(len(gaps), dtype=bool)
    for j in range(2, gaps.shape[1] - 2):
        left, right = np.median(gaps[:, :j], axis=-1), np.median(gaps[:, j + 1 :], axis=-1)
        dip |= (gaps[:, j] >= factor * left) & (gaps[:, j] >= factor * right)
    return dip


# ------------------------------------------------------------------------------------------ the study


def split_groups(rng, groups, shapes, fraction=HELDOUT_FRACTION) -> np.ndarray:
    """Held-out mask over responses: `fraction` of the groups (prompts) of each shape."""
    heldout = np.zeros(len(groups), dtype=bool)
    for shape in SHAPES:
        names = np.unique(groups[shapes == shape])
        chosen = rng.choice(names, max(1, round(fraction * len(names))), replace=False)
        heldout |= np.isin(groups, chosen)
    return heldout


def models(levels, cv_alpha: bool = False) -> dict:
    out = {"QRM (alpha 0.003)": MultiQuantileRegressor(levels, alpha=0.003)}
    if cv_alpha:
        out["QRM (alpha by CV)"] = MultiQuantileRegressor(levels, alpha="cv", cv=3)
    out["ridge + residual quantiles"] = RidgeResidualQuantiles(levels)
    out["heteroscedastic Gaussian"] = HeteroscedasticGaussian(levels)
    return out


def run_study(
    X,
    shapes,
    length_scores,
    groups,
    repetitions: int = 5,
    annotators: int = ANNOTATORS,
    cv_alpha: bool = False,
    seed: int = 0,
    levels=LEVELS,
) -> dict:
    """Fit every model on `repetitions` train/held-out splits; measures per model and shape.

    X [n, d] features of n responses, shapes [n] (one of SHAPES), length_scores [n] in [0, 1], groups [n]
    (the prompt of each response: splits never separate a prompt's responses). Returns
    {model: {shape: {"w1", "crps", "coverage80", "dip"}}} and "truth_dip" {shape: fraction}.
    """
    X, shapes, s, groups = (
        np.asarray(X, float),
        np.asarray(shapes),
        np.asarray(length_scores),
        np.asarray(groups),
    )
    rng = np.random.default_rng(seed)
    truth = true_quantiles(shapes, s, levels)
    collected: dict[str, dict[str, list]] = {}
    for _ in range(repetitions):
        heldout = split_groups(rng, groups, shapes)
        train = np.flatnonzero(~heldout)
        labels = draw_labels(rng, shapes[train], s[train], annotators)  # [n_train, annotators]
        X_train = np.repeat(X[train], annotators, axis=0)  # one row per (response, annotator)
        y_train = labels.reshape(-1, 1)
        fresh = draw_labels(rng, shapes[heldout], s[heldout], FRESH_DRAWS)  # [n_test, draws]
        for name, model in models(levels, cv_alpha).items():
            predictions = np.sort(
                model.fit(X_train, y_train).predict(X[heldout])[:, 0], axis=-1
            )  # [n_test, K]
            # each held-out response as its own "attribute": labels [draws, n_test], predictions [draws, n_test, K]
            per_draw = np.broadcast_to(predictions, (FRESH_DRAWS, *predictions.shape))
            rows = collected.setdefault(name, {"shape": [], "w1": [], "crps": [], "inside": [], "dip": []})
            rows["shape"].append(shapes[heldout])
            rows["w1"].append(wasserstein(predictions, truth[heldout]))
            rows["crps"].append(crps(fresh.T, per_draw, levels))
            rows["inside"].append(interval_coverage(fresh.T, per_draw, levels, 0.8))
            rows["dip"].append(has_dip(predictions))
    results: dict = {"truth_dip": {shape: float(has_dip(truth[shapes == shape]).mean()) for shape in SHAPES}}
    for name, rows in collected.items():
        shape_of = np.concatenate(rows["shape"])
        results[name] = {
            shape: {
                "w1": float(np.concatenate(rows["w1"])[shape_of == shape].mean()),
                "crps": float(np.concatenate(rows["crps"])[shape_of == shape].mean()),
                "coverage80": float(np.concatenate(rows["inside"])[shape_of == shape].mean()),
                "dip": float(np.concatenate(rows["dip"])[shape_of == shape].mean()),
                "responses": int((shape_of == shape).sum()),
            }
            for shape in SHAPES
        }
    return results


def verdict(results: dict) -> tuple[float, bool]:
    """(QRM W1 on two-humped / best baseline's, target met) with the better of the two QRM fits."""
    qrm = min(results[name]["two-humped"]["w1"] for name in results if name.startswith("QRM"))
    baselines = min(
        results[name]["two-humped"]["w1"]
        for name in ("ridge + residual quantiles", "heteroscedastic Gaussian")
    )
    return qrm / baselines, qrm <= (1 - TARGET) * baselines


# ------------------------------------------------------------------------------------------ real texts


def demo_conversations():
    """(prompt, response, category, prompt key) of every hand-written demo response."""
    return [
        (prompt.text, response.text, prompt.category, prompt.key)
        for prompt in load_content().prompts
        for response in prompt.responses
    ]


def embed(conversations, cache_dir: Path = ROOT / "outputs" / "ground_truth") -> np.ndarray:
    """Response embeddings [n, H] of the embedded SmolLM2 (as `qrm extract`), cached by content."""
    from safetensors.torch import load_file, save_file

    from qrm_hf.chat import encode_conversation
    from qrm_hf.training.stages import load_extraction_backbone

    digest = hashlib.sha256(repr([c[:2] for c in conversations]).encode()).hexdigest()[:16]
    path = cache_dir / f"smollm2-{digest}.safetensors"
    if path.exists():
        return load_file(str(path))["embeddings"].double().numpy()
    loaded = load_extraction_backbone("embedded:smollm2")
    sequences = [
        encode_conversation(loaded.tokenizer, messages=[{"role": "user", "content": p}, {"role": "assistant", "content": r}])
        for p, r, *_ in conversations
    ]  # fmt: skip
    embeddings, _ = loaded.encoder.encode(sequences)
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": embeddings.contiguous()}, str(path))
    return embeddings.double().numpy()


def length_score(text: str) -> float:
    return float(np.clip(np.log(len(text.split())) / np.log(40), 0, 1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument(
        "--cv-alpha", action="store_true", help="also fit the QRM with the penalty chosen by CV"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    started = time.perf_counter()
    conversations = demo_conversations()
    X = embed(conversations)
    shapes = np.array([SHAPE_OF_CATEGORY[category] for _, _, category, _ in conversations])
    scores = np.array([length_score(response) for _, response, *_ in conversations])
    groups = np.array([key for *_, key in conversations])
    counts = ", ".join(f"{shape} {int((shapes == shape).sum())}" for shape in SHAPES)
    print(f"{len(conversations)} demo responses ({counts}), SmolLM2 features [{X.shape[0]}, {X.shape[1]}], "
          f"{ANNOTATORS} annotators each, {args.repetitions} splits 70/30 by prompt")  # fmt: skip
    results = run_study(X, shapes, scores, groups, repetitions=args.repetitions, cv_alpha=args.cv_alpha)
    print(f"true quantiles with a visible dip: {results['truth_dip']}")
    print(f"{'model':<28} {'shape':<11} {'W1':>7} {'CRPS':>7} {'cov80':>6} {'dip':>5}  (held-out responses)")
    for name, per_shape in results.items():
        if name == "truth_dip":
            continue
        for shape, row in per_shape.items():
            print(f"{name:<28} {shape:<11} {row['w1']:7.4f} {row['crps']:7.4f} {row['coverage80']:6.3f} "
                  f"{row['dip']:5.2f}  ({row['responses']})")  # fmt: skip
    ratio, met = verdict(results)
    print(f"({time.perf_counter() - started:.0f} s)")
    print(
        f"RESULT two-humped W1, QRM / best baseline = {ratio:.2f}, target <= {1 - TARGET:.2f}: "
        f"{'PASS' if met else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
