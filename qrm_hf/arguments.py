"""argparse types shared by the `qrm` command line and the stage settings (`qrm_hf.training.settings`).

A bad value becomes argparse's one-line usage error. This module imports nothing heavy: it is imported
when the `qrm` parser is built.
"""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (batch sizes, lengths), else a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def risk_spec(spec: str) -> str:
    """argparse type: a `qrm_hf.risk` measure spec (`exp_utility`, `quantile:0.05`, ...), checked by the registry."""
    from . import risk

    try:
        risk.parse(spec)
    except (ValueError, TypeError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return spec


def risk_parameter(name: str):
    """argparse type: a value of the `qrm_hf.risk` parameter `name` (``lam`` > 0, ``alpha`` in (0, 1]),
    checked by the risk registry."""
    from . import risk

    parameter = risk.RISK_PARAMETERS[name]

    def parse(text: str) -> float:
        try:
            return parameter.check(float(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"must {parameter.domain}, got {text}") from None

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def risk_spec_forms() -> str:
    """The spec of every registered risk measure with its parameter's default, for help texts:
    "expectation, exp_utility[:LAM] (1.0), ..., cvar[:ALPHA] (0.1), ..."."""
    from . import risk

    forms = []
    for name, measure in risk.RISK_MEASURES.items():
        parameters = "".join(f"[:{p.name.upper()}] ({p.default})" for p in measure.parameters)
        forms.append(name + parameters)
    return ", ".join(forms)
