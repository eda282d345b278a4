"""The `qrm` command line (also `python -m qrm_hf`). Run `qrm --help` or `qrm COMMAND --help`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from pathlib import Path


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (batch sizes, lengths), else a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def risk_spec(spec: str) -> str:
    """argparse type: a `qrm_hf.risk` measure spec (`exp_utility`, `quantile:0.05`, ...), checked by the registry."""
    from . import risk

    try:
        risk.parse(spec)
    except (ValueError, TypeError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return spec


def risk_parameter(name: str):
    """argparse type: a value of the `qrm_hf.risk` parameter `name` (``lam`` > 0, ``alpha`` in (0, 1]),
    checked by the risk registry."""
    from . import risk

    parameter = risk.RISK_PARAMETERS[name]

    def parse(text: str) -> float:
        try:
            return parameter.check(float(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"must {parameter.domain}, got {text}") from None

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def risk_spec_forms() -> str:
    """The spec of every registered risk measure with its parameter's default, for help texts:
    "expectation, exp_utility[:LAM] (1.0), ..., cvar[:ALPHA] (0.1), ..."."""
    from . import risk

    forms = []
    for name, measure in risk.RISK_MEASURES.items():
        parameters = "".join(f"[:{p.name.upper()}] ({p.default})" for p in measure.parameters)
        forms.append(name + parameters)
    return ", ".join(forms)


def check_writable(path: str | Path | None, what: str) -> None:
    """Fail now, not after the work, when the output file `path` cannot be written (the file is not created)."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"The {what} path {path} is a directory; give a file name.")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a"):
            pass
    except OSError as error:
        raise OSError(f"Cannot write the {what} to {path}: {error.strerror or error}.") from error
    if not existed:
        path.unlink()


def _load_model(path: str, revision: str | None = None, trust_remote_code: bool = False):
    from .hub import load_qrm

    model, tokenizer = load_qrm(path, revision=revision, trust_remote_code=trust_remote_code)
    if not hasattr(model.config, "quantile_levels"):
        raise ValueError(
            f"{path} is not a QRM (its config has no quantile_levels); convert it with `qrm convert`."
        )
    return model, tokenizer


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
    from .presets import response_conversations

    rows = read_jsonl(path)
    conversations = response_conversations(rows, name=str(path))
    return conversations, [str(row.get("name", i)) for i, row in enumerate(rows)], rows.row_locations


def _score(args):
    from .presets import response_conversations

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
    model, tokenizer = _load_model(args.model, args.revision, args.trust_remote_code)
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
    from .data import read_jsonl
    from .evaluation import (
        evaluate_pairs,
        evaluate_ratings,
        format_gating_report,
        format_ratings_report,
        plot_calibration,
    )

    if not (args.ratings or args.pairs or args.showcase):
        raise ValueError("Nothing to evaluate: give --ratings, --pairs and/or --showcase.")
    if (args.baselines or args.plots or args.bootstrap) and not args.ratings:
        raise ValueError("--baselines, --bootstrap and --plots need --ratings.")
    if args.bootstrap and (args.bootstrap < 2 or not args.baselines):
        raise ValueError("--bootstrap needs N >= 2 and --baselines (the training features to refit on).")
    ratings = read_jsonl(args.ratings) if args.ratings else None
    pairs = read_jsonl(args.pairs) if args.pairs else None
    showcase = _scoring_rows(args.showcase) if args.showcase else None
    outputs = [path for path in (args.json, args.output) if path]  # one path for both is refused (cli_paths)
    check_writable(args.plot, "plot")
    for path in outputs:
        check_writable(path, "JSON report")
    model, tokenizer = _load_model(args.model, args.revision, args.trust_remote_code)
    model_class = (
        f"{type(model).__module__}.{type(model).__name__}"  # the code that scores, in the report too
    )
    print(f"Loaded {model_class} from {args.model}")
    report = {"model_class": model_class}
    lengths = {"batch_size": args.batch_size, "max_length": args.max_length}
    if ratings:
        report["ratings"] = evaluate_ratings(
            model,
            tokenizer,
            ratings,
            tuple(args.label_range),
            baseline_features=args.baselines or (),
            bootstrap=args.bootstrap or 0,
            **lengths,
        )
        ratings = report["ratings"]
        print(format_ratings_report(ratings))
        if args.plots:
            paths = plot_calibration(ratings, args.plots)
            print(f"  Reliability diagram and PIT histogram drawn to {', '.join(map(str, paths))}")
        by_kind = ratings.get("pinball_by_kind", {})
        print(
            f"  Held-out pinball loss of the reloaded model: {ratings['pinball']:.4f} "
            + " ".join(f"({kind}: {value:.4f})" for kind, value in by_kind.items())
            + f"; calibration error {ratings['calibration_error']:.3f}"
            + _skipped_note(ratings)
        )
    if pairs:
        report["pairs"] = pairs = evaluate_pairs(model, tokenizer, pairs, **lengths)
        by_kind = pairs.get("accuracy_by_kind", {})
        print(
            f"  Held-out pairwise accuracy: {pairs['accuracy']:.3f} on {pairs['pairs']} pairs "
            + " ".join(f"({kind}: {value:.3f})" for kind, value in by_kind.items())
            + _skipped_note(pairs)
        )
        if "gating" in pairs:
            print(format_gating_report(pairs["gating"]))
    if showcase:
        print(f"  Showcase (certainty equivalent with lambda {args.lam}, cvar at alpha {args.alpha}):")
        _print_scores(model, tokenizer, showcase, args.lam, args.alpha, args.plot, **lengths)
    from .io import write_json_atomic

    for path in outputs:
        write_json_atomic(Path(path), report)


def _skipped_note(report: dict) -> str:
    skipped = report.get("skipped_too_long", 0)
    return f"; {skipped} row(s) longer than max_length left out" if skipped else ""


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="QRM directory or Hub repo id")
    parser.add_argument("--revision", help="branch, tag or commit of a Hub model (default: main)")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the Python code that comes with the model (never needed for a qrm-hf QRM with qrm-hf "
        "installed; only for models of another type, e.g. released checkpoints with their own code). Read "
        "that code first: it runs with your rights.",
    )
    parser.add_argument("--batch-size", type=positive_int, default=8, help="conversations per forward pass")
    parser.add_argument(
        "--max-length",
        type=positive_int,
        help="longest conversation in tokens (default: the backbone's max_position_embeddings); longer ones "
        "are refused (score) or left out and counted (evaluate), never truncated",
    )


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qrm",
        description="Quantile Reward Models: train, convert, score. A mistake in the input (a file, an "
        "argument, a model that is not a QRM) is reported in one line with exit status 2; --debug shows "
        "the traceback.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    score = commands.add_parser(
        "score",
        help="score conversations and print reward distributions",
        description="Print the expected reward, quantiles and risk measures of "
        "conversations under a QRM (a local directory or a Hub id). cert_equiv is the certainty equivalent "
        "of the exponential utility E[-exp(-lam r)] (paper eq. 4): the same ranking, in reward units, "
        "computed without overflow.",
    )
    _add_model_arguments(score)
    score.add_argument("--prompt", help="the user's message")
    score.add_argument("--response", help="the assistant's answer")
    score.add_argument("--file", help="JSON Lines file with prompt/response (and optional name) per row")
    _add_distribution_table_arguments(score)
    score.set_defaults(handler=_score)

    evaluate = commands.add_parser(
        "evaluate",
        help="held-out pinball, CRPS, interval coverage and width, calibration plots, pairwise accuracy",
        description="Evaluate a QRM on rating data (pinball loss, CRPS, coverage of the 50/80/90 %% "
        "intervals, mean 90 %% width per attribute and per `kind`, the controversial / clear width ratio "
        "next to the annotators' own spread ratio, optionally next to ridge and Gaussian baselines) and on "
        "preference pairs (accuracy).",
    )
    _add_model_arguments(evaluate)
    evaluate.add_argument(
        "--ratings", help="JSON Lines rating rows: prompt, response, one column per attribute"
    )
    evaluate.add_argument(
        "--label-range",
        nargs=2,
        type=float,
        default=(0.0, 4.0),
        metavar=("LOW", "HIGH"),
        help="range of the rating labels, mapped to [0, 1] (default 0 4)",
    )
    evaluate.add_argument("--pairs", help="JSON Lines preference rows: prompt, chosen, rejected")
    evaluate.add_argument(
        "--showcase", help="JSON Lines rows (name, prompt, response) to print risk measures for"
    )
    _add_distribution_table_arguments(evaluate)
    evaluate.add_argument("--json", help="same as --output")
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
    evaluate.add_argument("--plots", metavar="DIR", help="draw reliability.png and pit.png into DIR")
    evaluate.add_argument("--output", metavar="FILE", help="write every number to this JSON file")
    evaluate.set_defaults(handler=_evaluate)

    from .cli_pipeline import add_pipeline_commands
    from .cli_preference import add_preference_commands
    from .cli_rewardbench import add_rewardbench_command
    from .cli_rlhf import add_rlhf_commands
    from .hub import add_push_command

    add_pipeline_commands(commands)
    add_rlhf_commands(commands)
    add_rewardbench_command(commands)
    add_preference_commands(commands)
    add_push_command(commands)
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
