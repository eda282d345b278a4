"""The named presets of the paper's datasets (docs/design.md §6): :data:`PRESETS` maps a name to a
:class:`DatasetPreset` (where the data lives, which columns hold the conversation and the labels, the
label range of each attribute), with the row transforms of the datasets whose rows are not one
conversation each (UltraFeedback, rated pairs, HH-RLHF transcripts).

The loader and the converters that read a preset are in `qrm_hf.dataset_loading`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from .dataset_preset import Conversation, DatasetPreset
from .modeling.configuration_qrm import DEFAULT_ATTRIBUTE_NAMES

PAPER_ATTRIBUTES: tuple[str, ...] = tuple(DEFAULT_ATTRIBUTE_NAMES)  # the paper's 19, checkpoint order


# --------------------------------------------------------------------------------------------- transforms

_ULTRAFEEDBACK_ASPECTS = ("instruction_following", "truthfulness", "honesty", "helpfulness")
_CODE_PREFERENCES = ("complexity", "style", "explanation", "instruction-following", "readability")


def _ultrafeedback_rating(annotations: Mapping | None, aspect: str):
    annotation = (annotations or {}).get(aspect)
    if isinstance(annotation, list):  # the authors' raw JSON holds a one-element list per aspect
        annotation = annotation[0] if annotation else None
    return None if annotation is None else annotation.get("Rating")


def _ultrafeedback_completions(row: dict) -> list[dict]:
    """openbmb/UltraFeedback: one flat row per rated completion of the instruction."""
    flat = []
    for completion in row["completions"] or []:
        annotations = completion.get("annotations")
        flat.append(
            {
                "instruction": row["instruction"],
                "response": completion["response"],
                "overall_score": completion.get("overall_score"),
                **{aspect: _ultrafeedback_rating(annotations, aspect) for aspect in _ULTRAFEEDBACK_ASPECTS},
            }
        )
    return flat


def _code_ultrafeedback_responses(row: dict) -> list[dict]:
    """coseal/CodeUltraFeedback: one flat row per response, its rating under the row's `preference`."""
    preference = row["preference"]
    if preference not in _CODE_PREFERENCES:
        raise ValueError(
            f"CodeUltraFeedback row has preference {preference!r}; expected one of {_CODE_PREFERENCES}."
        )
    ratings = {annotation["model"]: annotation["rating"] for annotation in row["annotations"] or []}
    return [
        {
            "instruction": row["instruction"],
            "response": item["response"],
            preference: ratings.get(item["model"]),
        }
        for item in row["responses"] or []
    ]


def _rated_pair_sides(
    first: str, first_rating: str, second: str, second_rating: str, keep: tuple[str, ...] = ()
) -> Callable[[dict], list[dict]]:
    """A transform splitting a rated pair (e.g. chosen + chosen_rating, rejected + rejected_rating)
    into two flat rows {"response", "rating"} (plus the `keep` columns)."""

    def transform(row: dict) -> list[dict]:
        base = {column: row[column] for column in keep}
        return [
            {**base, "response": row[first], "rating": row[first_rating]},
            {**base, "response": row[second], "rating": row[second_rating]},
        ]

    return transform


def _orca_generations(row: dict) -> list[dict]:
    """argilla/distilabel-intel-orca-dpo-pairs: one flat row per judged generation (`rating` holds the
    judge's score of each generation, in order; null when the judge failed)."""
    ratings = row["rating"] or []
    return [
        {
            "system": row["system"],
            "input": row["input"],
            "response": generation,
            "rating": ratings[i] if i < len(ratings) else None,
        }
        for i, generation in enumerate(row["generations"] or [])
    ]


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh_transcript(text: str) -> Conversation:
    """Messages of an Anthropic HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...")."""
    parts = _HH_TURN.split("\n\n" + text.lstrip("\n"))
    if parts[0].strip() or len(parts) < 3:
        raise ValueError(f"Not an HH-RLHF transcript (\\n\\nHuman: ... \\n\\nAssistant: ...): {text[:80]!r}")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [
        {"role": roles[speaker], "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _hh_pair(row: dict) -> list[dict]:
    return [{"chosen": parse_hh_transcript(row["chosen"]), "rejected": parse_hh_transcript(row["rejected"])}]


# --------------------------------------------------------------------------------------------- the table

_HELPSTEER_ASPECTS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
_PAIR_COLUMNS = {"chosen": "chosen", "rejected": "rejected"}


def _attribute_preset(name, hub_id, attributes, ranges, **fields) -> DatasetPreset:
    attributes = dict(attributes)
    if isinstance(ranges, tuple):
        ranges = {attribute: ranges for attribute in attributes}
    return DatasetPreset(
        name=name, kind="attribute", hub_id=hub_id, attributes=attributes, label_ranges=ranges, **fields
    )


def _preference_preset(name, hub_id, **fields) -> DatasetPreset:
    return DatasetPreset(name=name, kind="preference", hub_id=hub_id, **fields)


# fmt: off
_PRESET_LIST = [
    # ---------------------------------------------------------------- attribute (rating) data
    _attribute_preset(
        "helpsteer", "nvidia/HelpSteer",
        {f"helpsteer-{aspect}": aspect for aspect in _HELPSTEER_ASPECTS}, (0, 4),
        prompt="prompt", response="response",
        notes="Columns prompt, response and five 0-4 integer ratings; splits train / validation.",
    ),
    _attribute_preset(
        "helpsteer2", "nvidia/HelpSteer2",
        {f"helpsteer2-{aspect}": aspect for aspect in _HELPSTEER_ASPECTS}, (0, 4),
        prompt="prompt", response="response",
        notes="Same columns as HelpSteer (0-4); attributes named helpsteer2-* to keep the two rubrics apart.",
    ),
    _attribute_preset(
        "ultrafeedback", "openbmb/UltraFeedback",
        {"ultrafeedback-overall_score": "overall_score",
         **{f"ultrafeedback-{aspect}": aspect for aspect in _ULTRAFEEDBACK_ASPECTS}},
        {"ultrafeedback-overall_score": (1, 10),
         **{f"ultrafeedback-{aspect}": (1, 5) for aspect in _ULTRAFEEDBACK_ASPECTS}},
        prompt="instruction", response="response",
        transform=_ultrafeedback_completions, source_columns=("instruction", "completions"),
        notes="One example per completion. overall_score: the critique score, 1-10 (float); the four "
        "annotation Ratings: strings '1'-'5' or 'N/A' (missing). fine-grained_score (their mean) is unused.",
    ),
    _attribute_preset(
        "armorm-multi-objective", "RLHFlow/ArmoRM-Multi-Objective-Data-v0.1",
        {attribute: attribute for attribute in PAPER_ATTRIBUTES}, (0, 1),
        messages="messages",
        notes="The merged data of ArmoRM stage 1: a messages column and the 19 attribute columns, NaN "
        "where missing. Labels are already in [0, 1] (ArmoRM rescaled every source linearly; HelpSteer "
        "0-4 is stored as (x + 0.5) / 5, per the ArmoRM model card), so they pass through unchanged.",
    ),
    _attribute_preset(
        "beavertails", "PKU-Alignment/BeaverTails",
        {"beavertails-is_safe": "is_safe"}, (0, 1),
        prompt="prompt", response="response", split="30k_train",
        notes="Columns prompt, response, category (14 harm flags), is_safe (bool: True = 1). Splits "
        "30k_train / 30k_test (the paper's BeaverTails-30k) and 330k_train / 330k_test.",
    ),
    _attribute_preset(
        "code-ultrafeedback", "coseal/CodeUltraFeedback",
        {f"code-{preference}": preference for preference in _CODE_PREFERENCES}, (1, 5),
        prompt="instruction", response="response",
        transform=_code_ultrafeedback_responses,
        source_columns=("instruction", "preference", "responses", "annotations"),
        notes="Each row: an instruction, its coding `preference` (complexity, style, explanation, "
        "instruction-following, readability), four responses and a rating per model (strings). One "
        "example per response, labelled for the row's preference only. The 1-5 scale is our reading.",
    ),
    _attribute_preset(
        "prometheus-feedback", "prometheus-eval/Feedback-Collection",
        {"prometheus-score": "orig_score"}, (1, 5),
        prompt="orig_instruction", response="orig_response",
        notes="The response rated 1-5 against the row's rubric (orig_score). The paper's '200k data' may "
        "instead be the scored responses of prometheus-eval/Preference-Collection (orig_score_A/B).",
    ),
    _attribute_preset(
        "argilla-capybara", "argilla/Capybara-Preferences-Filtered",
        {"argilla-overall_quality": "rating"}, (1, 5),
        response="response",
        transform=_rated_pair_sides("chosen", "chosen_rating", "rejected", "rejected_rating"),
        source_columns=("chosen", "chosen_rating", "rejected", "rejected_rating"),
        notes="chosen / rejected: full multi-turn message lists, rated 1-5 (int). Two examples per row.",
    ),
    _attribute_preset(
        "argilla-orca", "argilla/distilabel-intel-orca-dpo-pairs",
        {"argilla-judge_lm": "rating"}, (1, 10),
        prompt="input", response="response", system="system",
        transform=_orca_generations, source_columns=("system", "input", "generations", "rating"),
        notes="`generations` (two responses) scored 1-10 by a JudgeLM-style judge in `rating` (float list, "
        "null when the judge failed). Two examples per row.",
    ),
    _attribute_preset(
        "argilla-math", "argilla/distilabel-math-preference-dpo",
        {"ultrafeedback-instruction_following": "rating"}, (1, 5),
        prompt="instruction", response="response",
        transform=_rated_pair_sides(
            "chosen_response", "chosen_rating", "rejected_response", "rejected_rating", keep=("instruction",)
        ),
        source_columns=("instruction", "chosen_response", "chosen_rating",
                        "rejected_response", "rejected_rating"),
        notes="Shares ultrafeedback-instruction_following (paper, appendix A). The rating scale is not "
        "documented on the card; 1-5 (UltraFeedback's) is our assumption.",
    ),
    # ---------------------------------------------------------------- preference data
    _preference_preset(
        "skywork-preference", "Skywork/Skywork-Reward-Preference-80K-v0.2", **_PAIR_COLUMNS,
        notes="chosen / rejected: full message lists sharing the prompt (and a `source` column).",
    ),
    _preference_preset(
        "reward-bench", "allenai/reward-bench", prompt="prompt", **_PAIR_COLUMNS, split="filtered",
        notes="prompt, chosen, rejected strings, plus subset, chosen_model, rejected_model, id.",
    ),
    _preference_preset(
        "hh-rlhf", "Anthropic/hh-rlhf", **_PAIR_COLUMNS,
        transform=_hh_pair, source_columns=("chosen", "rejected"),
        notes="chosen / rejected: whole transcripts '\\n\\nHuman: ...\\n\\nAssistant: ...', "
        "parsed into messages.",
    ),
    _preference_preset(
        "ultrafeedback-binarized", "HuggingFaceH4/ultrafeedback_binarized", **_PAIR_COLUMNS,
        split="train_prefs",
        notes="prompt, prompt_id, chosen / rejected (full message lists), messages, score_chosen, "
        "score_rejected.",
    ),
    _preference_preset(
        "ultrafeedback-binarized-cleaned", "argilla/ultrafeedback-binarized-preferences-cleaned",
        **_PAIR_COLUMNS,
        notes="source, prompt, chosen / rejected (full message lists), chosen-rating, rejected-rating, "
        "chosen-model, rejected-model. ArmoRM's reference data for verbosity debiasing.",
    ),
    _preference_preset(
        "argilla-capybara-pairs", "argilla/Capybara-Preferences-Filtered", **_PAIR_COLUMNS,
        notes="chosen / rejected: full multi-turn message lists.",
    ),
    _preference_preset(
        "argilla-math-pairs", "argilla/distilabel-math-preference-dpo",
        prompt="instruction", chosen="chosen_response", rejected="rejected_response",
        notes="instruction, chosen_response, rejected_response strings (and their ratings).",
    ),
]
# fmt: on

# The preference data of the paper's gating network (ArmoRM's stage 2), as RLHFlow published it in one
# "standard format": chosen / rejected full message lists (and chosen_score / rejected_score).
_RLHFLOW_STANDARD = {
    "rlhflow-helpsteer": "RLHFlow/Helpsteer-preference-standard",
    "rlhflow-ultrafeedback": "RLHFlow/UltraFeedback-preference-standard",
    "rlhflow-shp": "RLHFlow/SHP-standard",
    "rlhflow-hh-rlhf-helpful": "RLHFlow/HH-RLHF-Helpful-standard",
    "rlhflow-hh-rlhf-harmless": "RLHFlow/HH-RLHF-Harmless-and-RedTeam-standard",
    "rlhflow-pku-saferlhf": "RLHFlow/PKU-SafeRLHF-30K-standard",
    "rlhflow-capybara": "RLHFlow/Capybara-distibalel-Filter-standard",
    "rlhflow-argilla-math": "RLHFlow/Argilla-Math-DPO-standard",
    "rlhflow-code-ultrafeedback": "RLHFlow/CodeUltraFeedback-standard",
    "rlhflow-prm800k-phase2": "RLHFlow/prm80k-phase2",
    "rlhflow-prometheus2": "RLHFlow/Prometheus2-preference-standard",
}
_PRESET_LIST += [
    _preference_preset(
        name, hub_id, **_PAIR_COLUMNS,
        notes="RLHFlow standard format: chosen / rejected full message lists, chosen_score / rejected_score.",
    )
    for name, hub_id in _RLHFLOW_STANDARD.items()
]  # fmt: skip

PRESETS: dict[str, DatasetPreset] = {preset.name: preset for preset in _PRESET_LIST}


__all__ = ["PAPER_ATTRIBUTES", "PRESETS", "parse_hh_transcript"]
