"""`qrm preference-strength`: how strongly a QRM (and a bootstrap ensemble of it) prefers each pair's chosen response.

One row per pair: the expected-reward margin, the margin over the pooled spread and P(R_chosen > R_rejected)
from the reward distributions (`qrm_hf.preference`); with `--features`, the mean and standard deviation of
the margins of an ensemble of heads (and gating networks) refitted on bootstrap resamples of those
features (`qrm_hf.training.bootstrap`). Pairs with a negative (mean) margin are likely mislabelled, pairs
whose |mean| is small against its spread ambiguous (Secrets of RLHF II).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PAIR_COLUMNS = ("prompt", "chosen", "rejected")


def check_pair_rows(rows: list[dict], path: str) -> None:
    """Every row needs `chosen` and `rejected`, and `prompt` unless both sides are chat lists."""
    from .data import row_location

    for number, row in enumerate(rows):
        needed = ["chosen", "rejected"]
        if not (isinstance(row.get("chosen"), list) and isinstance(row.get("rejected"), list)):
            needed.insert(0, "prompt")
        missing = [column for column in needed if column not in row]
        if missing:
            raise ValueError(
                f"{row_location(rows, number, path)}: missing column(s) {missing}; a pairs file has the columns "
                f"{list(PAIR_COLUMNS)} (or `chosen` / `rejected` chat lists). Columns found: {sorted(row)}."
            )


def _feature_dirs(model, directories):
    """Split `--features` into attribute and preference directories, checked against the model's backbone."""
    from .training.features import check_features_fit_model

    settings = check_features_fit_model(model, directories)
    attribute = [d for d in directories if settings[str(d)]["kind"] == "attribute"]
    preference = [d for d in directories if settings[str(d)]["kind"] == "preference"]
    if not attribute:
        raise ValueError(
            "--features needs at least one attribute (rating) feature directory to refit the heads."
        )
    return attribute, preference


def _check_heads_fit_features(model, attribute_dirs, names) -> None:
    """The model's own heads must predict the ratings of the features better than a constant does.

    Features of another backbone with the same hidden size pass the manifest checks; the model's heads
    read them as noise, which this catches.
    """
    import numpy as np
    import torch

    from .evaluation import pinball_loss
    from .modeling.modeling_qrm import combine_members, member_quantiles
    from .training.features import load_labelled

    X, Y = load_labelled(attribute_dirs, names)
    with torch.no_grad():  # the heads before the reward transform: what was fitted to the ratings
        raw = model.regression_layer(torch.tensor(X, dtype=torch.float32))
        members = member_quantiles(raw, model.config.num_members, len(names), torch.nn.Identity(), True)
        raw = combine_members(members)
    levels = model.config.quantile_levels
    heads = np.nanmean(pinball_loss(Y, raw.double().numpy(), levels))
    constant = np.nanquantile(Y, levels, axis=0).T[None]  # [1, M, K]: each attribute's label quantiles
    baseline = np.nanmean(pinball_loss(Y, np.broadcast_to(constant, raw.shape), levels))
    if not heads < baseline:
        raise ValueError(
            f"The model's quantile heads predict the ratings in {[str(d) for d in attribute_dirs]} worse than a "
            f"constant (pinball loss {heads:.4f} vs {baseline:.4f}): these features were not extracted with "
            "the model's backbone."
        )


def _plot(path, probability, ensemble_mean=None):
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 if ensemble_mean is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.8), squeeze=False)
    axis = axes[0, 0]
    axis.hist(probability, bins=np.linspace(0, 1, 21), color="tab:blue", edgecolor="white")
    axis.axvline(0.5, color="black", linewidth=1, linestyle="--")
    axis.set(
        xlabel="P(R_chosen > R_rejected)", ylabel="pairs", title="Preference strength (QRM distribution)"
    )
    if ensemble_mean is not None:
        axis = axes[0, 1]
        axis.hist(ensemble_mean, bins=30, color="tab:orange", edgecolor="white")
        axis.axvline(0, color="black", linewidth=1, linestyle="--")
        axis.set(
            xlabel="mean margin of the bootstrap ensemble",
            ylabel="pairs",
            title="Ensemble preference strength",
        )
    from .io import save_figure

    return save_figure(fig, path, dpi=110)


def _preference_strength(args) -> None:
    from .cli_model import load_model
    from .cli_paths import check_writable
    from .data import read_jsonl
    from .preference import flag_pairs

    rows = read_jsonl(args.pairs)
    check_pair_rows(rows, args.pairs)
    if args.ensemble and not args.features:
        raise ValueError(
            "--ensemble refits the heads on bootstrap resamples of --features: give --features DIR."
        )
    check_writable(args.output, "output")
    check_writable(args.plot, "plot")
    model, tokenizer = load_model(args.model, args.revision, args.trust_remote_code)
    feature_dirs = None
    if args.features:
        feature_dirs = _feature_dirs(model, args.features)
        _check_heads_fit_features(model, feature_dirs[0], list(model.config.attribute_names))
    pairs = _score_pairs(model, tokenizer, rows, args)
    ensemble = _ensemble_strength(model, pairs, feature_dirs, args) if feature_dirs else None
    flags = flag_pairs(
        pairs["strength"].margin.numpy(),
        pairs["strength"].probability.numpy(),
        pairs["identical"],
        ensemble_mean=ensemble.mean if ensemble is not None else None,
        ensemble_std=ensemble.std if ensemble is not None else None,
        ambiguous_within=getattr(args, "ambiguous_within", None),
    )
    ids = [row.get("id", number) for number, row in enumerate(rows)]
    records = _pair_records(ids, pairs, ensemble, flags)
    _print_flags(args, ids, pairs, ensemble, flags)
    _write_outputs(args, records, pairs, ensemble)


def _score_pairs(model, tokenizer, rows: list[dict], args) -> dict:
    """The QRM's preference strength of every pair, with the embeddings the ensemble rescores: a dict of
    `strength` (`qrm_hf.preference.PreferenceStrength`, tensors [N]), `identical` [N] (both sides the same
    conversation), `prompt` / `chosen` / `rejected` embeddings [N, H]."""
    import torch

    from .data import row_location
    from .dataset_loading import preference_examples
    from .dataset_preset import DatasetPreset
    from .evaluation import unique_conversations
    from .preference import preference_strength
    from .scoring import conversation_embeddings, names_of_distinct, score_embeddings

    preset = DatasetPreset.custom(
        "preference", prompt="prompt", chosen="chosen", rejected="rejected", name=str(args.pairs)
    )
    pairs = preference_examples(rows, preset)
    # each distinct conversation is encoded once; chosen sides at even positions, rejected at odd ones
    conversations, index = unique_conversations([side for pair in pairs for side in pair])
    lines = [row_location(rows, i, args.pairs) for i in range(len(rows))]
    side_names = [f"{line} ({side})" for line in lines for side in ("chosen", "rejected")]
    response, prompt = conversation_embeddings(
        model, tokenizer, conversations, args.batch_size, args.max_length,
        row_names=names_of_distinct(index, side_names, len(conversations)),
    )  # fmt: skip
    chosen_rows, rejected_rows = torch.as_tensor(index[0::2]), torch.as_tensor(index[1::2])
    chosen_out = score_embeddings(model, response[chosen_rows], prompt[chosen_rows], lines)
    rejected_out = score_embeddings(model, response[rejected_rows], prompt[chosen_rows], lines)
    return {
        "strength": preference_strength(
            chosen_out.reward_quantiles.double(), rejected_out.reward_quantiles.double()
        ),
        "identical": (chosen_rows == rejected_rows).numpy(),
        "prompt": prompt[chosen_rows],
        "chosen": response[chosen_rows],
        "rejected": response[rejected_rows],
    }


def _ensemble_strength(model, pairs: dict, feature_dirs, args):
    """The margins of a bootstrap ensemble refitted on `feature_dirs` = (attribute, preference) directories
    (`qrm_hf.training.bootstrap`), with the model's gating network when there are no preference features."""
    from .training.bootstrap import PairFeatures, fit_bootstrap_heads
    from .training.quantile_regression import MultiQuantileRegressor
    from .training.settings import GatingSettings, HeadsSettings

    attribute_dirs, preference_dirs = feature_dirs
    config = model.config
    heads = HeadsSettings(alpha=args.alpha, solver=args.solver)
    gating_settings = GatingSettings(
        hidden_dim=config.gating_hidden_dim,
        n_hidden=config.gating_n_hidden,
        temperature=config.gating_temperature,
        batch_norm=config.gating_batch_norm,
        epochs=args.gating_epochs,
        batch_size=args.gating_batch_size,
        learning_rate=args.gating_learning_rate,
    )
    members = fit_bootstrap_heads(
        attribute_dirs,
        n_models=args.ensemble or GatingSettings.ensemble_size,
        seed=args.seed,
        estimator=MultiQuantileRegressor(
            list(config.quantile_levels), alpha=heads.alpha, solver=heads.solver
        ),
        attribute_names=list(config.attribute_names),
        pair_features=preference_dirs or None,
        gating_settings=gating_settings,
        gating_network=None if preference_dirs else model.gating,
        transform=model.reward_transform_matrix.detach().float(),
        monotone_quantiles=config.monotone_quantiles,
        quantile_mixing=config.quantile_mixing,
    )
    return members.strength(PairFeatures(pairs["prompt"], pairs["chosen"], pairs["rejected"]))


def _pair_records(ids: list, pairs: dict, ensemble, flags) -> list[dict]:
    """One JSON row per pair: its strength, the ensemble's, and its flags."""
    strength = pairs["strength"]
    records = []
    for i, pair_id in enumerate(ids):
        record = {
            "id": pair_id,
            "margin": float(strength.margin[i]),
            "effect_size": float(strength.effect_size[i]),
            "probability": float(strength.probability[i]),
        }
        if ensemble is not None:
            record.update(ensemble_mean=float(ensemble.mean[i]), ensemble_std=float(ensemble.std[i]))
            record["ensemble_probability"] = float(ensemble.probability[i])
        record.update(
            likely_mislabelled=bool(flags.likely_mislabelled[i]),
            ambiguous=bool(flags.ambiguous[i]),
            identical=bool(pairs["identical"][i]),
        )
        records.append(record)
    return records


def _print_flags(args, ids: list, pairs: dict, ensemble, flags) -> None:
    """The summary: strengths, identical pairs, then the `--top` likely mislabelled and ambiguous pairs."""
    import numpy as np

    from .training.settings import GatingSettings

    probability, identical = pairs["strength"].probability.numpy(), pairs["identical"]
    print(f"{len(ids)} pairs from {args.pairs} under {args.model}" + (
        f" and a bootstrap ensemble of {args.ensemble or GatingSettings.ensemble_size}" if ensemble is not None else ""
    ))  # fmt: skip
    print(
        f"  P(chosen > rejected): mean {probability.mean():.3f}, median {np.median(probability):.3f}; "
        f"{int((probability < 0.5).sum())} pairs under 0.5"
    )
    if identical.any():
        print(
            f"  {int(identical.sum())} pair(s) have the same chosen and rejected conversation (strength exactly "
            f"0.5, counted as ambiguous): ids {[ids[i] for i in np.flatnonzero(identical)][: args.top]}"
        )
    measure = "ensemble mean margin" if ensemble is not None else "margin"
    score = flags.score
    listed = [i for i in np.argsort(score, kind="stable") if flags.likely_mislabelled[i]][: args.top]
    print(
        f"  Likely mislabelled ({int(flags.likely_mislabelled.sum())} with a negative {measure}; most negative first):"
    )
    for i in listed:
        print(f"    id {ids[i]!s:<12} {measure} {score[i]:+.4f}  P {probability[i]:.3f}")
    relative = np.abs(score) / (ensemble.std if ensemble is not None else np.ones_like(score))
    ambiguous = flags.ambiguous & ~identical
    listed = [i for i in np.argsort(relative, kind="stable") if ambiguous[i]][: args.top]
    rule = "|mean| < std" if ensemble is not None else f"|P - 0.5| < {flags.ambiguous_within}"
    print(f"  Ambiguous ({int(ambiguous.sum())} with {rule}):")
    for i in listed:
        extra = f" std {ensemble.std[i]:.4f}" if ensemble is not None else ""
        print(f"    id {ids[i]!s:<12} {measure} {score[i]:+.4f}{extra}  P {probability[i]:.3f}")


def _write_outputs(args, records: list[dict], pairs: dict, ensemble) -> None:
    """The JSON Lines rows (--output) and the histogram (--plot)."""
    if args.output:
        from .io import finite_or_null, write_text_atomic

        output = Path(args.output)
        write_text_atomic(
            output, "".join(json.dumps(finite_or_null(record), allow_nan=False) + "\n" for record in records)
        )
        print(f"Wrote {len(records)} rows to {output}")
    if args.plot:
        probability = pairs["strength"].probability.numpy()
        path = _plot(args.plot, probability, ensemble.mean if ensemble is not None else None)
        print(f"Histogram of the strengths drawn to {path}")


def _add_ensemble_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the bootstrap ensemble (with --features): its size and seed, and how its heads and
    gating networks are refitted (the defaults of `qrm fit-quantiles` and `qrm fit-gating`, read from there)."""
    parser.add_argument(
        "--ensemble",
        type=int,
        metavar="N",
        help="ensemble size with --features (default: --ensemble-size of `qrm fit-gating`)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    from .training.settings import GatingSettings, HeadsSettings

    parser.add_argument(
        "--alpha", type=float, default=HeadsSettings.alpha, help="L1 penalty of the refitted heads"
    )
    parser.add_argument(
        "--solver",
        choices=HeadsSettings.__dataclass_fields__["solver"].metadata["cli"]["choices"],
        default=HeadsSettings.solver,
        help="solver of the refitted heads",
    )
    # a few hundred pairs: more epochs and smaller batches than `qrm fit-gating`'s defaults for the paper's data
    parser.add_argument(
        "--gating-epochs", type=int, default=40, help="epochs of each refitted gating network"
    )
    parser.add_argument(
        "--gating-batch-size", type=int, default=32, help="pairs per step of each refitted gating network"
    )
    parser.add_argument(
        "--gating-learning-rate",
        type=float,
        default=GatingSettings.learning_rate,
        help="AdamW learning rate of each refitted gating network",
    )


def add_preference_commands(commands) -> None:
    """Add `qrm preference-strength` to the `qrm` parser's subparsers."""
    parser = commands.add_parser(
        "preference-strength",
        help="preference strength of pairs: likely mislabelled and ambiguous pairs",
        description="For each preference pair (prompt, chosen, rejected): the expected-reward margin, the margin "
        "over the pooled spread and P(R_chosen > R_rejected) from the QRM's reward distributions; with --features, "
        "the mean and std of the margins of an ensemble refitted on bootstrap resamples of those features "
        "(attribute features refit the heads; preference features, if given, the gating network too).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from .cli_model import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument(
        "--pairs", required=True, help="JSON Lines file: prompt, chosen, rejected (optional id)"
    )
    parser.add_argument(
        "--features",
        nargs="+",
        metavar="DIR",
        help="feature directories of qrm extract (the model's backbone)",
    )
    _add_ensemble_arguments(parser)
    parser.add_argument(
        "--ambiguous-within",
        type=float,
        default=argparse.SUPPRESS,  # the library's default, qrm_hf.preference.AMBIGUOUS_WITHIN (needs torch)
        help="without an ensemble: a pair is ambiguous when |P - 0.5| is below this "
        "(default: qrm_hf.preference.AMBIGUOUS_WITHIN)",
    )
    parser.add_argument("--top", type=int, default=10, help="pairs listed per group")
    parser.add_argument("--output", help="write one JSON row per pair here")
    parser.add_argument("--plot", help="write a histogram of the strengths (PNG) here")
    parser.set_defaults(handler=_preference_strength)
