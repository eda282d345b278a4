"""The model argument of the `qrm` commands that score with a QRM (`score`, `evaluate`, `rewardbench`,
`preference-strength`): its options (`add_model_arguments`) and its loading (`load_model`)."""

from __future__ import annotations

import argparse

from .arguments import positive_int


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the positional `model` (a QRM directory or Hub id), `--revision`, `--trust-remote-code`,
    `--batch-size` and `--max-length`."""
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


def load_model(path: str, revision: str | None = None, trust_remote_code: bool = False):
    """(model, tokenizer) of the QRM at `path` (`qrm_hf.hub.load_qrm`); a model without quantile levels is
    refused with the way out (`qrm convert`)."""
    from .hub import load_qrm

    model, tokenizer = load_qrm(path, revision=revision, trust_remote_code=trust_remote_code)
    if not hasattr(model.config, "quantile_levels"):
        raise ValueError(
            f"{path} is not a QRM (its config has no quantile_levels); convert it with `qrm convert`."
        )
    return model, tokenizer
