"""`qrm push MODEL_DIR REPO_ID`: upload a saved QRM directory to the Hub (`qrm_hf.hub.push_model_dir`)."""

from __future__ import annotations

import argparse


def _push_command(args) -> None:
    from .hub import push_model_dir

    info = push_model_dir(
        args.model_dir,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        token=args.token,
        results=args.results or (),
        homepage=args.homepage,
    )
    print(f"Pushed {args.model_dir} to {args.repo_id} (branch {args.revision or 'main'}), commit {info.oid}")
    print(f"  {info.commit_url}")
    print(
        "  Load it with AutoModelForSequenceClassification.from_pretrained("
        f"{args.repo_id!r}, trust_remote_code=True, revision={info.oid!r})"
    )


def add_push_command(subparsers) -> argparse.ArgumentParser:
    """Add ``qrm push MODEL_DIR REPO_ID [--private] [--revision BRANCH] [--commit-message ...]``."""
    push = subparsers.add_parser(
        "push",
        help="upload a saved QRM directory to the Hugging Face Hub",
        description=(
            "Upload a QRM directory (as written by save_qrm or `qrm demo`) to a Hub model repo in one\n"
            "commit: safetensors weights, config.json with auto_map, configuration_qrm.py and\n"
            "modeling_qrm.py (the code that trust_remote_code=True runs), the tokenizer and the model card.\n"
            "The directory is checked first: a missing file, or a symbolic link that leads out of the\n"
            "directory, is named and nothing is uploaded. The repo and\n"
            "the branch are created if needed; weight, config, code and tokenizer files of an earlier upload\n"
            "that the directory does not have are deleted in the same commit.\n"
            "Authenticate with `hf auth login` or HF_TOKEN."
        ),
        epilog=(
            "examples:\n"
            "  qrm push outputs/demo/model my-org/qrm-smollm2-demo\n"
            "  qrm push outputs/demo/model my-org/qrm-smollm2-demo --private --revision v0.1 \\\n"
            "      --commit-message 'Refit gating'\n"
            "then load it anywhere, without qrm-hf:\n"
            "  AutoModelForSequenceClassification.from_pretrained(\n"
            "      'my-org/qrm-smollm2-demo', trust_remote_code=True, revision=COMMIT)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    push.add_argument("model_dir", metavar="MODEL_DIR", help="the saved QRM directory")
    push.add_argument(
        "repo_id", metavar="REPO_ID", help="Hub repo id, 'namespace/name' (created if it does not exist)"
    )
    push.add_argument(
        "--private", action="store_true", help="create the repo as private (no effect on an existing repo)"
    )
    push.add_argument(
        "--revision",
        metavar="BRANCH",
        help="branch to commit to, created from main if missing (default: main)",
    )
    push.add_argument(
        "--commit-message", metavar="MESSAGE", help="message of the commit (default: 'Upload QRM')"
    )
    push.add_argument(
        "--token", metavar="TOKEN", help="Hub token (default: HF_TOKEN or the token saved by `hf auth login`)"
    )
    push.add_argument(
        "--results",
        nargs="+",
        metavar="FILE",
        help="`qrm rewardbench --output` files: their scores go into the uploaded card's model-index",
    )
    from .training.settings import AssembleSettings, add_settings_arguments

    add_settings_arguments(push, AssembleSettings, names=["homepage"])
    push.set_defaults(handler=_push_command)
    return push
