"""Score conversations with a QRM and summarise the reward distributions (used by `qrm score`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import risk
from .chat import encode_conversation

# Column of `risk_summary` -> risk measure spec (`qrm_hf.risk.parse`); lam and alpha come from its arguments.
SUMMARY_MEASURES = {
    "expected": "expectation",
    "q0.05": "quantile:0.05",
    "median": "quantile:0.5",
    "q0.95": "quantile:0.95",
    "exp_utility": "exp_utility",
    "cvar": "cvar",
}


@torch.inference_mode()
def score_conversations(
    model, tokenizer, conversations: Sequence[list[dict]], batch_size: int = 8, progress: bool = True
) -> dict[str, torch.Tensor]:
    """Run `model` on conversations (message lists ending with the assistant's response, e.g. from
    `qrm_hf.chat.conversation_messages(prompt, response)`), formatted with the tokenizer's chat template.

    Conversations are batched by length (right padding) and results returned in input order, as a
    dict of float32 CPU tensors: `logits` [N, 1], `reward_quantiles` [N, K], `attribute_quantiles`
    [N, M, K], `rewards` [N, M], `gating_output` [N, M].
    """
    sequences = [encode_conversation(tokenizer, messages=messages) for messages in conversations]
    pad_token_id = (
        model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.pad_token_id
    )
    if pad_token_id is None:
        raise ValueError("Neither the model config nor the tokenizer defines a pad token id.")
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    device = next(model.parameters()).device
    fields = ("logits", "reward_quantiles", "attribute_quantiles", "rewards", "gating_output")
    results: dict[str, list[torch.Tensor]] = {name: [] for name in fields}
    for start in tqdm(range(0, len(order), batch_size), desc="scoring", unit="batch", disable=not progress):
        batch = [sequences[i] for i in order[start : start + batch_size]]
        length = max(map(len, batch))
        input_ids = torch.full((len(batch), length), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(len(batch), length, dtype=torch.long)
        for row, sequence in enumerate(batch):
            input_ids[row, : len(sequence)] = torch.tensor(sequence)
            attention_mask[row, : len(sequence)] = 1
        output = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
        for name in fields:
            results[name].append(output[name].float().cpu())
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return {name: torch.cat(values)[inverse] for name, values in results.items()}


def risk_summary(
    reward_quantiles: torch.Tensor, levels: Sequence[float], lam: float = 1.0, alpha: float = 0.1
) -> list[dict[str, float]]:
    """Per conversation: expected reward, q0.05, median, q0.95, exponential utility (lam), CVaR (alpha)."""
    columns = {
        column: risk.resolve(spec, levels, lam=lam, alpha=alpha)(reward_quantiles)
        for column, spec in SUMMARY_MEASURES.items()
    }
    return [
        {name: float(values[i]) for name, values in columns.items()} for i in range(len(reward_quantiles))
    ]


def format_table(rows: Sequence[dict], names: Sequence[str], name_header: str = "conversation") -> str:
    """A plain-text table: one line per named row, one column per numeric field."""
    columns = list(rows[0])
    width = max(len(name_header), *map(len, names))
    lines = [f"{name_header:<{width}}  " + "  ".join(f"{c:>11}" for c in columns)]
    for name, row in zip(names, rows, strict=True):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{row[c]:>11.4f}" for c in columns))
    return "\n".join(lines)


def plot_reward_distributions(
    names: Sequence[str], reward_quantiles: torch.Tensor, levels: Sequence[float], path: str | Path
) -> Path:
    """Draw each conversation's reward distribution: the quantile function (as a CDF) and a smoothed density."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels_t = torch.as_tensor(levels, dtype=torch.float64)
    fig, (cdf_axis, density_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for name, quantiles in zip(names, reward_quantiles.double(), strict=True):
        quantiles = quantiles.sort().values
        (line,) = cdf_axis.plot(quantiles, levels_t, marker="o", markersize=3, label=name)
        # Each quantile estimate is an atom of mass 1/K; smooth the atoms with a Gaussian kernel
        # (Silverman's bandwidth) to show the shape of the distribution.
        bandwidth = max(1.06 * quantiles.std().item() * len(quantiles) ** -0.2, 1e-3)
        grid = torch.linspace(
            quantiles.min() - 3 * bandwidth, quantiles.max() + 3 * bandwidth, 200, dtype=torch.float64
        )
        density = torch.exp(-0.5 * ((grid[:, None] - quantiles[None]) / bandwidth) ** 2).mean(1)
        density_axis.plot(
            grid, density / (bandwidth * (2 * torch.pi) ** 0.5), color=line.get_color(), label=name
        )
    cdf_axis.set(xlabel="reward", ylabel="quantile level (CDF)", title="Predicted reward quantiles")
    density_axis.set(xlabel="reward", ylabel="density", title="Reward density (smoothed quantile atoms)")
    cdf_axis.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
