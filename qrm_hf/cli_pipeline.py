"""The training commands of `qrm`: extract, fit-quantiles, debias, fit-gating, assemble, train.

Each command is one stage of ``qrm_hf.training.stages``; `qrm train CONFIG` runs them all from a YAML
file. Heavy imports happen inside the handlers so that `qrm --help` stays fast.
"""

from __future__ import annotations

import argparse


def _locked(output_dir):
    """Hold the lock of a stage's output directory for the whole command (one writer at a time)."""
    from .locking import directory_lock

    return directory_lock(output_dir)


def _alpha_argument(value: str) -> float | str:
    """A penalty on the command line: a number or the word "cv"."""
    if value == "cv":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number or "cv", got {value!r}') from None


def _dataset_spec(args):
    from .training.stages import DatasetSpec

    attributes = None
    if args.attributes:
        attributes = dict(item.split("=", 1) if "=" in item else (item, item) for item in args.attributes)
    return DatasetSpec(
        preset=args.preset,
        source=args.source,
        split=args.split,
        limit=args.limit,
        name=args.name,
        kind=args.kind,
        prompt=args.prompt,
        response=args.response,
        messages=args.messages,
        system=args.system,
        chosen=args.chosen,
        rejected=args.rejected,
        attributes=attributes,
        label_ranges=list(args.label_range) if args.label_range else None,
    )


def _extract(args):
    from .training.stages import extract_features

    directory = extract_features(
        args.backbone,
        _dataset_spec(args),
        args.output_dir,
        revision=args.revision,
        dtype=args.dtype,
        max_length=args.max_length,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
    )
    print(f"Features written to {directory}")


def _fit_quantiles(args):
    import json

    from .training.stages import fit_quantile_heads

    with _locked(args.output_dir):
        directory = fit_quantile_heads(
            args.features,
            args.output_dir,
            attribute_names=args.attributes,
            quantile_levels=args.levels,
            alpha=args.alpha[0] if len(args.alpha) == 1 else args.alpha,
            cv=args.cv,
            solver=args.solver,
            max_samples_per_attribute=args.max_samples_per_attribute,
            seed=args.seed,
            n_jobs=args.n_jobs,
            validation_dirs=args.validation or (),
            ridge_baseline=args.ridge_baseline,
            gaussian_baseline=args.gaussian_baseline,
        )
    info = json.loads((directory / "heads.json").read_text())
    print(f"Quantile heads written to {directory}; samples per attribute: {info['samples_per_attribute']}")
    if "validation" in info:
        print(f"Validation: {info['validation']}")


def _debias(args):
    from .training.stages import fit_debias

    with _locked(args.output_dir):
        directory = fit_debias(
            args.heads,
            args.reference,
            args.output_dir,
            verbosity_attribute=args.verbosity_attribute,
            threshold=args.threshold,
        )
    print(f"Reward transform written to {directory}")


def _fit_gating(args):
    from .training.stages import GatingSettings, fit_gating

    settings = GatingSettings(
        hidden_dim=args.hidden_dim,
        n_hidden=args.n_hidden,
        temperature=args.temperature,
        batch_norm=args.batch_norm,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        epochs=args.epochs,
        weight_decay=args.weight_decay,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
        rewards=args.rewards,
        label_smoothing=args.label_smoothing,
        adaptive_margin=args.adaptive_margin,
        flip_below=args.flip_below,
        drop_below=args.drop_below,
        strength=args.strength,
        ensemble_size=args.ensemble_size,
    )
    with _locked(args.output_dir):
        directory = fit_gating(
            args.heads, args.pairs, args.output_dir, transform_dir=args.transform, settings=settings
        )
    print(f"Gating network written to {directory}")


def _assemble(args):
    from .training.stages import AssembleSettings, assemble_model

    with _locked(args.output_dir):
        directory = assemble_model(
            args.backbone,
            args.heads,
            args.gating,
            args.output_dir,
            transform_dir=args.transform,
            revision=args.revision,
            settings=AssembleSettings(
                push_to_hub=args.push_to_hub, datasets=args.datasets or [], results=args.results or []
            ),
        )
    print(f"QRM saved to {directory}")


def _train(args):
    from .training.pipeline import TrainConfig, run_training

    config = TrainConfig.from_yaml(args.config, output_dir=args.output_dir)
    model_dir = run_training(config, dry_run=args.dry_run)
    if not args.dry_run:
        print(f"QRM saved to {model_dir}")


def _add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "dataset",
        "A named preset (`--preset helpsteer`; list: python -c 'import qrm_hf.presets as p; print(sorted(p.PRESETS))') "
        "or a column mapping (`--kind attribute --prompt prompt --response response --attributes helpfulness "
        "--label-range 0 4`).",
    )
    group.add_argument("--preset", help="a dataset preset of qrm_hf.presets (the paper's datasets)")
    group.add_argument(
        "--source",
        help="Hub dataset id or local json/jsonl/parquet/arrow file or directory "
        "(default: the preset's Hub id)",
    )
    group.add_argument("--split", help="split to read (default: the preset's, else train)")
    group.add_argument("--limit", type=int, help="read only the first LIMIT rows")
    group.add_argument("--name", help="dataset name recorded in the manifest (default: preset or file name)")
    group.add_argument("--kind", choices=["attribute", "preference"], help="kind of a custom dataset")
    for column in ("prompt", "response", "messages", "system", "chosen", "rejected"):
        group.add_argument(
            f"--{column}", metavar="COLUMN", help=f"column holding the {column} (custom dataset)"
        )
    group.add_argument(
        "--attributes",
        nargs="+",
        metavar="NAME[=COLUMN]",
        help="label columns of a custom attribute dataset (NAME=COLUMN renames)",
    )
    group.add_argument(
        "--label-range",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="label range mapped to [0, 1] (custom dataset: required)",
    )


def add_pipeline_commands(commands) -> None:
    """Add the training-pipeline subcommands to the `qrm` parser's subparsers."""
    from .cli import positive_int
    from .training.stages import PAPER_LEVELS, GatingSettings

    extract = commands.add_parser(
        "extract",
        help="stage 1: encode a dataset with the frozen backbone into feature shards",
        description="Run the frozen backbone once per conversation and store the hidden state of the last "
        "token (response embedding) and of the assistant-turn start (prompt embedding), with the labels "
        "scaled to [0, 1], as safetensors shards + manifest.json. Re-running resumes an interrupted run. "
        "Several processes: accelerate launch --num_processes N -m qrm_hf extract ...",
    )
    extract.add_argument("backbone", help="decoder: Hub id, local directory, or embedded:smollm2")
    extract.add_argument("--output-dir", required=True, help="feature directory to write")
    extract.add_argument("--revision", help="backbone revision (branch, tag or commit)")
    extract.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    extract.add_argument(
        "--max-length",
        type=positive_int,
        default=4096,
        help="skip (and count) conversations longer than this many tokens (default 4096)",
    )
    extract.add_argument("--batch-size", type=positive_int, default=16, help="conversations per forward pass")
    extract.add_argument("--shard-size", type=positive_int, default=4096, help="examples per shard file")
    _add_dataset_arguments(extract)
    extract.set_defaults(handler=_extract)

    heads = commands.add_parser(
        "fit-quantiles",
        help="stage 2: fit the linear quantile heads on attribute features",
        description="L1-penalised linear quantile regression of every attribute at every level on the "
        "response embeddings (paper: 19 levels 0.05..0.95, alpha 0.003, at most 60,000 samples per attribute).",
    )
    heads.add_argument(
        "features", nargs="+", help="attribute feature directories (qrm extract), same backbone"
    )
    heads.add_argument("--output-dir", required=True, help="where heads.safetensors + heads.json go")
    heads.add_argument("--attributes", nargs="+", help="head order (default: the features' attributes)")
    heads.add_argument("--levels", nargs="+", type=float, default=PAPER_LEVELS, help="quantile levels")
    heads.add_argument(
        "--alpha",
        type=_alpha_argument,
        nargs="+",
        default=[0.003],
        help='L1 penalty (default 0.003); several values or "cv" choose one per attribute by cross-validation',
    )
    heads.add_argument("--cv", type=int, default=5, help="folds of the penalty choice (default 5)")
    heads.add_argument(
        "--solver",
        choices=["fast", "sklearn"],
        default="fast",
        help="fast: batched interior point in torch; sklearn: QuantileRegressor (paper)",
    )
    heads.add_argument("--max-samples-per-attribute", type=int, default=60_000)
    heads.add_argument("--seed", type=int, default=0)
    heads.add_argument("--n-jobs", type=int, default=1, help="parallel fits (sklearn solver)")
    heads.add_argument("--validation", nargs="+", help="held-out attribute feature directories to report on")
    heads.add_argument(
        "--ridge-baseline",
        action="store_true",
        help="also report a ridge point estimate with residual quantiles (loads all features)",
    )
    heads.add_argument(
        "--gaussian-baseline",
        action="store_true",
        help="also report a heteroscedastic Gaussian (mean and log-std heads; loads all features)",
    )
    heads.set_defaults(handler=_fit_quantiles)

    debias = commands.add_parser(
        "debias",
        help="stage 3 (optional): verbosity debiasing, a reward transform T",
        description="ArmoRM's verbosity debiasing: per attribute, the smallest penalty of the grid "
        "0..0.95 whose debiased reward has Spearman correlation <= threshold with the verbosity reward "
        "on reference responses. Writes transform.safetensors + transform.json.",
    )
    debias.add_argument("heads", help="output directory of qrm fit-quantiles")
    debias.add_argument("reference", nargs="+", help="feature directories of reference responses (any kind)")
    debias.add_argument("--output-dir", required=True)
    debias.add_argument(
        "--verbosity-attribute", help="default: the attribute whose name ends with 'verbosity'"
    )
    debias.add_argument("--threshold", type=float, default=0.03)
    debias.set_defaults(handler=_debias)

    defaults = GatingSettings()
    gating = commands.add_parser(
        "fit-gating",
        help="stage 4: fit the gating network on preference pairs (Bradley-Terry)",
        description="Train the gating MLP on prompt embeddings with the Bradley-Terry loss on the expected "
        "reward of chosen vs rejected, quantile heads frozen; validation accuracy printed every epoch.",
    )
    gating.add_argument("heads", help="output directory of qrm fit-quantiles")
    gating.add_argument("pairs", nargs="+", help="preference feature directories (qrm extract)")
    gating.add_argument("--output-dir", required=True)
    gating.add_argument("--transform", help="output directory of qrm debias (default: no transform)")
    for name, value in vars(defaults).items():
        if name == "batch_norm":
            gating.add_argument(
                "--batch-norm", action="store_true", help="BatchNorm hidden blocks (released format)"
            )
        elif name == "rewards":
            gating.add_argument(
                "--rewards",
                choices=["transformed", "untransformed"],
                default=value,
                help="fit on the rewards after T (as the model computes them; default) or "
                "before (ArmoRM's script)",
            )
        elif name in ("flip_below", "drop_below"):
            gating.add_argument(
                f"--{name.replace('_', '-')}",
                type=float,
                metavar="P",
                help=f"{name.split('_')[0]} the training pairs whose measured P(chosen > rejected) is below P "
                "(noisy labels; default off)",
            )
        elif name == "strength":
            gating.add_argument(
                "--strength",
                choices=["probability", "ensemble"],
                default=value,
                help="how the strength of a pair is measured: the QRM's own P(chosen > rejected) after a "
                "plain first fit (default) or the mean over a bootstrap ensemble (--ensemble-size)",
            )
        else:
            gating.add_argument(
                f"--{name.replace('_', '-')}", type=type(value), default=value, help=f"default {value}"
            )
    gating.set_defaults(handler=_fit_gating)

    assemble = commands.add_parser(
        "assemble",
        help="stage 5: build and save the QRM (backbone + heads + T + gating)",
        description="Save a transformers model directory: weights, config with auto_map, the modeling "
        "code (trust_remote_code), the backbone's tokenizer and a model card.",
    )
    assemble.add_argument("backbone", help="the backbone the features were extracted with")
    assemble.add_argument("--heads", required=True, help="output directory of qrm fit-quantiles")
    assemble.add_argument("--gating", required=True, help="output directory of qrm fit-gating")
    assemble.add_argument("--transform", help="output directory of qrm debias")
    assemble.add_argument("--output-dir", required=True)
    assemble.add_argument("--revision", help="backbone revision")
    assemble.add_argument("--datasets", nargs="+", help="Hub dataset ids to list in the model card")
    assemble.add_argument("--push-to-hub", metavar="REPO_ID", help="push the saved model to this Hub repo")
    assemble.add_argument(
        "--results",
        nargs="+",
        metavar="FILE",
        help="`qrm rewardbench --output` files for the card's model-index",
    )
    assemble.set_defaults(handler=_assemble)

    train = commands.add_parser(
        "train",
        help="run all stages from a YAML config, skipping those already done",
        description="Run extract, fit-quantiles, debias, fit-gating and assemble from one YAML file "
        "(training/configs/paper.yaml: the paper's run; demo.yaml: the demo). Stages whose output is "
        "complete and whose inputs did not change are skipped; a changed input re-runs what depends on it.",
    )
    train.add_argument("config", help="YAML config file")
    train.add_argument("--output-dir", help="override the config's output_dir")
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the config, resolve the datasets and print the plan without running it",
    )
    train.set_defaults(handler=_train)
