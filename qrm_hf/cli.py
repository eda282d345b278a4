"""The `qrm` command line (also `python -m qrm_hf`). Run `qrm --help` or `qrm COMMAND --help`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from pathlib import Path

from .arguments import positive_int, risk_parameter
from .cli_model import add_model_arguments, load_model
from .cli_paths import check_writable

# The label range of rating rows by default (`qrm evaluate`, `qrm calibrate`): the demo's 0-4 scale.
RATING_LABEL_RANGE = (0.0, 4.0)


def _demo(args):
    from .training.demo import demo_config, run_demo

    overrides = {"model": {"homepage": args.homepage}} if args.homepage else {}
    run_demo(demo_config(args.output_dir, backbone=args.backbone, **overrides))


def _convert(args):
    from .convert import convert_released_checkpoint

    destination = convert_released_checkpoint(
        args.source, args.destination, attribute_names=args.attribute_names
    )
    print(f"Converted {args.source} -> {destination}")


def _print_scores(model, tokenizer, rows, lam, alpha, plot=None, batch_size=8, max_length=None):
    """Score and print `rows` = (conversations, names, locations of the rows for errors)."""
    from .scoring import format_table, plot_reward_distributions, risk_summary, score_conversations

    conversations, names, locations = rows
    outputs = score_conversations(
        model, tokenizer, conversations, batch_size=batch_size, max_length=max_length, row_names=locations
    )
    levels = model.config.quantile_levels
    print(format_table(risk_summary(outputs["reward_quantiles"], levels, lam=lam, alpha=alpha), names))
    if plot:
        print(
            f"Reward distributions drawn to {plot_reward_distributions(names, outputs['reward_quantiles'], levels, plot)}"
        )


def _scoring_rows(path: str):
    """(conversations, names, locations) of a JSON Lines file of prompt/response rows, every row checked."""
    from .data import read_jsonl
    from .dataset_loading import response_conversations

    rows = read_jsonl(path)
    conversations = response_conversations(rows, name=str(path))
    return conversations, [str(row.get("name", i)) for i, row in enumerate(rows)], rows.row_locations


def _score(args):
    from .dataset_loading import response_conversations

    if args.file:
        if args.prompt is not None or args.response is not None:
            raise ValueError("Give either --file or --prompt and --response, not both.")
        rows = _scoring_rows(args.file)
    elif args.prompt is not None and args.response is not None:
        given = [{"prompt": args.prompt, "response": args.response}]
        rows = (
            response_conversations(given, name="--prompt/--response"),
            ["conversation"],
            ["--prompt/--response"],
        )
    else:
        raise ValueError("Give --prompt and --response, or --file with prompt/response rows.")
    check_writable(args.plot, "plot")
    model, tokenizer = load_model(args.model, args.revision, args.trust_remote_code)
    _print_scores(
        model,
        tokenizer,
        rows,
        args.lam,
        args.alpha,
        args.plot,
        args.batch_size,
        args.max_length,
    )


def _evaluate(args):
    if not (args.ratings or args.pairs or args.showcase):
        raise ValueError("Nothing to evaluate: give --ratings, --pairs and/or --showcase.")
    if (args.baselines or args.bootstrap) and not args.ratings:
        raise ValueError("--baselines and --bootstrap need --ratings.")
    if args.plots and not (args.ratings or args.pairs):
        raise ValueError("--plots needs --ratings or --pairs.")
    if args.bootstrap and (args.bootstrap < 2 or not args.baselines):
        raise ValueError("--bootstrap needs N >= 2 and --baselines (the training features to refit on).")
    from .data import read_jsonl

    ratings = read_jsonl(args.ratings) if args.ratings else None
    pairs = read_jsonl(args.pairs) if args.pairs else None
    showcase = _scoring_rows(args.showcase) if args.showcase else None
    outputs = [path for path in (args.json, args.output) if path]  # one path for both is refused (cli_paths)
    check_writable(args.plot, "plot")
    for path in outputs:
        check_writable(path, "JSON report")
    model, tokenizer = load_model(args.model, args.revision, args.trust_remote_code)
    model_class = (
        f"{type(model).__module__}.{type(model).__name__}"  # the code that scores, in the report too
    )
    print(f"Loaded {model_class} from {args.model}")
    report = {"model_class": model_class}
    lengths = {"batch_size": args.batch_size, "max_length": args.max_length}
    if ratings:
        report["ratings"] = _evaluate_ratings(args, model, tokenizer, ratings, lengths)
    if pairs:
        report["pairs"] = _evaluate_pairs(args, model, tokenizer, pairs, lengths)
    if showcase:
        print(f"  Showcase (certainty equivalent with lambda {args.lam}, cvar at alpha {args.alpha}):")
        _print_scores(model, tokenizer, showcase, args.lam, args.alpha, args.plot, **lengths)
    from .io import write_json_atomic

    for path in outputs:
        write_json_atomic(Path(path), report)


def _evaluate_ratings(args, model, tokenizer, rows, lengths) -> dict:
    """`qrm evaluate --ratings`: the `evaluate_ratings` report, printed (and plotted with --plots)."""
    from .evaluation import evaluate_ratings, format_ratings_report, plot_calibration

    baselines, members = _rating_comparisons(model, args)
    ratings = evaluate_ratings(
        model,
        tokenizer,
        rows,
        tuple(args.label_range),
        baselines=baselines,
        members=members,
        group_column=args.group_column,
        contrast=tuple(args.contrast) if args.contrast else None,
        **lengths,
    )
    print(format_ratings_report(ratings))
    if args.plots:
        paths = plot_calibration(ratings, args.plots)
        print(
            f"  Reliability diagram, PIT histogram and selective error drawn to {', '.join(map(str, paths))}"
        )
    by_kind = ratings.get("pinball_by_kind", {})
    print(
        f"  Held-out pinball loss of the reloaded model: {ratings['pinball']:.4f} "
        + " ".join(f"({kind}: {value:.4f})" for kind, value in by_kind.items())
        + f"; calibration error {ratings['calibration_error']:.3f}"
        + _skipped_note(ratings)
    )
    return ratings


def _evaluate_pairs(args, model, tokenizer, rows, lengths) -> dict:
    """`qrm evaluate --pairs`: the `evaluate_pairs` report with its gating and ranking tables, printed
    (the accuracy-coverage curves plotted with --plots)."""
    from .evaluation import (
        evaluate_pairs,
        format_gating_report,
        format_ranking_report,
        plot_accuracy_coverage,
    )

    pairs = evaluate_pairs(model, tokenizer, rows, group_column=args.group_column, **lengths)
    by_kind = pairs.get("accuracy_by_kind", {})
    print(
        f"  Held-out pairwise accuracy: {pairs['accuracy']:.3f} on {pairs['pairs']} pairs "
        + " ".join(f"({kind}: {value:.3f})" for kind, value in by_kind.items())
        + _skipped_note(pairs)
    )
    if "gating" in pairs:
        print(format_gating_report(pairs["gating"]))
    if "ranking" in pairs:
        print(format_ranking_report(pairs["ranking"]))
        if args.plots:
            paths = plot_accuracy_coverage(pairs["ranking"], args.plots)
            print(f"  Accuracy-coverage curves drawn to {', '.join(map(str, paths))}")
    return pairs


def _calibrate(args):
    from .calibration import (
        calibrate_model,
        check_heldout_apart,
        coverage_report,
        format_coverage_report,
        save_calibrated,
    )
    from .data import read_jsonl

    ratings = read_jsonl(args.ratings)
    heldout = read_jsonl(args.heldout) if args.heldout else None
    if heldout:
        check_heldout_apart(ratings, heldout)
    model, tokenizer = load_model(args.model, args.revision, args.trust_remote_code)
    lengths = {"batch_size": args.batch_size, "max_length": args.max_length}
    calibrator = calibrate_model(model, tokenizer, ratings, args.label_range, args.width_bins, **lengths)
    print(f"Calibrated on {calibrator.responses_.sum(0).min()} responses ({args.ratings})")
    report = coverage_report(model, tokenizer, heldout, args.label_range, **lengths) if heldout else None
    if report:
        print(f"Held-out ({args.heldout}), before and after calibration:\n{format_coverage_report(report)}")
    written = save_calibrated(model, tokenizer, args.model, args.output_dir, report, homepage=args.homepage)
    print(f"Calibrated model written to {written}")


def _rating_comparisons(model, args) -> tuple[dict, object]:
    """(baselines, bootstrap members) of `--baselines` and `--bootstrap`, fitted on the training features."""
    if not args.baselines:
        return {}, None
    from .training.baselines import fit_baselines, fit_bootstrap_members
    from .training.features import check_features_fit_model

    check_features_fit_model(model, args.baselines)  # not the heads check: a poor model is measured
    levels, attributes = model.config.quantile_levels, model.config.attribute_names
    baselines = fit_baselines(args.baselines, attributes, levels, tuple(args.label_range))
    return baselines, fit_bootstrap_members(model, args.baselines, args.bootstrap) if args.bootstrap else None


def _skipped_note(report: dict) -> str:
    skipped = report.get("skipped_too_long", 0)
    return f"; {skipped} row(s) longer than max_length left out" if skipped else ""


def _add_distribution_table_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the printed reward-distribution table and its plot (`qrm score`, `qrm evaluate --showcase`)."""
    parser.add_argument("--plot", help="write a PNG of the reward distributions here")
    from . import risk

    parser.add_argument(
        "--lam",
        type=risk_parameter("lam"),
        default=risk.RISK_PARAMETERS["lam"].default,
        help="risk aversion of the certainty equivalent (> 0)",
    )
    parser.add_argument(
        "--alpha",
        type=risk_parameter("alpha"),
        default=risk.RISK_PARAMETERS["alpha"].default,
        help="tail fraction of the CVaR, in (0, 1]",
    )


def _add_label_range_argument(parser: argparse.ArgumentParser) -> None:
    """`--label-range LOW HIGH` of the commands that read rating rows (`qrm evaluate`, `qrm calibrate`)."""
    parser.add_argument(
        "--label-range",
        nargs=2,
        type=float,
        default=RATING_LABEL_RANGE,
        metavar=("LOW", "HIGH"),
        help=f"range of the rating labels, mapped to [0, 1] (default {RATING_LABEL_RANGE[0]:g} {RATING_LABEL_RANGE[1]:g})",
    )


def _add_calibrate_command(commands) -> None:
    """Add ``qrm calibrate MODEL --ratings FILE --output-dir DIR [--heldout FILE] [--width-bins G]``."""
    from .training.settings import AssembleSettings, add_settings_arguments

    calibrate = commands.add_parser(
        "calibrate",
        help="conformal calibration of the quantiles on held-out ratings, stored in a copy of the model",
        description="Fit split conformal offsets for every attribute and quantile level on rating rows (the "
        "format of `qrm evaluate --ratings`; the ratings of one response count as one response) and write a "
        "copy of the model that applies them: every consumer of the saved model reads calibrated quantiles.",
    )
    add_model_arguments(calibrate)
    calibrate.add_argument("--ratings", required=True, help="JSON Lines calibration rating rows")
    calibrate.add_argument("--output-dir", required=True, help="where the calibrated model goes")
    calibrate.add_argument(
        "--heldout", help="JSON Lines rating rows (not the calibration ones) to measure coverage on"
    )
    calibrate.add_argument(
        "--width-bins",
        type=positive_int,
        default=1,
        help="Mondrian groups: calibrate separately within G bins of each response's predicted 80 %% width "
        "(averaged over attributes, each in units of its median width; default 1: one offset per attribute "
        "and level)",
    )
    _add_label_range_argument(calibrate)
    add_settings_arguments(calibrate, AssembleSettings, names=["homepage"])
    calibrate.set_defaults(handler=_calibrate)


def _add_demo_command(commands) -> None:
    """Add `qrm demo`: the whole pipeline on the shipped demo data."""
    from .training.settings import AssembleSettings, add_settings_arguments

    demo = commands.add_parser(
        "demo",
        help="train a small QRM on the shipped demo data, end to end",
        description="`qrm train training/configs/demo.yaml` (feature extraction with the embedded "
        "SmolLM2-135M-Instruct, quantile heads, gating, saved model), then reload the model in a fresh "
        "process with trust_remote_code=True and print held-out numbers.",
    )
    demo.add_argument("--output-dir", default="outputs/demo", help="where features and the model go")
    demo.add_argument("--backbone", help="a local backbone directory instead of the embedded SmolLM2")
    add_settings_arguments(demo, AssembleSettings, names=["homepage"])
    demo.set_defaults(handler=_demo)


def _add_convert_command(commands) -> None:
    """Add `qrm convert SOURCE DESTINATION`: a released checkpoint into a qrm-hf model."""
    convert = commands.add_parser(
        "convert",
        help="convert a released QRM checkpoint into a qrm-hf model",
        description="Convert a checkpoint in the format of the released "
        "QRM-Llama3.1-8B models (a Llama config with num_objectives/num_quantiles) into "
        "a qrm-hf model directory with the same scores and quantiles.",
    )
    convert.add_argument("source", help="directory of the released checkpoint")
    convert.add_argument("destination", help="output directory")
    convert.add_argument("--attribute-names", nargs="+", help="names of the M attributes, in head order")
    convert.set_defaults(handler=_convert)


def _add_score_command(commands) -> None:
    """Add `qrm score MODEL`: the reward distributions of conversations."""
    score = commands.add_parser(
        "score",
        help="score conversations and print reward distributions",
        description="Print the expected reward, quantiles and risk measures of "
        "conversations under a QRM (a local directory or a Hub id). cert_equiv is the certainty equivalent "
        "of the exponential utility E[-exp(-lam r)] (paper eq. 4): the same ranking, in reward units, "
        "computed without overflow.",
    )
    add_model_arguments(score)
    score.add_argument("--prompt", help="the user's message")
    score.add_argument("--response", help="the assistant's answer")
    score.add_argument("--file", help="JSON Lines file with prompt/response (and optional name) per row")
    _add_distribution_table_arguments(score)
    score.set_defaults(handler=_score)


def _add_comparison_arguments(evaluate: argparse.ArgumentParser) -> None:
    """`qrm evaluate`'s options of what the QRM is compared with: baselines and bootstrap refits."""
    evaluate.add_argument(
        "--baselines",
        nargs="+",
        metavar="FEATURE_DIR",
        help="training attribute features (qrm extract) to fit the ridge and heteroscedastic Gaussian "
        "baselines on, reported next to the QRM (the held-out rows are encoded with the model's backbone)",
    )
    evaluate.add_argument(
        "--bootstrap",
        type=positive_int,
        metavar="N",
        help="with --baselines: also refit the quantile heads N times (N >= 2) on bootstrap resamples of the "
        "training responses and report how far their medians spread, the part of the 90 %% width that is the "
        "heads' own uncertainty rather than the annotators' disagreement",
    )


def _add_evaluate_command(commands) -> None:
    """Add `qrm evaluate MODEL`: held-out measures on ratings and pairs, next to baselines."""
    evaluate = commands.add_parser(
        "evaluate",
        help="held-out pinball, CRPS, interval coverage and width, calibration plots, pairwise accuracy",
        description="Evaluate a QRM on rating data (pinball loss, CRPS, coverage of the 50/80/90 %% "
        "intervals, mean 90 %% width per attribute and per value of the group column, the contrast width "
        "ratio next to the annotators' own spread ratio, the median's error on the half with the narrowest "
        "intervals (MAE@50, R²@50) next to a random half, optionally next to ridge and Gaussian baselines) "
        "and on preference pairs (accuracy, gating, and the accuracy-coverage curve of each ranking signal: "
        "margin, |P - 1/2|, effect size, the members' spread).",
    )
    add_model_arguments(evaluate)
    from .data import CONTRAST, GROUP_COLUMN

    evaluate.add_argument(
        "--ratings", help="JSON Lines rating rows: prompt, response, one column per attribute"
    )
    _add_label_range_argument(evaluate)
    evaluate.add_argument("--pairs", help="JSON Lines preference rows: prompt, chosen, rejected")
    evaluate.add_argument(
        "--showcase", help="JSON Lines rows (name, prompt, response) to print risk measures for"
    )
    _add_distribution_table_arguments(evaluate)
    evaluate.add_argument("--json", help="same as --output")
    _add_comparison_arguments(evaluate)
    evaluate.add_argument(
        "--plots",
        metavar="DIR",
        help="draw reliability.png, pit.png and selective_error.png (ratings) and accuracy_coverage.png (pairs) "
        "into DIR",
    )
    evaluate.add_argument(
        "--group-column",
        default=GROUP_COLUMN,
        metavar="COLUMN",
        help=f"column of the rating and pair rows to break the measures down by (default {GROUP_COLUMN})",
    )
    evaluate.add_argument(
        "--contrast",
        nargs=2,
        default=CONTRAST,
        metavar=("KIND", "OTHER"),
        help="two values of the group column whose mean 90 %% widths and annotator spreads are compared "
        f"(default {' '.join(CONTRAST)})",
    )
    evaluate.add_argument("--output", metavar="FILE", help="write every number to this JSON file")
    evaluate.set_defaults(handler=_evaluate)


def build_parser() -> argparse.ArgumentParser:
    """The `qrm` parser: every command, each with its handler (`args.handler`) and `--debug`."""
    parser = argparse.ArgumentParser(
        prog="qrm",
        description="Quantile Reward Models: train, convert, score. A mistake in the input (a file, an "
        "argument, a model that is not a QRM) is reported in one line with exit status 2; --debug shows "
        "the traceback.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .cli_pipeline import add_pipeline_commands
    from .cli_preference import add_preference_commands
    from .cli_push import add_push_command
    from .cli_rewardbench import add_rewardbench_command
    from .cli_rlhf import add_rlhf_commands

    for add_commands in (
        _add_demo_command,
        _add_convert_command,
        _add_score_command,
        _add_evaluate_command,
        _add_calibrate_command,
        add_pipeline_commands,
        add_rlhf_commands,
        add_rewardbench_command,
        add_preference_commands,
        add_push_command,
    ):  # in the order of `qrm --help`
        add_commands(commands)
    for command in commands.choices.values():  # `qrm COMMAND ... --debug` works too
        command.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show the traceback of every error",
        )
    return parser


# Errors of the user (bad files, arguments, data, a model that is not a QRM, a directory in use, a full disk,
# an unreachable Hub): one line and exit status 2, as argparse does. Anything else is a bug and keeps its
# traceback. OSError covers huggingface_hub's and requests' errors (subclasses of it).
USER_ERRORS = (ValueError, OSError)
# Errors of libraries that do not derive from those, by module: looked up in sys.modules, so that the check
# imports nothing (an error of a library that was never imported cannot have been raised).
LIBRARY_USER_ERRORS = {
    "httpx": "HTTPError",  # connection refused, timeouts (huggingface_hub's uploads)
    "httpx2": "HTTPError",  # the same, under the name huggingface_hub 1.x imports
    "safetensors": "SafetensorError",  # disk full or file-size limit while writing weights, a corrupt file
    "huggingface_hub.errors": "StrictDataclassError",  # a config field of the wrong type (transformers' checks)
}
# Libraries whose logs main() quiets, and the variable each reads its log level from when first imported
LIBRARY_VERBOSITY = {
    "transformers": "TRANSFORMERS_VERBOSITY",
    "huggingface_hub": "HF_HUB_VERBOSITY",
    "datasets": "DATASETS_VERBOSITY",
}
# Progress bars main() turns off when their library is already imported: module -> (module with the
# switches, disable, enable). A fresh process reads HF_DATASETS_DISABLE_PROGRESS_BARS instead.
PROGRESS_BARS = {
    "transformers": ("transformers.utils.logging", "disable_progress_bar", "enable_progress_bar"),
    "datasets": ("datasets.utils.tqdm", "disable_progress_bars", "enable_progress_bars"),
}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def user_error_message(error: BaseException) -> str | None:
    """The one-line message of `error` if it is a user error (USER_ERRORS, LIBRARY_USER_ERRORS), else None."""
    if isinstance(error, USER_ERRORS):
        return _one_line(str(error) or type(error).__name__)
    for module_name, class_name in LIBRARY_USER_ERRORS.items():
        module = sys.modules.get(module_name)
        if module is not None and isinstance(error, getattr(module, class_name)):
            try:
                where = f" ({error.request.method} {error.request.url})"  # httpx errors know the request
            except (AttributeError, RuntimeError):
                where = ""
            return _one_line(f"{type(error).__name__}{where}: {error}")
    return None


@contextlib.contextmanager
def quiet_libraries():
    """The warnings and logs of the libraries of LIBRARY_VERBOSITY (transformers' multi-line load reports,
    huggingface_hub's retry notices, ...), transformers' weight-loading bar and datasets' preparation bars
    off while a command runs: errors reach the user as main()'s one line. The libraries are mostly imported
    later, inside a handler, and then read the variables set here (a value the user set is kept); if already
    imported (qrm_hf.cli.main called from Python), their settings are changed here and restored after."""
    with contextlib.ExitStack() as restore, warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"(transformers|huggingface_hub|datasets)(\.|$)")
        for module_name, variable in LIBRARY_VERBOSITY.items():
            if variable in os.environ:
                continue
            os.environ[variable] = "error"
            restore.callback(os.environ.pop, variable, None)
            if module_name in sys.modules:
                logs = importlib.import_module(f"{module_name}.utils.logging")
                restore.callback(logs.set_verbosity, logs.get_verbosity())
                logs.set_verbosity_error()
        if "HF_DATASETS_DISABLE_PROGRESS_BARS" not in os.environ:
            os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
            restore.callback(os.environ.pop, "HF_DATASETS_DISABLE_PROGRESS_BARS", None)
        for module_name, (switches, disable, enable) in PROGRESS_BARS.items():
            if module_name in sys.modules:
                switches = importlib.import_module(switches)
                if switches.is_progress_bar_enabled():
                    getattr(switches, disable)()
                    restore.callback(getattr(switches, enable))
        yield


def parse_arguments(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """`parser.parse_args(argv)`, except that the options a command leaves to its trainer config (the
    commands with a `trainer_argv` default: `qrm sft`, `rloo`, `grpo`, `qrm_hf.cli_rlhf`) are kept for it
    in `args.trainer_argv`; any other unknown option is argparse's usual error."""
    args, rest = parser.parse_known_args(argv)
    if rest:
        if "trainer_argv" not in vars(args):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.trainer_argv = rest
    return args


def main(argv=None) -> None:
    """Run `qrm ARGV`. A user error (`user_error_message`) ends in one line on stderr and exit status 2, Ctrl-C
    in one line and exit status 130 (with --debug: its traceback, and the libraries' own logging)."""
    parser = build_parser()
    args = parse_arguments(parser, argv)
    try:
        from .cli_paths import check_paths

        check_paths(args)  # outputs that are inputs, directories of someone else's files: refused first
        if args.debug:
            args.handler(args)
        else:
            with quiet_libraries():
                args.handler(args)
    except (
        KeyboardInterrupt
    ):  # Ctrl-C is the user's choice, not a bug: no traceback (outputs stay whole, qrm_hf.io)
        if args.debug:
            raise
        print(f"qrm {args.command}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None  # the shell's status for a process ended by SIGINT
    except Exception as error:
        message = user_error_message(error)
        if message is None or args.debug:
            raise
        print(f"qrm {args.command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
