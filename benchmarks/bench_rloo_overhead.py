"""Reward computation of `RiskAwareRLOOTrainer` vs TRL's `RLOOTrainer` with the same QRM.

What is measured
    Wall-clock time of one call of the trainers' `_calculate_rewards` (what RLOO runs once per generation
    batch: render the chat texts, tokenize with right padding, score with the reward model, gather), CPU,
    float32, default `torch` thread count, for

    * ``stock``: `trl.RLOOTrainer` (reads `logits[:, 0]`; the QRM searches the gating position itself),
    * ``risk-aware``: `RiskAwareRLOOTrainer` with `risk_measure="exp_utility"` (renders and tokenizes the
      prompts to pass `gating_positions`, applies the utility to the quantiles, logs expectation, risk
      reward and 5 quantiles),

    with one and the same QRM: the real SmolLM2-135M-Instruct backbone embedded in qrm-hf (hidden 576,
    30 layers) and its ChatML tokenizer, random quantile heads for 4 attributes x 19 levels and the
    paper's gating network (1024 hidden x 3 layers). One batch: 4 chat prompts x k = 2 completions
    (RLOO's k in the paper), each conversation about 130 tokens.

    The two run interleaved (stock, risk-aware, then the reverse order in the next round, ...) so that
    changes in machine load affect both alike; the table reports the fastest, median and slowest call of
    each. The verdict is the median over rounds of risk-aware time / stock time within the same round
    (back-to-back calls share the machine's load: on a busy 2-core machine one call can take 5x
    another, and a ratio of overall medians or minima then partly measures the load). The work only the
    risk-aware trainer does (prompt rendering and tokenization, gating positions, risk measure, logged
    quantiles) is also timed on its own on the same batch, since it is far below the run-to-run noise.
    About a minute on an idle 2-core machine.

Target
    median over rounds of (risk-aware time / stock time) <= 1.05.

Run alone with ``.venv/bin/python benchmarks/bench_rloo_overhead.py [--rounds N]`` or with all
benchmarks through ``make bench``. The last line is ``RESULT ...`` for `run_all.py`.
"""

import argparse
import random
import statistics
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from timing import seconds
from transformers import AutoConfig, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging
from trl import RLOOConfig, RLOOTrainer
from trl.data_utils import apply_chat_template

from qrm_hf import QRMConfig, QRMForSequenceClassification
from qrm_hf.backbones import smollm2_backbone_dir
from qrm_hf.chat import derive_prompt_end_pattern
from qrm_hf.training.rloo import RiskAwareRLOOConfig, RiskAwareRLOOTrainer

TARGET = 1.05
WORDS = (
    "the a model reward answer question helpful safe because which water energy light quickly explain "
    "simple detail example people often think about when how why result first second finally also"
).split()


def build_qrm(backbone: Path, tokenizer) -> QRMForSequenceClassification:
    torch.manual_seed(0)
    config = QRMConfig(
        backbone_config=AutoConfig.from_pretrained(backbone),
        attribute_names=["helpfulness", "correctness", "coherence", "verbosity"],
        quantile_levels=[round(0.05 * k, 2) for k in range(1, 20)],
        gating_hidden_dim=1024,
        gating_n_hidden=3,
        prompt_end_pattern=derive_prompt_end_pattern(tokenizer),
    )
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the heads and gating are not in the backbone checkpoint: set at random
    try:
        qrm = QRMForSequenceClassification.from_pretrained(backbone, config=config).eval()
    finally:
        logging.set_verbosity(verbosity)
    with torch.no_grad():
        qrm.regression_layer.weight.normal_(0, 0.05)
    return qrm


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def make_batch(num_prompts: int, k: int, seed: int = 0):
    """Chat prompts (system + user) repeated k times, and one completion each."""
    rng = random.Random(seed)
    prompts, completions = [], []
    for _ in range(num_prompts):
        prompt = [
            {"role": "system", "content": sentence(rng, 20)},
            {"role": "user", "content": " ".join(sentence(rng, 12) for _ in range(3))},
        ]
        for _ in range(k):
            prompts.append(prompt)
            completions.append(
                [{"role": "assistant", "content": " ".join(sentence(rng, 12) for _ in range(4))}]
            )
    return prompts, completions


def make_trainers(workdir: Path, tokenizer, qrm):
    """Both trainers, a tiny random policy (it plays no part in the reward computation), the same QRM."""
    policy_dir = workdir / "policy"
    torch.manual_seed(0)
    policy = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    policy.save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    common = dict(
        output_dir=str(workdir / "out"),
        per_device_train_batch_size=8,
        num_generations=2,
        beta=0.0,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
    )
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": "Hi"}]] * 8})
    stock = RLOOTrainer(
        model=str(policy_dir),
        reward_funcs=qrm,
        args=RLOOConfig(**common),
        train_dataset=dataset,
        reward_processing_classes=tokenizer,
    )
    aware = RiskAwareRLOOTrainer(
        model=str(policy_dir),
        reward_funcs=qrm,
        args=RiskAwareRLOOConfig(**common, risk_measure="exp_utility"),
        train_dataset=dataset,
        reward_processing_classes=tokenizer,
    )
    return stock, aware


def risk_aware_only_work(trainer, tokenizer, prompts, completions, qrm) -> float:
    """Median time of what only the risk-aware trainer does, on the real batch and the real QRM output."""
    texts = [
        apply_chat_template({"messages": p + c}, tokenizer)["text"]
        for p, c in zip(prompts, completions, strict=True)
    ]
    inputs = tokenizer(
        text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False
    )
    spec = trainer._qrm_specs[0]
    measure = trainer.args.parse_risk_measure()
    with torch.inference_mode():
        output = qrm(**inputs)

    def work():  # the QRM's two hooks around the (already computed) output, then the logs
        _, kwargs = trainer._pass_gating_positions(spec, prompts, qrm, (), dict(inputs))
        scored = {}
        trainer._take_risk_reward(spec, measure, scored, qrm, (), kwargs, output)
        trainer._log_distribution(spec, scored[spec.index])

    for _ in range(5):
        work()
    trainer._metrics["train"].clear()
    trainer._metrics["eval"].clear()
    return statistics.median(seconds(work) for _ in range(50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=7, help="interleaved rounds (each runs both trainers once)"
    )
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--k", type=int, default=2)
    args = parser.parse_args()

    backbone = smollm2_backbone_dir()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    qrm = build_qrm(backbone, tokenizer)
    prompts, completions = make_batch(args.prompts, args.k)
    inputs = [{"prompt": p} for p in prompts]
    completion_ids = [tokenizer(c[0]["content"], add_special_tokens=False)["input_ids"] for c in completions]
    with tempfile.TemporaryDirectory() as workdir:
        stock, aware = make_trainers(Path(workdir), tokenizer, qrm)
        runs = {
            "stock": lambda: stock._calculate_rewards(inputs, prompts, completions, completion_ids),
            "risk-aware": lambda: aware._calculate_rewards(inputs, prompts, completions, completion_ids),
        }
        times = {name: [] for name in runs}
        rewards = {name: run() for name, run in runs.items()}  # warm-up
        for round_index in range(args.rounds):
            order = list(runs) if round_index % 2 == 0 else list(reversed(runs))
            for name in order:
                times[name].append(seconds(runs[name]))
        metrics = aware._metrics["train" if aware.model.training else "eval"]
        logged_expectation = metrics[f"rewards/{aware.reward_func_names[0]}/expectation"][-1]
        extra = risk_aware_only_work(aware, tokenizer, prompts, completions, qrm)

    real_tokens = sum(
        len(
            tokenizer(apply_chat_template({"messages": p + c}, tokenizer)["text"], add_special_tokens=False)[
                "input_ids"
            ]
        )
        for p, c in zip(prompts, completions, strict=True)
    )
    median = {name: statistics.median(values) for name, values in times.items()}
    fastest = {name: min(values) for name, values in times.items()}
    paired = statistics.median(a / s for a, s in zip(times["risk-aware"], times["stock"], strict=True))
    ratio = paired
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(
        f"RLOO reward computation (_calculate_rewards), CPU float32, {torch.get_num_threads()} threads, "
        f"{len(prompts)} completions ({args.prompts} chat prompts x k = {args.k}, {real_tokens} real tokens), "
        f"QRM on SmolLM2-135M-Instruct (4 attributes x 19 levels, gating 1024 x 3), {args.rounds} interleaved rounds"
    )
    print(
        f"{'trainer':<12} {'min s':>7} {'median s':>9} {'max s':>7} {'min vs stock':>13} {'median vs stock':>16}"
    )
    for name, values in times.items():
        print(
            f"{name:<12} {fastest[name]:>7.3f} {median[name]:>9.3f} {max(values):>7.3f} "
            f"{fastest[name] / fastest['stock']:>13.3f} {median[name] / median['stock']:>16.3f}"
        )
    print(
        f"risk-aware-only work (prompt rendering + tokenization, gating positions, utility, logged quantiles): "
        f"{extra * 1e3:.2f} ms = {extra / fastest['stock']:.2%} of the fastest stock call"
    )
    stock_expectation = rewards["stock"][:, 0].mean().item()  # the same QRM call: the same expected rewards
    print(
        f"mean expected reward: stock {stock_expectation:.6f}, risk-aware (logged) {logged_expectation:.6f}"
    )
    assert abs(stock_expectation - logged_expectation) < 1e-5
    print(
        f"risk-aware / stock = {ratio:.3f} (median over rounds of the ratio within a round), target <= {TARGET}: "
        f"{verdict}"
    )
    spread = max(max(values) / min(values) for values in times.values())
    if spread > 1.3:
        print(
            f"warning: times vary up to {spread:.1f}x between rounds, the machine is busy: rerun with more "
            "--rounds; the risk-aware-only work is the precise measure of what the trainer adds"
        )
    print(
        f"RESULT rloo overhead: risk-aware / stock reward computation = {ratio:.3f} (same-round ratios; medians "
        f"{median['risk-aware'] / median['stock']:.3f}, fastest {fastest['risk-aware'] / fastest['stock']:.3f}), "
        f"target <= {TARGET}: {verdict}; risk-aware-only work {extra * 1e3:.1f} ms ({extra / fastest['stock']:.2%})"
    )


if __name__ == "__main__":
    main()
