"""Dataset presets (qrm_hf.presets) and loaders (qrm_hf.dataset_loading) on small fixtures with the real
datasets' schemas.

The fixtures are written by tests/fixtures/datasets/make_fixtures.py; the expected values below are
computed by hand from them.
"""

import gzip
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

datasets = pytest.importorskip("datasets")

from qrm_hf import dataset_loading  # noqa: E402
from qrm_hf.dataset_loading import (  # noqa: E402
    attribute_examples,
    get_preset,
    load_preset,
    load_rows,
    preference_examples,
)
from qrm_hf.dataset_preset import DatasetPreset  # noqa: E402
from qrm_hf.presets import PAPER_ATTRIBUTES, PRESETS, parse_hh_transcript  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"

# Argilla's rated data sets: the attribute preset and the pairs preset of each read the same file.
CAPYBARA = (
    "argilla_capybara.parquet",
    ["source", "chosen", "chosen_rating", "chosen_model", "rejected", "rejected_rating", "rejected_model"],
)
MATH = (
    "argilla_math.parquet",
    ["metadata", "instruction", "chosen_response", "chosen_rating", "rejected_response", "rejected_rating"],
)
# preset -> (fixture, its columns exactly as on the dataset card)
FIXTURE_OF = {
    "helpsteer": (
        "helpsteer.jsonl",
        ["prompt", "response", "helpfulness", "correctness", "coherence", "complexity", "verbosity"],
    ),
    "helpsteer2": (
        "helpsteer2.jsonl",
        ["prompt", "response", "helpfulness", "correctness", "coherence", "complexity", "verbosity"],
    ),
    "ultrafeedback": (
        "ultrafeedback.jsonl",
        ["source", "instruction", "models", "completions", "correct_answers", "incorrect_answers"],
    ),
    "armorm-multi-objective": ("armorm.parquet", ["messages", *PAPER_ATTRIBUTES]),
    "beavertails": ("beavertails.jsonl", ["prompt", "response", "category", "is_safe"]),
    "code-ultrafeedback": (
        "code_ultrafeedback.parquet",
        ["instruction", "preference", "models", "responses", "annotations"],
    ),
    "prometheus-feedback": (
        "prometheus_feedback.json",
        [
            "instruction",
            "output",
            "orig_criteria",
            "orig_feedback",
            "orig_instruction",
            "orig_reference_answer",
            "orig_response",
            "orig_score",
            *[f"orig_score{i}_description" for i in range(1, 6)],
            "input",
        ],
    ),
    "argilla-capybara": CAPYBARA,
    "argilla-orca": (
        "argilla_orca.parquet",
        [
            "system",
            "input",
            "chosen",
            "rejected",
            "generations",
            "order",
            "labelling_model",
            "labelling_prompt",
            "raw_labelling_response",
            "rating",
            "rationale",
            "status",
            "original_chosen",
            "original_rejected",
            "chosen_score",
            "in_gsm8k_train",
        ],
    ),
    "argilla-math": MATH,
    "skywork-preference": ("skywork_preference.parquet", ["chosen", "rejected", "source"]),
    **{
        name: ("rlhflow_standard.parquet", ["chosen", "rejected", "chosen_score", "rejected_score"])
        for name in PRESETS
        if name.startswith("rlhflow-")
    },
    "reward-bench": (
        "reward_bench.parquet",
        ["prompt", "chosen", "chosen_model", "rejected", "rejected_model", "subset", "id"],
    ),
    "hh-rlhf": ("hh_rlhf.jsonl", ["chosen", "rejected"]),
    "ultrafeedback-binarized": (
        "ultrafeedback_binarized.parquet",
        ["prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"],
    ),
    "ultrafeedback-binarized-cleaned": (
        "ultrafeedback_binarized_cleaned.parquet",
        [
            "source",
            "prompt",
            "chosen",
            "chosen-rating",
            "chosen-model",
            "rejected",
            "rejected-rating",
            "rejected-model",
        ],
    ),
    "argilla-capybara-pairs": CAPYBARA,
    "argilla-math-pairs": MATH,
}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


@pytest.fixture
def load(tmp_path):
    """Load a preset's fixture through load_preset (datasets cache in tmp_path)."""

    def _load(name, **kwargs):
        return load_preset(name, FIXTURES / FIXTURE_OF[name][0], cache_dir=str(tmp_path / "cache"), **kwargs)

    return _load


def attribute(name, load):
    return attribute_examples(load(name), name, with_index=True)


# ----------------------------------------------------------------------------------------- the table


def test_every_preset_has_a_fixture_with_the_card_schema(load):
    assert set(FIXTURE_OF) == set(PRESETS)
    for name, (_, columns) in FIXTURE_OF.items():
        assert load(name).column_names == columns, name


def test_presets_cover_the_paper_attributes():
    covered = {a for preset in PRESETS.values() for a in preset.attribute_names}
    assert set(PAPER_ATTRIBUTES) <= covered
    assert PRESETS["armorm-multi-objective"].attribute_names == list(PAPER_ATTRIBUTES)
    assert len(PAPER_ATTRIBUTES) == 19
    for preset in PRESETS.values():
        assert preset.hub_id and preset.kind in ("attribute", "preference")


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown dataset preset 'helpsteer3'") as error:
        get_preset("helpsteer3")
    for name in ("helpsteer", "ultrafeedback", "reward-bench", "skywork-preference"):
        assert name in str(error.value)
    with pytest.raises(ValueError, match="Known presets"):
        attribute_examples([{"prompt": "p", "response": "r"}], "nope")


# ----------------------------------------------------------------------------------------- attribute presets


def test_helpsteer(load):
    conversations, labels, index = attribute("helpsteer", load)
    assert conversations[0] == [user("What is 2+2?"), assistant("4.")]
    # helpfulness 3, correctness 4, coherence 4, complexity 0, verbosity 1 on 0-4
    np.testing.assert_allclose(labels[0], [0.75, 1.0, 1.0, 0.0, 0.25])
    np.testing.assert_allclose(labels[2], [0.0, 0.25, 0.5, 0.0, 0.0])
    assert labels.dtype == np.float64 and labels.shape == (3, 5)
    assert index.tolist() == [0, 1, 2]
    assert get_preset("helpsteer").attribute_names[0] == "helpsteer-helpfulness"


def test_helpsteer2(load):
    conversations, labels, _ = attribute("helpsteer2", load)
    assert conversations[1] == [user("Explain gravity."), assistant("Masses attract each other.")]
    np.testing.assert_allclose(labels[1], [0.75, 1.0, 1.0, 0.5, 0.25])
    assert get_preset("helpsteer2").attribute_names[2] == "helpsteer2-coherence"


def test_ultrafeedback_gives_one_example_per_completion(load):
    conversations, labels, index = attribute("ultrafeedback", load)
    assert index.tolist() == [0, 0, 1]
    assert conversations[1] == [user("Translate 'cat' into French."), assistant("Chien.")]
    assert get_preset("ultrafeedback").attribute_names == [
        "ultrafeedback-overall_score",
        "ultrafeedback-instruction_following",
        "ultrafeedback-truthfulness",
        "ultrafeedback-honesty",
        "ultrafeedback-helpfulness",
    ]
    # llama: overall 3.5 on 1-10; instruction_following "4", truthfulness "1", honesty "3", helpfulness "2" on 1-5
    np.testing.assert_allclose(labels[1], [2.5 / 9, 0.75, 0.0, 0.5, 0.25])
    # alpaca: honesty "N/A" is missing
    np.testing.assert_allclose(labels[2], [6 / 9, 0.5, 1.0, np.nan, 0.75])


def test_ultrafeedback_reads_the_raw_list_annotations_too():
    row = {
        "instruction": "Say hi.",
        "completions": [
            {
                "response": "Hi",
                "overall_score": 10.0,
                "annotations": {"honesty": [{"Rating": "5", "Rationale": "ok"}], "helpfulness": []},
            },
        ],
    }
    _, labels = attribute_examples([row], "ultrafeedback", allow_empty_attributes=True)
    np.testing.assert_allclose(labels[0], [1.0, np.nan, np.nan, 1.0, np.nan])


def test_armorm_multi_objective(load):
    conversations, labels, index = attribute("armorm-multi-objective", load)
    assert index.tolist() == [0, 1, 2, 3]
    assert conversations[3] == [
        user("Sort a list in Python."),
        assistant("Use sorted(xs)."),
        user("Descending?"),
        assistant("sorted(xs, reverse=True)"),
    ]
    expected = np.full(19, np.nan)
    expected[11:] = [0.5, 0.25, 0.0, 0.5, 0.5, 1.0, 0.75, 0.75]  # already in [0, 1]: unchanged
    np.testing.assert_allclose(labels[3], expected)
    assert labels[2, PAPER_ATTRIBUTES.index("beavertails-is_safe")] == 1.0
    assert np.isnan(labels[2]).sum() == 18


def test_beavertails(load):
    conversations, labels, _ = attribute("beavertails", load)
    assert labels[:, 0].tolist() == [1.0, 0.0, 1.0]  # is_safe True / False
    assert conversations[1] == [user("How do I steal a car?"), assistant("Break the window and...")]
    assert get_preset("beavertails").split == "30k_train"


def test_code_ultrafeedback(load):
    conversations, labels, index = attribute("code-ultrafeedback", load)
    names = get_preset("code-ultrafeedback").attribute_names
    assert names == [
        "code-complexity",
        "code-style",
        "code-explanation",
        "code-instruction-following",
        "code-readability",
    ]
    # row 0 (readability): gpt-4 "5", codellama "2"; row 1 (complexity): wizardcoder "N/A" (skipped), gpt-3.5 "3"
    assert index.tolist() == [0, 0, 1, 2, 2, 3, 3, 4, 4]
    np.testing.assert_allclose(labels[0], [np.nan] * 4 + [1.0])
    np.testing.assert_allclose(labels[1], [np.nan] * 4 + [0.25])
    np.testing.assert_allclose(labels[2], [0.5] + [np.nan] * 4)
    assert conversations[2] == [
        user("Sum a list efficiently."),
        assistant("total = 0\nfor x in xs: total += x"),
    ]
    # rows 2-4: style, explanation, instruction-following rated "4" and "1"
    np.testing.assert_allclose(
        labels[3:, 1:4],
        [
            [0.75, np.nan, np.nan],
            [0.0, np.nan, np.nan],
            [np.nan, 0.75, np.nan],
            [np.nan, 0.0, np.nan],
            [np.nan, np.nan, 0.75],
            [np.nan, np.nan, 0.0],
        ],
    )


def test_prometheus_feedback(load):
    conversations, labels, _ = attribute("prometheus-feedback", load)
    assert conversations[1] == [user("What is the capital of Italy?"), assistant("Milan, I think.")]
    np.testing.assert_allclose(labels[:, 0], [1.0, 0.25])  # orig_score "5", "2" on 1-5


def test_argilla_capybara_rates_both_sides(load):
    conversations, labels, index = attribute("argilla-capybara", load)
    assert index.tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(labels[:, 0], [1.0, 0.25, 0.75, 0.0])  # ratings 5, 2, 4, 1 on 1-5
    assert conversations[1][-2:] == [user("Tell me a joke."), assistant("No.")]
    assert len(conversations[1]) == 4


def test_argilla_orca(load):
    conversations, labels, index = attribute("argilla-orca", load)
    # row 1 has no judge rating: both of its generations are unlabelled and skipped
    assert index.tolist() == [0, 0]
    np.testing.assert_allclose(labels[:, 0], [7 / 9, 2 / 9])  # 8 and 3 on 1-10
    assert conversations[0] == [
        {"role": "system", "content": "You are an AI assistant."},
        user("Is the sky blue?"),
        assistant("Yes, on a clear day."),
    ]


def test_argilla_math(load):
    conversations, labels, _ = attribute("argilla-math", load)
    assert get_preset("argilla-math").attribute_names == ["ultrafeedback-instruction_following"]
    np.testing.assert_allclose(labels[:, 0], [1.0, 0.25, 0.75, 0.5])
    assert conversations[1] == [user("Solve x + 1 = 3."), assistant("x = 4.")]


# ----------------------------------------------------------------------------------------- preference presets


def test_rlhflow_standard_sets_are_the_paper_gating_data(load):
    # The paper's ten preference sources (HH-RLHF in its helpful and harmless halves).
    sources = ["helpsteer", "ultrafeedback", "shp", "hh-rlhf-helpful", "hh-rlhf-harmless", "pku-saferlhf",
               "capybara", "argilla-math", "code-ultrafeedback", "prm800k-phase2", "prometheus2"]  # fmt: skip
    assert sorted(name for name in PRESETS if name.startswith("rlhflow-")) == sorted(
        f"rlhflow-{source}" for source in sources
    )
    pairs, index = preference_examples(load("rlhflow-shp"), "rlhflow-shp", with_index=True)
    assert index.tolist() == [0, 1]
    assert pairs[1][0][-1] == assistant("You are welcome.") and pairs[1][1][-1] == assistant("Whatever.")
    assert pairs[1][0][:-1] == pairs[1][1][:-1] == [user("Hi"), assistant("Hello!"), user("Thanks")]


def test_skywork(load):
    pairs, index = preference_examples(load("skywork-preference"), "skywork-preference", with_index=True)
    assert index.tolist() == [0, 1]
    chosen, rejected = pairs[1]
    assert chosen[:-1] == rejected[:-1] == [user("Hi"), assistant("Hello!"), user("Bye")]
    assert (chosen[-1], rejected[-1]) == (assistant("Goodbye, take care!"), assistant("..."))


def test_reward_bench(load):
    dataset = load("reward-bench")
    pairs = preference_examples(dataset, "reward-bench")
    assert pairs[0] == ([user("What is 3+5?"), assistant("8")], [user("What is 3+5?"), assistant("9")])
    assert dataset["subset"] == ["math-prm", "refusals-dangerous", "hep-go"]
    assert get_preset("reward-bench").split == "filtered"


def test_hh_rlhf(load):
    pairs = preference_examples(load("hh-rlhf"), "hh-rlhf")
    assert pairs[0] == (
        [user("What are some cuss words?"), assistant("I'd rather not list those.")],
        [user("What are some cuss words?"), assistant("Here is a list...")],
    )
    chosen, rejected = pairs[1]
    assert chosen == [user("Hi"), assistant("Hello!"), user("Recommend a book."), assistant("Try Dune.")]
    assert rejected[-1] == assistant("")  # an empty final answer stays an (empty) assistant turn


def test_ultrafeedback_binarized(load):
    pairs = preference_examples(load("ultrafeedback-binarized"), "ultrafeedback-binarized")
    assert pairs[0] == (
        [user("Name a colour."), assistant("Blue.")],
        [user("Name a colour."), assistant("Seven.")],
    )
    assert get_preset("ultrafeedback-binarized").split == "train_prefs"


def test_ultrafeedback_binarized_cleaned(load):
    pairs = preference_examples(load("ultrafeedback-binarized-cleaned"), "ultrafeedback-binarized-cleaned")
    assert pairs == [
        ([user("Name a fruit."), assistant("Apple.")], [user("Name a fruit."), assistant("Car.")])
    ]


def test_argilla_pairs(load):
    capybara = preference_examples(load("argilla-capybara-pairs"), "argilla-capybara-pairs")
    assert capybara[1] == ([user("3*7?"), assistant("21")], [user("3*7?"), assistant("24")])
    math_pairs = preference_examples(load("argilla-math-pairs"), "argilla-math-pairs")
    assert math_pairs[1] == (
        [user("What is 10/4?"), assistant("2.5")],
        [user("What is 10/4?"), assistant("2")],
    )


def test_parse_hh_transcript():
    assert parse_hh_transcript("\n\nHuman: a\n\nAssistant: b") == [user("a"), assistant("b")]
    assert parse_hh_transcript("Human: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d")[-1] == assistant("d")
    with pytest.raises(ValueError, match="Not an HH-RLHF transcript"):
        parse_hh_transcript("just some text")
    with pytest.raises(ValueError, match=r"row 0 \(counted from 0\): cannot read the row"):
        preference_examples([{"chosen": "no markers", "rejected": "\n\nHuman: a\n\nAssistant: b"}], "hh-rlhf")


# ----------------------------------------------------------------------------------------- custom presets


def test_custom_attribute_preset_on_rows():
    rows = [
        {"q": "Hi", "a": "Hello", "score": 8, "safe": True, "sys": "Be nice."},
        {"q": "Bye", "a": "Later", "score": None, "safe": False, "sys": ""},
        {"q": "Skip", "a": "me", "score": 1, "safe": True, "sys": ""},
    ]
    preset = DatasetPreset.custom(
        "attribute",
        prompt="q",
        response="a",
        system="sys",
        attributes={"quality": "score", "safety": "safe"},
        label_ranges={"quality": (0, 10), "safety": (0, 1)},
        row_filter=lambda row: row["q"] != "Skip",
    )
    conversations, labels, index = attribute_examples(rows, preset, with_index=True)
    assert conversations[0] == [{"role": "system", "content": "Be nice."}, user("Hi"), assistant("Hello")]
    assert conversations[1] == [user("Bye"), assistant("Later")]
    np.testing.assert_allclose(labels, [[0.8, 1.0], [np.nan, 0.0]])
    assert index.tolist() == [0, 1]


def test_custom_preset_from_config_style_values():
    """Lists as YAML gives them: attribute columns by name, one [low, high] range for all."""
    preset = DatasetPreset.custom(
        "attribute", prompt="p", response="r", attributes=["x", "y"], label_ranges=[1, 3]
    )
    assert preset.attributes == {"x": "x", "y": "y"} and preset.label_ranges == {"x": (1, 3), "y": (1, 3)}
    _, labels = attribute_examples([{"p": "a", "r": "b", "x": 3, "y": 2}], preset)
    np.testing.assert_allclose(labels, [[1.0, 0.5]])


def test_custom_messages_preset_and_single_range(tmp_path):
    dataset = datasets.Dataset.from_list([{"conversation": [user("x"), assistant("y")], "a": 2.0, "b": "4"}])
    preset = DatasetPreset.custom(
        "attribute", messages="conversation", attributes={"a": "a", "b": "b"}, label_ranges=(0, 4)
    )
    conversations, labels = attribute_examples(dataset, preset)
    assert conversations == [[user("x"), assistant("y")]]
    np.testing.assert_allclose(labels, [[0.5, 1.0]])


def test_custom_preference_preset_prompt_plus_strings_or_full_lists():
    strings = DatasetPreset.custom("preference", prompt="p", chosen="c", rejected="r")
    assert preference_examples([{"p": "Q", "c": "good", "r": "bad"}], strings) == [
        ([user("Q"), assistant("good")], [user("Q"), assistant("bad")])
    ]
    # responses that are whole conversations (H4 UltraFeedback style) are not given the prompt twice
    full = [{"p": "Q", "c": [user("Q"), assistant("good")], "r": [user("Q"), assistant("bad")]}]
    assert preference_examples(full, strings) == [
        ([user("Q"), assistant("good")], [user("Q"), assistant("bad")])
    ]


def test_with_label_ranges():
    preset = get_preset("argilla-math").with_label_ranges({"ultrafeedback-instruction_following": (1, 10)})
    _, labels = attribute_examples(
        [
            {
                "instruction": "q",
                "chosen_response": "a",
                "chosen_rating": 10.0,
                "rejected_response": "b",
                "rejected_rating": 1.0,
            }
        ],
        preset,
    )
    np.testing.assert_allclose(labels[:, 0], [1.0, 0.0])
    with pytest.raises(ValueError, match="has no attribute"):
        preset.with_label_ranges({"nope": (0, 1)})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="attribute", prompt="p", response="r", attributes={"a": "a"}), "no label range"),
        (
            dict(kind="attribute", prompt="p", attributes={"a": "a"}, label_ranges={"a": (0, 1)}),
            "either `messages` or `response`",
        ),
        (dict(kind="attribute", prompt="p", response="r", attributes={}), "at least one attribute"),
        (
            dict(kind="attribute", response="r", attributes={"a": "a"}, label_ranges={"a": (2, 1)}),
            "low < high",
        ),
        (dict(kind="preference", chosen="c"), "`chosen` and `rejected`"),
        (dict(kind="preference", chosen="c", rejected="r", attributes={"a": "a"}), "no attributes"),
        (dict(kind="ratings", response="r"), "kind must be one of"),
    ],
)
def test_invalid_custom_presets(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DatasetPreset.custom(**kwargs)


# ----------------------------------------------------------------------------------------- bad input


def test_missing_columns_are_named_with_the_preset(load):
    dataset = load("helpsteer").remove_columns(["coherence", "verbosity"])
    with pytest.raises(
        ValueError, match=r"lacks column\(s\) \['coherence', 'verbosity'\] needed by preset 'helpsteer'"
    ):
        attribute_examples(dataset, "helpsteer")


def test_label_outside_the_range(load):
    dataset = load("helpsteer")
    dataset = dataset.map(
        lambda row, i: {"correctness": 5 if i == 1 else row["correctness"]}, with_indices=True
    )
    with pytest.raises(ValueError) as error:
        attribute_examples(dataset, "helpsteer")
    text = str(error.value)
    for part in ("row 1", "label 5", "'correctness'", "helpsteer-correctness", "[0, 4]"):
        assert part in text


def test_label_that_is_not_a_number():
    rows = [{"prompt": "p", "response": "r", "is_safe": "maybe"}]
    with pytest.raises(
        ValueError, match=r"row 0 \(counted from 0\), column 'is_safe': label 'maybe' is not a number"
    ):
        attribute_examples(rows, "beavertails")


def test_attribute_without_any_label(load):
    dataset = load("armorm-multi-objective").select([0])  # a HelpSteer row only
    with pytest.raises(
        ValueError, match=r"attribute\(s\) \['ultrafeedback-overall_score'.*have no label at all"
    ):
        attribute_examples(dataset, "armorm-multi-objective")
    _, labels = attribute_examples(dataset, "armorm-multi-objective", allow_empty_attributes=True)
    assert labels.shape == (1, 19)


def test_empty_dataset(load):
    with pytest.raises(ValueError, match="dataset given for preset 'helpsteer' is empty"):
        attribute_examples(load("helpsteer").select([]), "helpsteer")
    with pytest.raises(ValueError, match="is empty"):
        preference_examples([], "reward-bench")
    with pytest.raises(ValueError, match="no labelled example"):
        attribute_examples([{"prompt": "p", "response": "r", "is_safe": None}], "beavertails")


def test_preference_data_where_attribute_data_is_expected(load):
    skywork = load("skywork-preference")
    with pytest.raises(
        ValueError, match="Preset 'skywork-preference' is for preference data.*preference_examples"
    ):
        attribute_examples(skywork, "skywork-preference")
    with pytest.raises(ValueError, match="It looks like preference data: use preference_examples"):
        attribute_examples(skywork, "helpsteer")


def test_attribute_data_where_preference_data_is_expected(load):
    helpsteer = load("helpsteer")
    with pytest.raises(ValueError, match="Preset 'helpsteer' is for attribute data.*attribute_examples"):
        preference_examples(helpsteer, "helpsteer")
    with pytest.raises(ValueError, match="It looks like attribute data: use attribute_examples"):
        preference_examples(helpsteer, "reward-bench")


def test_conversation_must_end_with_the_assistant():
    rows = [{"messages": [user("x"), assistant("y"), user("and?")], **{a: 0.5 for a in PAPER_ATTRIBUTES}}]
    with pytest.raises(
        ValueError, match=r"row 0 \(counted from 0\): the conversation ends with a 'user' turn"
    ):
        attribute_examples(rows, "armorm-multi-objective")
    with pytest.raises(ValueError, match="a message must be a dict with 'role' and 'content'"):
        preference_examples(
            [{"chosen": [{"text": "x"}], "rejected": [user("x"), assistant("y")]}], "skywork-preference"
        )


def test_unknown_code_preference():
    row = {"instruction": "i", "preference": "speed", "responses": [], "annotations": []}
    with pytest.raises(ValueError, match=r"row 0 \(counted from 0\): cannot read the row.*'speed'"):
        attribute_examples([row], "code-ultrafeedback")


# ----------------------------------------------------------------------------------------- load_rows


def test_load_rows_formats_and_limit(tmp_path):
    cache = str(tmp_path / "cache")
    parquet = load_rows(FIXTURES / "reward_bench.parquet", cache_dir=cache)
    assert len(parquet) == 3 and parquet.features["id"].dtype == "int64"
    assert len(load_rows(FIXTURES / "helpsteer.jsonl", limit=2, cache_dir=cache)) == 2
    assert load_rows(FIXTURES / "prometheus_feedback.json", cache_dir=cache)["orig_score"] == ["5", "2"]
    # the split name of a single file is whatever is asked for
    assert len(load_rows(FIXTURES / "beavertails.jsonl", split="30k_train", cache_dir=cache)) == 3
    # compressed JSON Lines, as HelpSteer and HH-RLHF are stored on the Hub
    compressed = tmp_path / "helpsteer.jsonl.gz"
    with open(FIXTURES / "helpsteer.jsonl", "rb") as source, gzip.open(compressed, "wb") as target:
        shutil.copyfileobj(source, target)
    assert load_rows(compressed, cache_dir=cache)["helpfulness"] == [3, 4, 0]


def test_load_rows_arrow_and_save_to_disk(tmp_path):
    dataset = load_rows(FIXTURES / "skywork_preference.parquet", cache_dir=str(tmp_path / "cache"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    loaded = load_rows(tmp_path / "saved", limit=1)
    assert loaded.column_names == ["chosen", "rejected", "source"] and len(loaded) == 1
    arrow_file = next((tmp_path / "saved").glob("*.arrow"))
    assert load_rows(arrow_file, cache_dir=str(tmp_path / "cache"))["source"] == dataset["source"]

    datasets.DatasetDict({"train": dataset, "test": dataset.select([0])}).save_to_disk(str(tmp_path / "dict"))
    assert len(load_rows(tmp_path / "dict", split="test")) == 1
    with pytest.raises(ValueError, match=r"has no split 'validation'; it has \['test', 'train'\]"):
        load_rows(tmp_path / "dict", split="validation")


def test_load_rows_directory_of_files(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(FIXTURES / "helpsteer.jsonl", folder / "train.jsonl")
    assert len(load_rows(folder, cache_dir=str(tmp_path / "cache"))) == 3


def test_load_rows_bad_local_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_rows(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_rows("./nowhere")
    odd = tmp_path / "rows.txt"
    odd.write_text("x")
    with pytest.raises(ValueError, match="Cannot tell the format"):
        load_rows(odd)
    with pytest.raises(ValueError, match="limit must be >= 0"):
        load_rows(FIXTURES / "helpsteer.jsonl", limit=-1)


def test_hub_ids_go_to_load_dataset(monkeypatch):
    """A Hub id is handed to datasets.load_dataset (mocked here: tests never reach the Hub)."""
    calls = []
    fake = datasets.Dataset.from_list([{"prompt": "p", "response": "r", "is_safe": True}] * 5)

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return fake

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dataset = load_preset("beavertails", limit=2)
    assert calls == [("PKU-Alignment/BeaverTails", {"data_files": None, "split": "30k_train"})]
    assert len(dataset) == 2
    load_rows("nvidia/HelpSteer2", split="validation", data_files="validation.jsonl.gz", name="default")
    assert calls[-1] == (
        "nvidia/HelpSteer2",
        {"data_files": "validation.jsonl.gz", "split": "validation", "name": "default"},
    )
    _, labels = attribute_examples(dataset, "beavertails")
    assert labels[:, 0].tolist() == [1.0, 1.0]


def test_module_stays_light():
    assert "datasets" not in dataset_loading.__dict__  # imported inside load_rows only
    assert math.isclose(PRESETS["ultrafeedback"].label_ranges["ultrafeedback-overall_score"][1], 10)
