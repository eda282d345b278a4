"""The gating network mixes the attributes by prompt, and a collapsed one is reported (issue 22).

Synthetic pairs mimic a backbone: every prompt embedding is one large shared vector plus a small
prompt-specific part, and the attribute rewards are on the [0, 1] label scale.
"""

import math
import warnings

import numpy as np
import pytest
import torch

from qrm_hf.evaluation import fixed_mix_accuracies, gating_report, gating_warnings, normalised_entropy
from qrm_hf.modeling.modeling_qrm import QRMGatingSizes
from qrm_hf.training.gating import BradleyTerryGating, prompt_groups

HIDDEN = 16


def split_pairs(seed: int = 0, prompts: int = 40, pairs_per_prompt: int = 12):
    """Half of the prompts are judged by attribute 0, the other half by attribute 1.

    On a prompt of group g, the chosen response wins attribute g by a small margin (0.1); the other
    attribute has large margins (0.5) of random sign. Attribute 0 alone, attribute 1 alone and the
    uniform mix are each right on about 3/4 of the pairs; the right attribute per prompt on all.
    """
    generator = torch.Generator().manual_seed(seed)
    shared = 40 * torch.nn.functional.normalize(torch.randn(HIDDEN, generator=generator), dim=0)
    group_direction = torch.randn(HIDDEN, generator=generator)
    embeddings, chosen, rejected, group_of_pair = [], [], [], []
    for prompt in range(prompts):
        group = prompt % 2
        embedding = (
            shared + (1 if group else -1) * group_direction + 0.3 * torch.randn(HIDDEN, generator=generator)
        )
        for _ in range(pairs_per_prompt):
            margin = torch.zeros(4)
            margin[group] = 0.1
            margin[1 - group] = 0.5 * (1 if torch.rand(1, generator=generator) < 0.5 else -1)
            margin[2:] = 0.05 * torch.randn(2, generator=generator)
            base = 0.5 + 0.1 * torch.randn(4, generator=generator)
            chosen.append(base + margin / 2)
            rejected.append(base - margin / 2)
            embeddings.append(embedding)
            group_of_pair.append(group)
    return torch.stack(embeddings), torch.stack(chosen), torch.stack(rejected), np.array(group_of_pair)


def fit(embeddings, chosen, rejected, **settings):
    config = QRMGatingSizes(HIDDEN, 4, gating_hidden_dim=32, gating_n_hidden=2)
    defaults = dict(batch_size=32, epochs=30, learning_rate=1e-3, validation_fraction=0.2, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (
            BradleyTerryGating(config, **{**defaults, **settings}).fit(embeddings, chosen, rejected).network_
        )


def report_of(network, embeddings, chosen, rejected):
    with torch.no_grad():
        weights = network(embeddings).numpy()
    first = sorted({int(g): row for row, g in reversed(list(enumerate(prompt_groups(embeddings))))}.values())
    names = ["a", "b", "c", "d"]
    return gating_report(weights[first], chosen.numpy(), rejected.numpy(), names, weights), weights


ANTI_COLLAPSE = dict(standardize_prompts=True, restore_best_epoch=True)


def test_the_gating_learns_which_attribute_judges_which_prompt():
    embeddings, chosen, rejected, group = split_pairs()
    report, weights = report_of(
        fit(embeddings, chosen, rejected, **ANTI_COLLAPSE), embeddings, chosen, rejected
    )
    shares = weights / weights.sum(1, keepdims=True)
    assert shares[group == 0, 0].mean() > 0.6 and shares[group == 1, 1].mean() > 0.6
    assert report["accuracy"] > max(report["fixed_mixes"].values()) + 0.1
    assert gating_warnings(report) == []


def test_the_paper_recipe_collapses_on_the_same_pairs_and_the_detector_says_so():
    embeddings, chosen, rejected, _ = split_pairs()
    report, _ = report_of(fit(embeddings, chosen, rejected), embeddings, chosen, rejected)
    problems = gating_warnings(report)
    assert any("less accurate" in problem for problem in problems)


def test_no_warning_when_one_attribute_explains_everything():
    embeddings, chosen, rejected, _ = split_pairs()
    chosen, rejected = chosen.clone(), rejected.clone()
    chosen[:, 2], rejected[:, 2] = 0.7, 0.3  # attribute c prefers every chosen response
    report, _ = report_of(fit(embeddings, chosen, rejected, **ANTI_COLLAPSE), embeddings, chosen, rejected)
    assert report["accuracy"] == 1.0
    assert gating_warnings(report) == []
