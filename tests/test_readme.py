"""The README's Python example runs as printed against a saved QRM and gives what it says it gives."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from test_model_card import python_blocks
from test_trl import save_tiny_qrm, tiny_tokenizer

README = Path(__file__).resolve().parent.parent / "README.md"
DEMO_MODEL = "outputs/demo/model"

# Appended to the README's example: what its names hold, for the test to check.
REPORT = """
import json as _json
_json.dump({{
    "model_module": type(model).__module__,
    "input_ids": inputs["input_ids"].tolist(),
    "logits": out.logits.tolist(),
    "reward_quantiles": out.reward_quantiles.tolist(),
    "attribute_quantiles": out.attribute_quantiles.tolist(),
    "exp_utility": risk.exponential_utility(out.reward_quantiles, lam=1.0).tolist(),
    "cvar": risk.cvar(out.reward_quantiles, model.config.quantile_levels, alpha=0.1).tolist(),
    "cvar_by_name": risk.resolve("cvar:0.1", model.config.quantile_levels)(out.reward_quantiles).tolist(),
}}, open({path!r}, "w"))
"""


def test_the_readme_usage_example_runs_on_a_saved_qrm(tmp_path):
    """The first Python block of the README, with the demo model's path replaced by a tiny saved QRM, loads it
    through the installed classes and prints the model's own expected reward, quantiles and risk values."""
    blocks = [block for block in python_blocks(README.read_text()) if DEMO_MODEL in block]
    assert blocks, f"the README's usage example no longer loads {DEMO_MODEL}"
    model = save_tiny_qrm(tmp_path / "qrm", tiny_tokenizer())
    script = tmp_path / "example.py"
    report = tmp_path / "report.json"
    script.write_text(blocks[0].replace(DEMO_MODEL, str(tmp_path / "qrm")) + REPORT.format(path=str(report)))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-5000:]
    printed = json.loads(report.read_text())
    assert printed["model_module"].startswith("qrm_hf.")
    with torch.no_grad():
        expected = model(input_ids=torch.tensor(printed["input_ids"]))
    for name in ("logits", "reward_quantiles", "attribute_quantiles"):
        torch.testing.assert_close(torch.tensor(printed[name]), getattr(expected, name))
    quantiles = expected.reward_quantiles.double()
    # Paper eq. 4 averaged over the K quantile estimates, computed here by hand.
    torch.testing.assert_close(
        torch.tensor(printed["exp_utility"], dtype=torch.float64),
        (-torch.exp(-quantiles)).mean(-1),
        rtol=1e-5,
        atol=1e-6,
    )
    assert printed["cvar"] == printed["cvar_by_name"]
    # The mean of the worst 10 % lies at or below the 10 % quantile.
    assert all(c <= q[0] + 1e-6 for c, q in zip(printed["cvar"], printed["reward_quantiles"], strict=True))
