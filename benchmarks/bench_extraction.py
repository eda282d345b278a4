"""Feature extraction throughput: length-bucketed batches vs one conversation at a time.

What is measured (embedded SmolLM2-135M-Instruct, float32, CPU, demo conversations of 42-89 tokens)
    * ``one at a time``: a forward pass per conversation, no padding (how the ArmoRM scripts extract),
    * ``bucketed``: `qrm_hf.scoring.BackboneEncoder` with its defaults — conversations sorted
      by length and padded on the right in batches of at most 16 conversations and 1024 tokens,
    both on the same distinct conversations, interleaved over rounds (medians), embeddings compared
    (max abs diff, target <= 1e-4).
    For preference pairs (chosen and rejected share the prompt) also:
    * ``pair, prompt once``: the shared prompt prefix encoded once, its KV cache expanded to the two
      responses, which are then encoded together — against ``bucketed`` on the flattened pairs.

    ``ceiling`` is the ratio if the bucketed run did all its matrix products (2 x non-embedding
    weights x tokens, padding excluded) at the best rate measured for one large fp32 matrix product
    on this machine, and nothing else: no batching strategy can beat it with float32 arithmetic.

Target
    bucketed >= 3x the conversations per second of one at a time, equal embeddings. (On a GPU the gap
    is far larger; a CPU gains only what larger matrix products and fewer operator calls give.)

``--scan`` instead times forwards of [B, L] random tokens (B = 1, 2, 4, 8, 16; L = --scan-lengths)
per conversation against [1, L]: the evidence for `BackboneEncoder.CPU_TOKENS_PER_BATCH`.

Run alone with ``.venv/bin/python benchmarks/bench_extraction.py`` or through ``make bench``.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, DynamicCache

from qrm_hf.backbones import smollm2_backbone_dir
from qrm_hf.chat import derive_prompt_end_pattern, encode_conversation
from qrm_hf.modeling.modeling_qrm import find_last_pattern
from qrm_hf.scoring import BackboneEncoder
from qrm_hf.training.settings import ExtractionSettings

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo"


@torch.inference_mode()
def one_at_a_time(backbone, pattern, sequences):
    response, prompt = [], []
    for sequence in sequences:
        ids = torch.tensor([sequence])
        hidden = backbone(input_ids=ids, use_cache=False).last_hidden_state[0]
        response.append(hidden[-1])
        prompt.append(hidden[find_last_pattern(ids, torch.ones_like(ids, dtype=torch.bool), pattern)[0]])
    return torch.stack(response), torch.stack(prompt)


@torch.inference_mode()
def pairs_prompt_once(backbone, pattern, pairs):
    """Per pair: the common prefix once, then both continuations on copies of its KV cache."""
    response = []
    for chosen, rejected in pairs:
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        cache = DynamicCache()
        backbone(input_ids=torch.tensor([chosen[:shared]]), past_key_values=cache, use_cache=True)
        cache.batch_repeat_interleave(2)
        tails = [chosen[shared:], rejected[shared:]]
        width = max(map(len, tails))
        ids = torch.zeros(2, width, dtype=torch.long)
        mask = torch.zeros(2, shared + width, dtype=torch.long)
        mask[:, :shared] = 1
        for row, tail in enumerate(tails):
            ids[row, : len(tail)] = torch.tensor(tail)
            mask[row, shared : shared + len(tail)] = 1
        positions = torch.arange(shared, shared + width).expand(2, width)
        hidden = backbone(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
        ).last_hidden_state
        response += [hidden[row, len(tail) - 1] for row, tail in enumerate(tails)]
    return torch.stack(response)


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def matmul_flops_per_token(backbone):
    return 2 * sum(
        p.numel() for name, p in backbone.named_parameters() if p.dim() == 2 and "embed" not in name
    )


def best_matmul_gflops(hidden, intermediate):
    """The best fp32 rate of [M, hidden] x [hidden, intermediate] over M = 60 ... 1920 (median of 5)."""
    rates = []
    for rows in (60, 240, 960, 1920):
        a, w = torch.randn(rows, hidden), torch.randn(intermediate, hidden)
        repeats = max(5, 20000 // rows)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(repeats):
                torch.nn.functional.linear(a, w)
            times.append((time.perf_counter() - start) / repeats)
        rates.append(2 * rows * hidden * intermediate / statistics.median(times) / 1e9)
    return max(rates)


@torch.inference_mode()
def scan(backbone, lengths, rounds):
    """Per-conversation time of [B, L] forwards against [1, L], interleaved over rounds (medians)."""
    flops = matmul_flops_per_token(backbone)
    sizes = (1, 2, 4, 8, 16)
    print(f"{'batch':>6}{'length':>8}{'tokens':>8}{'ms/conv':>10}{'GFLOPS':>9}{'vs [1, L]':>11}")
    for length in lengths:
        ids = torch.randint(
            100, backbone.config.vocab_size, (max(sizes), length), generator=torch.Generator().manual_seed(0)
        )
        per = {size: [] for size in sizes}
        for size in sizes:
            backbone(input_ids=ids[:size], use_cache=False)
        for _ in range(rounds):
            for size in sizes:
                start = time.perf_counter()
                for row in range(0, len(ids), size):
                    backbone(input_ids=ids[row : row + size], use_cache=False)
                per[size].append((time.perf_counter() - start) / len(ids))
        one = statistics.median(per[1])
        for size in sizes:
            value = statistics.median(per[size])
            print(
                f"{size:>6}{length:>8}{size * length:>8}{value * 1e3:>10.1f}{flops * length / value / 1e9:>9.1f}"
                f"{one / value:>10.2f}x"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scan", action="store_true", help="time [B, L] forwards instead (see above)")
    parser.add_argument("--scan-lengths", default="30,60,240,500")
    args = parser.parse_args()

    directory = smollm2_backbone_dir()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    backbone = AutoModel.from_pretrained(directory, dtype=torch.float32).eval()
    if args.scan:
        print(f"SmolLM2-135M float32, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds")
        return scan(backbone, [int(length) for length in args.scan_lengths.split(",")], args.rounds)
    pattern = derive_prompt_end_pattern(tokenizer)
    rows = [json.loads(line) for line in (DEMO / "ratings_train.jsonl").read_text().splitlines()]
    texts = list(dict.fromkeys((row["prompt"], row["response"]) for row in rows))[: args.conversations]
    sequences = [encode_conversation(tokenizer, prompt=p, response=r) for p, r in texts]
    pair_rows = [json.loads(line) for line in (DEMO / "pairs_train.jsonl").read_text().splitlines()][
        : args.pairs
    ]
    pairs = [
        (
            encode_conversation(tokenizer, prompt=r["prompt"], response=r["chosen"]),
            encode_conversation(tokenizer, prompt=r["prompt"], response=r["rejected"]),
        )
        for r in pair_rows
    ]
    encoder = BackboneEncoder(
        backbone, pattern, tokenizer.pad_token_id, batch_size=ExtractionSettings().batch_size
    )
    lengths = sorted(map(len, sequences))
    print(
        f"{len(sequences)} conversations ({lengths[0]}-{lengths[-1]} tokens), {len(pairs)} pairs, "
        f"{torch.get_num_threads()} threads, {args.rounds} interleaved rounds"
    )

    encoder.encode(sequences[:4], desc="warm-up")
    times = {"one at a time": [], "bucketed": [], "pairs bucketed": [], "pairs prompt once": []}
    for _ in range(args.rounds):
        elapsed, loop = timed(one_at_a_time, backbone, pattern, sequences)
        times["one at a time"].append(elapsed)
        elapsed, batched = timed(encoder.encode, sequences)
        times["bucketed"].append(elapsed)
        elapsed, pair_batched = timed(encoder.encode, [s for pair in pairs for s in pair])
        times["pairs bucketed"].append(elapsed)
        elapsed, pair_once = timed(pairs_prompt_once, backbone, pattern, pairs)
        times["pairs prompt once"].append(elapsed)
    difference = max((loop[0] - batched[0]).abs().max().item(), (loop[1] - batched[1]).abs().max().item())
    pair_difference = (pair_once - pair_batched[0]).abs().max().item()

    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"{'method':<20}{'median s':>10}{'conv/s':>10}")
    for name, value in medians.items():
        count = len(sequences) if "pairs" not in name else 2 * len(pairs)
        print(f"{name:<20}{value:>10.2f}{count / value:>10.1f}")
    speedup = medians["one at a time"] / medians["bucketed"]
    rate = best_matmul_gflops(backbone.config.hidden_size, backbone.config.intermediate_size)
    ceiling = medians["one at a time"] / (matmul_flops_per_token(backbone) * sum(lengths) / 1e9 / rate)
    print(
        f"ceiling: all matrix products of the real tokens at the best fp32 matmul rate ({rate:.0f} GFLOPS) "
        f"would be {ceiling:.2f}x one at a time"
    )
    pair_ratio = medians["pairs bucketed"] / medians["pairs prompt once"]
    print(
        f"bucketed / one at a time throughput: {speedup:.2f}x (target >= 3x); max abs diff {difference:.1e}"
    )
    print(f"pairs, prompt once vs bucketed: {pair_ratio:.2f}x; max abs diff {pair_difference:.1e}")
    verdict = "PASS" if speedup >= 3 and difference <= 1e-4 else "FAIL"
    print(
        f"RESULT extraction bucketed/one-at-a-time {speedup:.2f}x (target >= 3x, {verdict}), max diff "
        f"{difference:.1e} (ceiling {ceiling:.2f}x); pairs prompt-once/bucketed {pair_ratio:.2f}x "
        f"(diff {pair_difference:.1e})"
    )


if __name__ == "__main__":
    main()
