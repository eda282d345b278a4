"""The gating network mixes the attributes by prompt, and a collapsed one is reported.

Synthetic pairs mimic a backbone: every prompt embedding is one large shared vector plus a small
prompt-specific part, and the attribute rewards are on the [0, 1] label scale.
"""

import copy
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
    """Half of the prompts (group 0) are judged by attribute a, the other half (group 1) by attribute b.

    a is right on every group-0 pair by a small margin (0.1) and, on group-1 pairs, right 60 % of the time by
    a large margin (0.6): its mean margin is the largest everywhere, its accuracy is not. b is right on every
    group-1 pair (margin 0.1) and random on group-0 pairs; c and d are noise. Every fixed mix is right on at
    most about 80 % of the pairs; the right attribute per prompt on all of them.
    """
    generator = torch.Generator().manual_seed(seed)
    shared = 40 * torch.nn.functional.normalize(torch.randn(HIDDEN, generator=generator), dim=0)
    group_direction = torch.randn(HIDDEN, generator=generator)
    embeddings, margins, group_of_pair = [], [], []
    for prompt in range(prompts):
        group = prompt % 2
        embedding = (
            shared + (2 * group - 1) * group_direction + 0.3 * torch.randn(HIDDEN, generator=generator)
        )
        for _ in range(pairs_per_prompt):
            margin = 0.05 * torch.randn(4, generator=generator)
            if group == 0:
                margin[0] = 0.1
            else:
                margin[0] = 0.6 if torch.rand(1, generator=generator) < 0.6 else -0.6
                margin[1] = 0.1
            margins.append(margin)
            embeddings.append(embedding)
            group_of_pair.append(group)
    margins = torch.stack(margins)
    base = 0.5 + 0.1 * torch.randn(margins.shape, generator=generator)
    return torch.stack(embeddings), base + margins / 2, base - margins / 2, np.array(group_of_pair)


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


ANTI_COLLAPSE = dict(standardize_prompts=True, restore_best_epoch=True, fit_loss_scale=True)


def test_the_gating_learns_which_attribute_judges_which_prompt():
    embeddings, chosen, rejected, group = split_pairs()
    report, weights = report_of(
        fit(embeddings, chosen, rejected, **ANTI_COLLAPSE), embeddings, chosen, rejected
    )
    shares = weights / weights.sum(1, keepdims=True)
    assert shares[group == 0, 0].mean() > 0.8 and shares[group == 1, 1].mean() > 0.7
    assert report["accuracy"] > max(report["fixed_mixes"].values()) + 0.1
    assert 0.1 < report["mean_normalised_entropy"] < 0.9
    assert gating_warnings(report) == []


def test_the_paper_recipe_collapses_on_the_largest_margins():
    """Without the anti-collapse settings the same pairs give attribute a (largest mean margin) the weight
    on every prompt: no better than a alone."""
    embeddings, chosen, rejected, group = split_pairs()
    report, weights = report_of(fit(embeddings, chosen, rejected), embeddings, chosen, rejected)
    shares = weights / weights.sum(1, keepdims=True)
    assert shares[:, 0].mean() > 0.9 and shares[group == 1, 1].mean() < 0.1
    assert report["accuracy"] <= report["fixed_mixes"]["a only"] + 0.01
    assert report["mean_normalised_entropy"] < 0.15


def test_the_detector_flags_a_degenerate_gating_that_loses_to_a_fixed_mix():
    _, chosen, rejected, _ = split_pairs()
    one_hot_b = np.tile([0.0, 1.0, 0.0, 0.0], (len(chosen), 1))  # b everywhere: right on half the prompts
    report = gating_report(one_hot_b[:40], chosen.numpy(), rejected.numpy(), list("abcd"), one_hot_b)
    assert report["degenerate_prompt_share"] == 1.0 and report["mean_normalised_entropy"] == 0.0
    degenerate, less_accurate = gating_warnings(report)
    assert "degenerate" in degenerate and "100%" in degenerate
    assert f"{report['accuracy']:.3f}" in less_accurate and "a only" in less_accurate


def test_no_warning_when_one_attribute_explains_everything():
    """Attribute c prefers every chosen response: a gating on c alone (the paper's recipe gets there) is
    right, and so is one that mixes (the anti-collapse settings): neither is reported."""
    embeddings, chosen, rejected, _ = split_pairs()
    chosen, rejected = chosen.clone(), rejected.clone()
    chosen[:, 2], rejected[:, 2] = 0.7, 0.3
    for settings in ({}, ANTI_COLLAPSE):
        report, _ = report_of(fit(embeddings, chosen, rejected, **settings), embeddings, chosen, rejected)
        assert report["accuracy"] == 1.0
        assert gating_warnings(report) == []
    one_hot_c = np.tile([0.0, 0.0, 1.0, 0.0], (len(chosen), 1))
    report = gating_report(one_hot_c[:40], chosen.numpy(), rejected.numpy(), list("abcd"), one_hot_c)
    assert report["degenerate_prompt_share"] == 1.0 and gating_warnings(report) == []


def test_the_fixed_mixes_and_the_entropy_by_hand():
    chosen = np.array([[1.0, 0.0], [0.2, 0.9], [0.5, 0.5]])
    rejected = np.array([[0.0, 1.0], [0.4, 0.1], [0.5, 0.2]])
    # a only: right, wrong, tie -> 1.5 / 3; b only: wrong, right, right; uniform: tie (.5 = .5), right, right
    assert fixed_mix_accuracies(chosen, rejected, ["a", "b"]) == {
        "a only": 0.5,
        "b only": 2 / 3,
        "uniform": 2.5 / 3,
    }
    weights = np.array([[2.0, 0.0], [1.0, 1.0], [0.25, 0.75]])  # rows need not sum to one (logit_scale)
    expected = [0.0, 1.0, -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)]
    np.testing.assert_allclose(normalised_entropy(weights), expected)
    with pytest.raises(ValueError, match="non-negative"):
        normalised_entropy(np.array([[0.5, -0.1]]))


def test_the_loss_scale_minimises_the_bradley_terry_loss():
    from qrm_hf.training.gating import bradley_terry_scale

    margin = torch.tensor([0.3, 0.2, -0.1, 0.25, -0.05, 0.1])
    beta = bradley_terry_scale(margin)

    def loss(scale):
        return float(-torch.nn.functional.logsigmoid(scale * margin.double()).mean())

    grid = np.linspace(1.0, 60.0, 5901)
    assert beta == pytest.approx(grid[np.argmin([loss(b) for b in grid])], abs=0.02)
    assert bradley_terry_scale(torch.tensor([0.1, 0.2])) == 1000.0  # separable: the upper bound
    assert bradley_terry_scale(torch.tensor([-0.1, 0.05])) == 1.0  # no signal: the paper's scale


def test_prompt_groups_tell_prompts_apart_up_to_rounding():
    x = torch.randn(3, HIDDEN) * 40
    rows = torch.stack([x[0], x[1], x[0] * (1 + 1e-6), x[2], x[1] + 1e-5])
    assert prompt_groups(rows).tolist() == [0, 1, 0, 2, 1]


def test_restore_best_epoch_holds_out_whole_prompts_and_keeps_the_best_epoch():
    embeddings, chosen, rejected, _ = split_pairs()
    gating = BradleyTerryGating(
        QRMGatingSizes(HIDDEN, 4, gating_hidden_dim=32, gating_n_hidden=2),
        batch_size=32, epochs=8, learning_rate=1e-3, validation_fraction=0.25, restore_best_epoch=True,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gating.fit(embeddings, chosen, rejected)
    losses = [record["validation_loss"] for record in gating.history_]
    assert gating.best_epoch_ == int(np.argmin(losses)) + 1
    validation, train = gating._split_by_prompt(embeddings, torch.Generator().manual_seed(0))
    groups = prompt_groups(embeddings)
    assert set(groups[validation].tolist()).isdisjoint(groups[train].tolist())
    assert len(set(groups[validation].tolist())) == 10  # a quarter of the 40 prompts


def test_standardized_prompts_are_folded_into_the_saved_network():
    """The network fitted on standardised embeddings takes raw ones: the same weights as its training view."""
    embeddings, chosen, rejected, _ = split_pairs()
    network = fit(embeddings, chosen, rejected, standardize_prompts=True, epochs=2, validation_fraction=0.0)
    mean, std = embeddings.mean(0), embeddings.std(0)
    unfolded = copy.deepcopy(network)
    with torch.no_grad():
        first = unfolded.layers[0]
        first.bias.add_(first.weight @ mean)
        first.weight.mul_(std)
        np.testing.assert_allclose(network(embeddings), unfolded((embeddings - mean) / std), atol=1e-4)


def test_evaluate_pairs_reports_the_gating_against_unbatched_model_outputs():
    """`evaluate_pairs`' gating numbers against each conversation run alone and the measures by hand."""
    from test_hub import make_tokenizer

    from conftest import make_qrm
    from qrm_hf.evaluation import evaluate_pairs

    model, tokenizer = make_qrm(seed=3), make_tokenizer()
    rows = [
        {"prompt": f"w1{p} w2{p}", "chosen": f"w3{c} w4{c}", "rejected": f"w5{c}", "category": "ab"[p % 2]}
        for p in range(4)
        for c in range(3)
    ]
    report = evaluate_pairs(model, tokenizer, rows, batch_size=5)["gating"]

    def run(prompt, response):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        inputs = tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            output = model(**inputs)
        return output.rewards[0].double().numpy(), output.gating_output[0].double().numpy()

    sides = [(run(row["prompt"], row["chosen"]), run(row["prompt"], row["rejected"])) for row in rows]
    names = model.config.attribute_names

    def accuracy(score):
        wins = [float(np.sign(score(c) - score(r))) for c, r in sides]
        return sum(1.0 if w > 0 else 0.5 if w == 0 else 0.0 for w in wins) / len(wins)

    assert report["accuracy"] == pytest.approx(accuracy(lambda side: float(side[0] @ side[1])))
    for m, name in enumerate(names):
        assert report["fixed_mixes"][f"{name} only"] == pytest.approx(accuracy(lambda side, m=m: side[0][m]))
    assert report["fixed_mixes"]["uniform"] == pytest.approx(accuracy(lambda side: side[0].mean()))
    prompt_shares = [sides[3 * p][0][1] / sides[3 * p][0][1].sum() for p in range(4)]  # one per prompt
    entropies = [-sum(w * math.log(w) for w in shares) / math.log(len(names)) for shares in prompt_shares]
    assert report["prompts"] == 4
    assert report["mean_normalised_entropy"] == pytest.approx(np.mean(entropies), abs=1e-5)
    for category, prompts in (("a", [0, 2]), ("b", [1, 3])):
        expected = np.mean([prompt_shares[p] for p in prompts], axis=0)
        np.testing.assert_allclose(
            list(report["mean_weights_by_category"][category].values()), expected, atol=1e-5
        )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`qrm train` on the tiny backbone (tests/test_pipeline.py's data); (heads dir, pairs feature dir)."""
    from test_pipeline import config_values, save_backbone, write_config, write_data

    from qrm_hf.cli import main

    root = tmp_path_factory.mktemp("gating")
    values = config_values(
        save_backbone(root / "backbone"), write_data(root / "data"), root / "run", debias=False
    )
    main(["train", str(write_config(root / "config.yaml", values))])
    out = root / "run"
    return out / "heads", out / "features" / "preference" / "pairs"


def test_qrm_fit_gating_reports_and_warns_about_the_network_it_fitted(tiny_run, tmp_path, monkeypatch):
    """The stage under `qrm fit-gating` and `qrm train` measures whatever network the fit returns: an honest
    fit's numbers land in gating.json, and a network forced onto the least accurate attribute is reported."""
    import json

    from qrm_hf.cli import main
    from qrm_hf.training.stages import GatingCollapseWarning

    heads, pairs = tiny_run
    command = ["fit-gating", str(heads), str(pairs), "--hidden-dim", "8", "--n-hidden", "1", "--epochs", "2"]
    main([*command, "--output-dir", str(tmp_path / "honest")])
    diagnostics = json.loads((tmp_path / "honest" / "gating.json").read_text())["diagnostics"]
    singles = {
        name[: -len(" only")]: value
        for name, value in diagnostics["fixed_mixes"].items()
        if name != "uniform"
    }
    worst = min(singles, key=singles.get)
    if singles[worst] == max(diagnostics["fixed_mixes"].values()):
        pytest.skip("every fixed mix is equally accurate on these pairs")
    fit = BradleyTerryGating.fit

    def collapsed_fit(self, *args, **kwargs):
        fit(self, *args, **kwargs)
        with torch.no_grad():  # softmax(logits / temperature): every prompt gives `worst` all the weight
            last = self.network_.layers[-1]
            last.weight.zero_()
            last.bias.copy_(torch.tensor([1e4 if name == worst else 0.0 for name in singles]))
        return self

    monkeypatch.setattr(BradleyTerryGating, "fit", collapsed_fit)
    with pytest.warns(GatingCollapseWarning) as caught:
        main([*command, "--output-dir", str(tmp_path / "collapsed")])
    messages = [str(warning.message) for warning in caught]
    assert any("degenerate" in message and "100%" in message and worst in message for message in messages)
    assert any(f"({singles[worst]:.3f})" in message and "less accurate" in message for message in messages)
    collapsed = json.loads((tmp_path / "collapsed" / "gating.json").read_text())["diagnostics"]
    assert collapsed["degenerate_prompt_share"] == 1.0 and collapsed["mean_normalised_entropy"] == 0.0


def test_every_saved_gating_goes_through_the_diagnostics():
    """AST scan of the package: a gating network is written only as a `GatingOutput`, built in one place,
    `stages.fit_gating` (under `qrm fit-gating` and `qrm train`), which measures it and warns first."""
    import ast
    from pathlib import Path

    import qrm_hf
    import qrm_hf.training

    roots = {Path(qrm_hf.__path__[0]), Path(qrm_hf.training.__path__[0])}
    builders, fit_gating_source = [], None
    for path in sorted({file for root in roots for file in root.rglob("*.py")}):
        text = path.read_text()
        for function in ast.walk(ast.parse(text, filename=str(path))):
            if not isinstance(function, ast.FunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "GatingOutput":
                    builders.append((path.name, function.name))
                    fit_gating_source = ast.get_source_segment(text, function)
    assert builders == [("stages.py", "fit_gating")]
    assert fit_gating_source.index("gating_warnings(") < fit_gating_source.index("GatingOutput(")
