"""Pipeline stages on tiny backbones and synthetic data: extract, fit-quantiles, fit-gating, assemble."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, LlamaModel

from conftest import PAD, PATTERN, conversation, make_qrm, pad_batch, tiny_backbone_config
from qrm_hf import QRMConfig
from qrm_hf.evaluation import calibration_error, pairwise_accuracy, pinball_loss
from qrm_hf.scoring import BackboneEncoder
from qrm_hf.training.assemble import assemble_qrm, save_qrm
from qrm_hf.training.features import extract_to_shards, load_features
from qrm_hf.training.gating import BradleyTerryGating
from qrm_hf.training.quantile_regression import MultiQuantileRegressor, RidgeResidualQuantiles
from qrm_hf.training.rewards import expected_rewards


@pytest.fixture
def backbone():
    torch.manual_seed(0)
    return LlamaModel(tiny_backbone_config()).eval()


def sequences(n, seed=0):
    return [conversation(3 + (i * 7) % 11, 2 + (i * 5) % 9, seed=seed + i) for i in range(n)]


# ----------------------------------------------------------------------------------------------- extract


def test_encoder_matches_one_conversation_at_a_time(backbone):
    rows = sequences(9)
    rows.append(rows[2])  # a duplicate is encoded once and returned twice
    response, prompt = BackboneEncoder(backbone, PATTERN, PAD, batch_size=4).encode(rows)
    for i, row in enumerate(rows):
        with torch.no_grad():
            hidden = backbone(input_ids=torch.tensor([row])).last_hidden_state[0]
        start = max(j for j in range(len(row)) if row[j : j + len(PATTERN)] == PATTERN)
        torch.testing.assert_close(response[i], hidden[-1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(prompt[i], hidden[start], atol=1e-5, rtol=1e-5)


def test_encoder_remembers_across_calls_only_when_asked(backbone):
    rows = sequences(4)
    encoder = BackboneEncoder(backbone, PATTERN, PAD, batch_size=16, remember=True)
    first = encoder.encode(rows)
    calls = []
    backbone.register_forward_hook(lambda *args: calls.append(1))
    second = encoder.encode(rows[::-1])
    assert calls == []
    torch.testing.assert_close(second[0], first[0].flip(0))


def test_encoder_names_the_missing_pattern(backbone):
    with pytest.raises(ValueError, match=r"prompt_end_pattern \[7, 8, 9\] not found"):
        BackboneEncoder(backbone, PATTERN, PAD, batch_size=16).encode([[1, 20, 21, 22]])


def test_shards_resume_and_equal_an_uninterrupted_run(backbone, tmp_path):
    encoder = BackboneEncoder(backbone, PATTERN, PAD, batch_size=3)
    rows, labels = sequences(10), torch.rand(10, 2)
    manifest = {"backbone": "tiny", "attributes": ["a", "b"]}
    reference, _ = load_features(
        extract_to_shards(encoder, rows, tmp_path / "ref", manifest, labels, shard_size=4)
    )

    directory = extract_to_shards(encoder, rows, tmp_path / "run", manifest, labels, shard_size=4)
    (directory / "features-00001.safetensors").unlink()  # as if killed while writing shard 1
    (directory / ".features-00001.qrm-partial-99.safetensors").write_bytes(b"half a shard")
    manifest_data = json.loads((directory / "manifest.json").read_text())
    (directory / "manifest.json").write_text(json.dumps({**manifest_data, "complete": False}))
    with pytest.raises(ValueError, match="did not finish"):
        load_features(directory)
    extract_to_shards(encoder, rows, directory, manifest, labels, shard_size=4)
    resumed, settings = load_features(directory)
    assert settings["count"] == 10 and settings["kind"] == "attribute"
    assert sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")) == [
        "features-00000.safetensors",
        "features-00001.safetensors",
        "features-00002.safetensors",
        "manifest.json",
    ]
    for name in ("embeddings", "prompt_embeddings", "index", "labels"):
        torch.testing.assert_close(resumed[name], reference[name])
    assert resumed["index"].tolist() == list(range(10))


def test_shards_follow_other_settings_but_refuse_foreign_directories_and_empty_data(backbone, tmp_path):
    encoder = BackboneEncoder(backbone, PATTERN, PAD, batch_size=16)
    extract_to_shards(encoder, sequences(3), tmp_path / "run", {"backbone": "tiny"})
    extract_to_shards(encoder, sequences(3), tmp_path / "run", {"backbone": "another"})  # extracted anew
    assert load_features(tmp_path / "run")[1]["backbone"] == "another"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="notes.txt"):
        extract_to_shards(encoder, sequences(3), tmp_path / "mine", {"backbone": "tiny"})
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    with pytest.raises(ValueError, match="empty"):
        extract_to_shards(encoder, [], tmp_path / "empty", {})


def test_preference_pairs_are_stored_chosen_first(backbone, tmp_path):
    encoder = BackboneEncoder(backbone, PATTERN, PAD, batch_size=16)
    rows = sequences(6)
    pairs = [(rows[0], rows[1]), (rows[2], rows[3]), (rows[4], rows[5])]
    features, settings = load_features(extract_to_shards(encoder, pairs, tmp_path, {}))
    single, _ = encoder.encode(rows)
    assert settings["kind"] == "preference" and features["embeddings"].shape == (3, 2, 32)
    torch.testing.assert_close(features["embeddings"].reshape(6, 32), single)


# ------------------------------------------------------------------------------------- fit-quantiles


def heteroscedastic(n, seed):
    """y = 0.5 + 0.2 x0 + (0.05 + 0.1 |x1|) * N(0, 1): the true tau-quantile is known for every x."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    scale = 0.05 + 0.1 * np.abs(x[:, 1])
    y = 0.5 + 0.2 * x[:, 0] + scale * rng.normal(size=n)
    features = np.column_stack([x[:, 0], np.abs(x[:, 1]), x[:, 2], np.ones(n)])  # last column: intercept
    return features, y, scale


def test_quantile_heads_recover_known_quantiles_and_beat_a_point_estimate():
    from scipy.stats import norm

    levels = [0.1, 0.5, 0.9]
    x, y, _ = heteroscedastic(800, seed=0)
    test_x, test_y, test_scale = heteroscedastic(2000, seed=1)
    heads = MultiQuantileRegressor(levels, alpha=1e-4).fit(x, y)
    predictions = heads.predict(test_x)
    truth = 0.5 + 0.2 * test_x[:, :1] + test_scale[:, None] * norm.ppf(levels)[None]
    assert heads.coef_.shape == (1, 3, 4) and predictions.shape == (2000, 1, 3)
    assert np.abs(predictions[:, 0] - truth).mean() < 0.02
    baseline = RidgeResidualQuantiles(levels).fit(x, y).predict(test_x)
    assert (
        pinball_loss(test_y[:, None], predictions, levels).mean()
        < pinball_loss(test_y[:, None], baseline, levels).mean()
    )
    assert calibration_error(test_y[:, None], predictions, levels) < 0.03


def test_ridge_baseline_does_not_memorise_the_other_ratings_of_a_response():
    """Each response is rated 5 times; its mean label is a random effect that its features cannot predict
    for another response. Cross-validation that split a response's ratings would pick the smallest penalty
    (the other ratings give the answer away) and residuals far too narrow for unseen responses."""
    rng = np.random.default_rng(0)
    responses, effect = rng.normal(size=(40, 60)), rng.normal(size=40)
    X = np.repeat(responses, 5, axis=0)
    y = np.repeat(effect, 5) + 0.1 * rng.normal(size=200)
    baseline = RidgeResidualQuantiles([0.05, 0.95], alphas=(0.01, 1.0, 100.0, 1e4)).fit(X, y)
    assert baseline.alpha_.tolist() == [1e4]
    new_responses, new_effect = rng.normal(size=(2000, 60)), rng.normal(size=2000)
    low, high = baseline.predict(new_responses)[:, 0].T
    inside = (new_effect >= low) & (new_effect <= high)
    assert 0.8 < inside.mean() < 0.97  # about 90 % (40 responses set the spread) for unseen responses


def test_quantile_heads_ignore_missing_labels_per_attribute():
    x, y, _ = heteroscedastic(300, seed=2)
    labels = np.column_stack([y, y.copy()])
    labels[::3, 1] = np.nan
    heads = MultiQuantileRegressor([0.25, 0.75], alpha=1e-3).fit(x, labels)
    alone = MultiQuantileRegressor([0.25, 0.75], alpha=1e-3).fit(
        x[~np.isnan(labels[:, 1])], y[~np.isnan(labels[:, 1])]
    )
    np.testing.assert_allclose(heads.coef_[1], alone.coef_[0], atol=1e-8)
    assert heads.n_samples_.tolist() == [300, 200]
    capped = MultiQuantileRegressor([0.5], max_samples_per_attribute=50).fit(x, labels)
    assert capped.n_samples_.tolist() == [50, 50]


@pytest.mark.parametrize(
    ("levels", "labels", "match"),
    [
        ([0.5, 0.2], None, "strictly increasing"),
        ([0.5, 0.5], None, "strictly increasing"),
        ([0.0, 0.5], None, "inside"),
        ([0.5], "all-nan", "no label"),
    ],
)
def test_quantile_heads_reject_bad_input(levels, labels, match):
    x = np.random.default_rng(0).normal(size=(20, 3))
    y = np.full(20, np.nan) if labels == "all-nan" else np.zeros(20)
    with pytest.raises(ValueError, match=match):
        MultiQuantileRegressor(levels).fit(x, y)


def test_pinball_loss_matches_its_definition():
    labels = np.array([[0.0], [1.0], [np.nan]])
    predictions = np.array([[[0.5, 0.5]], [[0.5, 0.5]], [[9.0, 9.0]]])
    # tau 0.1: (0 - .5) * (0.1 - 1) = .45 and (1 - .5) * .1 = .05 -> .25; tau 0.9: .05 and .45 -> .25
    np.testing.assert_allclose(pinball_loss(labels, predictions, [0.1, 0.9]), [[0.25, 0.25]])
    assert pairwise_accuracy([1.0, 2.0, 3.0], [0.0, 2.0, 4.0]) == pytest.approx(0.5)


# --------------------------------------------------------------------------------------- fit-gating


def test_gating_learns_which_attribute_each_prompt_cares_about():
    """Two prompt kinds: one prefers the response better on attribute 0, the other on attribute 1."""
    torch.manual_seed(0)
    n, hidden = 600, 32
    kind = torch.randint(0, 2, (n,))
    prompts = torch.randn(n, hidden) * 0.1 + torch.where(kind[:, None] == 0, 1.0, -1.0)
    chosen, rejected = torch.rand(n, 2), torch.rand(n, 2)
    decisive = kind.long()
    swap = chosen[torch.arange(n), decisive] < rejected[torch.arange(n), decisive]
    chosen[swap], rejected[swap] = rejected[swap].clone(), chosen[swap].clone()
    config = QRMConfig(
        backbone_config=tiny_backbone_config(),
        attribute_names=["a", "b"],
        quantile_levels=[0.5],
        gating_hidden_dim=32,
        gating_n_hidden=2,
        gating_temperature=1.0,
    )
    gating = BradleyTerryGating(config, learning_rate=3e-3, batch_size=64, epochs=30).fit(
        prompts, chosen, rejected
    )
    assert gating.history_[-1]["validation_accuracy"] > 0.9
    assert gating.history_[-1]["train_loss"] < gating.history_[0]["train_loss"]
    weights = gating.network_(prompts)
    assert (weights[kind == 0, 0] > weights[kind == 0, 1]).float().mean() > 0.95
    assert (weights[kind == 1, 1] > weights[kind == 1, 0]).float().mean() > 0.95


def test_gating_rejects_mismatched_shapes():
    config = QRMConfig(
        backbone_config=tiny_backbone_config(), attribute_names=["a", "b"], quantile_levels=[0.5]
    )
    with pytest.raises(ValueError, match="hidden size"):
        BradleyTerryGating(config).fit(torch.randn(4, 16), torch.rand(4, 2), torch.rand(4, 2))
    with pytest.raises(ValueError, match="Expected rewards"):
        BradleyTerryGating(config).fit(torch.randn(4, 32), torch.rand(4, 3), torch.rand(4, 3))


def test_expected_rewards_equal_the_model_rewards(qrm):
    m, k, h = qrm.config.num_attributes, qrm.config.num_quantiles, qrm.config.hidden_size
    x = torch.randn(5, h)
    weight = qrm.regression_layer.weight.view(m, k, h)
    torch.testing.assert_close(
        expected_rewards(weight, qrm.reward_transform_matrix, x),
        qrm.score_embeddings(x, x).rewards,
        atol=1e-5,
        rtol=1e-5,
    )


# ----------------------------------------------------------------------------------------- assemble


def test_assembled_model_uses_the_fitted_parts(tmp_path):
    reference = make_qrm(seed=3, gating_batch_norm=True)
    reference.model.save_pretrained(tmp_path / "backbone")
    m, k, h = reference.config.num_attributes, reference.config.num_quantiles, reference.config.hidden_size
    model = assemble_qrm(
        tmp_path / "backbone",
        reference.config.attribute_names,
        reference.config.quantile_levels,
        reference.regression_layer.weight.detach().view(m, k, h).numpy(),
        reference.gating,
        PATTERN,
        reward_transform=reference.reward_transform_matrix.detach(),
        gating_hidden_dim=16,
        gating_n_hidden=2,
        gating_batch_norm=True,
    )
    ids, mask = pad_batch([conversation(4, 3, seed=1), conversation(6, 5, seed=2)])
    with torch.no_grad():
        expected, actual = reference(ids, attention_mask=mask), model(ids, attention_mask=mask)
    torch.testing.assert_close(actual.reward_quantiles, expected.reward_quantiles)
    torch.testing.assert_close(actual.logits, expected.logits)

    directory = save_qrm(
        model,
        tmp_path / "qrm",
        backbone_name="tiny-llama",
        evaluation=[{"dataset": "demo", "metric": "accuracy", "value": 0.75}],
    )
    card = (directory / "README.md").read_text()
    assert (
        "base_model: tiny-llama" in card and "distributional-reward-model" in card and "value: 0.75" in card
    )
    assert "helpfulness, correctness, safety" in card
    assert isinstance(AutoModel.from_pretrained(directory), type(model))


def test_assemble_rejects_heads_of_the_wrong_shape(tmp_path):
    LlamaModel(tiny_backbone_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"expected \[M=2, K=3, H=32\]"):
        assemble_qrm(tmp_path, ["a", "b"], [0.25, 0.5, 0.75], np.zeros((2, 3, 16)), None, PATTERN)


# ------------------------------------------------------------------------ extraction across processes


@pytest.fixture
def saved_backbone(tmp_path, backbone):
    backbone.save_pretrained(tmp_path / "backbone")
    return tmp_path / "backbone"


def _worker_command(*args):
    return [sys.executable, str(Path(__file__).with_name("extract_worker.py")), *map(str, args)]


def _assert_same_features(directory, reference_directory):
    features, settings = load_features(directory)
    reference, reference_settings = load_features(reference_directory)
    assert settings == reference_settings
    for name in reference:
        torch.testing.assert_close(features[name], reference[name], atol=1e-6, rtol=0)


def test_killed_extraction_resumes_to_the_uninterrupted_result(saved_backbone, tmp_path):
    from extract_worker import extract

    count = 160  # 80 shards: the run is still going when it is killed
    reference = extract(saved_backbone, tmp_path / "reference", count)
    process = subprocess.Popen(_worker_command(saved_backbone, tmp_path / "run", count), env=_worker_env())
    while len(list((tmp_path / "run").glob("features-*.safetensors"))) < 3:
        assert process.poll() is None, "the extraction finished before it could be killed"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not json.loads((tmp_path / "run" / "manifest.json").read_text())["complete"]
    extract(saved_backbone, tmp_path / "run", count)
    _assert_same_features(tmp_path / "run", reference)


def test_two_processes_under_accelerate_equal_one(saved_backbone, tmp_path):
    from extract_worker import extract

    reference = extract(saved_backbone, tmp_path / "reference", 9)
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    command = launch + _worker_command(saved_backbone, tmp_path / "run", 9)[1:]
    subprocess.run(command, check=True, env=_worker_env(), capture_output=True, timeout=300)
    _assert_same_features(tmp_path / "run", reference)


def _worker_env():
    return dict(os.environ, PYTHONPATH=str(Path(__file__).parent))


def test_conversations_over_max_length_are_skipped_and_counted(backbone, tmp_path):
    rows = sequences(6)
    limit = sorted(map(len, rows))[3]
    encoder = BackboneEncoder(backbone, PATTERN, PAD, batch_size=16)
    features, settings = load_features(
        extract_to_shards(encoder, rows, tmp_path, {}, torch.rand(6, 1), max_length=limit)
    )
    kept = [i for i, row in enumerate(rows) if len(row) <= limit]
    assert features["index"].tolist() == kept and settings["skipped_too_long"] == 6 - len(kept) > 0
    torch.testing.assert_close(features["embeddings"], encoder.encode([rows[i] for i in kept])[0])
    with pytest.raises(ValueError, match="longer than max_length=2"):
        extract_to_shards(encoder, rows, tmp_path / "none", {}, max_length=2)
