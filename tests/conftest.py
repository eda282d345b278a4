import os
import subprocess
import sys
import textwrap

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, PreTrainedTokenizerFast

import qrm_hf  # noqa: F401  (registers the Auto classes)
from qrm_hf import QRMConfig, QRMForSequenceClassification

PAD, BOS = 0, 1
PATTERN = [7, 8, 9]  # stands for the tokens that open the assistant turn


# Llama-3-8B-Instruct's chat template, verbatim (contents are trimmed; every turn ends with <|eot_id|>).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def bpe_tokenizer(
    corpus, specials, vocab_size: int, pre_tokenizer=None, **special_tokens
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of `vocab_size` tokens trained on `corpus`, with `specials` as special tokens
    (`pre_tokenizer`: byte level without a prefix space unless given)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = (
        pre_tokenizer if pre_tokenizer is not None else pre_tokenizers.ByteLevel(add_prefix_space=False)
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special_tokens)


def tiny_backbone_config(**overrides) -> LlamaConfig:
    values = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=128,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=2,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def make_qrm(seed: int = 0, **config_overrides) -> QRMForSequenceClassification:
    """A tiny random QRM whose transform, logit scale and gating are all non-trivial."""
    torch.manual_seed(seed)
    values = dict(
        backbone_config=tiny_backbone_config(),
        attribute_names=["helpfulness", "correctness", "safety"],
        quantile_levels=[0.1, 0.25, 0.5, 0.75, 0.9],
        gating_hidden_dim=16,
        gating_n_hidden=2,
        prompt_end_pattern=PATTERN,
    )
    values.update(config_overrides)
    model = QRMForSequenceClassification(QRMConfig(**values)).eval()
    with torch.no_grad():
        model.regression_layer.weight.normal_(0, 0.5)
        m = model.config.num_attributes
        model.reward_transform_matrix.copy_(torch.eye(m) + 0.2 * torch.randn(m, m))
        model.gating.logit_scale.fill_(2.5)
        for module in model.gating.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return model


def conversation(prompt_len: int, response_len: int, seed: int) -> list[int]:
    """BOS, prompt tokens, the pattern, response tokens (ids in 10..63, so never pad or pattern)."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(10, 64, (prompt_len,), generator=g).tolist()
    response = torch.randint(10, 64, (response_len,), generator=g).tolist()
    return [BOS, *prompt, *PATTERN, *response]


def pad_batch(rows: list[list[int]], side: str = "right"):
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), PAD)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(length - len(row), length)
        ids[i, span] = torch.tensor(row)
        mask[i, span] = 1
    return ids, mask


@pytest.fixture
def one_thread():
    """Tiny models run much faster on one thread (and do not fight over two busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def qrm():
    return make_qrm()


def run_cli(capsys, *argv) -> tuple[int, str]:
    """(exit status, stderr) of `qrm ARGV` run in this process (`qrm_hf.cli.main`)."""
    from qrm_hf.cli import main

    try:
        main([str(arg) for arg in argv])
        code = 0
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


def run_without_qrm_hf(script: str, tmp_path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter where `import qrm_hf` fails, as on a machine without qrm-hf."""
    blocker = textwrap.dedent(
        """
        import sys
        class _NoQrmHf:
            def find_spec(self, name, path=None, target=None):
                if name == "qrm_hf" or name.startswith("qrm_hf."):
                    raise ImportError("qrm_hf is blocked in this process")
        sys.meta_path.insert(0, _NoQrmHf())
        """
    )
    path = tmp_path / "without_qrm_hf.py"
    path.write_text(blocker + textwrap.dedent(script))
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "hf_modules"), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=timeout
    )
