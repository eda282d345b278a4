"""QRM as any transformers sequence-classification model: offloading, PEFT, resizing,
labels, pipelines, attention flags, torch.compile. Every expectation is computed independently of the
code under test: the same model loaded whole, a merged adapter, `qrm_hf.evaluation.pinball_loss`, the
backbone called directly.
"""

import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from test_trl import save_tiny_qrm, tiny_tokenizer
from transformers import (
    AutoModelForSequenceClassification,
    LlamaModel,
    Trainer,
    TrainingArguments,
    pipeline,
)

from conftest import PATTERN, conversation, make_qrm, pad_batch
from qrm_hf import QRMConfig, QRMForSequenceClassification
from qrm_hf.evaluation import pinball_loss

ROWS = [conversation(4, 6, seed=1), conversation(9, 3, seed=2), conversation(2, 12, seed=3)]
FIELDS = ("logits", "reward_quantiles", "attribute_quantiles", "rewards", "gating_output")


def assert_same_outputs(out, expected, atol=1e-5):
    for name in FIELDS:
        torch.testing.assert_close(out[name], expected[name], atol=atol, rtol=0, msg=name)


# --- offloading: every sub-module is called, so accelerate's hooks bring its weights in ----------


@pytest.mark.parametrize(
    "device_map, max_memory",
    [
        # the backbone in memory, heads, transform and gating offloaded to disk
        ({"model": "cpu", "regression_layer": "disk", "reward_transform": "disk", "gating": "disk"}, None),
        # device_map="auto" with a memory budget: the embeddings stay, everything else goes to disk
        ("auto", {"cpu": 60_000}),
        # a budget too small for anything: the whole model on disk
        ("auto", {"cpu": 1_000}),
    ],
    ids=["explicit", "auto-partial", "auto-all-disk"],
)
def test_offloaded_model_equals_the_whole_model(tmp_path, device_map, max_memory):
    model = make_qrm(seed=1, gating_batch_norm=True, regression_bias=True)
    model.save_pretrained(tmp_path / "model")
    ids, mask = pad_batch(ROWS, side="left")
    expected = model(input_ids=ids, attention_mask=mask)
    offloaded = QRMForSequenceClassification.from_pretrained(
        tmp_path / "model", device_map=device_map, max_memory=max_memory, offload_folder=tmp_path / "offload"
    )
    assert "disk" in offloaded.hf_device_map.values()
    assert offloaded.regression_layer.weight.device.type == "meta"  # really not in memory
    with torch.no_grad():
        assert_same_outputs(offloaded(input_ids=ids, attention_mask=mask), expected)


def test_the_transform_is_a_module_stored_as_reward_transform_matrix(tmp_path):
    from safetensors.torch import load_file, save_file

    model = make_qrm(seed=1)
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert "reward_transform_matrix" in tensors and not any(
        k.startswith("reward_transform.") for k in tensors
    )
    tensors["reward_transform_matrix"] = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = QRMForSequenceClassification.from_pretrained(tmp_path)
    assert isinstance(loaded.reward_transform, torch.nn.Module)
    ids, mask = pad_batch(ROWS)
    with torch.no_grad():
        out, identity = loaded(input_ids=ids, attention_mask=mask), make_qrm(seed=1)
        identity.reward_transform.weight.copy_(torch.eye(3))
        raw = identity(input_ids=ids, attention_mask=mask).attribute_quantiles  # sorted Q, T = I
    # T swaps attributes 0 and 1 and doubles attribute 2 (a permutation and a positive scale keep the order)
    torch.testing.assert_close(out.attribute_quantiles, torch.stack([raw[:, 1], raw[:, 0], 2 * raw[:, 2]], 1))


# --- PEFT --------------------------------------------------------------------------------------


def test_lora_on_the_heads_changes_the_logits():
    model = make_qrm(seed=2)
    ids, mask = pad_batch(ROWS)
    base = model(input_ids=ids, attention_mask=mask)
    config = LoraConfig(target_modules=["regression_layer"], r=4, lora_alpha=8, init_lora_weights=False)
    lora = get_peft_model(model, config).eval()
    with torch.no_grad():
        adapted = lora(input_ids=ids, attention_mask=mask)
        assert (adapted.logits - base.logits).abs().max() > 1e-2
        merged = lora.merge_and_unload()  # plain nn.Linear heads with the adapter folded in
        assert_same_outputs(adapted, merged(input_ids=ids, attention_mask=mask))


def test_peft_seq_cls_without_the_heads_fails_loudly_and_with_them_trains_them():
    lora = dict(task_type="SEQ_CLS", target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8)
    ids, mask = pad_batch(ROWS)
    frozen = get_peft_model(make_qrm(seed=3), LoraConfig(**lora)).train()
    with pytest.raises(ValueError, match=r"modules_to_save=\['regression_layer'\]"):
        frozen(input_ids=ids, attention_mask=mask)
    with torch.no_grad():  # scoring (eval mode, no grad) is never refused
        frozen.eval()(input_ids=ids, attention_mask=mask)

    model = get_peft_model(
        make_qrm(seed=3), LoraConfig(**lora, modules_to_save=["regression_layer", "gating"])
    )
    model.train()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("regression_layer.modules_to_save" in name for name in trainable)
    assert any("gating.modules_to_save.default.layers" in name for name in trainable)
    assert any("gating.modules_to_save.default.logit_scale" in name for name in trainable)
    model(input_ids=ids, attention_mask=mask).logits.sum().backward()
    assert model.base_model.model.regression_layer.modules_to_save["default"].weight.grad.abs().sum() > 0


def _preference_rows(tokenizer, count, chat: bool):
    rows = []
    for i in range(count):
        prompt, good, bad = f"Name a color {i}.", "Blue.", "It is four."
        if chat:
            user = [{"role": "user", "content": prompt}]
            rows.append(
                dict(
                    chosen=user + [{"role": "assistant", "content": good}],
                    rejected=user + [{"role": "assistant", "content": bad}],
                )
            )
        else:
            rows.append(dict(chosen=prompt + " " + good, rejected=prompt + " " + bad))
    return Dataset.from_list(rows)


def _reward_trainer(tmp_path, model, tokenizer, dataset, **kwargs):
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=0,
    )
    return RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, **kwargs)


def test_reward_trainer_peft_seq_cls_trains_the_heads_or_says_how(tmp_path, one_thread):
    tokenizer = tiny_tokenizer()
    save_tiny_qrm(tmp_path / "qrm", tokenizer, seed=4)
    dataset = _preference_rows(tokenizer, 8, chat=True)
    lora = dict(task_type="SEQ_CLS", target_modules=["q_proj", "v_proj"], r=4, lora_alpha=8)

    model = QRMForSequenceClassification.from_pretrained(tmp_path / "qrm")
    trainer = _reward_trainer(tmp_path, model, tokenizer, dataset, peft_config=LoraConfig(**lora))
    with pytest.raises(ValueError, match="modules_to_save"):
        trainer.train()

    model = QRMForSequenceClassification.from_pretrained(tmp_path / "qrm")
    config = LoraConfig(**lora, modules_to_save=["regression_layer", "gating"])
    trainer = _reward_trainer(tmp_path, model, tokenizer, dataset, peft_config=config)
    trainer.train()
    peft_model = trainer.model
    for name in ("regression_layer", "gating"):
        wrapper = peft_model.base_model.model.get_submodule(name)
        before, after = wrapper.original_module.state_dict(), wrapper.modules_to_save["default"].state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before), f"{name} did not train"


# --- resizing and the text config --------------------------------------------------------------


def test_resize_save_load(tmp_path):
    model = make_qrm(seed=5)
    assert model.config.get_text_config() is model.config.backbone_config
    model.resize_token_embeddings(72)
    assert model.config.vocab_size == model.config.backbone_config.vocab_size == 72
    assert model.model.config.vocab_size == 72
    model.save_pretrained(tmp_path)
    loaded = QRMForSequenceClassification.from_pretrained(tmp_path)
    assert loaded.config.vocab_size == 72
    rows = [row + [70, 71] for row in ROWS]  # new tokens in the response
    ids, mask = pad_batch(rows)
    assert_same_outputs(loaded(input_ids=ids, attention_mask=mask), model(input_ids=ids, attention_mask=mask))


def test_size_mismatch_error_names_the_tensors_that_mismatch(tmp_path):
    make_qrm(seed=5).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["backbone_config"]["vocab_size"] = 80
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as error:
        QRMForSequenceClassification.from_pretrained(tmp_path)
    message = str(error.value)
    assert "model.embed_tokens.weight is [64, 32] in the checkpoint, [80, 32] for the config" in message
    assert "vocab_size" in message
    assert "regression_layer" not in message and "attribute_names" not in message


def test_num_labels_other_than_one_is_refused(tmp_path):
    make_qrm().save_pretrained(tmp_path)
    for loader in (QRMForSequenceClassification, AutoModelForSequenceClassification):
        with pytest.raises(ValueError, match="num_labels must be 1, got 3"):
            loader.from_pretrained(tmp_path, num_labels=3)
    with pytest.raises(ValueError, match="num_labels must be 1"):
        QRMConfig(num_labels=2)


def test_config_output_hidden_states_and_output_attentions():
    model = make_qrm(seed=6)
    model.config._attn_implementation = model.model.config._attn_implementation = "eager"
    ids, mask = pad_batch(ROWS)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    reference = model.model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        output_attentions=True,
        output_hidden_states=True,
    )
    model.config.output_hidden_states = True
    out = model(input_ids=ids, attention_mask=mask)
    assert "hidden_states" in out.keys() and len(out.hidden_states) == 3  # embeddings + 2 layers
    for got, want in zip(out.hidden_states, reference.hidden_states, strict=True):
        torch.testing.assert_close(got, want)
    out = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (3, 4, ids.shape[1], ids.shape[1])
    for got, want in zip(out.attentions, reference.attentions, strict=True):
        torch.testing.assert_close(got, want)


# --- labels give a loss ------------------------------------------------------------------------


def test_labels_give_the_mean_pinball_loss(qrm):
    ids, mask = pad_batch(ROWS)
    out = qrm(input_ids=ids, attention_mask=mask)
    levels = qrm.config.quantile_levels
    labels = torch.tensor([[0.2, -1.0, 3.0], [0.0, 0.5, 1.5], [2.0, 1.0, -0.5]])
    with_labels = qrm(input_ids=ids, attention_mask=mask, labels=labels)
    expected = pinball_loss(labels.numpy(), out.attribute_quantiles.detach().numpy(), levels).mean()
    assert with_labels.loss.item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(with_labels.logits, out.logits)

    labels[0, 1] = labels[2, 0] = float("nan")  # missing ratings do not count
    q = out.attribute_quantiles.detach().numpy()
    terms = [
        max(tau * (labels[b, m].item() - q[b, m, k]), (tau - 1) * (labels[b, m].item() - q[b, m, k]))
        for b in range(3)
        for m in range(3)
        if not np.isnan(labels[b, m].item())
        for k, tau in enumerate(levels)
    ]
    as_tuple = qrm(input_ids=ids, attention_mask=mask, labels=labels, return_dict=False)
    assert as_tuple[0].ndim == 0 and as_tuple[0].item() == pytest.approx(np.mean(terms), rel=1e-5)
    torch.testing.assert_close(as_tuple[1], out.logits)
    with pytest.raises(ValueError, match="labels"):
        qrm(input_ids=ids, attention_mask=mask, labels=labels[:, :2])


class _Ratings(torch.utils.data.Dataset):
    """Conversations with ratings that a linear map of the response's hidden state explains."""

    def __init__(self, backbone, count, seed):
        self.rows = [conversation(3 + i % 4, 3 + i % 5, seed=seed + i) for i in range(count)]
        generator = torch.Generator().manual_seed(99)
        teacher = torch.randn(32, 3, generator=generator)
        with torch.no_grad():
            hidden = [backbone(input_ids=torch.tensor([row])).last_hidden_state[0, -1] for row in self.rows]
        noise = 0.1 * torch.randn(count, 3, generator=torch.Generator().manual_seed(seed))
        self.labels = torch.stack(hidden) @ teacher / 4 + noise  # [count, 3]
        self.labels[::5, 1] = float("nan")  # some ratings missing

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return dict(input_ids=self.rows[i], labels=self.labels[i])


def _collate(items):
    ids, mask = pad_batch([item["input_ids"] for item in items])
    return dict(input_ids=ids, attention_mask=mask, labels=torch.stack([item["labels"] for item in items]))


def _heldout_pinball(model, data) -> float:
    batch = _collate([data[i] for i in range(len(data))])
    model.eval()
    with torch.no_grad():
        q = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).attribute_quantiles
    return float(np.nanmean(pinball_loss(batch["labels"].numpy(), q.numpy(), [0.1, 0.25, 0.5, 0.75, 0.9])))


def _train(tmp_path, model, train, learning_rate, max_steps):
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=8,
        max_steps=max_steps,
        learning_rate=learning_rate,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        remove_unused_columns=False,
    )
    Trainer(model=model, args=args, train_dataset=train, data_collator=_collate).train()


@pytest.mark.parametrize("backbone", ["frozen", "lora"])
def test_trainer_lowers_the_heldout_pinball_loss(tmp_path, one_thread, backbone):
    model = make_qrm(seed=7)
    train, heldout = _Ratings(model.model, 128, seed=0), _Ratings(model.model, 24, seed=1000)
    before = _heldout_pinball(model, heldout)
    if backbone == "frozen":
        model.model.requires_grad_(False)
        _train(tmp_path, model, train, learning_rate=5e-2, max_steps=60)
    else:
        config = LoraConfig(
            task_type="SEQ_CLS",
            target_modules=["q_proj", "v_proj"],
            modules_to_save=["regression_layer"],  # the labels loss does not reach the gating
        )
        model = get_peft_model(model, config)
        _train(tmp_path, model, train, learning_rate=1e-2, max_steps=100)  # the adapter moves the features
    after = _heldout_pinball(model, heldout)
    assert after < 0.7 * before, (before, after)
    if backbone == "lora":
        lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
        assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # the backbone's adapter moved too


# --- text without the chat template ------------------------------------------------------------


@pytest.fixture
def chat_qrm(tmp_path):
    tokenizer = tiny_tokenizer()
    model = save_tiny_qrm(tmp_path / "qrm", tokenizer, seed=8)
    return model, tokenizer


def test_pipeline_on_plain_text_names_the_chat_template(chat_qrm):
    model, tokenizer = chat_qrm
    classifier = pipeline("text-classification", model=model, tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"prompt_end_pattern .* not found.*apply_chat_template\("):
        classifier("What is two plus two? It is four.")


def test_pipeline_on_chat_text_returns_the_raw_expected_reward(chat_qrm):
    model, tokenizer = chat_qrm
    with torch.no_grad():
        model.gating.logit_scale.fill_(40.0)  # rewards far outside (0, 1), where a sigmoid would show
    messages = [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    classifier = pipeline("text-classification", model=model, tokenizer=tokenizer)
    result = classifier(text)[0]
    with torch.no_grad():
        expected = model(**tokenizer(text, return_tensors="pt")).logits[0, 0].item()
    assert abs(expected) > 1.0
    assert result["score"] == pytest.approx(expected, rel=1e-5)


def test_inputs_embeds_alone_says_what_to_pass(qrm):
    ids, mask = pad_batch(ROWS)
    with pytest.raises(ValueError, match=r"inputs_embeds.*gating_positions.*apply_chat_template"):
        qrm(inputs_embeds=qrm.get_input_embeddings()(ids), attention_mask=mask)


def test_reward_trainer_on_plain_text_names_the_chat_template(tmp_path, chat_qrm, one_thread):
    model, tokenizer = chat_qrm
    model.train()
    trainer = _reward_trainer(tmp_path, model, tokenizer, _preference_rows(tokenizer, 4, chat=False))
    with pytest.raises(ValueError, match="apply_chat_template"):
        trainer.train()


# --- conventions ---------------------------------------------------------------------------------


def test_attention_flags_come_from_the_backbone(monkeypatch, qrm):
    for flag in ("_supports_sdpa", "_supports_flash_attn", "_supports_flex_attn"):
        assert getattr(qrm, flag) == getattr(LlamaModel, flag)
        monkeypatch.setattr(LlamaModel, flag, False)
        assert getattr(qrm, flag) is False


def test_compiles_without_graph_breaks_with_gating_positions(qrm):
    ids, mask = pad_batch(ROWS, side="left")
    # where the pattern starts in each row, shifted by the left padding
    positions = torch.tensor([row.index(PATTERN[0]) for row in ROWS]) + (mask == 0).sum(-1)
    torch._dynamo.reset()
    compiled = torch.compile(qrm, fullgraph=True, backend="eager")  # fullgraph: a graph break is an error
    with torch.no_grad():
        out = compiled(input_ids=ids, attention_mask=mask, gating_positions=positions)
        expected = qrm(input_ids=ids, attention_mask=mask)  # the pattern search, uncompiled
    assert_same_outputs(out, expected)


def test_batch_norm_gating_in_train_mode_with_one_row():
    model = make_qrm(seed=9, gating_batch_norm=True).train()
    ids = torch.tensor([ROWS[0]])
    with pytest.raises(ValueError, match=r"batch of one.*model\.eval\(\)"):
        model(input_ids=ids)
    model.gating.eval()  # the advice works
    model(input_ids=ids)
