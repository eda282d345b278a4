"""`QRMConfig` and `QRMForSequenceClassification` on tiny random backbones: config validation, the heads,
quantiles and mixing, the gating position, precision, and saving and loading with and without qrm_hf."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

from conftest import PAD, PATTERN, conversation, make_qrm, pad_batch, run_without_qrm_hf, tiny_backbone_config
from qrm_hf import QRMConfig, QRMForSequenceClassification, QRMOutput
from qrm_hf.modeling.modeling_qrm import find_last_pattern, mixture_quantiles

ROWS = [conversation(4, 6, seed=1), conversation(9, 3, seed=2), conversation(2, 12, seed=3)]


# --- configuration -----------------------------------------------------------------------------


def test_default_config_is_the_paper():
    config = QRMConfig()
    assert config.model_type == "qrm" and config.num_labels == 1
    assert len(config.attribute_names) == 19 and config.attribute_names[10] == "beavertails-is_safe"
    assert config.quantile_levels == pytest.approx(np.arange(1, 20) * 0.05)
    assert (config.gating_hidden_dim, config.gating_n_hidden, config.gating_temperature) == (1024, 3, 10.0)


@pytest.mark.parametrize(
    "levels, message",
    [
        ([0.5, 0.25], "strictly increasing"),
        ([0.25, 0.25], "strictly increasing"),
        ([0.0, 0.5], "inside (0, 1)"),
    ],
)
def test_bad_quantile_levels(levels, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        QRMConfig(quantile_levels=levels)


@pytest.mark.parametrize(
    "field, value", [("gating_fallback", "first"), ("quantile_mixing", "median"), ("gating_temperature", 0)]
)
def test_bad_config_values(field, value):
    with pytest.raises(ValueError, match=field):
        QRMConfig(**{field: value})


@pytest.mark.parametrize(
    "field, value",
    [
        ("attribute_names", "abc"),  # not the three attributes a, b and c
        ("attribute_names", [1, 2, 3]),
        ("quantile_levels", [None, 0.5]),  # a TypeError traceback from float()
        ("quantile_levels", 0.5),
        ("monotone_quantiles", "false"),  # a true string: the quantiles were sorted
        ("regression_bias", None),
        ("gating_batch_norm", 1),
    ],
)
def test_config_fields_of_the_wrong_type_are_a_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}` must be "):
        QRMConfig(**{field: value})


@pytest.mark.parametrize("backbone_config", [None, "absent"])
def test_a_saved_config_without_backbone_config_is_refused_not_built_as_the_default_llama(
    tmp_path, backbone_config
):
    # The default backbone is an 8B Llama: loading such a model ran for minutes in tens of GB
    make_qrm().config.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["backbone_config"] = backbone_config
    if backbone_config == "absent":
        del config["backbone_config"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no `backbone_config`"):
        QRMConfig.from_pretrained(tmp_path)


def test_a_backbone_config_field_of_the_wrong_type_is_one_line_from_the_cli(tmp_path, capsys):
    from test_hub import saved_qrm

    from conftest import run_cli

    directory = saved_qrm(tmp_path / "qrm", seed=1)[2]
    config = json.loads((directory / "config.json").read_text())
    config["backbone_config"]["hidden_size"] = "32"  # transformers' strict config check raises no ValueError
    (directory / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    code, err = run_cli(capsys, "score", directory, "--prompt", "w11", "--response", "w20")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "hidden_size" in lines[0] and "Traceback" not in err, err


def test_backbone_config_from_dict_round_trip():
    config = QRMConfig(backbone_config=tiny_backbone_config().to_dict(), attribute_names=["a"])
    assert config.backbone_config.model_type == "llama" and config.hidden_size == 32
    again = QRMConfig.from_dict(config.to_dict())
    assert again.backbone_config.to_dict() == config.backbone_config.to_dict()
    with pytest.raises(ValueError, match="model_type"):
        QRMConfig(backbone_config={"hidden_size": 8})
    with pytest.raises(ValueError, match="model_type 'no-such-model'"):  # not a KeyError traceback
        QRMConfig(backbone_config={"model_type": "no-such-model", "hidden_size": 8})


# --- outputs and their semantics ---------------------------------------------------------------


def test_building_a_qrm_leaves_the_callers_backbone_config_alone():
    # e.g. the config of a live model: building the QRM sets its own copy's attention implementation
    backbone_config = tiny_backbone_config()
    before = (backbone_config.to_dict(), backbone_config._attn_implementation)
    model = QRMForSequenceClassification(
        QRMConfig(backbone_config=backbone_config, attribute_names=["a"], quantile_levels=[0.5])
    )
    model.config.backbone_config.vocab_size = 99
    assert (backbone_config.to_dict(), backbone_config._attn_implementation) == before


def test_outputs_shapes_and_definitions(qrm):
    ids, mask = pad_batch(ROWS)
    out = qrm(input_ids=ids, attention_mask=mask)
    assert isinstance(out, QRMOutput)
    b, m, k, h = len(ROWS), 3, 5, 32
    assert out.logits.shape == (b, 1) and out.score.shape == (b, 1)
    assert out.reward_quantiles.shape == (b, k) and out.attribute_quantiles.shape == (b, m, k)
    assert out.rewards.shape == (b, m) and out.gating_output.shape == (b, m)
    assert out.prompt_embedding.shape == (b, h)
    torch.testing.assert_close(out.logits, out.score)
    torch.testing.assert_close(out.rewards, out.attribute_quantiles.mean(-1))
    torch.testing.assert_close(out.logits[:, 0], (out.gating_output * out.rewards).sum(-1))
    # paper eq. 3: mixed quantiles are the gating-weighted sum of the attribute quantiles
    torch.testing.assert_close(
        out.reward_quantiles, (out.gating_output[..., None] * out.attribute_quantiles).sum(1)
    )
    torch.testing.assert_close(out.gating_output.sum(-1), torch.full((b,), 2.5))  # softmax * logit_scale
    assert (out.attribute_quantiles.diff(dim=-1) >= 0).all()


def test_heads_match_a_hand_computation(qrm):
    """Recompute heads, transform, gating and mixing from the weights, independently of the model code."""
    ids, mask = pad_batch(ROWS)
    out = qrm(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    hidden = out.hidden_states[-1]
    last = mask.sum(-1) - 1
    start = torch.tensor([row.index(PATTERN[0]) for row in ROWS])
    response, prompt = hidden[torch.arange(3), last], hidden[torch.arange(3), start]
    q = (response @ qrm.regression_layer.weight.T).view(3, 3, 5)
    q = torch.stack([q[:, :, k] @ qrm.reward_transform_matrix for k in range(5)], -1).sort(-1).values
    x = prompt
    for layer in qrm.gating.layers:
        x = layer(x)
    g = torch.softmax(x / 10.0, -1) * 2.5
    torch.testing.assert_close(out.prompt_embedding, prompt)
    torch.testing.assert_close(out.attribute_quantiles, q)
    torch.testing.assert_close(out.logits[:, 0], (g * q.mean(-1)).sum(-1))


def test_monotone_quantiles_changes_no_mean():
    sorted_model, raw_model = make_qrm(seed=4), make_qrm(seed=4, monotone_quantiles=False)
    with torch.no_grad():  # heads that cross on purpose
        sorted_model.regression_layer.weight.normal_(0, 3.0)
        raw_model.load_state_dict(sorted_model.state_dict())
    ids, mask = pad_batch(ROWS)
    a, b = sorted_model(input_ids=ids, attention_mask=mask), raw_model(input_ids=ids, attention_mask=mask)
    assert (b.attribute_quantiles.diff(dim=-1) < 0).any(), "the test needs crossing quantiles"
    assert (a.attribute_quantiles.diff(dim=-1) >= 0).all()
    torch.testing.assert_close(a.logits, b.logits)
    torch.testing.assert_close(a.rewards, b.rewards)
    torch.testing.assert_close(a.attribute_quantiles, b.attribute_quantiles.sort(-1).values)


@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_equals_unbatched(qrm, side):
    ids, mask = pad_batch(ROWS, side=side)
    batched = qrm(input_ids=ids, attention_mask=mask)
    for i, row in enumerate(ROWS):
        single = qrm(input_ids=torch.tensor([row]), attention_mask=torch.ones(1, len(row), dtype=torch.long))
        for name in (
            "logits",
            "reward_quantiles",
            "attribute_quantiles",
            "gating_output",
            "prompt_embedding",
        ):
            torch.testing.assert_close(batched[name][i], single[name][0], atol=1e-5, rtol=1e-5)


def test_without_attention_mask_the_last_non_pad_token_is_the_response(qrm):
    ids, mask = pad_batch(ROWS, side="right")
    torch.testing.assert_close(qrm(input_ids=ids).logits, qrm(input_ids=ids, attention_mask=mask).logits)


def test_pad_equal_to_eos_only_trailing_pads_are_padding():
    model = make_qrm(backbone_config=tiny_backbone_config(eos_token_id=PAD), pad_token_id=PAD)
    row = conversation(3, 4, seed=5)
    row_with_eos = row[:-2] + [PAD] + row[-1:] + [PAD]  # an eos inside, then the closing eos
    ids = torch.tensor([row_with_eos + [PAD, PAD]])
    expected = model(
        input_ids=torch.tensor([row_with_eos[:-1]]), attention_mask=torch.ones(1, len(row_with_eos) - 1)
    )
    # the trailing eos/pad run is padding; the eos inside the conversation is not
    torch.testing.assert_close(model(input_ids=ids).logits, expected.logits)


def test_sdpa_and_eager_agree():
    eager = make_qrm(seed=6)
    eager.config._attn_implementation = "eager"
    eager.model.config._attn_implementation = "eager"
    sdpa = make_qrm(seed=6)
    ids, mask = pad_batch(ROWS, side="left")
    torch.testing.assert_close(
        eager(input_ids=ids, attention_mask=mask).logits, sdpa(input_ids=ids, attention_mask=mask).logits
    )


# --- gating position ---------------------------------------------------------------------------


def test_find_last_pattern_vectorised_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 4, (64, 40), generator=g)
    real = torch.rand(64, 40, generator=g) > 0.1
    pattern = [1, 2]
    found = find_last_pattern(ids, real, pattern)
    for i in range(64):
        expected = -1
        for start in range(40 - 1):
            if ids[i, start : start + 2].tolist() == pattern and real[i, start : start + 2].all():
                expected = start
        assert found[i].item() == expected


def test_gating_uses_the_last_occurrence_among_real_tokens(qrm):
    two_turns = conversation(3, 2, seed=7) + PATTERN[:] + [20, 21]
    ids = torch.tensor([two_turns])
    out = qrm(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    last_start = len(two_turns) - 2 - len(PATTERN)
    torch.testing.assert_close(out.prompt_embedding[0], out.hidden_states[-1][0, last_start])
    # a pattern inside the padding does not count
    padded = torch.tensor([ROWS[0] + PATTERN])
    mask = torch.tensor([[1] * len(ROWS[0]) + [0] * len(PATTERN)])
    single = qrm(input_ids=torch.tensor([ROWS[0]]))
    torch.testing.assert_close(
        qrm(input_ids=padded, attention_mask=mask).prompt_embedding, single.prompt_embedding
    )


def test_explicit_gating_positions_override_the_search(qrm):
    ids, mask = pad_batch(ROWS)
    out = qrm(
        input_ids=ids,
        attention_mask=mask,
        gating_positions=torch.tensor([1, 2, 3]),
        output_hidden_states=True,
    )
    torch.testing.assert_close(
        out.prompt_embedding, out.hidden_states[-1][torch.arange(3), torch.tensor([1, 2, 3])]
    )
    searched = qrm(input_ids=ids, attention_mask=mask)
    starts = torch.tensor([row.index(PATTERN[0]) for row in ROWS])
    torch.testing.assert_close(
        qrm(input_ids=ids, attention_mask=mask, gating_positions=starts).logits, searched.logits
    )


def test_missing_pattern_error_names_row_and_pattern(qrm):
    rows = [ROWS[0], [1, 30, 31, 32, 33]]
    ids, mask = pad_batch(rows)
    with pytest.raises(ValueError, match=r"prompt_end_pattern \[7, 8, 9\].*row 1"):
        qrm(input_ids=ids, attention_mask=mask)


def test_last_token_fallback(qrm):
    qrm.config.gating_fallback = "last_token"
    ids = torch.tensor([[1, 30, 31, 32, 33]])
    out = qrm(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(out.prompt_embedding[0], out.hidden_states[-1][0, -1])


@pytest.mark.parametrize(
    "positions", [torch.tensor([1, 2]), torch.tensor([[1], [2], [3]]), torch.tensor([1.0, 2, 3])]
)
def test_gating_positions_shape_mismatch(qrm, positions):
    ids, mask = pad_batch(ROWS)
    with pytest.raises(ValueError, match="gating_positions"):
        qrm(input_ids=ids, attention_mask=mask, gating_positions=positions)


def test_gating_positions_out_of_range(qrm):
    ids, mask = pad_batch(ROWS)
    with pytest.raises(ValueError, match="gating_positions"):
        qrm(input_ids=ids, attention_mask=mask, gating_positions=torch.tensor([0, 1, 99]))


def test_all_zero_attention_mask_row(qrm):
    ids, mask = pad_batch(ROWS)
    mask[1] = 0
    with pytest.raises(ValueError, match=r"Row\(s\) \[1\].*attention mask all zeros"):
        qrm(input_ids=ids, attention_mask=mask)


def test_inputs_embeds_with_gating_positions(qrm):
    ids, mask = pad_batch(ROWS)
    starts = torch.tensor([row.index(PATTERN[0]) for row in ROWS])
    embeds = qrm.get_input_embeddings()(ids)
    from_embeds = qrm(inputs_embeds=embeds, attention_mask=mask, gating_positions=starts)
    torch.testing.assert_close(from_embeds.logits, qrm(input_ids=ids, attention_mask=mask).logits)
    with pytest.raises(ValueError, match="exactly one"):
        qrm(input_ids=ids, inputs_embeds=embeds)


# --- quantile mixing ---------------------------------------------------------------------------


def _sample_mixture(quantiles, weights, levels, n, generator):
    """Monte Carlo draws from sum_m w_m F_m, F_m linear between its quantiles, tails as atoms."""
    m = torch.multinomial(weights / weights.sum(), n, replacement=True, generator=generator)
    u = torch.rand(n, generator=generator)
    draws = np.empty(n)
    for attribute in range(len(weights)):
        chosen = (m == attribute).numpy()
        draws[chosen] = np.interp(u[chosen].numpy(), levels.numpy(), quantiles[attribute].numpy())
    return draws


def test_mixture_quantiles_match_monte_carlo():
    levels = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64)
    quantiles = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4], [1.0, 1.5, 2.0, 2.5, 3.0]], dtype=torch.float64)
    weights = torch.tensor([0.6, 0.4], dtype=torch.float64)
    result = mixture_quantiles(quantiles[None], weights[None], levels)[0]
    draws = _sample_mixture(quantiles, weights, levels, 400_000, torch.Generator().manual_seed(0))
    expected = np.quantile(draws, levels.numpy())
    np.testing.assert_allclose(result.numpy(), expected, atol=0.015)
    assert result[2] < 1.0 < result[3]  # bimodal: the median falls in the lower mode, 0.7 in the upper


def test_mixture_of_one_or_identical_attributes_gives_back_the_quantiles():
    levels = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    q = torch.tensor([[[0.0, 0.2, 0.3, 0.9, 1.0]]])
    torch.testing.assert_close(mixture_quantiles(q, torch.tensor([[1.0]]), levels), q[:, 0])
    same = q.expand(1, 3, 5)
    torch.testing.assert_close(mixture_quantiles(same, torch.tensor([[0.2, 0.5, 0.3]]), levels), q[:, 0])
    # gating weights that sum to s scale the distribution like the "average" mixing does
    torch.testing.assert_close(mixture_quantiles(same, torch.tensor([[0.4, 1.0, 0.6]]), levels), 2 * q[:, 0])


def test_mixture_mode_in_the_model():
    model = make_qrm(seed=8, quantile_mixing="mixture")
    ids, mask = pad_batch(ROWS)
    out = model(input_ids=ids, attention_mask=mask)
    expected = mixture_quantiles(
        out.attribute_quantiles, out.gating_output, torch.tensor(model.config.quantile_levels)
    )
    torch.testing.assert_close(out.reward_quantiles, expected)
    assert (out.reward_quantiles.diff(dim=-1) >= 0).all()
    average = make_qrm(seed=8)
    torch.testing.assert_close(out.logits, average(input_ids=ids, attention_mask=mask).logits)


# --- dtypes, saving and loading ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_backbone_keeps_float32_heads(tmp_path, qrm, dtype):
    qrm.save_pretrained(tmp_path)
    half = AutoModelForSequenceClassification.from_pretrained(tmp_path, dtype=dtype)
    assert half.model.embed_tokens.weight.dtype == dtype
    assert half.regression_layer.weight.dtype == torch.float32
    assert half.gating.layers[0].weight.dtype == torch.float32
    assert half.reward_transform_matrix.dtype == torch.float32
    ids, mask = pad_batch(ROWS)
    out = half(input_ids=ids, attention_mask=mask)
    for name in ("logits", "reward_quantiles", "attribute_quantiles", "gating_output", "prompt_embedding"):
        assert out[name].dtype == torch.float32, name
    reference = qrm(input_ids=ids, attention_mask=mask)
    scale = reference.logits.abs().max()
    assert (out.logits - reference.logits).abs().max() < 0.05 * scale + 0.05
    # Saved again, it records the backbone's dtype and reloads in it (not in the heads' float32).
    assert half.dtype == dtype
    half.save_pretrained(tmp_path / "half")
    assert (
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "half").model.embed_tokens.weight.dtype
        == dtype
    )


def test_save_and_load_through_the_package(tmp_path, qrm):
    qrm.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_qrm.py", "modeling_qrm.py"} <= files
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "qrm"
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForSequenceClassification"}
    ids, mask = pad_batch(ROWS)
    expected = qrm(input_ids=ids, attention_mask=mask)
    for auto in (AutoModelForSequenceClassification, AutoModel, QRMForSequenceClassification):
        loaded = auto.from_pretrained(tmp_path)
        assert isinstance(loaded, QRMForSequenceClassification)
        out = loaded(input_ids=ids, attention_mask=mask)
        for name in ("logits", "reward_quantiles", "attribute_quantiles", "gating_output"):
            torch.testing.assert_close(out[name], expected[name], rtol=0, atol=0)


def test_batch_norm_gating_round_trip(tmp_path):
    model = make_qrm(seed=9, gating_batch_norm=True, regression_bias=True)
    assert isinstance(model.gating.layers[2], torch.nn.BatchNorm1d)
    assert model.gating.layers[0].bias is None and model.regression_layer.bias is not None
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    ids, mask = pad_batch(ROWS)
    torch.testing.assert_close(
        loaded(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids, attention_mask=mask).logits
    )


def test_trust_remote_code_without_qrm_hf(tmp_path, qrm):
    model_dir = tmp_path / "model"
    qrm.save_pretrained(model_dir)
    ids, mask = pad_batch(ROWS, side="left")
    expected = qrm(input_ids=ids, attention_mask=mask)
    torch.save({"ids": ids, "mask": mask}, tmp_path / "inputs.pt")
    script = f"""
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModel, AutoModelForSequenceClassification
        try:
            import qrm_hf
            raise SystemExit("qrm_hf should not be importable here")
        except ImportError:
            pass
        inputs = torch.load({str(tmp_path / "inputs.pt")!r}, weights_only=True)
        model = AutoModelForSequenceClassification.from_pretrained({str(model_dir)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert isinstance(AutoModel.from_pretrained({str(model_dir)!r}, trust_remote_code=True), type(model))
        out = model(input_ids=inputs["ids"], attention_mask=inputs["mask"])
        save_file({{k: out[k].contiguous() for k in ("logits", "reward_quantiles", "attribute_quantiles")}},
                  {str(tmp_path / "out.safetensors")!r})
        """
    result = run_without_qrm_hf(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    from safetensors.torch import load_file

    remote = load_file(tmp_path / "out.safetensors")
    for name, value in remote.items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)


def test_attribute_names_not_matching_the_heads(tmp_path, qrm):
    qrm.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["attribute_names"] = ["only_one"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="regression_layer.weight"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path)


def test_pad_token_id_taken_from_backbone():
    config = QRMConfig(backbone_config=tiny_backbone_config(pad_token_id=5))
    assert config.pad_token_id == 5
    assert (
        QRMConfig(backbone_config=tiny_backbone_config(pad_token_id=5), pad_token_id=PAD).pad_token_id == PAD
    )
