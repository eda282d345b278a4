"""Typed stage outputs: heads / transform / gating round-trip through save and load, and a
damaged or mismatched output is refused with the file and the reason named."""

import json

import pytest
import torch

from qrm_hf.training.outputs import GatingOutput, QuantileHeadsOutput, TransformOutput

NAMES, LEVELS, HIDDEN = ["a", "b"], [0.25, 0.5, 0.75], 4


def heads() -> QuantileHeadsOutput:
    generator = torch.Generator().manual_seed(0)
    return QuantileHeadsOutput(
        torch.randn(2, 3, HIDDEN, generator=generator),
        torch.randn(2, 3, generator=generator),
        {"attribute_names": NAMES, "quantile_levels": LEVELS, "hidden_size": HIDDEN, "alpha": 0.003},
    )


def test_outputs_round_trip_bit_for_bit(tmp_path):
    original = heads()
    original.save(tmp_path)
    loaded = QuantileHeadsOutput.load(tmp_path)
    assert torch.equal(loaded.coef, original.coef) and torch.equal(loaded.intercept, original.intercept)
    assert (
        loaded.info == original.info and loaded.attribute_names == NAMES and loaded.quantile_levels == LEVELS
    )
    transform = TransformOutput(torch.tensor([[1.0, 0.0], [-0.5, 1.0]]), {"attribute_names": NAMES})
    transform.save(tmp_path)
    assert torch.equal(TransformOutput.matrix(tmp_path, NAMES), transform.transform)
    assert torch.equal(TransformOutput.matrix(None, NAMES), torch.eye(2))
    gating = GatingOutput(
        {"w": torch.arange(6.0).reshape(2, 3)}, {"attribute_names": NAMES, "hidden_size": HIDDEN}
    )
    gating.save(tmp_path)
    loaded_gating = GatingOutput.load(tmp_path)
    assert torch.equal(loaded_gating.state_dict["w"], gating.state_dict["w"])
    loaded_gating.check_fits(loaded)


def test_mismatched_outputs_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="qrm fit-quantiles"):
        QuantileHeadsOutput.load(tmp_path)
    heads().save(tmp_path)
    info = json.loads((tmp_path / "heads.json").read_text())
    (tmp_path / "heads.json").write_text(json.dumps({**info, "quantile_levels": [0.5]}))
    with pytest.raises(ValueError, match=r"coef has shape \[2, 3, 4\], expected \[2, 1, H\]"):
        QuantileHeadsOutput.load(tmp_path)
    with pytest.raises(ValueError, match=r"transform has shape \[3, 3\], expected \[2, 2\]"):
        TransformOutput(torch.eye(3), {"attribute_names": NAMES}).save(tmp_path)
    TransformOutput(torch.eye(2), {"attribute_names": ["b", "a"]}).save(tmp_path)
    with pytest.raises(ValueError, match="is for attributes"):
        TransformOutput.matrix(tmp_path, NAMES)
    gating = GatingOutput({}, {"attribute_names": NAMES, "hidden_size": 8})
    with pytest.raises(ValueError, match="hidden size 8"):
        gating.check_fits(heads(), "g")


def test_gating_network_from_sizes_is_the_config_network():
    """`QRMGatingNetwork(QRMGatingSizes(...))` (no backbone config) builds the network of a `QRMConfig`:
    same keys, shapes and outputs, for both block formats."""
    from conftest import tiny_backbone_config
    from qrm_hf import QRMConfig
    from qrm_hf.modeling.modeling_qrm import QRMGatingNetwork, QRMGatingSizes

    for batch_norm in (False, True):
        config = QRMConfig(
            backbone_config=tiny_backbone_config(),
            attribute_names=["a", "b", "c"],
            gating_hidden_dim=8,
            gating_n_hidden=2,
            gating_temperature=3.0,
            gating_batch_norm=batch_norm,
        )
        from_config = QRMGatingNetwork(config).eval()
        sizes = QRMGatingSizes(config.hidden_size, 3, 8, 2, 3.0, batch_norm)
        from_sizes = QRMGatingNetwork(sizes).eval()
        expected = from_config.state_dict()
        assert {k: v.shape for k, v in from_sizes.state_dict().items()} == {
            k: v.shape for k, v in expected.items()
        }
        from_sizes.load_state_dict(expected)
        x = torch.randn(5, config.hidden_size, generator=torch.Generator().manual_seed(1))
        assert torch.equal(from_sizes(x), from_config(x))


def test_the_docs_name_the_files_each_output_writes():
    """Every page and docstring that names a stage's files (`X.safetensors + Y.json`) names the pair an
    output class writes (`<stem>.safetensors` + `<stem>.json`), e.g. the debias stage's transform.json."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    stems = {output.stem for output in (QuantileHeadsOutput, TransformOutput, GatingOutput)}
    pair = re.compile(r"(\w+)\.safetensors`?(?: \([^)]*\))? \+ `?(\w+)\.json")
    pages = [*root.glob("*.md"), *root.glob("docs/*.md")]
    sources = [path for folder in ("qrm_hf", "training") for path in (root / folder).glob("*.py")]
    named = [(path.name, *found) for path in pages + sources for found in pair.findall(path.read_text())]
    assert len(named) >= len(stems)
    assert [entry for entry in named if entry[1] != entry[2] or entry[1] not in stems] == []
