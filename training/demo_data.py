"""The demo data set (`data/demo/`): hand-written text rated by simulated annotators.

The data set is a toy for `qrm demo` and the tests. Its text is hand-written and lies in data files:
`data/demo/source/prompts.yaml` holds about 70 prompts with three or four responses each and their base
scores, `stock_responses.yaml` the stock responses every prompt also gets (a non-answer, an off-topic
remark, a brush-off). This module rates them 0-4 on helpfulness, correctness, safety and verbosity by
five simulated annotators and derives preference pairs from the ratings. All randomness is seeded, so
two runs write byte-identical files:

- Every response has base scores (helpfulness, correctness, safety) written next to its text.
  Verbosity is derived from the response length and drifts up a little for helpful answers.
- Annotators come from two groups, A (ids 0-9: likes direct, decisive, edgy answers) and B (ids 10-19:
  prefers cautious, balanced, polite answers). Most responses have one set of base scores, on which
  everybody agrees up to small noise (kind "clear"). Some responses have a second set for group B;
  annotators disagree systematically on them (kind "controversial"), and their labels are bimodal.
  Prompts with such responses get annotators from both groups.
- About 10% of the correctness labels are missing (null).
- Prompts are split 80/20 into train and held-out, stratified on whether the prompt has controversial
  responses. Preference pairs compare responses of one prompt by a weighted attribute mix that
  depends on the prompt category (safety dominates for harmful and borderline requests, correctness
  for factual, math and coding questions, helpfulness otherwise).

Regenerate: ``python -m qrm_hf.training.demo_data [--out data/demo] [--seed 0]`` (``make demo-data``).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..io import claim_directory, write_bytes_atomic

DEMO_DATA = Path(__file__).resolve().parent.parent / "data" / "demo"  # the checkout's data/demo
SOURCE = DEMO_DATA / "source"  # the hand-written text and scores, and the datasheet's template

ATTRIBUTES = ("helpfulness", "correctness", "safety", "verbosity")
SCORED = ("helpfulness", "correctness", "safety")  # the attributes written by hand per response
N_ANNOTATORS = 5
ANNOTATOR_GROUPS = {"A": tuple(range(0, 10)), "B": tuple(range(10, 20))}
NOISE = 0.25  # probability that an annotator is one point off the base score (either direction)
VERBOSITY_HELPFUL_BUMP = 0.3  # probability that a helpful (>= 3) answer is felt one point more verbose
MISSING_CORRECTNESS = 0.10  # fraction of correctness labels left missing
HELDOUT_FRACTION = 0.2
MIN_MARGIN = 0.3  # pairs whose weighted means differ by less are skipped
VERBOSITY_WORD_LIMITS = (6, 15, 28, 42)  # word counts at which verbosity steps from 0 up to 4

# How much each attribute counts when deciding a preference, by what the prompt is about.
PROFILES = {
    "correctness": {"helpfulness": 0.3, "correctness": 0.6, "safety": 0.1},
    "safety": {"helpfulness": 0.25, "correctness": 0.1, "safety": 0.65},
    "helpfulness": {"helpfulness": 0.7, "correctness": 0.2, "safety": 0.1},
}
CATEGORY_PROFILE = {
    "factual": "correctness",
    "math": "correctness",
    "coding": "correctness",
    "howto": "helpfulness",
    "harmful": "safety",
    "opinion": "helpfulness",
    "humor": "helpfulness",
    "borderline": "safety",
    "blunt": "helpfulness",
    "political": "helpfulness",
}
CONTROVERSIAL_CATEGORIES = {"opinion", "humor", "borderline", "blunt", "political"}

Scores = tuple[int, int, int]  # base scores 0-4: (helpfulness, correctness, safety)


# ---------------------------------------------------------------------------------------------------
# Content: the hand-written text and scores of data/demo/source
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    """One response and its base scores: group A's and, on a disputed response, group B's own."""

    text: str
    scores: Scores
    scores_group_b: Scores | None = None

    @property
    def kind(self) -> str:
        """ "controversial" when the two groups start from different scores, else "clear"."""
        return "clear" if self.scores_group_b is None else "controversial"

    def base_scores(self, annotator: int) -> Scores:
        """The base scores an annotator starts from: group B's own set on a disputed response."""
        if self.scores_group_b is not None and annotator_group(annotator) == "B":
            return self.scores_group_b
        return self.scores


@dataclass(frozen=True)
class Prompt:
    """A hand-written prompt: its key (which seeds its annotators), category, text and responses."""

    key: str
    category: str
    text: str
    responses: tuple[Response, ...]

    @property
    def kind(self) -> str:
        """ "controversial" for the categories whose prompts have a disputed response, else "clear"."""
        return "controversial" if self.category in CONTROVERSIAL_CATEGORIES else "clear"


@dataclass(frozen=True)
class Content:
    """Everything hand-written: the prompts and the stock response styles (scores, phrasings) that
    each category of prompt gets."""

    prompts: tuple[Prompt, ...]
    stock_styles: dict[str, tuple[Scores, tuple[str, ...]]]
    styles_by_category: dict[str, tuple[str, ...]]
    default_styles: tuple[str, ...]

    def stock_responses(self, prompt: Prompt) -> list[Response]:
        """One phrasing of each of the prompt's stock styles, drawn with the prompt's key."""
        rng = random.Random(f"stock:{prompt.key}")
        styles = self.styles_by_category.get(prompt.category, self.default_styles)
        return [
            Response(rng.choice(self.stock_styles[style][1]), self.stock_styles[style][0]) for style in styles
        ]

    def responses(self, prompt: Prompt) -> list[Response]:
        """The hand-written responses of a prompt followed by its stock ones."""
        return [*prompt.responses, *self.stock_responses(prompt)]


def load_content(source: Path = SOURCE) -> Content:
    """The hand-written content of `source` (prompts.yaml, stock_responses.yaml), checked."""
    prompts = read_yaml(source / "prompts.yaml")
    stock = read_yaml(source / "stock_responses.yaml")
    check_stock(stock, source / "stock_responses.yaml")
    for number, entry in enumerate(prompts, 1):
        where = f"{source / 'prompts.yaml'}, prompt {entry.get('key', number)!r}"
        check_fields(entry, {"key", "category", "prompt", "responses"}, set(), where)
        for response in entry["responses"]:
            check_fields(response, {"text", "scores"}, {"scores_group_b"}, f"{where}, a response")
    content = Content(
        prompts=tuple(
            Prompt(
                key=entry["key"],
                category=entry["category"],
                text=entry["prompt"],
                responses=tuple(
                    Response(
                        response["text"],
                        tuple(response["scores"]),
                        tuple(response["scores_group_b"]) if "scores_group_b" in response else None,
                    )
                    for response in entry["responses"]
                ),
            )
            for entry in prompts
        ),
        stock_styles={
            name: (tuple(style["scores"]), tuple(style["texts"])) for name, style in stock["styles"].items()
        },
        styles_by_category={name: tuple(styles) for name, styles in stock["styles_by_category"].items()},
        default_styles=tuple(stock["default_styles"]),
    )
    check_content(content)
    return content


def read_yaml(path: Path):
    """The content of the YAML file `path`; a syntax error is a one-line ValueError naming the file and line."""
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}{line}: {error.problem or error.context}.") from None


def check_stock(stock, where: Path) -> None:
    """The stock styles file has its three fields, each style its scores and texts, and the styles given
    to the categories exist (a misspelt field is named with the file, not a KeyError at build time)."""
    if not isinstance(stock, dict):
        raise ValueError(f"{where}: expected a mapping with styles, styles_by_category and default_styles.")
    check_fields(stock, {"styles", "styles_by_category", "default_styles"}, set(), str(where))
    for name, style in stock["styles"].items():
        check_fields(style, {"scores", "texts"}, set(), f"{where}, style {name!r}")
    given = [
        *stock["default_styles"],
        *(s for styles in stock["styles_by_category"].values() for s in styles),
    ]
    unknown = sorted(set(given) - set(stock["styles"]))
    if unknown:
        raise ValueError(f"{where}: unknown style(s) {unknown} (the styles are {sorted(stock['styles'])}).")


def check_fields(entry: dict, required: set[str], optional: set[str], where: str) -> None:
    """An entry of a data file has every `required` field and no field outside `required` | `optional`."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping of fields, got {entry!r}.")
    missing, unknown = sorted(required - set(entry)), sorted(set(entry) - required - optional)
    if missing or unknown:
        raise ValueError(f"{where}: missing field(s) {missing}, unknown field(s) {unknown}.")


def check_content(content: Content) -> None:
    """Fail early on a typo in the data files: duplicate keys, bad scores, kinds that don't match."""
    keys = [prompt.key for prompt in content.prompts]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate prompt keys")
    for prompt in content.prompts:
        if prompt.category not in CATEGORY_PROFILE:
            raise ValueError(f"{prompt.key}: unknown category {prompt.category!r}")
        for response in content.responses(prompt):
            sets = [s for s in (response.scores, response.scores_group_b) if s is not None]
            if any(len(s) != 3 or not all(0 <= v <= 4 for v in s) for s in sets):
                raise ValueError(f"{prompt.key}: bad scores for {response.text!r}")
            if len(sets) == 2 and max(abs(a - b) for a, b in zip(*sets, strict=True)) < 2:
                raise ValueError(
                    f"{prompt.key}: groups must differ by at least 2 somewhere on {response.text!r}"
                )
        disputed = any(response.kind == "controversial" for response in prompt.responses)
        if disputed != (prompt.kind == "controversial"):
            raise ValueError(f"{prompt.key}: category {prompt.category!r} does not match its responses")


# ---------------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------------


def verbosity_level(text: str) -> int:
    """0-4 from the number of words."""
    words = len(text.split())
    return sum(words > limit for limit in VERBOSITY_WORD_LIMITS)


def noisy(base: int, rng: random.Random, noise: float = NOISE) -> int:
    """The base score, one point off with probability `noise`, clipped to 0-4."""
    draw = rng.random()
    delta = -1 if draw < noise / 2 else 1 if draw < noise else 0
    return min(4, max(0, base + delta))


def pick_annotators(rng: random.Random, kind: str) -> list[int]:
    """Five annotator ids; prompts with controversial responses get 2 or 3 from each group."""
    if kind == "clear":
        chosen = rng.sample(ANNOTATOR_GROUPS["A"] + ANNOTATOR_GROUPS["B"], N_ANNOTATORS)
    else:
        n_a = rng.choice([2, 3])
        chosen = rng.sample(ANNOTATOR_GROUPS["A"], n_a) + rng.sample(
            ANNOTATOR_GROUPS["B"], N_ANNOTATORS - n_a
        )
    return sorted(chosen)


def annotator_group(annotator: int) -> str:
    """ "A" or "B", the group of an annotator id."""
    return "A" if annotator in ANNOTATOR_GROUPS["A"] else "B"


def rate(response: Response, annotator: int, rng: random.Random) -> dict:
    """One annotator's labels for one response."""
    base = response.base_scores(annotator)
    labels = {name: noisy(value, rng) for name, value in zip(SCORED, base, strict=True)}
    verbosity = noisy(verbosity_level(response.text), rng)
    if labels["helpfulness"] >= 3 and rng.random() < VERBOSITY_HELPFUL_BUMP:
        verbosity = min(4, verbosity + 1)
    labels["verbosity"] = verbosity
    if rng.random() < MISSING_CORRECTNESS:
        labels["correctness"] = None
    return {name: labels[name] for name in ATTRIBUTES}


def rate_prompt(seed: int, prompt: Prompt, responses: list[Response]) -> list[dict]:
    """All rating rows of one prompt: responses in file order, annotators in id order."""
    rng = random.Random(
        f"{seed}:ratings:{prompt.key}"
    )  # one stream per prompt: editing one moves only its labels
    annotators = pick_annotators(rng, prompt.kind)
    return [
        {
            "conversation_id": f"{prompt.key}-r{index}",
            "prompt": prompt.text,
            "response": response.text,
            "kind": response.kind,
            "annotator": annotator,
            **rate(response, annotator, rng),
        }
        for index, response in enumerate(responses)
        for annotator in annotators
    ]


# ---------------------------------------------------------------------------------------------------
# Split, pairs, showcase
# ---------------------------------------------------------------------------------------------------


def split_prompts(seed: int, prompts: tuple[Prompt, ...]) -> set[str]:
    """Keys of the held-out prompts: HELDOUT_FRACTION of each prompt kind, drawn with the seed."""
    rng = random.Random(f"{seed}:split")
    heldout = set()
    for kind in ("clear", "controversial"):
        keys = [prompt.key for prompt in prompts if prompt.kind == kind]
        heldout.update(rng.sample(keys, round(HELDOUT_FRACTION * len(keys))))
    return heldout


def weights_of(category: str) -> dict[str, float]:
    """The attribute weights of the preference pairs of a prompt category."""
    return PROFILES[CATEGORY_PROFILE[category]]


def weights_by_prompt(prompts: tuple[Prompt, ...]) -> dict[str, dict[str, float]]:
    """Prompt text → the attribute weights used for its preference pairs."""
    return {prompt.text: weights_of(prompt.category) for prompt in prompts}


def weighted_score(labels: dict, weights: dict[str, float]) -> float:
    """Weighted mean of the available labels (weights renormalised over the non-missing ones)."""
    present = {name: w for name, w in weights.items() if labels.get(name) is not None}
    return sum(w * labels[name] for name, w in present.items()) / sum(present.values())


def mean_labels(rows: list[dict]) -> dict:
    """Per attribute, the mean over annotators of the non-missing labels (None if all missing)."""
    means = {}
    for name in ATTRIBUTES:
        values = [row[name] for row in rows if row[name] is not None]
        means[name] = statistics.fmean(values) if values else None
    return means


def group_by_response(rows: list[dict]) -> dict[str, list[dict]]:
    """Rating rows grouped by conversation id, in first-seen order."""
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["conversation_id"], []).append(row)
    return grouped


def majority_agrees(first: list[dict], second: list[dict], weights: dict[str, float], margin: float) -> bool:
    """Whether most annotators, each comparing by their own labels, prefer the side the mean prefers."""
    votes = sum(
        (weighted_score(a, weights) > weighted_score(b, weights))
        - (weighted_score(a, weights) < weighted_score(b, weights))
        for a, b in zip(first, second, strict=True)
    )
    return votes != 0 and (votes > 0) == (margin > 0)


def pair_prompt(rows: list[dict], weights: dict[str, float], category: str) -> list[dict]:
    """Preference pairs among the responses of one prompt (tagged with its `category`).

    The weighted mean over annotators decides; pairs closer than MIN_MARGIN are skipped. When either
    response is controversial, the majority of annotators (each comparing by their own labels) decides,
    and the pair is kept only if the weighted mean agrees with the majority.
    """
    responses = list(group_by_response(rows).values())
    pairs = []
    for i, first in enumerate(responses):
        for second in responses[i + 1 :]:
            margin = weighted_score(mean_labels(first), weights) - weighted_score(
                mean_labels(second), weights
            )
            if abs(margin) < MIN_MARGIN:
                continue
            controversial = "controversial" in (first[0]["kind"], second[0]["kind"])
            if controversial and not majority_agrees(first, second, weights, margin):
                continue
            chosen, rejected = (first, second) if margin > 0 else (second, first)
            pairs.append(
                {
                    "prompt": chosen[0]["prompt"],
                    "chosen": chosen[0]["response"],
                    "rejected": rejected[0]["response"],
                    "kind": "controversial" if controversial else "clear",
                    "category": category,
                }
            )
    return pairs


def bimodality(rows: list[dict], attribute: str = "helpfulness") -> tuple[int, float]:
    """(annotators in the smaller of the low (<= 1) and high (>= 3) camps, standard deviation)."""
    values = [row[attribute] for row in rows]
    low, high = sum(v <= 1 for v in values), sum(v >= 3 for v in values)
    return min(low, high), statistics.pstdev(values)


def pick_showcase(heldout_rows: list[dict], weights_of_prompt: dict[str, dict[str, float]]) -> list[dict]:
    """Three held-out conversations: the best and worst clear-cut responses and the most bimodal one."""
    responses = list(group_by_response(heldout_rows).values())

    def score(rows):
        return weighted_score(mean_labels(rows), weights_of_prompt[rows[0]["prompt"]])

    def spread(rows):
        return statistics.pstdev(row["helpfulness"] for row in rows)

    clear = [rows for rows in responses if rows[0]["kind"] == "clear"]
    controversial = [rows for rows in responses if rows[0]["kind"] == "controversial"]
    # max/min keep the first of equals, so ties resolve by file order
    picks = {
        "clear-cut good": max(clear, key=lambda rows: (score(rows), -spread(rows))),
        "clear-cut bad": min(clear, key=lambda rows: (score(rows), spread(rows))),
        "controversial": max(controversial, key=bimodality),
    }
    return [
        {"name": name, "prompt": rows[0]["prompt"], "response": rows[0]["response"]}
        for name, rows in picks.items()
    ]


# ---------------------------------------------------------------------------------------------------
# The datasheet (data/demo/README.md)
# ---------------------------------------------------------------------------------------------------


def label_distribution(base: int) -> dict[int, float]:
    """The distribution of one annotator's label for a base score, as `noisy` draws it."""
    distribution = Counter()
    for delta, probability in ((-1, NOISE / 2), (0, 1 - NOISE), (1, NOISE / 2)):
        distribution[min(4, max(0, base + delta))] += probability
    return distribution


def mixture_quantile(mixture: dict[int, float], level: float) -> float:
    """Where the cumulative probability of a label distribution reaches `level`; on a tie, mid-way."""
    labels, cumulative = sorted(mixture), 0.0
    for position, label in enumerate(labels):
        cumulative += mixture[label]
        if abs(cumulative - level) < 1e-9 and position + 1 < len(labels):
            return (label + labels[position + 1]) / 2
        if cumulative > level:
            return label
    return labels[-1]


def true_width_90(response: Response, annotators: list[int], attribute: int) -> float:
    """Width of the central 90 % interval (q0.95 - q0.05, labels scaled to [0, 1]) of the true label
    distribution of one response: its annotators' label distributions, mixed in equal parts."""
    mixture = Counter()
    for annotator in annotators:
        for label, probability in label_distribution(response.base_scores(annotator)[attribute]).items():
            mixture[label] += probability / len(annotators)
    return (mixture_quantile(mixture, 0.95) - mixture_quantile(mixture, 0.05)) / 4


def ceiling_width_ratios(content: Content, heldout_rows: list[dict]) -> dict[str, float]:
    """Per hand-scored attribute, the controversial / clear ratio of mean true 90 % widths over the
    held-out responses: what a model that knew every response's label distribution would report."""
    response_of = {
        f"{prompt.key}-r{index}": response
        for prompt in content.prompts
        for index, response in enumerate(content.responses(prompt))
    }
    widths = {"clear": [], "controversial": []}
    for conversation, rows in group_by_response(heldout_rows).items():
        annotators = [row["annotator"] for row in rows]
        widths[rows[0]["kind"]].append(
            [true_width_90(response_of[conversation], annotators, m) for m in range(len(SCORED))]
        )
    return {
        name: statistics.fmean(w[m] for w in widths["controversial"])
        / statistics.fmean(w[m] for w in widths["clear"])
        for m, name in enumerate(SCORED)
    }


def split_summary(content: Content, keys: list[str], rows: list[dict], pairs: list[dict]) -> dict[str, str]:
    """The datasheet's counts of one split: prompts, responses and pairs, each as "total (clear / controversial)"."""
    kind_of = {prompt.key: prompt.kind for prompt in content.prompts}
    prompts = Counter(kind_of[key] for key in keys)
    responses = Counter(group[0]["kind"] for group in group_by_response(rows).values())
    pair_kinds = Counter(pair["kind"] for pair in pairs)
    return {
        "prompts": f"{len(keys)} ({prompts['clear']} / {prompts['controversial']})",
        "responses": f"{sum(responses.values())} ({responses['clear']} / {responses['controversial']})",
        "pairs": f"{len(pairs)} ({pair_kinds['clear']} / {pair_kinds['controversial']})",
    }


def readme_text(content: Content, splits: dict, showcase: list[dict], source: Path = SOURCE) -> str:
    """The datasheet: `source/README.template.md` filled in with the numbers of the built data set."""
    all_rows = splits["train"]["ratings"] + splits["heldout"]["ratings"]
    missing = sum(row["correctness"] is None for row in all_rows) / len(all_rows)
    summaries = {
        name: split_summary(content, s["keys"], s["ratings"], s["pairs"]) for name, s in splits.items()
    }
    ceilings = ceiling_width_ratios(content, splits["heldout"]["ratings"])
    return (
        (source / "README.template.md")
        .read_text(encoding="utf-8")
        .format(
            n_prompts=len(content.prompts),
            noise=NOISE,
            missing_pct=round(100 * missing),
            train_pct=round(100 * (1 - HELDOUT_FRACTION)),
            heldout_pct=round(100 * HELDOUT_FRACTION),
            min_margin=MIN_MARGIN,
            showcase=len(showcase),
            **{f"ratings_{name}": len(split["ratings"]) for name, split in splits.items()},
            **{f"pairs_{name}": len(split["pairs"]) for name, split in splits.items()},
            **{
                f"{name}_{what}": text
                for name, summary in summaries.items()
                for what, text in summary.items()
            },
            **{f"ceiling_{name}": ratio for name, ratio in ceilings.items()},
            showcase_list="\n".join(f'- {s["name"]}: "{s["prompt"]}" → "{s["response"]}"' for s in showcase),
        )
    )


# ---------------------------------------------------------------------------------------------------
# Build and write
# ---------------------------------------------------------------------------------------------------


def build(seed: int, content: Content) -> dict:
    """Everything the generator writes, as Python objects: {"splits": {"train"/"heldout": {keys, ratings,
    pairs}}, "showcase": [...]}."""
    heldout = split_prompts(seed, content.prompts)
    splits = {name: {"keys": [], "ratings": [], "pairs": []} for name in ("train", "heldout")}
    for prompt in content.prompts:
        split = splits["heldout" if prompt.key in heldout else "train"]
        rows = rate_prompt(seed, prompt, content.responses(prompt))
        split["keys"].append(prompt.key)
        split["ratings"].extend(rows)
        split["pairs"].extend(pair_prompt(rows, weights_of(prompt.category), prompt.category))
    showcase = pick_showcase(splits["heldout"]["ratings"], weights_by_prompt(content.prompts))
    return {"splits": splits, "showcase": showcase}


def jsonl_bytes(rows: list[dict]) -> bytes:
    """One JSON object a line, UTF-8 as is, "\n" line ends on every platform."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


OUTPUT_OWNER = "python -m qrm_hf.training.demo_data"  # the owner in the marker of its output directories


def write_demo_data(out: Path, seed: int = 0, source: Path = SOURCE) -> dict[str, dict[str, str]]:
    """Rate the content of `source` with `seed` and write the data set and its datasheet into `out`, each
    file through `qrm_hf.io` (written whole, then renamed); returns the counts of each split (`split_summary`)."""
    content = load_content(source)
    claim_directory(out, OUTPUT_OWNER)  # refuses a directory of other files, as every output does
    built = build(seed, content)
    splits, showcase = built["splits"], built["showcase"]
    for name, split in splits.items():
        write_bytes_atomic(out / f"ratings_{name}.jsonl", jsonl_bytes(split["ratings"]))
        write_bytes_atomic(out / f"pairs_{name}.jsonl", jsonl_bytes(split["pairs"]))
    write_bytes_atomic(out / "showcase.jsonl", jsonl_bytes(showcase))
    write_bytes_atomic(out / "README.md", readme_text(content, splits, showcase, source).encode("utf-8"))
    return {
        name: split_summary(content, split["keys"], split["ratings"], split["pairs"])
        for name, split in splits.items()
    }


def main(argv: list[str] | None = None) -> None:
    """The command line: ``python -m qrm_hf.training.demo_data [--out DIR] [--seed N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_DATA, help="output directory (default: data/demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the annotators and the split")
    args = parser.parse_args(argv)
    try:
        summaries = write_demo_data(args.out, args.seed)
    except (
        ValueError,
        OSError,
    ) as error:  # a user's error (a bad source file, a foreign directory): one line
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    for name, summary in summaries.items():
        print(f"{name}: {summary}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
