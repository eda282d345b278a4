"""Model cards for saved QRMs, rendered from the template next to this file with huggingface_hub.

`render_model_card` fills `qrm_model_card.md` (a Jinja template) through `ModelCard.from_template`: the
metadata (`library_name`, `pipeline_tag`, tags, `base_model`, `datasets`, license, `model-index`) comes from a
`ModelCardData`, the body from the model's config. A template that uses a field this module does not provide
is an error (rendered with `jinja2.StrictUndefined` first), never a silently blank card.

A card rendered without a `repo_id` (as `save_qrm` does) names the placeholder `PLACEHOLDER_REPO_ID` in its
snippets; `retarget_model_card` swaps in the real repo id when the directory is pushed (`qrm_hf.hub`).

The card links no project page of its own: it names the package as installed (`pip install qrm-hf`) and
links a homepage only when the user gives one (`homepage=`; `qrm assemble/train/demo/push --homepage`,
``model: homepage:`` in a `qrm train` config), as the line `Project page: <URL>` that
`set_card_homepage` writes or replaces.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

TEMPLATE = Path(__file__).with_name("qrm_model_card.md")
TAGS = ["reward-model", "quantile-regression", "distributional-reward-model", "qrm", "trl"]
PLACEHOLDER_REPO_ID = "path/to/this/model"
PLACEHOLDER_MODEL_NAME = "qrm-reward-model"
# The line of the card that links the user's homepage (the template writes it, `set_card_homepage` edits it).
HOMEPAGE_LINE = re.compile(r"^Project page: <[^>\n]*>$", re.MULTILINE)


class ModelCardTemplateError(ValueError):
    """The model card template cannot be rendered with the fields `render_model_card` provides."""


def _hub_model_id(name: str | None) -> str | None:
    """`name` if it can be a Hub model id (the Hub rejects cards whose `base_model` is not one), else None."""
    if not name or os.path.isabs(name) or name.startswith(".") or os.path.exists(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def check_homepage(homepage: str) -> str:
    """`homepage` if it is an http(s) URL that a card can link, else a ValueError naming the problem."""
    parts = urlsplit(homepage)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c in homepage for c in " <>\n"):
        raise ValueError(
            f"The homepage {homepage!r} is not an http(s) URL; give the full address, e.g. https://example.org/my-qrm."
        )
    return homepage


def _eval_results(evaluation: Sequence[dict]) -> list[EvalResult]:
    results = []
    for i, entry in enumerate(evaluation):
        missing = [key for key in ("dataset", "metric", "value") if key not in entry]
        if missing:
            raise ValueError(
                f"Evaluation entry {i} ({entry!r}) lacks {', '.join(missing)}; each entry needs "
                "'dataset', 'metric' and 'value' (and optionally 'split', 'dataset_name', 'metric_name')."
            )
        results.append(
            EvalResult(
                task_type="text-classification",
                task_name="Reward modeling",
                dataset_type=entry["dataset"],
                dataset_name=entry.get("dataset_name", entry["dataset"]),
                dataset_split=entry.get("split"),
                metric_type=entry["metric"],
                metric_name=entry.get("metric_name", entry["metric"]),
                metric_value=entry["value"],
            )
        )
    return results


def _check_template(template_str: str, template_path: Path, fields: dict) -> None:
    """Render once with StrictUndefined: a field the template needs but is not given is a clear error."""
    try:
        jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(template_str).render(**fields)
    except jinja2.UndefinedError as error:
        raise ModelCardTemplateError(
            f"The model card template {template_path} uses a field that is not provided ({error.message}). "
            f"Available fields: {', '.join(sorted(fields))}."
        ) from error
    except jinja2.TemplateSyntaxError as error:
        raise ModelCardTemplateError(
            f"The model card template {template_path} is not valid Jinja (line {error.lineno}: {error.message})."
        ) from error
    if "{{ card_data }}" not in template_str.replace("{{card_data}}", "{{ card_data }}"):
        raise ModelCardTemplateError(
            f"The model card template {template_path} has no metadata block: it must start with "
            "'---\\n{{ card_data }}\\n---' so that the Hub reads library_name, pipeline_tag, tags and model-index."
        )


def render_model_card(
    config,
    base_model: str | None = None,
    repo_id: str | None = None,
    datasets: list[str] | None = None,
    license: str = "apache-2.0",
    training_summary: str = "",
    evaluation: list[dict] | None = None,
    template_path: str | Path | None = None,
    homepage: str | None = None,
) -> ModelCard:
    """The model card of a QRM with `config` (a `QRMConfig`).

    Args:
        base_model: the backbone (a Hub id becomes the `base_model` metadata; a local path is only named in
            the text, since the Hub rejects a `base_model` that is not a model id).
        repo_id: the Hub repo the card describes; without it the snippets name `PLACEHOLDER_REPO_ID`, which
            `retarget_model_card` replaces on push.
        datasets: Hub ids of the training datasets (`datasets` metadata).
        training_summary: how the model was trained (free text, the card's "Training" section).
        evaluation: dicts with `dataset`, `metric` and `value` (and optionally `split`, `dataset_name`,
            `metric_name`); they become the card's `model-index` and its "Evaluation" table.
        template_path: another Jinja template (default: `qrm_model_card.md` next to this module).
        homepage: an http(s) URL the user configured for the project; the card links it, and no other
            project page (None: the card names the package only).

    Raises:
        ValueError: `homepage` is not an http(s) URL.
        ModelCardTemplateError: the template uses a field that is not provided, or has no metadata block.
    """
    template_path = Path(template_path) if template_path is not None else TEMPLATE
    evaluation = list(evaluation or [])
    model_name = repo_id.rsplit("/", 1)[-1] if repo_id else PLACEHOLDER_MODEL_NAME
    eval_results = _eval_results(evaluation)
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=list(TAGS),
        base_model=_hub_model_id(base_model),
        datasets=list(datasets) if datasets else None,
        license=license,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    levels = [round(float(level), 4) for level in config.quantile_levels]
    fields = dict(
        model_name=model_name,
        repo_id=repo_id or PLACEHOLDER_REPO_ID,
        base_model=base_model or "a decoder LLM",
        attribute_names=list(config.attribute_names),
        quantile_levels=levels,
        num_attributes=config.num_attributes,
        num_quantiles=config.num_quantiles,
        quantile_mixing=config.quantile_mixing,
        monotone_quantiles=bool(getattr(config, "monotone_quantiles", True)),
        num_members=int(getattr(config, "num_members", 1)),
        gating_n_hidden=config.gating_n_hidden,
        gating_hidden_dim=config.gating_hidden_dim,
        gating_temperature=config.gating_temperature,
        prompt_end_pattern=list(config.prompt_end_pattern or []),
        datasets=list(datasets or []),
        license=license,
        homepage=check_homepage(homepage) if homepage else "",
        training_summary=training_summary or "Trained with the qrm-hf pipeline.",
        evaluation=[
            dict(entry, split=entry.get("split") or "", metric_name=entry.get("metric_name", entry["metric"]))
            for entry in evaluation
        ],
    )
    template_str = template_path.read_text(encoding="utf-8")
    _check_template(template_str, template_path, dict(fields, card_data=card_data.to_yaml()))
    return ModelCard.from_template(card_data, template_path=str(template_path), **fields)


def add_evaluation_to_card(card: ModelCard | str, evaluation: Sequence[dict]) -> ModelCard:
    """The card with `evaluation` entries (as for `render_model_card`) added to its `model-index`.

    An existing result for the same dataset, split and metric name is replaced, so adding a newer results
    file updates the card instead of listing the metric twice.
    """
    card = ModelCard(card if isinstance(card, str) else str(card), ignore_metadata_errors=True)
    new = _eval_results(evaluation)
    keys = {(result.dataset_type, result.dataset_split, result.metric_name) for result in new}
    kept = [
        result
        for result in (card.data.eval_results or [])
        if (result.dataset_type, result.dataset_split, result.metric_name) not in keys
    ]
    card.data.eval_results = kept + new
    if not card.data.get("model_name"):
        card.data.model_name = PLACEHOLDER_MODEL_NAME
    return card


def set_card_homepage(card: ModelCard | str, homepage: str) -> ModelCard:
    """The card linking `homepage` (an http(s) URL): its `Project page: <URL>` line is replaced, or added at
    the end of the introduction (before the first `## ` section) when the card has none."""
    line = f"Project page: <{check_homepage(homepage)}>"
    return _with_text(card, HOMEPAGE_LINE, line, before="\n## ", separator="\n\n")


CALIBRATION_SECTION = re.compile(r"^## Calibration\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)


def set_card_calibration(card: ModelCard | str, section: str) -> ModelCard:
    """The card with `section` (markdown without its title) as its `## Calibration` section: an earlier one is
    replaced, else the section goes before "## Usage" (at the end when the card has none)."""
    block = f"## Calibration\n\n{section.strip()}\n\n"
    return _with_text(card, CALIBRATION_SECTION, block, before="\n## Usage", separator="")


def _with_text(
    card: ModelCard | str, existing: re.Pattern, text: str, before: str, separator: str
) -> ModelCard:
    """The card with `text` in place of the first match of `existing`, else inserted before the first
    `before` (followed by `separator`), else appended at the end."""
    card = ModelCard(card if isinstance(card, str) else str(card), ignore_metadata_errors=True)
    if existing.search(card.text):
        card.text = existing.sub(lambda _: text, card.text, count=1)
    elif before in card.text:
        card.text = card.text.replace(before, "\n" + text + separator + before.lstrip("\n"), 1)
    else:
        card.text = card.text.rstrip("\n") + "\n\n" + text + ("" if text.endswith("\n") else "\n")
    return card


def retarget_model_card(card: ModelCard | str, repo_id: str) -> ModelCard:
    """The card with `repo_id` in place of the placeholder a card rendered without a repo id names.

    Cards rendered for a real repo id (or written by hand) come back unchanged.
    """
    card = ModelCard(card if isinstance(card, str) else str(card), ignore_metadata_errors=True)
    if PLACEHOLDER_REPO_ID not in card.text:
        return card
    name = repo_id.rsplit("/", 1)[-1]
    card.text = card.text.replace(PLACEHOLDER_REPO_ID, repo_id).replace(
        f"# {PLACEHOLDER_MODEL_NAME}\n", f"# {name}\n", 1
    )
    if card.data.get("model_name") == PLACEHOLDER_MODEL_NAME:
        card.data.model_name = name
    return card
