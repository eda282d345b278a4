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
    "cert_equiv": "certainty_equivalent",
    "cvar": "cvar",
}


def right_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, T], attention_mask [B, T]) of token sequences padded on the right to the longest."""
    length = max(map(len, sequences))
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        attention_mask[row, : len(sequence)] = 1
    return input_ids, attention_mask


def max_scoring_length(model) -> int | None:
    """The longest conversation (in tokens) the model's backbone has positions for, None if unknown."""
    from .chat import backbone_positions

    return backbone_positions(getattr(model, "config", None))


class ConversationsTooLong(ValueError):
    """Conversations longer than the model reads (refused, never truncated). `positions` index the list
    of conversations scored; a caller that scored conversations of rows re-raises :meth:`located`, which
    names each by its row (e.g. ``"FILE line N"``)."""

    def __init__(self, positions, lengths, max_length: int, locations=None):
        self.positions, self.lengths, self.max_length = list(positions), list(lengths), max_length
        names = list(locations) if locations is not None else [f"conversation {i}" for i in self.positions]
        listed = ", ".join(
            f"{name} ({length} tokens)" for name, length in list(zip(names, self.lengths, strict=True))[:5]
        )
        super().__init__(
            f"{len(self.positions)} conversation(s) are longer than max_length={max_length} tokens, the most "
            f"the model reads: {listed}{', ...' if len(self.positions) > 5 else ''}. Shorten them "
            "(conversations are never truncated: that would cut the response) or leave them out."
        )

    def located(self, locate) -> ConversationsTooLong:
        """The same error, each conversation named by ``locate(position)``."""
        return ConversationsTooLong(
            self.positions, self.lengths, self.max_length, [locate(i) for i in self.positions]
        )


def split_scorable(model, sequences, max_length: int | None = None, too_long: str = "error", row_names=None):
    """(kept, too_long) row positions of token sequences under `max_length` (default: the backbone's
    positions). Conversations are never truncated, which would cut the response the reward is read at:
    with ``too_long="error"`` the over-long ones are refused by row, with ``"skip"`` they are returned to
    be left out and counted (`ConversationsTooLong` names them by `row_names`, else by position). A `max_length` above the
    backbone's positions is refused (`qrm_hf.chat.check_max_length`). Raises when no conversation is left."""
    from .chat import check_max_length, check_token_ids, split_by_length

    if too_long not in ("error", "skip"):
        raise ValueError(f"too_long must be 'error' or 'skip', got {too_long!r}.")
    check_max_length(max_length, getattr(model, "config", None))
    check_token_ids(sequences, getattr(model, "config", None))
    max_length = max_length if max_length is not None else max_scoring_length(model)
    kept, skipped = split_by_length([len(sequence) for sequence in sequences], max_length)
    if skipped and too_long == "error":
        names = [row_names[i] for i in skipped] if row_names is not None else None
        raise ConversationsTooLong(skipped, [len(sequences[i]) for i in skipped], max_length, names)
    if not kept:
        raise ValueError(
            f"All {len(sequences)} conversations are longer than max_length={max_length} tokens."
        )
    return kept, skipped


class NonFiniteOutputError(ValueError):
    """The model gave NaN or infinite values for some conversations: never passed on as a score.

    `positions` are those conversations' positions in the input."""

    def __init__(self, message: str, positions: list[int]):
        super().__init__(message)
        self.positions = positions


def check_finite_rows(
    values: Sequence[torch.Tensor],
    row_names: Sequence[str] | None = None,
    what: str = "output",
    ignore: torch.Tensor | None = None,
) -> None:
    """Raise `NonFiniteOutputError` naming the rows (first dimension) where any of `values` is NaN or
    infinite, except the rows `ignore` [N] (bool) marks (not run); `row_names` name the rows (e.g.
    "line 3" of the input file; default "conversation i", 0-based)."""
    bad = torch.zeros(len(values[0]), dtype=torch.bool)
    for value in values:
        bad |= ~torch.isfinite(value.detach().cpu().reshape(len(value), -1)).all(-1)
    if ignore is not None:
        bad &= ~ignore
    positions = torch.nonzero(bad).flatten().tolist()
    if positions:
        names = [row_names[i] if row_names is not None else f"conversation {i}" for i in positions]
        raise NonFiniteOutputError(
            f"The model's {what} is NaN or infinite for {len(positions)} conversation(s): "
            f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}. No score is given for them (the model "
            "overflows on them, e.g. in float16, or its weights are broken).",
            positions,
        )


def names_of_distinct(index: Sequence[int], row_names: Sequence[str], count: int) -> list[str]:
    """Names of `count` distinct conversations from the names of the rows that hold them (`index`: each
    row's distinct conversation, as from `qrm_hf.evaluation.unique_conversations`)."""
    grouped: list[list[str]] = [[] for _ in range(count)]
    for row, distinct in enumerate(index):
        if row_names[row] not in grouped[distinct]:
            grouped[distinct].append(row_names[row])
    return [
        " and ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        for names in grouped
    ]


def scoring_pad_token_id(model, tokenizer) -> int:
    """The pad token id of batched scoring: the model's, else the tokenizer's."""
    pad_token_id = (
        model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.pad_token_id
    )
    if pad_token_id is None:
        raise ValueError("Neither the model config nor the tokenizer defines a pad token id.")
    return pad_token_id


class BackboneEncoder:
    """Turns token-id sequences into (response, prompt) embeddings with a frozen decoder.

    Sequences are sorted by length and padded on the right in batches of at most `batch_size`
    conversations and at most `max_tokens_per_batch` tokens (rows x longest, padding included; a
    longer conversation is encoded alone), so that little compute is spent on padding; identical
    sequences are encoded once. With `remember=True` the embeddings are also kept across calls (for
    data sets that share conversations, e.g. preference pairs built from rated responses; memory
    grows with the data).

    `max_tokens_per_batch=None` means `CPU_TOKENS_PER_BATCH` when the backbone is on the CPU and no
    limit on an accelerator. On a CPU, forward passes of 500-1000 tokens are the fastest per token
    and far larger ones are slower (activations leave the caches): SmolLM2-135M on 2 cores, speed
    per conversation vs one at a time, 4 x 240 tokens 1.25x but 16 x 240 1.06x, 2 x 500 1.09x but
    16 x 500 0.80x (`benchmarks/bench_extraction.py --scan`).
    """

    CPU_TOKENS_PER_BATCH = 1024

    def __init__(
        self,
        backbone,
        prompt_end_pattern: Sequence[int],
        pad_token_id: int,
        *,
        batch_size: int,  # no default of its own: `qrm extract`'s is ExtractionSettings.batch_size
        remember: bool = False,
        max_tokens_per_batch: int | None = None,
    ):
        self.backbone = backbone.eval()
        self.prompt_end_pattern = list(prompt_end_pattern)
        self.pad_token_id = pad_token_id
        self.batch_size = batch_size
        self.max_tokens_per_batch = max_tokens_per_batch
        self._remembered: dict[tuple, tuple[torch.Tensor, torch.Tensor]] | None = {} if remember else None

    @property
    def remembers(self) -> bool:
        return self._remembered is not None

    @torch.inference_mode()
    def encode(self, sequences: Sequence[Sequence[int]], desc: str = "extracting features"):
        """Returns (response_embeddings [N, H], prompt_embeddings [N, H]) in float32, in input order."""
        from .modeling.modeling_qrm import find_last_pattern  # (imports transformers: only when encoding)

        results = self._remembered if self._remembered is not None else {}
        order = sorted(dict.fromkeys(tuple(seq) for seq in sequences if tuple(seq) not in results), key=len)
        device = next(self.backbone.parameters()).device
        progress = tqdm(total=len(order), desc=desc, unit="conv")
        for batch in self._batches(order, device):
            input_ids, attention_mask = right_pad(batch, self.pad_token_id)  # batches are sorted by length
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            hidden = self.backbone(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).last_hidden_state
            rows = torch.arange(len(batch), device=device)
            response_positions = attention_mask.sum(-1) - 1
            prompt_positions = find_last_pattern(input_ids, attention_mask.bool(), self.prompt_end_pattern)
            missing = (prompt_positions < 0).nonzero().flatten().tolist()
            if missing:
                raise ValueError(
                    f"prompt_end_pattern {self.prompt_end_pattern} not found in {len(missing)} conversation(s), "
                    f"e.g. token ids {list(batch[missing[0]])[:40]}...; format conversations with the chat template."
                )
            response = hidden[rows, response_positions].float().cpu()
            prompt = hidden[rows, prompt_positions].float().cpu()
            for row, seq in enumerate(batch):
                results[seq] = (response[row], prompt[row])
            progress.update(len(batch))
        progress.close()
        response = torch.stack([results[tuple(seq)][0] for seq in sequences])
        prompt = torch.stack([results[tuple(seq)][1] for seq in sequences])
        return response, prompt

    def remember_known(
        self, sequences: Sequence[Sequence[int]], response: torch.Tensor, prompt: torch.Tensor
    ):
        """Add embeddings read back from disk (a finished shard) to the remembered ones, as if encoded now.

        A resumed extraction calls this for the shards it keeps, so that later shards reuse exactly the
        values an uninterrupted run would have reused (the first encoding of a sequence wins) and are
        encoded in the same batches: resuming changes no bit. Without `remember` it does nothing.
        """
        if self._remembered is None:
            return
        for row, seq in enumerate(sequences):
            self._remembered.setdefault(tuple(seq), (response[row], prompt[row]))

    def _batches(self, order: list[tuple], device: torch.device):
        """Consecutive runs of the length-sorted `order` within the conversation and token limits."""
        budget = self.max_tokens_per_batch
        if budget is None:
            budget = self.CPU_TOKENS_PER_BATCH if device.type == "cpu" else float("inf")
        batch = []
        for seq in order:  # ascending lengths: seq is the longest of batch + [seq]
            if batch and (len(batch) == self.batch_size or (len(batch) + 1) * len(seq) > budget):
                yield batch
                batch = []
            batch.append(seq)
        if batch:
            yield batch


def conversation_embeddings(
    model,
    tokenizer,
    conversations: Sequence[list[dict]],
    batch_size: int = 8,
    max_length: int | None = None,
    desc: str = "embeddings",
    row_names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(response embeddings [N, H], prompt embeddings [N, H]), float32 tensors, of conversations under the
    model's own backbone, through the extraction encoder (`BackboneEncoder`, also behind `qrm extract`):
    what the quantile heads and the gating network read, so `score_embeddings(model, response, prompt)`
    is the model's output. Over-long conversations (`split_scorable`) and NaN or infinite embeddings
    (`NonFiniteOutputError`) are refused, naming the rows by `row_names`."""
    sequences = [encode_conversation(tokenizer, messages=messages) for messages in conversations]
    split_scorable(model, sequences, max_length, row_names=row_names)
    pad_token_id = scoring_pad_token_id(model, tokenizer)
    encoder = BackboneEncoder(
        model.model, model.config.prompt_end_pattern, pad_token_id, batch_size=batch_size
    )
    response, prompt = encoder.encode(sequences, desc=desc)
    check_finite_rows([response, prompt], row_names, "embedding")
    return response, prompt


@torch.inference_mode()
def score_embeddings(
    model, response: torch.Tensor, prompt: torch.Tensor, row_names: Sequence[str] | None = None
):
    """`model.score_embeddings(response, prompt)` (embeddings of `conversation_embeddings`), with NaN or
    infinite outputs refused by row (`NonFiniteOutputError`) as `score_conversations` refuses them."""
    output = model.score_embeddings(response, prompt)
    check_finite_rows([output.logits, output.reward_quantiles, output.attribute_quantiles], row_names)
    return output


@torch.inference_mode()
def score_conversations(
    model,
    tokenizer,
    conversations: Sequence[list[dict]],
    batch_size: int = 8,
    progress: bool = True,
    max_length: int | None = None,
    too_long: str = "error",
    row_names: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Run `model` on conversations (message lists ending with the assistant's response, e.g. from
    `qrm_hf.chat.conversation_messages(prompt, response)`), formatted with the tokenizer's chat template.

    Conversations are batched by length (right padding) and results returned in input order, as a
    dict of float32 CPU tensors: `logits` [N, 1], `reward_quantiles` [N, K], `attribute_quantiles`
    [N, M, K], `rewards` [N, M], `gating_output` [N, M], for a model with members (`num_members` > 1)
    `reward_epistemic_std` [N] and `attribute_epistemic_std` [N, M], and `too_long` [N] (bool).

    Conversations longer than `max_length` tokens (default: the backbone's `max_position_embeddings`) are
    never truncated: with ``too_long="error"`` a ValueError names them before any forward pass; with
    ``too_long="skip"`` they are not run, their rows are NaN and `too_long` marks them (as `qrm extract`
    skips and counts them).

    A NaN or infinite output is never returned as a score: `NonFiniteOutputError` (a ValueError) names
    the conversations by `row_names` (e.g. "line 3" of their file; default "conversation i", 0-based).
    Every command that scores conversations goes through here or `score_embeddings`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    sequences = [encode_conversation(tokenizer, messages=messages) for messages in conversations]
    kept, skipped = split_scorable(model, sequences, max_length, too_long, row_names)
    pad_token_id = scoring_pad_token_id(model, tokenizer)
    order = sorted(kept, key=lambda i: len(sequences[i]))
    device = next(model.parameters()).device
    fields = ["logits", "reward_quantiles", "attribute_quantiles", "rewards", "gating_output"]
    if getattr(model.config, "num_members", 1) > 1:
        fields += ["reward_epistemic_std", "attribute_epistemic_std"]
    results: dict[str, torch.Tensor] = {}
    for start in tqdm(range(0, len(order), batch_size), desc="scoring", unit="batch", disable=not progress):
        rows = order[start : start + batch_size]
        input_ids, attention_mask = right_pad([sequences[i] for i in rows], pad_token_id)
        output = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
        for name in fields:
            value = output[name].float().cpu()
            if name not in results:
                results[name] = torch.full((len(sequences), *value.shape[1:]), float("nan"))
            results[name][torch.tensor(rows)] = value
    mask = torch.zeros(len(sequences), dtype=torch.bool)
    mask[skipped] = True
    check_finite_rows([results[name] for name in fields], row_names, ignore=mask)
    return {**results, "too_long": mask}


def risk_summary(
    reward_quantiles: torch.Tensor,
    levels: Sequence[float],
    lam: float | None = None,
    alpha: float | None = None,
) -> list[dict[str, float]]:
    """Per conversation: expected reward, q0.05, median, q0.95, certainty equivalent (lam), CVaR (alpha);
    `lam` and `alpha` default to the risk registry's (`qrm_hf.risk.RISK_PARAMETERS`).

    The certainty equivalent -1/lam log mean_k exp(-lam q_k) ranks exactly as the paper's exponential utility
    (eq. 4) but is in reward units and computed with log-sum-exp: finite for any lam > 0, where the utility
    itself overflows to -inf once lam * reward < -88 (float32).
    """
    given = {name: value for name, value in (("lam", lam), ("alpha", alpha)) if value is not None}
    columns = {
        column: risk.resolve(spec, levels, **given)(reward_quantiles)
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
    from .io import save_figure

    return save_figure(fig, path)
