"""Forward time of a QRM vs `LlamaForSequenceClassification` on the same backbone weights.

What is measured
    Wall-clock time of one forward pass (CPU, float32, `torch.inference_mode()`, SDPA attention,
    default `torch` thread count) of

    * ``llama``: `LlamaForSequenceClassification` (one linear score head),
    * ``qrm``: `QRMForSequenceClassification` on the same backbone weights, 4 attributes x 19
      quantile levels, the paper's gating network (1024 hidden x 3 layers), finding the gating
      position by searching the prompt-end pattern in every row,
    * ``qrm (gating_positions)``: the same QRM with the gating positions passed explicitly
      (no pattern search),
    * ``llama compiled`` and ``qrm compiled (gating_positions)``: both models through
      `torch.compile` (inductor); the QRM with `fullgraph=True`, which fails on any graph break, so
      this also checks that its forward compiles into one graph. Compiling takes a few minutes;
      ``--no-compile`` leaves these two out.

    on a random SmolLM2-135M-shaped Llama (hidden 576, intermediate 1536, 30 layers, 9 heads,
    3 key/value heads, vocabulary 49152; built at random, nothing is downloaded), for a batch of
    8 conversations right-padded to 256 tokens with varying real lengths and the pattern in every row.

    Both models are warmed up, then run interleaved for 7 rounds (llama, qrm, qrm (gating_positions),
    then the reverse order in the next round, ...) so that changes in machine load affect all alike.
    The table reports the median (and min/max) wall-clock time over the rounds, and the median CPU
    time of the process (less sensitive to other programs competing for the cores). The QRM-only
    work (mask handling, pattern search, gathers, heads, gating, mixing) is also timed on its own:
    it is far below the run-to-run noise of a full forward, so this is the precise measure of what
    the QRM adds. About 1.5 minutes on an idle 2-core machine (each forward takes ~3 s there).

    ``qrm (10 members)``: the same QRM with `num_members=10` (ten sets of quantile heads in one matmul,
    combined, with their spread), the same backbone; its forward and its QRM-only work are compared with
    the one-member QRM's side by side.

Target
    median QRM time / median Llama time <= 1.05 (the quantile heads and gating add < 5 %), eager
    and compiled alike; the 10-member QRM's forward <= 1.05 x the one-member QRM's.

Run alone with ``.venv/bin/python benchmarks/bench_forward.py [--rounds N]`` or with all
benchmarks through ``make bench``. The last line is ``RESULT ...`` for `run_all.py`.
"""

import argparse
import statistics
import time

import torch
from timing import seconds
from transformers import LlamaConfig, LlamaForSequenceClassification

from qrm_hf import QRMConfig, QRMForSequenceClassification
from qrm_hf.modeling.modeling_qrm import find_last_pattern

TARGET = 1.05
PAD = 2  # SmolLM2 pads with <|im_end|>: pad == eos, so only trailing pads are padding
PATTERN = [1, 520, 198]  # stands for the tokens that open the assistant turn


def smollm2_135m_config() -> LlamaConfig:
    config = LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=PAD,
        num_labels=1,
    )
    config._attn_implementation = "sdpa"
    return config


def build_models() -> tuple[LlamaForSequenceClassification, QRMForSequenceClassification]:
    torch.manual_seed(0)
    backbone_config = smollm2_135m_config()
    llama = LlamaForSequenceClassification(backbone_config).eval()
    qrm_config = QRMConfig(
        backbone_config=smollm2_135m_config(),
        attribute_names=["helpfulness", "correctness", "coherence", "verbosity"],
        quantile_levels=[round(0.05 * k, 2) for k in range(1, 20)],
        gating_hidden_dim=1024,
        gating_n_hidden=3,
        prompt_end_pattern=PATTERN,
        pad_token_id=PAD,
    )
    qrm = QRMForSequenceClassification(qrm_config).eval()
    report = qrm.model.load_state_dict(llama.model.state_dict())  # the same backbone weights
    assert not report.missing_keys and not report.unexpected_keys, report
    for model in (llama, qrm):
        assert model.model.config._attn_implementation == "sdpa", model.model.config._attn_implementation
    return llama, qrm


MEMBERS = 10


def with_members(qrm: QRMForSequenceClassification, num_members: int) -> QRMForSequenceClassification:
    """A copy of `qrm` with `num_members` sets of heads (random members, the same backbone and gating)."""
    config = QRMConfig.from_dict({**qrm.config.to_dict(), "num_members": num_members})
    members = QRMForSequenceClassification(config).eval()
    state = {k: v for k, v in qrm.state_dict().items() if not k.startswith("regression_layer.")}
    report = members.load_state_dict(state, strict=False)
    assert report.missing_keys == ["regression_layer.weight"] and not report.unexpected_keys, report
    return members


def make_batch(batch_size: int, length: int, seed: int = 0):
    """Right-padded conversations of varying length: random prompt, the pattern, random response."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.full((batch_size, length), PAD)
    attention_mask = torch.zeros(batch_size, length, dtype=torch.long)
    gating_positions = torch.empty(batch_size, dtype=torch.long)
    for row in range(batch_size):
        real = length if row == 0 else int(torch.randint(length // 2, length + 1, (1,), generator=g))
        prompt_len = int(torch.randint(real // 4, real // 2, (1,), generator=g))
        input_ids[row, :real] = torch.randint(3, 49152, (real,), generator=g)
        input_ids[row, prompt_len : prompt_len + len(PATTERN)] = torch.tensor(PATTERN)
        attention_mask[row, :real] = 1
        gating_positions[row] = prompt_len
    found = find_last_pattern(input_ids, attention_mask.bool(), PATTERN)
    assert torch.equal(found, gating_positions), (found, gating_positions)
    return input_ids, attention_mask, gating_positions


def wall_and_cpu_seconds(fn) -> tuple[float, float]:
    """Wall-clock time and CPU time of this process (all its threads) for one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def qrm_only_work(qrm, input_ids, attention_mask, hidden) -> float:
    """Median time of everything the QRM forward does besides the backbone, on the real shapes."""
    rows = torch.arange(input_ids.shape[0])

    def work():
        real = qrm._real_tokens(input_ids, attention_mask, *input_ids.shape)
        positions = torch.arange(input_ids.shape[1])
        response = torch.where(real, positions, -1).amax(-1)
        prompt = qrm._gating_positions(input_ids, real, None, response)
        _ = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # position ids
        qrm.score_embeddings(hidden[rows, response], hidden[rows, prompt])

    for _ in range(5):
        work()
    return statistics.median(seconds(work) for _ in range(50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=7, help="interleaved rounds (each runs every model once)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile runs")
    args = parser.parse_args()

    llama, qrm = build_models()
    members = with_members(qrm, MEMBERS)
    input_ids, attention_mask, gating_positions = make_batch(args.batch_size, args.length)
    runs = {
        "llama": lambda: llama(input_ids=input_ids, attention_mask=attention_mask),
        "qrm": lambda: qrm(input_ids=input_ids, attention_mask=attention_mask),
        f"qrm ({MEMBERS} members)": lambda: members(input_ids=input_ids, attention_mask=attention_mask),
        "qrm (gating_positions)": lambda: qrm(
            input_ids=input_ids, attention_mask=attention_mask, gating_positions=gating_positions
        ),
    }
    compile_seconds = {}
    if not args.no_compile:
        compiled_llama, compiled_qrm = torch.compile(llama), torch.compile(qrm, fullgraph=True)
        runs["llama compiled"] = lambda: compiled_llama(input_ids=input_ids, attention_mask=attention_mask)
        runs["qrm compiled (gating_positions)"] = lambda: compiled_qrm(
            input_ids=input_ids, attention_mask=attention_mask, gating_positions=gating_positions
        )
    wall = {name: [] for name in runs}
    cpu = {name: [] for name in runs}
    with torch.inference_mode():
        hidden = llama.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # warm-up
        out = runs["qrm"]()  # warm-up, and a check that both see the same backbone
        torch.testing.assert_close(out.prompt_embedding, hidden[torch.arange(len(hidden)), gating_positions])
        for name in [name for name in runs if "compiled" in name]:
            compile_seconds[name] = seconds(runs[name])  # compiles
            runs[name]()  # a second warm-up call, compiled already
        if compile_seconds:  # the compiled QRM computes what the eager one does
            compiled_out = runs["qrm compiled (gating_positions)"]()
            torch.testing.assert_close(compiled_out.logits, out.logits, rtol=1e-4, atol=1e-4)
        for round_index in range(args.rounds):
            order = list(runs) if round_index % 2 == 0 else list(reversed(runs))  # no position bias
            for name in order:
                wall_seconds, cpu_seconds = wall_and_cpu_seconds(runs[name])
                wall[name].append(wall_seconds)
                cpu[name].append(cpu_seconds)
        overhead = qrm_only_work(qrm, input_ids, attention_mask, hidden)
        members_overhead = qrm_only_work(members, input_ids, attention_mask, hidden)

    median = {name: statistics.median(values) for name, values in wall.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    ratio = median["qrm"] / median["llama"]
    ratio_positions = median["qrm (gating_positions)"] / median["llama"]
    ratio_cpu = median_cpu["qrm"] / median_cpu["llama"]
    ratio_members = median[f"qrm ({MEMBERS} members)"] / median["qrm"]
    ratio_members_cpu = median_cpu[f"qrm ({MEMBERS} members)"] / median_cpu["qrm"]
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    compiled = ""
    if compile_seconds:
        ratio_compiled = median["qrm compiled (gating_positions)"] / median["llama compiled"]
        compiled = (
            f"; compiled qrm/llama = {ratio_compiled:.3f} "
            f"{'PASS' if ratio_compiled <= TARGET else 'FAIL'} (compiled llama / eager llama = "
            f"{median['llama compiled'] / median['llama']:.3f})"
        )
    spread = max(max(values) / min(values) for values in wall.values())

    print(
        f"Forward, CPU float32 inference_mode sdpa, {torch.get_num_threads()} threads, "
        f"batch {args.batch_size} x {args.length} tokens (right padding, "
        f"{int(attention_mask.sum())} real tokens), random SmolLM2-135M-shaped backbone, "
        f"{args.rounds} interleaved rounds"
    )
    print(
        f"{'model':<32} {'median s':>9} {'min s':>7} {'max s':>7} {'vs llama':>9}   "
        f"{'CPU s':>7} {'vs llama':>9}"
    )
    for name, values in wall.items():
        print(
            f"{name:<32} {median[name]:>9.3f} {min(values):>7.3f} {max(values):>7.3f} "
            f"{median[name] / median['llama']:>9.3f}   "
            f"{median_cpu[name]:>7.3f} {median_cpu[name] / median_cpu['llama']:>9.3f}"
        )
    print(
        f"QRM-only work (pattern search, gathers, heads, gating, mixing): {overhead * 1e3:.2f} ms "
        f"= {overhead / median['llama']:.2%} of the Llama forward"
    )
    print(
        f"{MEMBERS} members vs 1: forward {ratio_members:.3f} (CPU time {ratio_members_cpu:.3f}), target <= "
        f"{TARGET}: {'PASS' if ratio_members <= TARGET else 'FAIL'}; QRM-only work {members_overhead * 1e3:.2f} ms "
        f"vs {overhead * 1e3:.2f} ms"
    )
    for name, value in compile_seconds.items():
        print(f"{name}: first call (compilation) {value:.0f} s")
    print(f"QRM / Llama = {ratio:.3f} (median wall-clock times), target <= {TARGET}: {verdict}")
    if spread > 1.3:
        print(
            f"warning: wall-clock times vary up to {spread:.1f}x between rounds, the machine is busy: "
            "rerun when idle (the CPU-time ratio is less affected)."
        )
    print(
        f"RESULT forward: qrm/llama = {ratio:.3f} (target <= {TARGET}) {verdict}; "
        f"CPU time {ratio_cpu:.3f}; with gating_positions {ratio_positions:.3f}; "
        f"qrm-only work {overhead / median['llama']:.2%}{compiled}; {MEMBERS} members / 1 = {ratio_members:.3f}"
    )


if __name__ == "__main__":
    main()
