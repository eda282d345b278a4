"""Gating-position search: the vectorised `find_last_pattern` vs a per-row Python loop.

What is measured
    The time to find, in every row of a batch of token ids, the first token of the last occurrence
    of the prompt-end pattern made of real tokens (-1 where there is none), which a QRM does on every
    forward without `gating_positions`:

    * ``vectorised``: `qrm_hf.modeling.modeling_qrm.find_last_pattern` (one `unfold` and comparison
      over the whole batch, no Python loop over rows),
    * ``python loop``: the same semantics written per row in plain Python (token ids to a list, scan
      backwards from the last real token, return the first match).

    Batch of 64 conversations x 2048 tokens with the Llama-3 assistant-turn pattern
    [128009, 128006, 78191, 128007, 271] (5 tokens) occurring 1-4 times per row (multi-turn), mixed
    right and left padding, plus edge rows: no occurrence, an occurrence cut by the padding, an
    occurrence ending on the last real token. Both give identical results (asserted); the two are
    timed interleaved and the table reports medians.

Target
    none beyond correctness; the speedup (loop time / vectorised time) shows what the vectorised
    search saves on each forward.

Run alone with ``.venv/bin/python benchmarks/bench_gating_search.py`` or with all benchmarks through
``make bench``. The last line is ``RESULT ...`` for `run_all.py`.
"""

import argparse
import statistics

import torch
from timing import seconds

from qrm_hf.modeling.modeling_qrm import find_last_pattern

PATTERN = [128009, 128006, 78191, 128007, 271]  # <|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n
PAD = 128009  # Llama-3 pads with <|eot_id|>, the first token of the pattern


def python_loop(input_ids: torch.Tensor, real_tokens: torch.Tensor, pattern: list[int]) -> torch.Tensor:
    """Reference: per row, scan backwards for the last occurrence made of real tokens."""
    width = len(pattern)
    found = []
    for ids, real in zip(input_ids.tolist(), real_tokens.tolist(), strict=True):
        start = -1
        for position in range(len(ids) - width, -1, -1):
            if ids[position : position + width] == pattern and all(real[position : position + width]):
                start = position
                break
        found.append(start)
    return torch.tensor(found)


def make_batch(batch_size: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-turn conversations: each turn opens with the pattern; padding on a random side."""
    g = torch.Generator().manual_seed(seed)
    width = len(PATTERN)
    input_ids = torch.full((batch_size, length), PAD)
    real_tokens = torch.zeros(batch_size, length, dtype=torch.bool)
    for row in range(batch_size):
        real = int(torch.randint(length // 2, length + 1, (1,), generator=g))
        if row == 2:
            real = min(real, length - width)  # room for the padding that completes the cut occurrence
        tokens = torch.randint(0, 128000, (real,), generator=g)
        turns = int(torch.randint(1, 5, (1,), generator=g))
        for start in torch.randperm(real - width, generator=g)[:turns].tolist():
            tokens[start : start + width] = torch.tensor(PATTERN)
        if row == 0:  # no occurrence
            tokens = torch.randint(0, 128000, (real,), generator=g)
        elif row == 1:  # the pattern ends on the last real token
            tokens[-width:] = torch.tensor(PATTERN)
        elif row == 2:  # the last occurrence is cut by the padding: the earlier one counts
            tokens[-2:] = torch.tensor(PATTERN[:2])
        left = bool(torch.randint(0, 2, (1,), generator=g))
        span = slice(length - real, length) if left else slice(0, real)
        input_ids[row, span] = tokens
        real_tokens[row, span] = True
        if row == 2 and not left:
            input_ids[row, real : real + width - 2] = torch.tensor(PATTERN[2:])  # padding that completes it
    return input_ids, real_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()

    input_ids, real_tokens = make_batch(args.batch_size, args.length)
    vectorised = find_last_pattern(input_ids, real_tokens, PATTERN)
    reference = python_loop(input_ids, real_tokens, PATTERN)
    assert torch.equal(vectorised, reference), (vectorised, reference)
    assert vectorised[0] == -1 and (vectorised[1:] >= 0).all(), vectorised

    runs = {
        "vectorised": lambda: find_last_pattern(input_ids, real_tokens, PATTERN),
        "python loop": lambda: python_loop(input_ids, real_tokens, PATTERN),
    }
    times = {name: [] for name in runs}
    with torch.inference_mode():
        for run in runs.values():  # warm-up
            run()
        for _ in range(args.rounds):
            for name, run in runs.items():
                times[name].append(seconds(run))

    medians = {name: statistics.median(values) for name, values in times.items()}
    speedup = medians["python loop"] / medians["vectorised"]
    print(
        f"Gating-position search, CPU, {torch.get_num_threads()} threads, batch {args.batch_size} x "
        f"{args.length} tokens, 5-token Llama-3 pattern, {args.rounds} rounds (results identical)"
    )
    print(f"{'method':<12} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
    for name, values in times.items():
        print(f"{name:<12} {medians[name] * 1e3:>10.3f} {min(values) * 1e3:>8.3f} {max(values) * 1e3:>8.3f}")
    print(f"speedup (python loop / vectorised) = {speedup:.1f}x")
    print(
        f"RESULT gating search: vectorised is {speedup:.1f}x faster than the per-row Python loop (same results)"
    )


if __name__ == "__main__":
    main()
