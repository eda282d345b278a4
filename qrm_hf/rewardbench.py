"""RewardBench and RewardBench 2 scores of a reward model (`qrm rewardbench`).

Both official formats are read (a Hub dataset id or a local file / directory, through
`qrm_hf.dataset_loading.load_rows`):

- **RewardBench** (v1, the ``filtered`` split of ``allenai/reward-bench``): rows ``prompt``, ``chosen``,
  ``rejected`` (strings), ``subset`` (and ``id``). A pair is correct when the chosen response scores
  strictly higher. A section (Chat, Chat Hard, Safety, Reasoning) is the mean of its subsets' accuracies
  weighted by the official example counts (`REWARDBENCH_EXAMPLE_COUNTS`, which up-weight math-prm to
  the size of the code subsets); the score is the mean of the four sections (Prior Sets are left out,
  as in the QRM paper).
- **RewardBench 2** (``allenai/reward-bench-2``, split ``test``): rows ``prompt``, a ``chosen`` list, a
  ``rejected`` list, ``subset``, ``num_correct`` (and ``id``). Scored as the official code does
  (``rewardbench/utils.py`` of ``allenai/reward-bench``): a row scores 1 / (number of completions
  tied at the top) when its first completion (``chosen[0]``) has the highest score among all its
  completions, else 0 — with one chosen response, best-of-N accuracy with ties shared; the ``Ties``
  subset gets its own score (`ties_score`); the overall score is the unweighted mean of the six
  official subsets.

Subsets absent from the data are left out of the means and listed in ``missing_subsets``; subsets
that are not part of the benchmark are scored, listed in ``unknown_subsets`` and left out of the
sections and the overall score. Every distinct conversation is scored once. A NaN or infinite score is
never counted as a wrong answer: it is refused, naming the rows. A subset whose score is undefined on the
rows given (Ties cut by ``--limit``) has accuracy None, is left out of the overall score and listed with
the reason in ``left_out_subsets``.

The result is a JSON-ready dict::

    {"benchmark": "rewardbench" | "rewardbench-2", "subsets": {name: {"accuracy": float, "n": int}},
     "sections": {name: float}, "score": float, "rank_by": str, "missing_subsets": [...],
     "left_out_subsets": {name: reason}, "unknown_subsets": [...], "dataset": str, "split": str | None, "limit": int | None}

(accuracies are fractions in [0, 1]; RewardBench 2 has no sections).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

REWARDBENCH = "rewardbench"
REWARDBENCH_2 = "rewardbench-2"
HUB_IDS = {REWARDBENCH: "allenai/reward-bench", REWARDBENCH_2: "allenai/reward-bench-2"}

REWARDBENCH_SECTIONS = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": [
        "mt-bench-hard",
        "llmbar-natural",
        "llmbar-adver-neighbor",
        "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut",
        "llmbar-adver-manual",
    ],
    "Safety": [
        "refusals-dangerous",
        "refusals-offensive",
        "xstest-should-refuse",
        "xstest-should-respond",
        "donotanswer",
    ],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}
# The official example counts (the current ones: xstest-should-refuse has 154 pairs, should-respond 250).
# math-prm is up-weighted to 984, the size of the six code subsets together.
REWARDBENCH_EXAMPLE_COUNTS = {
    "alpacaeval-easy": 100,
    "alpacaeval-length": 95,
    "alpacaeval-hard": 95,
    "mt-bench-easy": 28,
    "mt-bench-med": 40,
    "mt-bench-hard": 37,
    "llmbar-natural": 100,
    "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47,
    "llmbar-adver-manual": 46,
    "refusals-dangerous": 100,
    "refusals-offensive": 100,
    "xstest-should-refuse": 154,
    "xstest-should-respond": 250,
    "donotanswer": 136,
    "math-prm": 984,
    "hep-cpp": 164,
    "hep-go": 164,
    "hep-java": 164,
    "hep-js": 164,
    "hep-python": 164,
    "hep-rust": 164,
}
REWARDBENCH_2_SUBSETS = ["Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties"]

Conversation = list[dict]
# conversations -> one score each, or {"scores": [N], "reward_quantiles": [N, K], optionally
# "reward_epistemic_std": [N]}: with the distributions the report ranks the mistakes (`ranking`)
Scorer = Callable[[list[Conversation]], Sequence[float] | dict]


# ------------------------------------------------------------------------------------------ risk ranking


def parse_rank_by(rank_by: str):
    """Check a `rank_by` spec: a `qrm_hf.risk` measure spec (``expectation``, ``cvar[:ALPHA]``,
    ``exp_utility[:LAMBDA]``, ``quantile[:TAU]``, ...; a value left out is the registry's default) ->
    (measure, its parameter values)."""
    from . import risk

    try:
        return risk.parse(rank_by)
    except (ValueError, TypeError) as error:
        raise ValueError(f"rank_by {rank_by!r}: {error}") from None


def rank_scores(outputs: dict, levels: Sequence[float], rank_by: str = "expectation") -> np.ndarray:
    """The score that ranks each conversation under `rank_by`, from `score_conversations` outputs: [N].

    ``expectation`` is the model's scalar score (``logits``); the other measures read the mixed reward
    quantiles ``reward_quantiles`` [N, K] at `levels` through the `qrm_hf.risk` registry
    (``exp_utility`` is ranked by its certainty equivalent: the same order as the paper's eq. 4, without
    its overflow to -inf).
    """
    import torch

    from . import risk

    measure, values = parse_rank_by(rank_by)
    if measure.name == "expectation":
        return torch.as_tensor(outputs["logits"]).reshape(-1).double().numpy()
    if measure.name == "exp_utility":
        measure = risk.RISK_MEASURES["certainty_equivalent"]
    quantiles = torch.as_tensor(outputs["reward_quantiles"]).double()
    return measure(quantiles, levels=levels, **values).numpy()


def model_scorer(
    model, tokenizer, rank_by: str = "expectation", batch_size: int = 8, max_length: int | None = None
) -> Scorer:
    """A scorer for `evaluate_rewardbench`: conversations -> {"scores": `rank_scores` under `model`,
    "reward_quantiles": [N, K], and "reward_epistemic_std" [N] for a model with members}, batched by length.

    Conversations longer than `max_length` tokens (default: the backbone's positions) are refused by name,
    never truncated."""
    from .scoring import score_conversations

    parse_rank_by(rank_by)  # fail before any scoring

    def scorer(conversations: list[Conversation]) -> dict[str, np.ndarray]:
        outputs = score_conversations(
            model, tokenizer, conversations, batch_size=batch_size, max_length=max_length
        )
        scored = {
            "scores": rank_scores(outputs, model.config.quantile_levels, rank_by),
            "reward_quantiles": outputs["reward_quantiles"].double().numpy(),
        }
        if "reward_epistemic_std" in outputs:  # a model with members
            scored["reward_epistemic_std"] = outputs["reward_epistemic_std"].double().numpy()
        return scored

    return scorer


# ------------------------------------------------------------------------------------------------ rows


def _conversation(prompt, response, where: str) -> Conversation:
    from .dataset_loading import build_conversation

    return build_conversation(prompt, response, None, where)


def benchmark_of(rows: Sequence[dict]) -> str:
    """`REWARDBENCH_2` when ``chosen`` holds lists of responses, else `REWARDBENCH`; checks the columns."""
    if len(rows) == 0:
        raise ValueError("The RewardBench data holds no rows.")
    first = rows[0]
    missing = [column for column in ("prompt", "chosen", "rejected", "subset") if column not in first]
    if missing:
        raise ValueError(
            f"RewardBench rows need the columns prompt, chosen, rejected and subset; missing: {', '.join(missing)} "
            f"(found {sorted(first)})."
        )
    return REWARDBENCH_2 if isinstance(first["chosen"], list | tuple) else REWARDBENCH


def _where(rows: Sequence[dict], number: int) -> str:
    """Row `number` for errors: its file line (`qrm_hf.data.row_location`), subset and id."""
    from .data import row_location

    row = rows[number]
    return f"{row_location(rows, number, 'RewardBench rows')} (subset {row.get('subset')!r}, id {row.get('id')!r})"


def _completions(rows: Sequence[dict], benchmark: str) -> list[list[Conversation]]:
    """Each row's conversations, chosen first (RewardBench 2: all chosen, then all rejected)."""
    result = []
    for number, row in enumerate(rows):
        where = _where(rows, number)
        missing = [column for column in ("prompt", "chosen", "rejected", "subset") if row.get(column) is None]
        if missing:
            raise ValueError(f"{where}: {', '.join(missing)} missing.")
        if benchmark == REWARDBENCH_2:
            if not isinstance(row["chosen"], list | tuple) or not isinstance(row["rejected"], list | tuple):
                raise ValueError(f"{where}: RewardBench 2 rows need chosen and rejected lists.")
            if not row["chosen"] or not row["rejected"]:
                raise ValueError(
                    f"{where}: the {'chosen' if not row['chosen'] else 'rejected'} list is empty; "
                    "best-of-N needs at least one chosen and one rejected response."
                )
            responses = [*row["chosen"], *row["rejected"]]
        else:
            if isinstance(row["chosen"], list | tuple):
                raise ValueError(f"{where}: chosen is a list; RewardBench (v1) rows hold one response each.")
            responses = [row["chosen"], row["rejected"]]
        result.append([_conversation(row["prompt"], response, where) for response in responses])
    return result


def _score_each_once(
    groups: list[list[Conversation]], scorer: Scorer, locate_group=str
) -> tuple[list[np.ndarray], dict[str, list[np.ndarray]]]:
    """Scores of every conversation of every group, each distinct conversation passed to `scorer` once,
    and the other arrays the scorer returns ({"reward_quantiles": [...]}: one array per group, its
    conversations in order; {} for a scorer of scores only).

    Errors name rows by ``locate_group(group number)`` (their file line, subset and id), not by place
    among the distinct conversations: conversations too long for the model, and NaN or infinite scores
    (from the scorer, or refused by `qrm_hf.scoring`), which are never counted as a wrong answer."""
    from .evaluation import unique_conversations
    from .scoring import ConversationsTooLong, NonFiniteOutputError

    flat = [conversation for group in groups for conversation in group]
    group_of = np.repeat(np.arange(len(groups)), [len(group) for group in groups])
    unique, index = unique_conversations(flat)
    try:
        scored = scorer(unique)
    except ConversationsTooLong as error:  # name the row of each, not its place among the distinct ones
        first_of = {int(u): int(group_of[f]) for f, u in reversed(list(enumerate(index)))}
        raise error.located(lambda u: locate_group(first_of[u])) from None
    except NonFiniteOutputError as error:  # named below by benchmark row
        scored = np.zeros(len(unique))
        scored[error.positions] = np.nan
    extras = {name: np.asarray(value) for name, value in scored.items()} if isinstance(scored, dict) else {}
    scores = np.asarray(extras.pop("scores") if extras else scored, dtype=float).reshape(-1)
    if len(scores) != len(unique):
        raise ValueError(f"The scorer returned {len(scores)} scores for {len(unique)} conversations.")
    bounds = np.cumsum([0, *map(len, groups)])

    def by_group(values):
        return [values[index[start:end]] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]

    grouped = by_group(scores)
    bad = [locate_group(number) for number, group in enumerate(grouped) if not np.isfinite(group).all()]
    if bad:
        raise ValueError(
            f"The scores are NaN or infinite for {len(bad)} row(s): {'; '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}. Such a score is never counted as an answer."
        )
    return grouped, {name: by_group(values) for name, values in extras.items()}


# --------------------------------------------------------------------------------------------- scoring


def best_of_n_result(scores: Sequence[float]) -> float:
    """RewardBench 2's per-row result (official ``reroll_and_score_dataset``): scores[0] is the first
    chosen completion; 1 / (number of completions sharing the top score) if it has the top score, else 0."""
    scores = np.asarray(scores, dtype=float)
    if not np.isfinite(scores).all():
        raise ValueError(f"Best-of-N scores must be finite numbers, got {scores.tolist()}.")
    top = scores.max()
    return float(1 / np.sum(scores == top)) if scores[0] == top else 0.0


def _prompt_stats(correct: list[float], incorrect: list[float]) -> tuple[bool, float, float]:
    """(every correct answer above the best incorrect one, spread of the correct answers (NaN for one),
    worst correct - best incorrect)."""
    spread = max(correct) - min(correct) if len(correct) > 1 else math.nan
    margin = min(correct) - max(incorrect)
    return margin > 0, spread, margin


def _ties_prompts(rows: Sequence[dict], scores: Sequence[Sequence[float]]) -> tuple[dict, dict]:
    """The Ties rows' `_prompt_stats` by prompt number: (ref prompts, tied prompts). Each row's first
    ``num_correct`` completions are its correct ones; ids must be ``ref:N`` or ``tied:N``."""
    grouped: dict[tuple[str, int], tuple[list, list]] = defaultdict(lambda: ([], []))
    for row, row_scores in zip(rows, scores, strict=True):
        identifier = str(row.get("id"))
        sample_type, _, prompt_id = identifier.partition(":")
        if sample_type not in ("ref", "tied") or not prompt_id.strip().lstrip("-").isdigit():
            raise ValueError(
                f"Ties row id {identifier!r}: expected 'ref:N' or 'tied:N' (the official Ties subset's ids)."
            )
        if not np.isfinite(np.asarray(row_scores, dtype=float)).all():
            raise ValueError(
                f"Ties row {identifier!r}: scores must be finite numbers, got {list(row_scores)}."
            )
        num_correct = int(row["num_correct"]) if row.get("num_correct") is not None else len(row["chosen"])
        correct, incorrect = grouped[sample_type, int(prompt_id)]
        for position, score in enumerate(row_scores):
            (correct if position < num_correct else incorrect).append(float(score))
    ref, tied = {}, {}
    for (sample_type, prompt_id), (correct, incorrect) in grouped.items():
        if not correct or not incorrect:
            raise ValueError(
                f"Ties prompt {sample_type}:{prompt_id} needs correct and incorrect completions "
                f"(got {len(correct)} correct, {len(incorrect)} incorrect; see num_correct)."
            )
        (ref if sample_type == "ref" else tied)[prompt_id] = _prompt_stats(correct, incorrect)
    return ref, tied


def ties_score(rows: Sequence[dict], scores: Sequence[Sequence[float]]) -> tuple[float | None, dict]:
    """The RewardBench 2 Ties score, as the official ``process_single_model`` computes it.

    Each row's id is ``"ref:N"`` (a reference prompt with one correct answer) or ``"tied:N"`` (several
    equally correct answers); its first ``num_correct`` completions (chosen, then rejected) are correct.
    Per prompt: accurate = every correct answer scores above the best incorrect one; margin = worst
    correct - best incorrect; spread = best correct - worst correct. Over prompts N present as both ref
    and tied: ``correctness_preferred`` = mean(tied margin > tied spread), ``correctness_preferred_hard``
    = mean(min(ref margin, tied margin) > tied spread), ``correctness_margin_score`` = mean of
    tanh(min(ref margin, tied margin) / tied spread - 1) (NaN -> 0). Score = 0.30 tied accuracy + 0.30 ref
    accuracy + 0.20 correctness_preferred + 0.20 correctness_preferred_hard + 0.01 correctness_margin_score.

    The score is defined only when some prompt is present as both ref and tied (a `--limit` can cut every
    pair): otherwise it is None and the components say why under ``left_out`` (the official code would
    give NaN). Scores must be finite (ValueError otherwise).
    """
    ref, tied = _ties_prompts(rows, scores)
    shared = sorted(set(ref) & set(tied))
    if not shared:
        return None, {
            "ref_prompts": len(ref),
            "tied_prompts": len(tied),
            "left_out": "no prompt is present as both 'ref:N' and 'tied:N' (e.g. cut by --limit): the Ties "
            "score compares the two",
        }
    spread = np.array([tied[p][1] for p in shared], dtype=float)
    tied_margin = np.array([tied[p][2] for p in shared], dtype=float)
    hard_margin = np.minimum(np.array([ref[p][2] for p in shared], dtype=float), tied_margin)
    with np.errstate(divide="ignore", invalid="ignore"):
        components = {
            "ref_accuracy": float(np.mean([stats[0] for stats in ref.values()])),
            "tied_accuracy": float(np.mean([stats[0] for stats in tied.values()])),
            "correctness_preferred": float(np.mean(tied_margin > spread)),
            "correctness_preferred_hard": float(np.mean(hard_margin > spread)),
            "correctness_margin_score": float(
                np.mean(np.nan_to_num(np.tanh(hard_margin / spread - 1), nan=0.0))
            ),
        }
    weights = {"tied_accuracy": 0.30, "ref_accuracy": 0.30, "correctness_preferred": 0.20,
               "correctness_preferred_hard": 0.20, "correctness_margin_score": 0.01}  # fmt: skip
    return float(sum(weight * components[name] for name, weight in weights.items())), components


def _subset_scores(rows: Sequence[dict], scores: list[np.ndarray], benchmark: str) -> dict:
    """{subset: {"accuracy", "n"}} of scored rows: strict pairwise accuracy (RewardBench), best-of-N with
    ties shared or the Ties score (RewardBench 2; an undefined Ties score has accuracy None and the reason
    under ``left_out``)."""
    by_subset: dict[str, list[int]] = defaultdict(list)
    for number, row in enumerate(rows):
        by_subset[str(row["subset"])].append(number)
    subsets = {}
    for subset, numbers in by_subset.items():
        if benchmark == REWARDBENCH_2 and subset.lower() == "ties":
            accuracy, components = ties_score([rows[i] for i in numbers], [scores[i] for i in numbers])
            subsets[subset] = {"accuracy": accuracy, "n": len(numbers), "components": components}
            if accuracy is None:
                subsets[subset]["left_out"] = components.pop("left_out")
            continue
        results = [_row_result(scores[i], benchmark) for i in numbers]
        subsets[subset] = {"accuracy": float(np.mean(results)), "n": len(numbers)}
    return subsets


def _row_result(scores: np.ndarray, benchmark: str) -> float:
    """One row's result: best-of-N with ties shared (RewardBench 2), else 1 when the chosen response scores
    strictly higher (RewardBench: a tie counts as wrong)."""
    return best_of_n_result(scores) if benchmark == REWARDBENCH_2 else float(scores[0] > scores[1])


def _sections(subsets: dict, benchmark: str) -> tuple[dict, list[float]]:
    """The RewardBench sections (each the mean of its subsets weighted by the official example counts;
    none for RewardBench 2) and the parts whose mean is the score."""
    if benchmark == REWARDBENCH_2:
        parts = [subsets[name]["accuracy"] for name in REWARDBENCH_2_SUBSETS if name in subsets]
        return {}, [part for part in parts if part is not None]
    sections = {}
    for section, names in REWARDBENCH_SECTIONS.items():
        present = [name for name in names if name in subsets]
        if present:
            weights = [REWARDBENCH_EXAMPLE_COUNTS[name] for name in present]
            sections[section] = float(
                np.average([subsets[name]["accuracy"] for name in present], weights=weights)
            )
    return sections, list(sections.values())


def ranking_report(
    rows: Sequence[dict], scores: list[np.ndarray], distributions: dict, benchmark: str
) -> dict:
    """How well the model's uncertainty ranks its mistakes on the benchmark rows (`qrm_hf.evaluation.
    pair_ranking_report`). Each row is one pair: RewardBench its chosen and rejected responses (correct:
    the chosen scores strictly higher), RewardBench 2 its first chosen response against the strongest
    other completion (correct: the row's best-of-N result). Ties rows are not pairs: left out and counted
    in ``left_out_rows``. `scores` and `distributions` ({"reward_quantiles": [...], optionally
    "reward_epistemic_std": [...]}) are `_score_each_once`'s; the margin is that of the ranking scores."""
    from .evaluation import pair_ranking_report, pair_ranking_signals

    pairs = [number for number, row in enumerate(rows) if str(row["subset"]).lower() != "ties"]
    if not pairs:
        return {"pairs": 0, "left_out_rows": len(rows)}
    rival = [1 + int(np.argmax(scores[i][1:])) for i in pairs]  # RewardBench: the rejected response
    sides = {
        name: (
            np.stack([values[i][0] for i in pairs]),
            np.stack([values[i][j] for i, j in zip(pairs, rival, strict=True)]),
        )
        for name, values in {"scores": scores, **distributions}.items()
    }
    epistemic = sides.get("reward_epistemic_std", (None, None))
    signals = pair_ranking_signals(*sides["scores"], *sides["reward_quantiles"], *epistemic)
    correct = [_row_result(scores[i], benchmark) for i in pairs]
    return {**pair_ranking_report(correct, signals), "left_out_rows": len(rows) - len(pairs)}


def evaluate_rewardbench(
    rows: Sequence[dict], scorer: Scorer, benchmark: str | None = None, rank_by: str = "expectation"
) -> dict:
    """Score RewardBench (v1) or RewardBench 2 rows with `scorer` (conversations -> one score each, or a
    dict with the reward distributions too: see `Scorer`).

    `benchmark` is detected from the rows when None. `rank_by` is only recorded (the scorer applies it,
    see `model_scorer`). Returns the report described in the module docstring (without ``dataset``,
    ``split`` and ``limit``, which `run_rewardbench` adds), with ``ranking`` (`ranking_report`) when the
    scorer gives the reward distributions.
    """
    detected = benchmark_of(rows)
    benchmark = benchmark or detected
    if benchmark not in HUB_IDS:
        raise ValueError(f"Unknown benchmark {benchmark!r}; use {REWARDBENCH!r} or {REWARDBENCH_2!r}.")
    if benchmark != detected:
        raise ValueError(f"The rows are in the {detected} format, not {benchmark}.")
    scores, distributions = _score_each_once(
        _completions(rows, benchmark), scorer, lambda number: _where(rows, number)
    )
    subsets = _subset_scores(rows, scores, benchmark)
    sections, parts = _sections(subsets, benchmark)
    known = list(REWARDBENCH_EXAMPLE_COUNTS) if benchmark == REWARDBENCH else REWARDBENCH_2_SUBSETS
    report = {
        "benchmark": benchmark,
        "subsets": subsets,
        "sections": sections,
        "score": float(np.mean(parts)) if parts else None,
        "rank_by": rank_by,
        "missing_subsets": [name for name in known if name not in subsets],
        "left_out_subsets": {
            name: entry["left_out"] for name, entry in subsets.items() if "left_out" in entry
        },
        "unknown_subsets": [name for name in subsets if name not in known],
    }
    if "reward_quantiles" in distributions:
        report["ranking"] = ranking_report(rows, scores, distributions, benchmark)
    return report


def load_rewardbench_rows(
    data: str, split: str | None = None, limit: int | None = None
) -> tuple[list[dict], str]:
    """Rows of a RewardBench / RewardBench 2 dataset (Hub id or local file/directory) and the split read.

    Without `split`: ``filtered`` (RewardBench), else ``test`` (RewardBench 2), else ``train`` (a local
    file is its own single split). `limit` keeps the first `limit` rows of each subset.
    """
    from .data import JsonlRows
    from .dataset_loading import load_rows

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}.")
    candidates = [split] if split else ["filtered", "test", "train"]
    for number, candidate in enumerate(candidates):
        try:
            dataset = load_rows(data, split=candidate)
            break
        except ValueError as error:  # an unknown split: try the next default
            if number == len(candidates) - 1 or "split" not in str(error).lower():
                raise
    rows = [dict(row) for row in dataset]
    locations = getattr(dataset, "row_locations", None)
    kept = range(len(rows))
    if limit is not None:
        seen: dict = defaultdict(int)
        kept = []
        for number, row in enumerate(rows):
            seen[row.get("subset")] += 1
            if seen[row.get("subset")] <= limit:
                kept.append(number)
        rows = [rows[number] for number in kept]
    if locations is not None:  # rows of a JSON Lines file keep their lines for errors
        rows = JsonlRows(rows, [locations[number] for number in kept])
    return rows, candidate


def run_rewardbench(
    model,
    tokenizer,
    data: str,
    split: str | None = None,
    limit: int | None = None,
    rank_by: str = "expectation",
    batch_size: int = 8,
    max_length: int | None = None,
) -> dict:
    """RewardBench or RewardBench 2 (detected from the rows) of a QRM on `data` (Hub id or local path).

    Conversations are rendered with the tokenizer's chat template and scored in length-sorted batches
    (`qrm_hf.scoring.score_conversations`, with a progress bar), each distinct one once; `rank_by`
    picks what ranks the responses (see `rank_scores`). Returns the report of `evaluate_rewardbench`
    with ``dataset``, ``split`` and ``limit``.
    """
    scorer = model_scorer(model, tokenizer, rank_by, batch_size, max_length)
    rows, split = load_rewardbench_rows(data, split, limit)
    report = evaluate_rewardbench(rows, scorer, rank_by=rank_by)
    return {**report, "dataset": str(data), "split": split, "limit": limit}


def format_report(report: dict) -> str:
    """A plain-text table of a RewardBench report: subsets, sections and the score, in percent."""
    lines = [f"{report['benchmark']} (ranked by {report['rank_by']})"]
    width = max([len(name) for name in report["subsets"]] + [12])
    for name, entry in report["subsets"].items():
        marker = "  (not in the benchmark)" if name in report.get("unknown_subsets", []) else ""
        if entry["accuracy"] is None:
            lines.append(
                f"  {name:<{width}}     n/a  n={entry['n']}  (left out of the score: {entry['left_out']})"
            )
            continue
        lines.append(f"  {name:<{width}}  {100 * entry['accuracy']:6.2f}  n={entry['n']}{marker}")
    for name, value in report["sections"].items():
        lines.append(f"  {'[' + name + ']':<{width}}  {100 * value:6.2f}")
    score = report["score"]
    lines.append(f"  {'score':<{width}}  {'n/a' if score is None else f'{100 * score:6.2f}'}")
    if report["missing_subsets"]:
        lines.append(f"  missing subsets (left out): {', '.join(report['missing_subsets'])}")
    return "\n".join(lines)


def model_index_entries(report: dict) -> list[dict]:
    """`qrm_hf.model_cards.render_model_card` evaluation entries (model-index) of a RewardBench report:
    the score and each section (RewardBench) or subset (RewardBench 2), in percent."""
    benchmark = report.get("benchmark")
    if benchmark not in HUB_IDS or "score" not in report:
        raise ValueError("Not a RewardBench report of `qrm rewardbench` (no 'benchmark' / 'score').")
    name = "RewardBench" if benchmark == REWARDBENCH else "RewardBench 2"
    if report.get("limit"):
        name += f" (first {report['limit']} rows per subset)"
    suffix = (
        "" if report.get("rank_by", "expectation") == "expectation" else f", ranked by {report['rank_by']}"
    )
    common = {"dataset": HUB_IDS[benchmark], "dataset_name": name, "split": report.get("split")}
    entries = []
    if report["score"] is not None:
        entries.append(
            {
                **common,
                "metric": "accuracy",
                "metric_name": f"Score{suffix}",
                "value": round(100 * report["score"], 2),
            }
        )
    parts = (
        report["sections"]
        if benchmark == REWARDBENCH
        else {
            subset: entry["accuracy"]
            for subset, entry in report["subsets"].items()
            if subset in REWARDBENCH_2_SUBSETS and entry["accuracy"] is not None
        }
    )
    for part, value in parts.items():
        entries.append(
            {**common, "metric": "accuracy", "metric_name": f"{part}{suffix}", "value": round(100 * value, 2)}
        )
    return entries


def results_file_entries(paths: Sequence[str]) -> list[dict]:
    """`model_index_entries` of `qrm rewardbench --output` files, for `qrm assemble` / `qrm push --results`."""
    import json
    from pathlib import Path

    entries = []
    for path in paths:
        try:
            report = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"Cannot read the results file {path}: {error}") from error
        try:
            entries += model_index_entries(report)
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: {error}") from error
    return entries
