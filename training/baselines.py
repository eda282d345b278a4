"""What `qrm evaluate --baselines/--bootstrap` reports next to a QRM, fitted on the training features of
`qrm extract`: the ridge and heteroscedastic Gaussian baselines (`fit_baselines`) and the quantile heads
refitted on bootstrap resamples (`fit_bootstrap_members`). `qrm_hf.evaluation.evaluate_ratings` measures
them on the held-out rows."""

from __future__ import annotations

from .bootstrap import HeadEnsemble, fit_bootstrap_heads
from .features import load_labelled, read_manifest
from .quantile_regression import HeteroscedasticGaussian, MultiQuantileRegressor, RidgeResidualQuantiles


def fit_baselines(feature_dirs, attributes, levels, label_range=None) -> dict:
    """The ridge + cross-validated residual quantiles and the heteroscedastic Gaussian baselines, fitted
    on attribute features of `qrm extract` (labels already in [0, 1]). Returns {name: estimator}; the
    features' attributes must be `attributes`, and their label ranges `label_range` when given."""
    for directory in feature_dirs:
        settings = read_manifest(directory, kind="attribute")["settings"]
        missing = [name for name in attributes if name not in settings["attributes"]]
        if missing:
            raise ValueError(f"The features in {directory} have no labels for {missing}.")
        ranges = {name: tuple(value) for name, value in settings.get("label_ranges", {}).items()}
        if label_range is not None and any(
            ranges.get(name, tuple(label_range)) != tuple(label_range) for name in attributes
        ):
            raise ValueError(
                f"The features in {directory} were normalised with the label ranges {ranges}, not {tuple(label_range)}."
            )
    X, Y = load_labelled(feature_dirs, list(attributes))
    return {
        "ridge": RidgeResidualQuantiles(list(levels)).fit(X, Y),
        "gaussian": HeteroscedasticGaussian(list(levels)).fit(X, Y),
    }


def fit_bootstrap_members(model, feature_dirs, count: int) -> HeadEnsemble:
    """The model's quantile heads refitted `count` >= 2 times on bootstrap resamples of the training
    responses in `feature_dirs` (the paper's penalty, fast solver), with the model's gating network; their
    ``attribute_quantiles`` give [E, n, M, K]."""
    if count < 2:
        raise ValueError(f"A bootstrap needs at least 2 members, got {count}.")
    return fit_bootstrap_heads(
        feature_dirs,
        count,
        estimator=MultiQuantileRegressor(model.config.quantile_levels),
        attribute_names=list(model.config.attribute_names),
        gating_network=model.gating,
    )
