"""The fast quantile solver: same objective and optimum as scikit-learn's, same row handling, crossing."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from qrm_hf.training.features import attribute_names_of, load_labelled, write_manifest, write_shard
from qrm_hf.training.quantile_regression import (
    MultiQuantileRegressor,
    crossing_fraction,
    fit_quantiles_ipm,
    quantile_objective,
)

LEVELS = [0.05, 0.25, 0.5, 0.75, 0.95]


def embedding_like(n, d, attributes=2, seed=0, clip=True):
    """Features with a few large-variance directions and a large-mean coordinate; labels in [0, 1]
    from a linear model with heteroscedastic noise, clipped; about a quarter of attribute 1 missing."""
    rng = np.random.default_rng(seed)
    scales = np.full(d, 0.5)
    scales[:3] = 4.0
    X = rng.normal(size=(n, d)) * scales @ np.linalg.qr(rng.normal(size=(d, d)))[0] + 0.3 * rng.normal(size=d)
    X[:, 0] += 5.0
    labels = []
    for _ in range(attributes):
        signal = X @ rng.normal(size=d)
        signal = (signal - signal.mean()) / signal.std()
        noise = (0.05 + 0.1 * np.abs(X[:, 1])) * rng.normal(size=n)
        labels.append(np.clip(0.5 + 0.2 * signal + noise, 0, 1) if clip else 0.5 + 0.2 * signal + noise)
    Y = np.column_stack(labels)
    if attributes > 1:
        Y[rng.random(n) < 0.25, 1] = np.nan
    return X, Y


def relative_gaps(fast, reference, X, Y, alpha):
    """(objective of fast - objective of reference) / objective of reference, [M, K], on the rows used."""
    gaps = []
    for m in range(Y.shape[1]):
        rows = ~np.isnan(Y[:, m])
        args = (X[rows], Y[rows, m])
        ours = quantile_objective(*args, fast.coef_[m], fast.intercept_[m], LEVELS, alpha)
        theirs = quantile_objective(*args, reference.coef_[m], reference.intercept_[m], LEVELS, alpha)
        gaps.append((ours - theirs) / theirs)
    return np.array(gaps)


@pytest.mark.parametrize("fit_intercept", [False, True])
@pytest.mark.parametrize("clip", [True, False])
def test_fast_solver_reaches_the_sklearn_optimum(fit_intercept, clip):
    X, Y = embedding_like(300, 20, clip=clip)
    settings = dict(quantile_levels=LEVELS, alpha=0.003, fit_intercept=fit_intercept)
    fast = MultiQuantileRegressor(solver="fast", **settings).fit(X, Y)
    reference = MultiQuantileRegressor(solver="sklearn", **settings).fit(X, Y)
    gaps = relative_gaps(fast, reference, X, Y, 0.003)
    assert gaps.shape == (2, 5)
    assert gaps.max() <= 1e-3, gaps  # the target: within 0.1% of the optimum at every level
    assert np.abs(gaps).max() <= 1e-5, gaps  # in fact both are optimal to about tol
    if not clip:
        # With clipped labels (ties at 0 and 1) an extreme level can have a whole face of optimal
        # coefficients: HiGHS returns a vertex, the interior-point method the centre of the face. With
        # continuous labels the optimum is unique and both find it.
        np.testing.assert_allclose(fast.coef_, reference.coef_, atol=1e-4)
        np.testing.assert_allclose(fast.intercept_, reference.intercept_, atol=1e-4)
    if not fit_intercept:
        assert np.all(fast.intercept_ == 0)
    assert fast.coef_.shape == (2, 5, 20) and fast.intercept_.shape == (2, 5)
    assert fast.n_samples_.tolist() == reference.n_samples_.tolist() == [300, int((~np.isnan(Y[:, 1])).sum())]
    assert fast.n_iter_.shape == (2, 5) and 0 < fast.n_iter_.max() < 40
    assert np.all(fast.gap_ <= fast.tol)


def test_fast_solver_is_the_default_and_accepts_torch_tensors():
    X, Y = embedding_like(120, 6)
    numpy_fit = MultiQuantileRegressor(LEVELS).fit(X, Y)
    assert numpy_fit.get_params()["solver"] == "fast" and hasattr(numpy_fit, "n_iter_")
    torch_fit = MultiQuantileRegressor(LEVELS).fit(torch.from_numpy(X), torch.from_numpy(Y))
    np.testing.assert_array_equal(torch_fit.coef_, numpy_fit.coef_)
    assert torch_fit.predict(torch.from_numpy(X)).shape == (120, 2, 5)


def test_fast_solver_masks_missing_labels_per_attribute():
    X, Y = embedding_like(200, 8)
    both = MultiQuantileRegressor(LEVELS, fit_intercept=True).fit(X, Y)
    labelled = ~np.isnan(Y[:, 1])
    alone = MultiQuantileRegressor(LEVELS, fit_intercept=True).fit(X[labelled], Y[labelled, 1])
    np.testing.assert_allclose(both.coef_[1], alone.coef_[0], atol=1e-10)
    np.testing.assert_allclose(both.intercept_[1], alone.intercept_[0], atol=1e-10)
    assert both.n_samples_.tolist() == [200, int(labelled.sum())]


def test_max_samples_selects_the_same_rows_as_the_sklearn_path():
    X, Y = embedding_like(200, 8)
    settings = dict(quantile_levels=LEVELS, max_samples_per_attribute=60, random_state=3)
    fast = MultiQuantileRegressor(**settings).fit(X, Y)
    reference = MultiQuantileRegressor(solver="sklearn", **settings).fit(X, Y)
    assert fast.n_samples_.tolist() == reference.n_samples_.tolist() == [60, 60]
    rng = np.random.default_rng(3)  # the documented selection: seeded, per attribute in turn, sorted
    for m in range(2):
        rows = np.sort(rng.choice(np.flatnonzero(~np.isnan(Y[:, m])), 60, replace=False))
        alone = MultiQuantileRegressor(LEVELS).fit(X[rows], Y[rows, m])
        np.testing.assert_allclose(fast.coef_[m], alone.coef_[0], atol=1e-10)
        ours = quantile_objective(X[rows], Y[rows, m], fast.coef_[m], fast.intercept_[m], LEVELS, 0.003)
        theirs = quantile_objective(
            X[rows], Y[rows, m], reference.coef_[m], reference.intercept_[m], LEVELS, 0.003
        )
        assert np.all(ours <= theirs * (1 + 1e-5))


@pytest.mark.parametrize("fit_intercept", [False, True])
def test_fast_solver_with_more_features_than_rows(fit_intercept):
    X, Y = embedding_like(40, 90, attributes=1)
    y = Y[:, 0]
    for alpha in (0.003, 1e-5):
        coef, intercept, n_iter, gap = fit_quantiles_ipm(X, y, LEVELS, alpha, fit_intercept=fit_intercept)
        assert coef.shape == (5, 90) and np.all(gap <= 1e-6) and n_iter.max() < 60
        reference = MultiQuantileRegressor(LEVELS, alpha=alpha, fit_intercept=fit_intercept, solver="sklearn")
        reference.fit(X, y)
        ours = quantile_objective(X, y, coef, intercept, LEVELS, alpha)
        theirs = quantile_objective(X, y, reference.coef_[0], reference.intercept_[0], LEVELS, alpha)
        assert np.all(ours <= theirs * (1 + 1e-4) + 1e-12), (ours, theirs)


@pytest.mark.parametrize(
    ("case", "y"),
    [("constant labels", np.full(50, 0.7)), ("all zero", np.zeros(50)), ("one row", None)],
)
def test_fast_solver_degenerate_problems(case, y):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 4))
    X[:, 2] = 0.0  # a constant column
    X[:, 3] = X[:, 1]  # a duplicate column
    if y is None:
        X, y = X[:1], np.array([0.4])
    for fit_intercept in (False, True):
        coef, intercept, _, gap = fit_quantiles_ipm(X, y, LEVELS, 0.003, fit_intercept=fit_intercept)
        ours = quantile_objective(X, y, coef, intercept, LEVELS, 0.003)
        reference = MultiQuantileRegressor(LEVELS, fit_intercept=fit_intercept, solver="sklearn").fit(X, y)
        theirs = quantile_objective(X, y, reference.coef_[0], reference.intercept_[0], LEVELS, 0.003)
        assert np.all(ours <= theirs * (1 + 1e-4) + 1e-9), (case, ours, theirs)


def test_fast_solver_warns_when_it_stops_early():
    X, Y = embedding_like(100, 5, attributes=1)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        heads = MultiQuantileRegressor(LEVELS, max_iter=2).fit(X, Y)
    assert heads.n_iter_.max() == 2 and heads.gap_.max() > heads.tol


def test_crossing_fraction_counts_adjacent_pairs_before_sorting():
    predictions = np.array([[0.1, 0.3, 0.2], [0.5, 0.4, 0.6], [0.1, 0.2, 0.3], [0.3, 0.3, 0.3]])
    assert crossing_fraction(predictions) == pytest.approx(2 / 8)  # equal quantiles do not cross
    assert crossing_fraction(predictions.reshape(2, 2, 3)) == pytest.approx(2 / 8)  # [n, M, K]
    assert crossing_fraction(np.sort(predictions, axis=-1)) == 0.0
    assert crossing_fraction(predictions[:, ::-1]) == pytest.approx(4 / 8)
    assert crossing_fraction(np.zeros((4, 1))) == 0.0  # one level: no pair


@pytest.mark.parametrize("solver", ["fast", "sklearn"])
@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(levels=[0.5, 0.2]), "strictly increasing"),
        (dict(levels=[0.5, 0.5]), "strictly increasing"),
        (dict(levels=[0.0, 0.5]), "inside"),
        (dict(levels=[]), "inside"),
        (dict(y="all-nan"), "no label"),
        (dict(y="inf"), "infinite"),
        (dict(x="nan"), "NaN or infinite"),
        (dict(x="short"), "same n"),
        (dict(alpha=-1.0), "alpha"),
    ],
)
def test_bad_input_is_refused_by_both_solvers(solver, change, match):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 3)), rng.random(20)
    if change.get("y") == "all-nan":
        y = np.column_stack([y, np.full(20, np.nan)])
    if change.get("y") == "inf":
        y[3] = np.inf
    if change.get("x") == "nan":
        X[2, 1] = np.nan
    if change.get("x") == "short":
        X = X[:10]
    heads = MultiQuantileRegressor(
        change.get("levels", [0.5]), alpha=change.get("alpha", 0.003), solver=solver
    )
    with pytest.raises(ValueError, match=match):
        heads.fit(X, y)


def test_unknown_solver_is_refused():
    with pytest.raises(ValueError, match="Unknown solver 'highs'"):
        MultiQuantileRegressor([0.5], solver="highs").fit(np.zeros((3, 2)), np.zeros(3))


def write_features(directory, X, Y, shard_size, kind="attribute"):
    names = []
    for number, start in enumerate(range(0, len(X), shard_size)):
        names.append(f"features-{number:05d}.safetensors")
        rows = slice(start, start + shard_size)
        tensors = {
            "embeddings": torch.tensor(X[rows], dtype=torch.float32),
            "prompt_embeddings": torch.zeros(len(X[rows]), X.shape[1]),
            "index": torch.arange(len(X))[rows],
            "labels": torch.tensor(Y[rows], dtype=torch.float32),
        }
        write_shard(directory / names[-1], tensors)
    settings = {"kind": kind, "attributes": [f"attribute-{m}" for m in range(Y.shape[1])], "backbone": "tiny"}
    write_manifest(directory, {"settings": settings, "complete": True, "shards": names})
    return directory


def test_fitting_on_the_selected_rows_read_from_features_equals_fit_on_all_arrays(tmp_path):
    X, Y = embedding_like(150, 6)
    X, Y = X.astype(np.float32), Y.astype(np.float32)  # as stored in the shards
    directory = write_features(tmp_path / "features", X, Y, shard_size=40)
    settings = dict(quantile_levels=LEVELS, max_samples_per_attribute=70, random_state=1)
    frugal = MultiQuantileRegressor(**settings)
    names = attribute_names_of([directory])
    X_selected, Y_selected = load_labelled([directory], names, select_rows=frugal.select_rows)
    assert len(X_selected) < len(X)  # only the selected rows were read
    frugal.fit(X_selected, Y_selected)
    from_arrays = MultiQuantileRegressor(**settings).fit(X, Y)
    np.testing.assert_array_equal(frugal.coef_, from_arrays.coef_)
    np.testing.assert_array_equal(frugal.intercept_, from_arrays.intercept_)
    assert frugal.n_samples_.tolist() == [70, 70]


def test_the_feature_reader_refuses_preference_or_unfinished_features(tmp_path):
    X, Y = embedding_like(30, 4)
    write_features(tmp_path / "pairs", X, Y, shard_size=40, kind="preference")
    select = MultiQuantileRegressor(LEVELS).select_rows
    with pytest.raises(ValueError, match="holds preference features; this step needs attribute"):
        load_labelled([tmp_path / "pairs"], ["attribute-0"], select_rows=select)
    with pytest.raises(FileNotFoundError, match="not a feature directory of `qrm extract`"):
        load_labelled([tmp_path / "missing"], ["attribute-0"], select_rows=select)
    directory = write_features(tmp_path / "partial", X, Y, shard_size=40)
    write_manifest(directory, {"settings": {"kind": "attribute"}, "complete": False})
    with pytest.raises(ValueError, match="did not finish"):
        load_labelled([directory], ["attribute-0"], select_rows=select)


def test_predictions_of_the_fast_solver_rarely_cross_on_held_out_data():
    X, Y = embedding_like(400, 10, attributes=1)
    heads = MultiQuantileRegressor(LEVELS).fit(X[:300], Y[:300])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fraction = crossing_fraction(heads.predict(X[300:]))
    assert 0.0 <= fraction < 0.1


def annotated_responses(n_responses=30, annotators=3, d=8, seed=0):
    """Each response (one feature row) rated by several annotators: its rows are identical in X.

    Attribute 0 is a linear function of two features plus annotator noise (a small penalty fits it);
    attribute 1 is pure annotator noise (only a penalty that zeroes every weight avoids fitting noise).
    """
    rng = np.random.default_rng(seed)
    responses = rng.normal(size=(n_responses, d))
    X = np.repeat(responses, annotators, axis=0)
    signal = 0.5 + 0.15 * (X[:, 0] - X[:, 1])
    Y = np.column_stack([signal, np.full(len(X), 0.5)]) + 0.05 * rng.normal(size=(len(X), 2))
    return X, Y, np.repeat(np.arange(n_responses), annotators)


def test_alpha_grid_picks_the_cross_validated_best_per_attribute():
    from sklearn.model_selection import GroupKFold

    from qrm_hf.evaluation import pinball_loss

    X, Y, response = annotated_responses()
    grid = [1e-4, 1e-2, 1.0]
    heads = MultiQuantileRegressor(LEVELS, alpha=grid, cv=3, fit_intercept=True).fit(X, Y)

    # The same selection written out by hand: folds over responses, sorted quantiles, row-weighted loss.
    expected = np.zeros((2, len(grid)))
    for train, test in GroupKFold(n_splits=3).split(X, groups=response):
        for a, alpha in enumerate(grid):
            fold = MultiQuantileRegressor(LEVELS, alpha=alpha, fit_intercept=True).fit(X[train], Y[train])
            predictions = np.sort(fold.predict(X[test]), axis=-1)
            expected[:, a] += pinball_loss(Y[test], predictions, LEVELS).mean(1) * len(test) / len(X)
    np.testing.assert_allclose(heads.cv_pinball_, expected, rtol=1e-6)
    # The signal needs a small penalty, the pure-noise attribute the one that drops every feature.
    assert heads.alpha_.tolist() == [grid[expected[0].argmin()], grid[expected[1].argmin()]]
    assert heads.alpha_[0] < 1.0 and heads.alpha_[1] == 1.0
    np.testing.assert_allclose(np.abs(heads.coef_[1]).max(), 0, atol=1e-6)
    # The refit on all rows with the chosen penalties equals a plain fit with them.
    for m, alpha in enumerate(heads.alpha_):
        plain = MultiQuantileRegressor(LEVELS, alpha=alpha, fit_intercept=True).fit(X, Y[:, m])
        np.testing.assert_allclose(heads.predict(X)[:, m], plain.predict(X)[:, 0], atol=1e-5)


def test_alpha_cv_keeps_the_rows_of_one_response_in_one_fold():
    """Folds that split a response's identical rows would reward memorising it: the unpenalised fit.

    Here every response has its own label mean that no feature explains; with more features than
    responses an unpenalised fit memorises the training responses, which only leaks when a response's
    rows sit on both sides of a fold.
    """
    rng = np.random.default_rng(1)
    responses, annotators = 40, 5
    X = np.repeat(rng.normal(size=(responses, 60)), annotators, axis=0)
    Y = np.repeat(rng.uniform(0.2, 0.8, responses), annotators) + 0.02 * rng.normal(size=len(X))
    heads = MultiQuantileRegressor(LEVELS, alpha=[0.0, 10.0], cv=4, fit_intercept=True).fit(X, Y)
    assert heads.alpha_.tolist() == [10.0]  # memorising does not generalise to unseen responses


@pytest.mark.parametrize(
    ("alpha", "cv", "match"),
    [("auto", 5, "number, a list"), ([], 5, "non-empty"), ([0.1, -1], 5, ">= 0"), ("cv", 1, "cv must")],
)
def test_bad_alpha_grids_are_refused(alpha, cv, match):
    X, Y, _ = annotated_responses(n_responses=10)
    with pytest.raises(ValueError, match=match):
        MultiQuantileRegressor(LEVELS, alpha=alpha, cv=cv).fit(X, Y)


def test_fixed_alpha_records_it_per_attribute():
    X, Y, _ = annotated_responses(n_responses=10)
    heads = MultiQuantileRegressor(LEVELS, alpha=0.01).fit(X, Y)
    assert heads.alpha_.tolist() == [0.01, 0.01] and not hasattr(heads, "cv_pinball_")
