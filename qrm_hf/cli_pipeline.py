"""The training commands of `qrm`: extract, fit-quantiles, debias, fit-gating, assemble, train.

Each command is one stage of ``qrm_hf.training.stages``; `qrm train CONFIG` runs them all from a YAML
file. Heavy imports happen inside the handlers so that `qrm --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses


def _locked(output_dir):
    """Hold the lock of a stage's output directory for the whole command (one writer at a time)."""
    from .io import directory_lock

    return directory_lock(output_dir)


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
    from .training.settings import ExtractionSettings, settings_from_args
    from .training.stages import extract_features

    directory = extract_features(
        args.backbone,
        _dataset_spec(args),
        args.output_dir,
        revision=args.revision,
        settings=settings_from_args(ExtractionSettings, args),
    )
    print(f"Features written to {directory}")


def _fit_quantiles(args):

    from .training.outputs import QuantileHeadsOutput
    from .training.settings import HeadsSettings, settings_from_args
    from .training.stages import fit_quantile_heads

    with _locked(args.output_dir):
        directory = fit_quantile_heads(
            args.features,
            args.output_dir,
            attribute_names=args.attributes,
            validation_dirs=args.validation or (),
            settings=settings_from_args(HeadsSettings, args),
        )
    info = QuantileHeadsOutput.load(directory).info
    print(f"Quantile heads written to {directory}; samples per attribute: {info['samples_per_attribute']}")
    if "validation" in info:
        print(f"Validation: {info['validation']}")


def _debias(args):
    from .training.settings import DebiasSettings, settings_from_args
    from .training.stages import fit_debias

    with _locked(args.output_dir):
        directory = fit_debias(
            args.heads, args.reference, args.output_dir, settings=settings_from_args(DebiasSettings, args)
        )
    print(f"Reward transform written to {directory}")


def _fit_gating(args):
    from .training.settings import GatingSettings, settings_from_args
    from .training.stages import fit_gating

    settings = settings_from_args(GatingSettings, args)
    with _locked(args.output_dir):
        directory = fit_gating(
            args.heads, args.pairs, args.output_dir, transform_dir=args.transform, settings=settings
        )
    print(f"Gating network written to {directory}")


def _assemble(args):
    from .training.settings import AssembleSettings, settings_from_args
    from .training.stages import assemble_model

    settings = settings_from_args(AssembleSettings, args)  # a bad setting fails before the lock is taken
    with _locked(args.output_dir):
        directory = assemble_model(
            args.backbone,
            args.heads,
            args.gating,
            args.output_dir,
            transform_dir=args.transform,
            revision=args.revision,
            settings=settings,
        )
    print(f"QRM saved to {directory}")


def _train(args):
    from .training.pipeline import TrainConfig, run_training

    config = TrainConfig.from_yaml(args.config, output_dir=args.output_dir)
    if args.homepage:
        config.model = dataclasses.replace(config.model, homepage=args.homepage)
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


def _add_extract_command(commands) -> None:
    """Add `qrm extract BACKBONE`: stage 1, feature shards."""
    from .training.settings import ExtractionSettings, add_settings_arguments

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
    add_settings_arguments(extract, ExtractionSettings)
    _add_dataset_arguments(extract)
    extract.set_defaults(handler=_extract)


def _add_fit_quantiles_command(commands) -> None:
    """Add `qrm fit-quantiles FEATURES`: stage 2, the quantile heads."""
    from .training.settings import HeadsSettings, add_settings_arguments

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
    heads.add_argument("--validation", nargs="+", help="held-out attribute feature directories to report on")
    add_settings_arguments(heads, HeadsSettings)
    heads.set_defaults(handler=_fit_quantiles)


def _add_debias_command(commands) -> None:
    """Add `qrm debias HEADS REFERENCE`: stage 3, the verbosity transform."""
    from .training.settings import DebiasSettings, add_settings_arguments

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
    add_settings_arguments(debias, DebiasSettings)
    debias.set_defaults(handler=_debias)


def _add_fit_gating_command(commands) -> None:
    """Add `qrm fit-gating HEADS PAIRS`: stage 4, the gating network."""
    from .training.settings import GatingSettings, add_settings_arguments

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
    add_settings_arguments(gating, GatingSettings)
    gating.set_defaults(handler=_fit_gating)


def _add_assemble_command(commands) -> None:
    """Add `qrm assemble BACKBONE`: stage 5, the saved QRM."""
    from .training.settings import AssembleSettings, add_settings_arguments

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
    add_settings_arguments(assemble, AssembleSettings)
    assemble.set_defaults(handler=_assemble)


def _add_train_command(commands) -> None:
    """Add `qrm train CONFIG`: every stage from a YAML config."""
    from .training.settings import AssembleSettings, add_settings_arguments

    train = commands.add_parser(
        "train",
        help="run all stages from a YAML config, skipping those already done",
        description="Run extract, fit-quantiles, debias, fit-gating and assemble from one YAML file "
        "(training/configs/paper.yaml: the paper's run; demo.yaml: the demo). Stages whose output is "
        "complete and whose inputs did not change are skipped; a changed input re-runs what depends on it. "
        "--homepage overrides the config's model: homepage.",
    )
    train.add_argument("config", help="YAML config file")
    train.add_argument("--output-dir", help="override the config's output_dir")
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the config, resolve the datasets and print the plan without running it",
    )
    add_settings_arguments(
        train, AssembleSettings, names=["homepage"]
    )  # overrides the config's model: homepage
    train.set_defaults(handler=_train)


def add_pipeline_commands(commands) -> None:
    """Add the training-pipeline subcommands to the `qrm` parser's subparsers, in the order of the stages."""
    for add_command in (
        _add_extract_command,
        _add_fit_quantiles_command,
        _add_debias_command,
        _add_fit_gating_command,
        _add_assemble_command,
        _add_train_command,
    ):
        add_command(commands)
