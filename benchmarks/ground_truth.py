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

Epistemic apart from aleatoric (``--members E``, default 10): a region of feature space is left out of
training (within each shape, the responses beyond the 80th percentile along the features' first principal
component: the same mix of shapes as the rest, but where training never reached), next to the two-humped
responses. A QRM of E members (bootstrap refits on resampled training responses, `fit_member_heads`,
combined by the model's own `combine_members`) scores every held-out response. Measured: the AUROC
(`sklearn.metrics.roc_auc_score`) of the epistemic spread (std over the members of their expected
reward, `reward_epistemic_std`) and of that spread relative to the aleatoric width for detecting the
uncovered responses, of the aleatoric width (90 % interval of the combined quantiles) for detecting the
two-humped ones, and each signal on the other's task; also the width of the members' mixture, the
alternative combination rule (docs/design.md). The raw spread of bootstrap refits also grows with the label
noise (the mean of noisier labels is less certain, sigma / sqrt(n)); the relative spread removes that.
Target: epistemic spread and aleatoric width each >= 0.80 on their own kind, <= 0.65 on the other's.

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
from qrm_hf.modeling.modeling_qrm import combine_members, member_spread, mixture_quantiles
from qrm_hf.training.bootstrap import fit_member_heads
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
UNCOVERED_PERCENTILE = 80  # responses beyond it along the first principal component, per shape
MEMBERS = 10
AUROC_TARGET, CROSS_LIMIT = 0.80, 0.65


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


# ------------------------------------------------------------------------------- epistemic vs aleatoric


def uncovered_region(X, shapes, percentile: float = UNCOVERED_PERCENTILE) -> np.ndarray:
    """Mask [n] of the responses beyond `percentile` along the first principal component of X, per shape:
    a region of feature space with the same mix of shapes as the rest, which training will never see."""
    X = np.asarray(X, float)
    centred = X - X.mean(0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    projection = centred @ direction
    uncovered = np.zeros(len(X), dtype=bool)
    for shape in SHAPES:
        rows = np.asarray(shapes) == shape
        if rows.any():
            uncovered[rows] = projection[rows] > np.percentile(projection[rows], percentile)
    return uncovered


def member_signals(predictions: np.ndarray, levels) -> dict[str, np.ndarray]:
    """Signals of E members' quantiles [E, n, K] (each sorted): the epistemic spread (std of the members'
    expected rewards), the aleatoric width (central interval of the members combined as the model combines
    them) and the width of the members' equal-weight mixture (the alternative rule). Each [n]."""
    members = torch.as_tensor(predictions, dtype=torch.float32).transpose(0, 1)  # [n, E, K]
    combined = combine_members(members.unsqueeze(2))[:, 0]  # [n, K]
    weights = torch.ones(members.shape[:2])
    mixture = (
        mixture_quantiles(members, weights, torch.tensor(levels, dtype=torch.float32)) / members.shape[1]
    )
    spread, width = member_spread(members.mean(-1)), combined[:, -1] - combined[:, 0]
    return {
        "epistemic spread": spread.numpy(),
        "relative epistemic spread": (spread / width.clamp_min(1e-6)).numpy(),
        "aleatoric width": width.numpy(),
        "mixture width": (mixture[:, -1] - mixture[:, 0]).numpy(),
    }


def run_epistemic_study(
    X,
    shapes,
    length_scores,
    groups,
    members: int = MEMBERS,
    repetitions: int = 1,
    annotators: int = ANNOTATORS,
    uncovered=None,
    seed: int = 0,
    levels=LEVELS,
) -> dict:
    """AUROC of each signal of `member_signals` for detecting the uncovered and the two-humped held-out
    responses: {signal: {"uncovered": auroc, "two-humped": auroc}}, pooled over `repetitions` splits.

    `uncovered` [n] (default `uncovered_region`) is never trained on; the other held-out responses are the
    prompts `split_groups` holds out."""
    from sklearn.metrics import roc_auc_score

    X, shapes, s, groups = (
        np.asarray(X, float),
        np.asarray(shapes),
        np.asarray(length_scores),
        np.asarray(groups),
    )
    uncovered = uncovered_region(X, shapes) if uncovered is None else np.asarray(uncovered, bool)
    rng = np.random.default_rng(seed)
    signals, is_uncovered, is_humped = [], [], []
    for repetition in range(repetitions):
        heldout = split_groups(rng, groups, shapes) | uncovered
        train = np.flatnonzero(~heldout)
        labels = draw_labels(rng, shapes[train], s[train], annotators)
        responses = np.repeat(np.arange(len(train)), annotators)  # a response's annotators are drawn together
        fitted = fit_member_heads(
            X[train][responses], labels.reshape(-1, 1), responses, MultiQuantileRegressor(levels, alpha=0.003),
            members, seed=seed + repetition, desc="members",
        )  # fmt: skip
        predictions = np.stack([np.sort(heads.predict(X[heldout])[:, 0], axis=-1) for heads, _ in fitted])
        signals.append(member_signals(predictions, levels))
        is_uncovered.append(uncovered[heldout])
        is_humped.append(shapes[heldout] == "two-humped")
    targets = {"uncovered": np.concatenate(is_uncovered), "two-humped": np.concatenate(is_humped)}
    return {
        name: {task: float(roc_auc_score(truth, np.concatenate([row[name] for row in signals])))
               for task, truth in targets.items()}
        for name in signals[0]
    }  # fmt: skip


def epistemic_verdict(aurocs: dict) -> bool:
    """The epistemic spread and the aleatoric width each detect their own kind (>= AUROC_TARGET) and not the
    other's (<= CROSS_LIMIT)."""
    epistemic, aleatoric = aurocs["epistemic spread"], aurocs["aleatoric width"]
    return (
        min(epistemic["uncovered"], aleatoric["two-humped"]) >= AUROC_TARGET
        and max(epistemic["two-humped"], aleatoric["uncovered"]) <= CROSS_LIMIT
    )


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
    parser.add_argument("--members", type=int, default=MEMBERS, help="members of the epistemic study")
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
    aurocs = run_epistemic_study(
        X, shapes, scores, groups, members=args.members, repetitions=args.repetitions
    )
    uncovered = uncovered_region(X, shapes)
    print(f"\nAUROC over held-out responses ({int(uncovered.sum())} uncovered: beyond the {UNCOVERED_PERCENTILE}th "
          f"percentile of the first principal component per shape; QRM of {args.members} members)")  # fmt: skip
    print(f"{'signal':<18} {'uncovered':>10} {'two-humped':>11}")
    for name, row in aurocs.items():
        print(f"{name:<18} {row['uncovered']:10.3f} {row['two-humped']:11.3f}")
    print(f"({time.perf_counter() - started:.0f} s)")
    print(
        f"RESULT two-humped W1, QRM / best baseline = {ratio:.2f}, target <= {1 - TARGET:.2f}: "
        f"{'PASS' if met else 'FAIL'}"
    )
    print(
        f"RESULT epistemic spread and aleatoric width each >= {AUROC_TARGET} on their own kind, <= "
        f"{CROSS_LIMIT} on the other's: {'PASS' if epistemic_verdict(aurocs) else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
