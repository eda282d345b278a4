"""`qrm rewardbench MODEL --data PATH_OR_HUB_ID`: RewardBench / RewardBench 2 scores of a QRM."""

from __future__ import annotations

import argparse
from pathlib import Path


def _rewardbench(args) -> None:
    from .cli_model import load_model
    from .cli_paths import check_writable
    from .evaluation import format_ranking_report, plot_accuracy_coverage
    from .io import write_json_atomic
    from .rewardbench import format_report, run_rewardbench

    check_writable(args.output, "results")
    model, tokenizer = load_model(args.model, args.revision, args.trust_remote_code)
    report = run_rewardbench(
        model,
        tokenizer,
        args.data,
        split=args.split,
        limit=args.limit,
        rank_by=args.rank_by,
        batch_size=args.batch_size,
        max_length=args.max_length,
    )
    report = {"model": str(args.model), **report}
    print(format_report(report))
    if report.get("ranking", {}).get("pairs"):
        print(format_ranking_report(report["ranking"]))
        if args.plots:
            paths = plot_accuracy_coverage(report["ranking"], args.plots, command="qrm rewardbench")
            print(f"Accuracy-coverage curves drawn to {', '.join(map(str, paths))}")
    if args.output:
        write_json_atomic(Path(args.output), report)
        print(f"Results written to {args.output}")


def add_rewardbench_command(commands) -> argparse.ArgumentParser:
    """Add ``qrm rewardbench MODEL --data ... [--split] [--limit] [--output] [--rank-by]``."""
    parser = commands.add_parser(
        "rewardbench",
        help="RewardBench / RewardBench 2 accuracy, optionally ranked by a risk measure",
        description=(
            "Score a QRM on RewardBench (rows prompt/chosen/rejected/subset: per-subset accuracy, the\n"
            "Chat/Chat Hard/Safety/Reasoning sections weighted by the official example counts, and their\n"
            "mean) or RewardBench 2 (chosen and rejected lists: best-of-N accuracy per subset, Ties scored\n"
            "the official way, the mean of the subsets). The format is detected from the rows.\n"
            "Also how well the model's uncertainty ranks its mistakes: the accuracy on the pairs each\n"
            "signal (margin, |P - 1/2|, effect size, the members' spread) is surest about, and its area."
        ),
        epilog=(
            "examples:\n"
            "  qrm rewardbench outputs/demo/model --data allenai/reward-bench --output rb.json\n"
            "  qrm rewardbench outputs/demo/model --data allenai/reward-bench-2 --rank-by cvar:0.25\n"
            "  qrm rewardbench MODEL --data filtered.jsonl --limit 20 --rank-by quantile:0.1\n"
            "then put the numbers in the model card: qrm push MODEL_DIR REPO_ID --results rb.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from .arguments import positive_int, risk_spec, risk_spec_forms
    from .cli_model import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument(
        "--data", required=True, help="Hub dataset id or local file / directory in an official format"
    )
    parser.add_argument(
        "--split", help="split to read (default: filtered, else test, else train; a local file is its split)"
    )
    parser.add_argument("--limit", type=positive_int, help="score only the first LIMIT rows of each subset")
    parser.add_argument(
        "--rank-by",
        type=risk_spec,
        default="expectation",
        help="what ranks responses, a qrm_hf.risk measure spec (a value left out is the default in brackets): "
        + risk_spec_forms(),
    )
    parser.add_argument("--output", help="write the results to this JSON file")
    parser.add_argument(
        "--plots",
        metavar="DIR",
        help="draw accuracy_coverage.png into DIR: the accuracy on the pairs each ranking signal is surest about",
    )
    parser.set_defaults(handler=_rewardbench)
    return parser
