"""The `qrm` command line (also `python -m qrm_hf`). Run `qrm --help` or `qrm COMMAND --help`."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def _load_model(path: str, revision: str | None = None):
    from .hub import load_qrm

    model, tokenizer = load_qrm(path, revision=revision)
    if not hasattr(model.config, "quantile_levels"):
        raise SystemExit(
            f"{path} is not a QRM (its config has no quantile_levels); convert it with `qrm convert`."
        )
    return model, tokenizer


def _demo(args):
    from .training.demo import demo_config, run_demo

    run_demo(demo_config(args.output_dir, backbone=args.backbone))


def _convert(args):
    from .convert import convert_released_checkpoint

    destination = convert_released_checkpoint(
        args.source, args.destination, attribute_names=args.attribute_names
    )
    print(f"Converted {args.source} -> {destination}")


def _print_scores(model, tokenizer, rows, lam, alpha, plot=None, batch_size=8):
    from .chat import conversation_messages
    from .scoring import format_table, plot_reward_distributions, risk_summary, score_conversations

    conversations = [conversation_messages(row["prompt"], row["response"]) for row in rows]
    names = [str(row.get("name", i)) for i, row in enumerate(rows)]
    outputs = score_conversations(model, tokenizer, conversations, batch_size=batch_size)
    levels = model.config.quantile_levels
    print(format_table(risk_summary(outputs["reward_quantiles"], levels, lam=lam, alpha=alpha), names))
    if plot:
        print(
            f"Reward distributions drawn to {plot_reward_distributions(names, outputs['reward_quantiles'], levels, plot)}"
        )


def _score(args):
    from .data import read_jsonl

    if args.file:
        rows = read_jsonl(args.file)
    elif args.prompt is not None and args.response is not None:
        rows = [{"name": "conversation", "prompt": args.prompt, "response": args.response}]
    else:
        raise SystemExit("Give --prompt and --response, or --file with prompt/response rows.")
    model, tokenizer = _load_model(args.model, args.revision)
    _print_scores(model, tokenizer, rows, args.lam, args.alpha, args.plot, args.batch_size)


def _finite_or_null(value):
    """`value` with NaN and infinite floats replaced by None, so that the JSON is strict."""
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _evaluate(args):
    from .data import read_jsonl
    from .evaluation import evaluate_pairs, evaluate_ratings, format_ratings_report, plot_calibration

    if (args.baselines or args.plots) and not args.ratings:
        raise SystemExit("qrm evaluate: --baselines and --plots need --ratings.")
    model, tokenizer = _load_model(args.model, args.revision)
    print(f"Loaded {type(model).__module__}.{type(model).__name__} from {args.model}")
    report = {}
    if args.ratings:
        try:
            report["ratings"] = evaluate_ratings(
                model,
                tokenizer,
                read_jsonl(args.ratings),
                tuple(args.label_range),
                baseline_features=args.baselines or (),
            )
        except (ValueError, FileNotFoundError) as error:
            raise SystemExit(f"qrm evaluate: {error}") from error
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
        )
    if args.pairs:
        report["pairs"] = pairs = evaluate_pairs(model, tokenizer, read_jsonl(args.pairs))
        by_kind = pairs.get("accuracy_by_kind", {})
        print(
            f"  Held-out pairwise accuracy: {pairs['accuracy']:.3f} on {pairs['pairs']} pairs "
            + " ".join(f"({kind}: {value:.3f})" for kind, value in by_kind.items())
        )
    if args.showcase:
        print(f"  Showcase (exp_utility with lambda {args.lam}, cvar at alpha {args.alpha}):")
        _print_scores(model, tokenizer, read_jsonl(args.showcase), args.lam, args.alpha, args.plot)
    for path in dict.fromkeys(filter(None, (args.json, args.output))):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(_finite_or_null(report), indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qrm", description="Quantile Reward Models: train, convert, score.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="train a small QRM on the shipped demo data, end to end",
        description="`qrm train training/configs/demo.yaml` (feature extraction with the embedded "
        "SmolLM2-135M-Instruct, quantile heads, gating, saved model), then reload the model in a fresh "
        "process with trust_remote_code=True and print held-out numbers.",
    )
    demo.add_argument("--output-dir", default="outputs/demo", help="where features and the model go")
    demo.add_argument("--backbone", help="a local backbone directory instead of the embedded SmolLM2")
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
        "conversations under a QRM (a local directory or a Hub id).",
    )
    score.add_argument("model", help="QRM directory or Hub repo id")
    score.add_argument("--revision", help="branch, tag or commit of a Hub model (default: main)")
    score.add_argument("--prompt", help="the user's message")
    score.add_argument("--response", help="the assistant's answer")
    score.add_argument("--file", help="JSON Lines file with prompt/response (and optional name) per row")
    score.add_argument("--plot", help="write a PNG of the reward distributions here")
    score.add_argument("--batch-size", type=int, default=8)
    score.add_argument("--lam", type=float, default=1.0, help="risk aversion of the exponential utility")
    score.add_argument("--alpha", type=float, default=0.1, help="tail fraction of the CVaR")
    score.set_defaults(handler=_score)

    evaluate = commands.add_parser(
        "evaluate",
        help="held-out pinball, CRPS, interval coverage and width, calibration plots, pairwise accuracy",
        description="Evaluate a QRM on rating data (pinball loss, CRPS, coverage of the 50/80/90 %% "
        "intervals, mean 90 %% width per attribute and per `kind`, the controversial / clear width ratio "
        "next to the annotators' own spread ratio, optionally next to ridge and Gaussian baselines) and on "
        "preference pairs (accuracy).",
    )
    evaluate.add_argument("model", help="QRM directory or Hub repo id")
    evaluate.add_argument("--revision", help="branch, tag or commit of a Hub model (default: main)")
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
    evaluate.add_argument("--plot", help="PNG of the showcase reward distributions")
    evaluate.add_argument("--lam", type=float, default=1.0, help="risk aversion of the exponential utility")
    evaluate.add_argument("--alpha", type=float, default=0.1, help="tail fraction of the CVaR")
    evaluate.add_argument(
        "--baselines",
        nargs="+",
        metavar="FEATURE_DIR",
        help="training attribute features (qrm extract) to fit the ridge and heteroscedastic Gaussian "
        "baselines on, reported next to the QRM (the held-out rows are encoded with the model's backbone)",
    )
    evaluate.add_argument("--plots", metavar="DIR", help="draw reliability.png and pit.png into DIR")
    evaluate.add_argument("--output", metavar="FILE", help="write every number to this JSON file")
    evaluate.add_argument("--json", help=argparse.SUPPRESS)  # the former name of --output
    evaluate.set_defaults(handler=_evaluate)

    from .cli_pipeline import add_pipeline_commands
    from .cli_rewardbench import add_rewardbench_command
    from .cli_rlhf import add_rlhf_commands
    from .hub import add_push_command

    add_pipeline_commands(commands)
    add_rlhf_commands(commands)
    add_rewardbench_command(commands)
    add_push_command(commands)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
