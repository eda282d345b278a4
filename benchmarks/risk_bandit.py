"""Risk bandit: risk-neutral vs risk-aware RLOO (or GRPO) on a two-armed bandit whose reward distributions a
hand-built QRM knows (the mechanism of the paper's §4.3 / Figure 3 in miniature).

Set-up (everything built here, nothing downloaded)
    * Vocabulary of single characters; the prompt is ``"Q:"`` and a completion is one token, ``A`` or
      ``B`` (generation suppresses every other token: a two-armed bandit). Plain-text prompts.
    * Policy: a tiny random `LlamaForCausalLM` whose output rows for ``A`` and ``B`` are made equal, so
      it starts at P(A) = 0.5 exactly.
    * QRM: one attribute, the 19 levels 0.05, ..., 0.95. Its backbone is a one-layer Llama whose
      attention and MLP output projections are zero, so the last hidden state is the normalised
      embedding of the last token; ``A`` and ``B`` embed to orthogonal directions and the quantile heads
      map them to designed quantiles (solved exactly, checked):

        A: 0.05 -> -2.0, 0.10 -> -1.0, 0.15..0.95 -> 1.20..1.40   mean 1.005, a heavy left tail
        B: 0.05..0.95 -> 0.60..0.80                                mean 0.700, tight

      so the expected reward prefers A (+0.31) while the exponential utility (paper eq. 4, lambda = 1)
      prefers B (-0.498 vs -0.776).
    * Training: `RiskAwareRLOOTrainer` (`--algorithm grpo`: `RiskAwareGRPOTrainer`), 8 completions per
      prompt, `beta = 0`, Adam, the same seed for every run; `risk_measure="expectation"` (risk-neutral) vs
      `"exp_utility"` (risk-aware); the stock TRL `RLOOTrainer` (`GRPOTrainer`) with the same QRM as a
      check (it must follow the risk-neutral run exactly).

Expected: the risk-neutral runs move P(A) up, the risk-aware run moves it down, and the left-tail
quantiles it logs (`rewards/<qrm>/q0.05`, ... the curves of Figure 3) end higher (B's instead of A's),
at a small cost in expected reward.

The epistemic bandit (``--bandit epistemic``): a QRM of 4 members that agree on A (all tight around 1.0:
well covered by their data) and disagree on B (member means 3.0, 2.0, 0.0, -0.6: mean 1.1, epistemic std
1.46; each member tight, so no aleatoric difference). B's higher expected reward exists only because the
model has not seen B: risk-neutral training drifts to B, `lcb:1` (expected reward minus one epistemic std:
A 1.0, B -0.36) stays on A.

Run with ``.venv/bin/python benchmarks/risk_bandit.py [--steps N] [--algorithm rloo|grpo] [--bandit
risk|epistemic]`` (about 20 s on an idle 2-core CPU). `tests/test_rloo.py`, `tests/test_grpo.py` and
`tests/test_members.py` run `run_bandit` and assert the directions.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, ProgressCallback
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from qrm_hf import QRMConfig, QRMForSequenceClassification, risk
from qrm_hf.training.grpo import RiskAwareGRPOConfig, RiskAwareGRPOTrainer
from qrm_hf.training.risk_rewards import RiskAwareRewardsArguments, level_name
from qrm_hf.training.rloo import RiskAwareRLOOConfig, RiskAwareRLOOTrainer

VOCAB = ["<pad>", "<bos>", "<eos>", "<unk>", "Q", ":", "A", "B"]
PROMPT = "Q:"
LEVELS = [round(0.05 * k, 2) for k in range(1, 20)]
QUANTILES_A = [-2.0, -1.0, *torch.linspace(1.2, 1.4, 17).tolist()]  # higher mean, heavy left tail
QUANTILES_B = torch.linspace(0.6, 0.8, 19).tolist()  # slightly lower mean, tight
# Epistemic bandit: members' quantiles of each arm, [E][K]: agreement on A, disagreement on B.
TIGHT = torch.linspace(-0.1, 0.1, 19)
MEMBERS_A = [(TIGHT + 1.0).tolist()] * 4
MEMBERS_B = [(TIGHT + mean).tolist() for mean in (3.0, 2.0, 0.0, -0.6)]
QRM_NAME = "bandit-qrm"
LOGGED = [
    "expectation",
    "risk",
    "aleatoric_std",
    "epistemic_std",
    *map(level_name, [0.05, 0.10, 0.15, 0.20, 0.25]),
]
# algorithm -> (risk-aware trainer, its config, stock TRL trainer, its config)
TRAINERS = {
    "rloo": (RiskAwareRLOOTrainer, RiskAwareRLOOConfig, RLOOTrainer, RLOOConfig),
    "grpo": (RiskAwareGRPOTrainer, RiskAwareGRPOConfig, GRPOTrainer, GRPOConfig),
}


def bandit_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character (BPE without merges)."""
    vocab = {token: i for i, token in enumerate(VOCAB)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    return tokenizer


def ids_of(tokenizer) -> dict:
    return dict(
        vocab_size=len(VOCAB),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def bandit_policy(tokenizer, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=16,
        **ids_of(tokenizer),
    )
    policy = LlamaForCausalLM(config)
    a, b = tokenizer.convert_tokens_to_ids(["A", "B"])
    with torch.no_grad():
        policy.lm_head.weight[b] = policy.lm_head.weight[a]  # P(A) = P(B) at the start
    policy.generation_config.eos_token_id = tokenizer.eos_token_id
    return policy


def bandit_qrm(tokenizer) -> QRMForSequenceClassification:
    """The hand-built QRM: reward quantiles QUANTILES_A for "...A", QUANTILES_B for "...B"."""
    return hand_built_qrm(tokenizer, {"A": [QUANTILES_A], "B": [QUANTILES_B]})


def epistemic_bandit_qrm(tokenizer) -> QRMForSequenceClassification:
    """The hand-built QRM of 4 members: MEMBERS_A for "...A" (agreeing), MEMBERS_B for "...B" (disagreeing)."""
    return hand_built_qrm(tokenizer, {"A": MEMBERS_A, "B": MEMBERS_B})


@torch.no_grad()
def hand_built_qrm(tokenizer, member_quantiles: dict[str, list[list[float]]]) -> QRMForSequenceClassification:
    """A QRM of one attribute whose member e gives the quantiles member_quantiles[token][e] to "...A" / "...B"."""
    torch.manual_seed(0)
    num_members = len(member_quantiles["A"])
    backbone = LlamaConfig(
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=16,
        **ids_of(tokenizer),
    )
    config = QRMConfig(
        backbone_config=backbone,
        attribute_names=["quality"],
        quantile_levels=LEVELS,
        gating_hidden_dim=4,
        gating_n_hidden=1,
        gating_fallback="last_token",  # plain-text prompts: no chat format, so no assistant-turn pattern
        num_members=num_members,
    )
    qrm = QRMForSequenceClassification(config).eval()
    for layer in qrm.model.layers:  # the residual stream passes the embedding through unchanged
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    a, b = tokenizer.convert_tokens_to_ids(["A", "B"])
    embeddings = qrm.model.embed_tokens.weight
    embeddings[a] = torch.nn.functional.one_hot(torch.tensor(0), 8).float()
    embeddings[b] = torch.nn.functional.one_hot(torch.tensor(1), 8).float()
    hidden = {}
    for token in ("A", "B"):
        ids = tokenizer(PROMPT + token, return_tensors="pt")
        hidden[token] = qrm.model(**ids).last_hidden_state[0, -1]
    weight = torch.zeros_like(qrm.regression_layer.weight)  # [E*K, H], row e*K + k
    for token, members in member_quantiles.items():
        h = hidden[token]
        weight += torch.outer(torch.tensor(members).flatten(), h / h.dot(h))
    qrm.regression_layer.weight.copy_(weight)
    for token, members in member_quantiles.items():
        out = qrm(**tokenizer(PROMPT + token, return_tensors="pt"))
        means = torch.tensor(members).mean(-1)
        torch.testing.assert_close(out.member_rewards[0], means, rtol=0, atol=1e-5)
        torch.testing.assert_close(out.reward_quantiles[0], torch.tensor(members).mean(0), rtol=0, atol=1e-5)
    return qrm


@torch.no_grad()
def probability_of_a(policy, tokenizer) -> float:
    """P(A) / (P(A) + P(B)) after the prompt (the bandit's choice)."""
    a, b = tokenizer.convert_tokens_to_ids(["A", "B"])
    logits = policy(**tokenizer(PROMPT, return_tensors="pt")).logits[0, -1]
    return torch.softmax(logits[[a, b]], -1)[0].item()


def run_bandit(
    workdir: str | Path,
    steps: int = 30,
    learning_rate: float = 0.02,
    seed: int = 0,
    risk_lambda: float = 1.0,
    measures=("expectation", "exp_utility"),
    stock: bool = False,
    last: int = 5,
    algorithm: str = "rloo",
    bandit: str = "risk",
) -> dict:
    """Train one policy per risk measure (and with the stock TRL trainer if `stock`) from the same start,
    with risk-aware RLOO or GRPO (`algorithm`), on the risk bandit (`bandit_qrm`) or the epistemic one
    (`bandit="epistemic"`, `epistemic_bandit_qrm`).

    Returns, per run: `p_a_before`, `p_a_after`, `history` (the logged metrics of every step) and `first` /
    `final` (the mean of the first / last `last` logged values of expectation, risk and q0.05 ... q0.25).
    """
    workdir = Path(workdir)
    tokenizer = bandit_tokenizer()
    qrm = BANDITS[bandit](tokenizer)
    qrm_dir = workdir / QRM_NAME
    qrm.save_pretrained(qrm_dir)
    tokenizer.save_pretrained(qrm_dir)
    suppress = [i for token, i in tokenizer.get_vocab().items() if token not in ("A", "B")]
    aware_cls, aware_config_cls, stock_cls, stock_config_cls = TRAINERS[algorithm]
    runs = [(measure, aware_cls, aware_config_cls) for measure in measures]
    if stock:
        runs.append(("stock TRL (expectation)", stock_cls, stock_config_cls))
    results = {}
    for name, trainer_cls, config_cls in runs:
        policy = bandit_policy(tokenizer, seed)
        p_before = probability_of_a(policy, tokenizer)
        values = dict(
            output_dir=str(workdir / "out"),
            per_device_train_batch_size=8,
            num_generations=8,
            max_completion_length=1,
            generation_kwargs={"suppress_tokens": suppress},
            learning_rate=learning_rate,
            lr_scheduler_type="constant",
            beta=0.0,
            max_steps=steps,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            bf16=False,
            seed=seed,
        )
        if issubclass(config_cls, RiskAwareRewardsArguments):
            values["risk_measure"] = name
            if (
                "lam" in risk.parse_output(name).values
            ):  # the config refuses a lambda its measure does not use
                values["risk_lambda"] = risk_lambda
        trainer = trainer_cls(
            model=policy,
            reward_funcs=QRMForSequenceClassification.from_pretrained(qrm_dir).eval(),
            args=config_cls(**values),
            train_dataset=Dataset.from_dict({"prompt": [PROMPT] * (8 * steps)}),
            processing_class=bandit_tokenizer(),
            reward_processing_classes=tokenizer,
        )
        trainer.remove_callback(ProgressCallback)  # quiet: the table below says it all
        trainer.train()
        history = [h for h in trainer.state.log_history if f"rewards/{QRM_NAME}/mean" in h]
        summary = {}
        for key in LOGGED:
            full = f"rewards/{QRM_NAME}/{key}"
            if trainer_cls is stock_cls and key in ("expectation", "risk"):
                full = f"rewards/{QRM_NAME}/mean"  # stock TRL: the reward is the expected reward
            if all(full in h for h in history):
                summary[key] = [h[full] for h in history]
        results[name] = dict(
            p_a_before=p_before,
            p_a_after=probability_of_a(trainer.model, tokenizer),
            history=history,
            first={k: sum(v[:last]) / len(v[:last]) for k, v in summary.items()},
            final={k: sum(v[-last:]) / len(v[-last:]) for k, v in summary.items()},
        )
    return results


BANDITS = {"risk": bandit_qrm, "epistemic": epistemic_bandit_qrm}


def run_epistemic_main(args) -> None:
    """The epistemic bandit: risk-neutral vs lcb:1, P(A) and the logged spreads."""
    start = time.perf_counter()
    with TemporaryDirectory() as workdir:
        results = run_bandit(
            workdir, steps=args.steps, learning_rate=args.learning_rate, seed=args.seed,
            measures=("expectation", "lcb:1"), algorithm=args.algorithm, bandit="epistemic",
        )  # fmt: skip
    print(
        f"Epistemic bandit, {args.algorithm.upper()}, {args.steps} steps ({time.perf_counter() - start:.0f} s): "
        "A members agree (mean 1.0), B members disagree (mean 1.1, epistemic std 1.46)"
    )
    print(f"{'measure':<12} {'P(A) before':>11} {'P(A) after':>10} {'E[r] last':>9} {'epist. std last':>15}")
    for name, result in results.items():
        final = result["final"]
        print(
            f"{name:<12} {result['p_a_before']:>11.3f} {result['p_a_after']:>10.3f} "
            f"{final['expectation']:>9.3f} {final['epistemic_std']:>15.3f}"
        )
    neutral, lcb = results["expectation"], results["lcb:1"]
    ok = neutral["p_a_after"] < 0.5 < lcb["p_a_after"]
    print(
        f"RESULT epistemic bandit: {'OK' if ok else 'FAIL'} P(A) 0.50 -> {neutral['p_a_after']:.2f} "
        f"risk-neutral, -> {lcb['p_a_after']:.2f} lcb:1"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--learning-rate", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--risk-lambda", type=float, default=1.0)
    parser.add_argument("--algorithm", choices=sorted(TRAINERS), default="rloo")
    parser.add_argument("--bandit", choices=sorted(BANDITS), default="risk")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: one thread is fastest
    if args.bandit == "epistemic":
        return run_epistemic_main(args)

    def mean(q):
        return sum(q) / len(q)

    def utility(q):
        return -mean([torch.tensor(-args.risk_lambda * x).exp().item() for x in q])

    print(
        f"Arms: A mean {mean(QUANTILES_A):.3f}, q0.05 {QUANTILES_A[0]:.2f}, utility {utility(QUANTILES_A):.3f}; "
        f"B mean {mean(QUANTILES_B):.3f}, q0.05 {QUANTILES_B[0]:.2f}, utility {utility(QUANTILES_B):.3f} "
        f"(lambda {args.risk_lambda})"
    )
    start = time.perf_counter()
    with TemporaryDirectory() as workdir:
        results = run_bandit(
            workdir,
            steps=args.steps,
            learning_rate=args.learning_rate,
            seed=args.seed,
            risk_lambda=args.risk_lambda,
            stock=True,
            algorithm=args.algorithm,
        )
    elapsed = time.perf_counter() - start
    print(
        f"{args.algorithm.upper()}, k = 8, {args.steps} steps, lr {args.learning_rate}, seed {args.seed} ({elapsed:.0f} s in all)"
    )
    header = f"{'trainer':<26} {'P(A) before':>11} {'P(A) after':>10} {'E[r] first':>10} {'E[r] last':>9}"
    header += f" {'q0.05 first':>11} {'q0.05 last':>10} {'q0.25 last':>10}"
    print(header)
    for name, result in results.items():
        first, final = result["first"], result["final"]

        def cell(values, key, width):
            return f"{values[key]:>{width}.3f}" if key in values else f"{'-':>{width}}"

        print(
            f"{name:<26} {result['p_a_before']:>11.3f} {result['p_a_after']:>10.3f} {cell(first, 'expectation', 10)} "
            f"{cell(final, 'expectation', 9)} {cell(first, 'q0.05', 11)} {cell(final, 'q0.05', 10)} "
            f"{cell(final, 'q0.25', 10)}"
        )
    print(
        "(first / last: mean of the first / last 5 logged steps of the batch means that the trainer logs; the stock "
        "trainer logs no quantiles)"
    )
    neutral, aware = results["expectation"], results["exp_utility"]
    ok = (
        neutral["p_a_after"] > 0.5 > aware["p_a_after"]
        and aware["final"]["q0.05"] > neutral["final"]["q0.05"]
    )
    print(
        f"RESULT risk bandit: {'OK' if ok else 'FAIL'} P(A) 0.50 -> {neutral['p_a_after']:.2f} risk-neutral, "
        f"-> {aware['p_a_after']:.2f} exp_utility; final q0.05 {neutral['final']['q0.05']:.2f} vs "
        f"{aware['final']['q0.05']:.2f}"
    )


if __name__ == "__main__":
    main()
