"""Stage 2, fit-quantiles: linear quantile-regression heads for every attribute and level.

`MultiQuantileRegressor` is a scikit-learn style estimator. For each attribute m and level tau_k it
minimises the paper's objective

    (1/n_m) * sum_i rho_tau(y_im - x_i . w - b) + alpha * ||w||_1,    rho_tau(r) = r * (tau - [r < 0])

over the n_m rows where attribute m is labelled (the intercept b is not penalised), with one of two
solvers of the same objective:

* ``solver="fast"`` (default): a batched primal-dual interior-point method in torch (float64, CPU or
  GPU) that solves all K levels of an attribute at once, stopping on a certified relative duality gap;
* ``solver="sklearn"``: scikit-learn's `QuantileRegressor` (HiGHS linear program) per attribute and
  level, as the paper did.

How the fast solver works
-------------------------
L1-penalised quantile regression is a quantile regression without penalty on augmented data: for every
feature j, two pseudo-rows (+lambda_j e_j, 0) and (-lambda_j e_j, 0) add
rho_tau(-lambda_j w_j) + rho_tau(lambda_j w_j) = lambda_j |w_j| to the loss (lambda_j = n alpha in the
sum form). The solver runs Mehrotra's predictor-corrector, with Gondzio's centrality correctors, on
the dual linear program of that quantile regression (the Frisch-Newton method of Portnoy & Koenker,
1997):

    max_a  y^T a   s.t.  A^T a = (1 - tau) A^T 1,  0 <= a <= 1,     A = [X, 1; Lambda; -Lambda]

(the column of ones only with an intercept), whose multipliers are the coefficients. Each iteration
factorises one (d + 1) x (d + 1) matrix X^T D X + diag(...) per level (D diagonal, different for each level), so the levels are solved as a
batch; the features are centred (with an intercept) and scaled to unit root mean square first, with the
penalty rescaled to match. Iterates stay primal and dual feasible, so at every iteration
P(w) - y^T theta bounds the distance of the current objective P(w) to the optimum; a level stops when
this gap is below `tol` times P(w). The iteration count barely depends on the size (about 8-15), so
the cost is about 10 * K * (2 n d^2 + d^3 / 3) flops per attribute: linear in n, and cubic in d when
there are more features than rows.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from joblib import Parallel, delayed
from scipy import sparse
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import QuantileRegressor, Ridge
from sklearn.model_selection import GroupKFold, cross_val_predict
from tqdm.auto import tqdm

from ..evaluation import pinball_loss
from .settings import HeadsSettings

SOLVERS = ("fast", "sklearn")
# The penalties `alpha="cv"` chooses from, around the paper's 0.003.
ALPHA_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


def _fit_one(X, y, tau, alpha, fit_intercept, solver, sample_weight=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = QuantileRegressor(quantile=tau, alpha=alpha, fit_intercept=fit_intercept, solver=solver).fit(
            X, y, sample_weight=sample_weight
        )
    return model.coef_, model.intercept_


def quantile_objective(X, y, coef, intercept, levels, alpha) -> np.ndarray:
    """scikit-learn's `QuantileRegressor` objective, (1/n) sum rho_tau(y - X w - b) + alpha ||w||_1.

    X [n, d], y [n], coef [K, d], intercept [K], levels [K] -> [K], one value per level.
    """
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    coef, intercept = np.asarray(coef, dtype=np.float64), np.asarray(intercept, dtype=np.float64)
    levels = np.asarray(levels, dtype=np.float64)
    residual = y[:, None] - X @ coef.T - intercept[None]
    loss = np.maximum(levels * residual, (levels - 1) * residual).mean(0)
    return loss + alpha * np.abs(coef).sum(1)


def crossing_fraction(predictions) -> float:
    """Fraction of adjacent level pairs whose predicted quantiles cross (q_k > q_{k+1}).

    predictions [..., K], levels increasing along the last axis, before any sorting (e.g. the output
    of `MultiQuantileRegressor.predict`, [n, M, K]). 0 when K < 2.
    """
    predictions = np.asarray(predictions, dtype=np.float64)
    if predictions.ndim == 0 or predictions.shape[-1] < 2:
        return 0.0
    return float(np.mean(np.diff(predictions, axis=-1) < 0))


def _weighted_gram(A: torch.Tensor, q: torch.Tensor, chunk_elements: int = 1 << 24) -> torch.Tensor:
    """A^T diag(q_c) A for every column c of q: A [n, p], q [n, C] -> [C, p, p], in row chunks.

    From p = 256 on, only the blocks on and below the diagonal are multiplied (about half the work
    for large p) and the upper triangle is mirrored.
    """
    n, p = A.shape
    out = A.new_zeros(q.shape[1], p, p)
    block = p if p < 256 else (64 if p < 512 else 128)
    step = max(1, chunk_elements // max(p, 1))
    for start in range(0, n, step):
        rows = A[start : start + step]
        for c in range(q.shape[1]):
            weighted = rows * q[start : start + step, c, None]
            for first in range(0, p, block):
                last = min(first + block, p)
                out[c, first:last, :last].addmm_(rows[:, first:last].T, weighted[:, :last])
    if block < p:
        lower = out.tril()
        out = lower + lower.tril(-1).mT
    return out


def _cholesky(M: torch.Tensor) -> torch.Tensor:
    """Batched Cholesky factor; matrices that are not numerically positive definite get a small ridge."""
    L, info = torch.linalg.cholesky_ex(M)
    if bool((info > 0).any()):
        scale = M.diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp_min(1e-300)
        eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
        for jitter in (1e-12, 1e-10, 1e-8, 1e-6, 1e-4):
            bad = info > 0
            L_bad, info_bad = torch.linalg.cholesky_ex(M[bad] + jitter * scale[bad, None, None] * eye)
            L[bad], info[bad] = L_bad, info_bad
            if not bool((info > 0).any()):
                break
        else:
            raise RuntimeError("The interior-point normal equations are singular; try a larger alpha.")
    return L


class _PenalisedDesign:
    """The augmented design A_aug = [A; Lambda; -Lambda] of the penalised problem, never formed.

    A [n, p] (the scaled features, then a column of ones with an intercept), lam [d] the penalty of
    the first d columns. Vectors over rows are [N, C] with N = n + 2 d: data rows, then the +lambda and
    -lambda pseudo-rows.
    """

    def __init__(self, A: torch.Tensor, lam: torch.Tensor):
        self.A, self.lam = A, lam
        self.n, self.p = A.shape
        self.d = lam.shape[0]
        self.N = self.n + 2 * self.d
        self.column_sums = A.sum(0)[:, None]  # A_aug^T 1 (the pseudo-rows cancel)

    def t_matvec(self, v: torch.Tensor) -> torch.Tensor:
        """A_aug^T v: [N, C] -> [p, C]."""
        n, d = self.n, self.d
        out = self.A.T @ v[:n]
        out[:d] += self.lam[:, None] * (v[n : n + d] - v[n + d :])
        return out

    def matvec(self, beta: torch.Tensor) -> torch.Tensor:
        """A_aug beta: [p, C] -> [N, C]."""
        penalty = self.lam[:, None] * beta[: self.d]
        return torch.cat([self.A @ beta, penalty, -penalty])

    def factor(self, q: torch.Tensor) -> torch.Tensor:
        """Cholesky factors of A_aug^T diag(q_c) A_aug for every column c: q [N, C] -> [C, p, p]."""
        n, d = self.n, self.d
        gram = _weighted_gram(self.A, q[:n])
        diagonal = torch.arange(d, device=q.device)
        gram[:, diagonal, diagonal] += (self.lam[:, None].pow(2) * (q[n : n + d] + q[n + d :])).T
        return _cholesky(gram)


def _max_step(v: torch.Tensor, dv: torch.Tensor) -> torch.Tensor:
    """Largest step per column keeping v + step * dv >= 0."""
    return torch.where(dv < 0, -v / dv, torch.full_like(v, float("inf"))).amin(0)


class _NewtonSystem:
    """The Newton system of one interior-point step at the current point, factorised once: its search
    directions for any complementarity right-hand side, and their longest feasible step lengths."""

    def __init__(self, design: _PenalisedDesign, c, tau, x, z, slack_low, slack_up, beta):
        self.x, self.z, self.slack_low, self.slack_up = x, z, slack_low, slack_up
        self.design = design
        self.primal_residual = (1 - tau) * design.column_sums - design.t_matvec(x)  # round-off only
        self.dual_residual = c - design.matvec(beta) - slack_low + slack_up  # round-off only
        self.q = 1 / (slack_low / x + slack_up / z)
        self.L = design.factor(self.q)

    def direction(self, r_low, r_up):
        """(dbeta, dx, dslack_low, dslack_up) for the complementarity residuals r_low, r_up."""
        x, z, design = self.x, self.z, self.design
        rows = self.dual_residual - r_low / x + r_up / z
        rhs = self.primal_residual + design.t_matvec(self.q * rows)
        dbeta = torch.cholesky_solve(rhs.T.unsqueeze(-1), self.L).squeeze(-1).T
        dx = self.q * (design.matvec(dbeta) - rows)
        return dbeta, dx, (r_low - self.slack_low * dx) / x, (r_up + self.slack_up * dx) / z

    def step_lengths(self, dx, dlow, dup):
        """Longest primal and dual steps per column that keep every variable >= 0 (not clamped to 1)."""
        primal = torch.minimum(_max_step(self.x, dx), _max_step(self.z, -dx))
        dual = torch.minimum(_max_step(self.slack_low, dlow), _max_step(self.slack_up, dup))
        return primal, dual

    def products(self, primal_step, dual_step, dx, dlow, dup):
        """The complementarity products x * slack_low and z * slack_up after the given steps."""
        low = (self.x + primal_step * dx) * (self.slack_low + dual_step * dlow)
        up = (self.z - primal_step * dx) * (self.slack_up + dual_step * dup)
        return low, up


def _gondzio_correctors(system: _NewtonSystem, directions, steps, residuals, sigma_mu, correctors: int):
    """Up to `correctors` of Gondzio's centrality correctors: push the complementarity products of a longer
    trial step into [0.1, 10] * sigma_mu; keep the new direction for the levels where it allows longer
    steps. Returns the (directions, raw step lengths) kept."""
    (primal_raw, dual_raw), (r_low, r_up) = steps, residuals
    for _ in range(correctors):
        primal_step, dual_step = primal_raw.clamp(max=1), dual_raw.clamp(max=1)
        trial_primal, trial_dual = (
            (1.5 * primal_step + 0.3).clamp(max=1),
            (1.5 * dual_step + 0.3).clamp(max=1),
        )
        low, up = system.products(trial_primal, trial_dual, *directions[1:])
        lower, upper = 0.1 * sigma_mu, 10 * sigma_mu
        low = (low.clamp(lower, upper) - low).clamp_min(-upper)
        up = (up.clamp(lower, upper) - up).clamp_min(-upper)
        new = system.direction(r_low + low, r_up + up)
        new_primal, new_dual = system.step_lengths(*new[1:])
        better = new_primal.clamp(max=1) + new_dual.clamp(max=1) >= 1.01 * (primal_step + dual_step)
        if not bool(better.any()):
            break
        directions = tuple(torch.where(better, a, b) for a, b in zip(new, directions, strict=True))
        primal_raw, dual_raw = (
            torch.where(better, new_primal, primal_raw),
            torch.where(better, new_dual, dual_raw),
        )
        r_low, r_up = torch.where(better, r_low + low, r_low), torch.where(better, r_up + up, r_up)
    return directions, (primal_raw, dual_raw)


def _mehrotra_step(design: _PenalisedDesign, c, tau, x, z, slack_low, slack_up, beta, correctors=2):
    """One predictor-corrector step for min c^T x s.t. A_aug^T x = (1 - tau) A_aug^T 1, 0 <= x <= 1.

    Mehrotra's predictor and corrector, then up to `correctors` of Gondzio's centrality correctors,
    all with the same factorisation (they cut the iterations by about a quarter).

    z = 1 - x; slack_low, slack_up >= 0 are the multipliers of x >= 0 and x <= 1; beta the multipliers
    of the equality constraints (minus the coefficients). All [N, C] or [p, C]; returns the new ones.
    """
    system = _NewtonSystem(design, c, tau, x, z, slack_low, slack_up, beta)
    # Predictor (affine scaling), then the centring-corrector with the same factorisation.
    dbeta, dx, dlow, dup = system.direction(-x * slack_low, -z * slack_up)
    primal_step, dual_step = (step.clamp(max=1) for step in system.step_lengths(dx, dlow, dup))
    mu = ((x * slack_low).sum(0) + (z * slack_up).sum(0)) / (2 * design.N)
    affine_low, affine_up = system.products(primal_step, dual_step, dx, dlow, dup)
    mu_affine = (affine_low.sum(0) + affine_up.sum(0)) / (2 * design.N)
    sigma_mu = (mu_affine / mu).pow(3) * mu
    r_low, r_up = sigma_mu - x * slack_low - dx * dlow, sigma_mu - z * slack_up + dx * dup
    directions = system.direction(r_low, r_up)
    steps = system.step_lengths(*directions[1:])
    (dbeta, dx, dlow, dup), (primal_raw, dual_raw) = _gondzio_correctors(
        system, directions, steps, (r_low, r_up), sigma_mu, correctors
    )
    primal_step, dual_step = (0.9995 * primal_raw).clamp(max=1), (0.9995 * dual_raw).clamp(max=1)
    return (
        x + primal_step * dx,
        z - primal_step * dx,
        slack_low + dual_step * dlow,
        slack_up + dual_step * dup,
        beta + dual_step * dbeta,
    )


def _scaled_problem(X, y, alpha: float, fit_intercept: bool, weight):
    """The scaled problem: A = (X - mean) / s (weighted mean, only with an intercept; then a column of
    ones), rows scaled by the weights, lambda_j = alpha sum(w) / s_j. Returns (A, y, design, mean, s)."""
    n, d = X.shape
    total = n if weight is None else weight.sum()
    if fit_intercept:
        mean = X.mean(0) if weight is None else (weight @ X) / total
    else:
        mean = X.new_zeros(d)
    A = X - mean  # a new tensor: the caller's array is never modified
    s = (A.pow(2).mean(0) if weight is None else (weight @ A.pow(2)) / total).sqrt()
    s = torch.where(s > 0, s, torch.ones_like(s))
    A.div_(s)
    if fit_intercept:
        A = torch.cat([A, A.new_ones(n, 1)], 1)
    if weight is not None:
        A.mul_(weight[:, None])
        y = y * weight[:, None]
    return A, y, _PenalisedDesign(A, (total * alpha) / s), mean, s


def _starting_point(design: _PenalisedDesign, A, c, y, tau) -> list[torch.Tensor]:
    """x = 1 - tau (primal feasible), beta from least squares, slacks from its residual (dual feasible,
    with a margin delta): [x, z, slack_low, slack_up, beta], each [N, K] or [p, K]."""
    K, d = tau.shape[0], design.d
    gram = A.T @ A
    diagonal = torch.arange(d, device=A.device)
    gram[diagonal, diagonal] += 2 * design.lam.pow(2)
    beta = torch.cholesky_solve(design.t_matvec(c), _cholesky(gram[None])[0])
    residual = c - design.matvec(beta)
    delta = 0.1 * residual.abs().max() + 1e-12 * (1 + y.abs().max())
    return [
        (1 - tau).expand(design.N, K).clone(),  # x
        tau.expand(design.N, K).clone(),  # z = 1 - x, kept separately for precision near the bound
        (residual.clamp_min(0) + delta).expand(design.N, K).clone(),  # slack_low
        ((-residual).clamp_min(0) + delta).expand(design.N, K).clone(),  # slack_up
        beta.expand(-1, K).clone(),
    ]


def _relative_gaps(design: _PenalisedDesign, A, y, tau, state, active) -> np.ndarray:
    """Certificate for each active level: objective at the current coefficients minus the dual objective
    at the current (feasible) x, a lower bound on the optimum, relative to the objective."""
    n, d = design.n, design.d
    index = torch.as_tensor(active, device=A.device)
    coef, t = -state[4][:, index], tau[index]
    r = y - A @ coef
    primal = torch.maximum(t * r, (t - 1) * r).sum(0) + (design.lam[:, None] * coef[:d].abs()).sum(0)
    dual = (y * (state[0][:n, index] - (1 - t))).sum(0)
    scale = torch.maximum(primal.abs(), dual.abs()).clamp_min(1e-12 * float(1 + y.abs().sum()))
    return ((primal - dual) / scale).cpu().numpy()


def fit_quantiles_ipm(
    X,
    y,
    levels,
    alpha: float,
    fit_intercept: bool = False,
    tol: float = 1e-6,
    max_iter: int = 100,
    device=None,
    sample_weight=None,
):
    """Solve the K levels of one attribute with the batched interior-point method (see module doc).

    X [n, d], y [n] (no NaN), levels [K], sample_weight [n] > 0 (optional). Returns numpy arrays coef
    [K, d], intercept [K], n_iter [K] and the certified relative gap [K] (objective minus a lower bound
    on the optimum, relative to the objective).

    Weights follow scikit-learn: the objective is (1/sum w) sum_i w_i rho_tau(r_i) + alpha ||w||_1, so an
    integer weight is the same as repeating the row. Since w_i rho_tau(r) = rho_tau(w_i r) for w_i > 0,
    the weighted problem is the unweighted one on rows scaled by w_i (the intercept column included).
    """
    dt = torch.float64
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    X = torch.as_tensor(X, dtype=dt, device=device)
    y = torch.as_tensor(y, dtype=dt, device=device).reshape(-1, 1)
    tau = torch.as_tensor(np.asarray(levels, dtype=np.float64), dtype=dt, device=device)
    K, d = tau.shape[0], X.shape[1]
    weight = None if sample_weight is None else torch.as_tensor(sample_weight, dtype=dt, device=device)
    A, y, design, mean, s = _scaled_problem(X, y, alpha, fit_intercept, weight)
    del X
    c = torch.cat([-y, y.new_zeros(2 * d, 1)])  # minimise c^T x, i.e. maximise y^T x
    state = _starting_point(design, A, c, y, tau)
    n_iter = np.zeros(K, dtype=np.int64)
    gap = np.full(K, np.inf)
    active = np.arange(K)
    for iteration in range(max_iter + 1):
        gap[active] = _relative_gaps(design, A, y, tau, state, active)
        n_iter[active] = iteration
        active = active[gap[active] > tol]
        if len(active) == 0 or iteration == max_iter:
            break
        index = torch.as_tensor(active, device=device)
        new = _mehrotra_step(design, c, tau[index], *(v[:, index] for v in state))
        for v, value in zip(state, new, strict=True):
            v[:, index] = value
    coef = -state[4]
    w = coef[:d] / s[:, None]  # back to the original feature scale
    intercept = coef[d] - mean @ w if fit_intercept else coef.new_zeros(K)
    return w.T.cpu().numpy(), intercept.cpu().numpy(), n_iter, gap


def as_float64(array, name: str = "input") -> np.ndarray:
    """A numpy float64 array of an array-like or a tensor of any dtype and device (bfloat16 included)."""
    if sparse.issparse(array):  # np.asarray would make a 0-d object array of it
        raise TypeError(
            f"The {name} must be dense (a numpy array or tensor), got a scipy sparse {array.format} matrix."
        )
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().double().numpy()
    return np.asarray(array, dtype=np.float64)


def _as_features(X):
    """X as a float64 numpy array, or, for a scipy sparse matrix, a float64 CSR matrix (kept sparse)."""
    if sparse.issparse(X):
        return X.tocsr().astype(np.float64)
    return as_float64(X, "features")


def _dense(X) -> np.ndarray:
    """Dense rows of features from `_as_features` (the fast solver works on dense float64 matrices)."""
    return X.toarray() if sparse.issparse(X) else X


def identical_row_groups(X) -> np.ndarray:
    """One group per distinct row of X [n, d] (one response rated by several annotators), numbered in
    order of first appearance -> [n] ints. X may be a scipy sparse matrix."""
    if sparse.issparse(X):  # a row is its sorted nonzero positions and their values
        X = sparse.csr_matrix(X, copy=True)
        X.sum_duplicates()
        X.eliminate_zeros()
        keys = [
            (X.indices[start:end].tobytes(), X.data[start:end].tobytes())
            for start, end in zip(X.indptr[:-1], X.indptr[1:], strict=True)
        ]
        numbers: dict = {}
        return np.array([numbers.setdefault(key, len(numbers)) for key in keys], dtype=np.int64)
    _, first, inverse = np.unique(X, axis=0, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse.ravel()]


class MultiQuantileRegressor(RegressorMixin, BaseEstimator):
    """Linear quantile regression for K levels and M attributes at once.

    X may be a numpy array, a tensor or a scipy sparse matrix (as for scikit-learn's `QuantileRegressor`):
    the "sklearn" solver passes sparse rows to HiGHS as they are; the "fast" solver works on dense float64
    rows, so it densifies each attribute's rows (n x d floats: fine for embeddings, not for a vocabulary-
    sized bag of words).

    Parameters
    ----------
    quantile_levels : sequence of float
        The K strictly increasing levels in (0, 1).
    alpha : float, sequence of float or "cv", default 0.003
        L1 penalty (the paper's value, with labels normalised to [0, 1]). A sequence of penalties, or
        "cv" for `ALPHA_GRID`, picks one penalty per attribute by `cv`-fold cross-validation: the
        penalty with the lowest held-out pinball loss (quantiles sorted, as the model uses them), then
        a refit on all rows. Folds never split the rows of one response: rows with identical features
        (e.g. one conversation rated by several annotators) stay in one fold. The paper tuned 0.003
        for 4096 features and 60,000 rows; a few hundred rows need another value.
    cv : int, default 5
        Folds of the penalty selection (only when `alpha` is a sequence or "cv").
    fit_intercept : bool, default False
        QRM heads have no bias by default.
    solver : {"fast", "sklearn"}, default "fast"
        "fast": batched interior-point method in torch (all levels of an attribute at once), stopping
        when the certified relative gap to the optimum is below `tol`. "sklearn" runs scikit-learn's
        `QuantileRegressor` (HiGHS linear program) per attribute and level, as the paper did. Both
        minimise the same objective (see the module docstring).
    max_samples_per_attribute : int, default 60000
        At most this many labelled rows per attribute, drawn with `random_state` (paper: 60,000). Both
        solvers use the same rows.
    random_state : int, default 0
    n_jobs : int, default 1
        Parallel fits (joblib), "sklearn" solver only ("fast" uses torch's threads or the GPU).
    highs_solver : str, default "highs"
        The scikit-learn `solver` argument ("sklearn" solver only).
    tol : float, default 1e-6
        "fast" solver: stop a level when (objective - lower bound) / objective <= tol.
    max_iter : int, default 100
        "fast" solver: interior-point iterations per level (about 10-20 are typical).
    device : str or torch.device, optional
        "fast" solver: where to compute (default: CUDA if available, else CPU). Always float64.

    Notes
    -----
    The fast solver returns an interior-point solution: coefficients that are zero at the optimum come
    out as tiny values (about 1e-6 of the largest one or less) rather than exact zeros, and where the
    optimum is not unique (e.g. many labels tied at 0 or 1 around an extreme level) it returns a point
    inside the optimal face where HiGHS returns a vertex; the objective is the same to `tol`.

    Attributes
    ----------
    coef_ : ndarray [M, K, d]
    intercept_ : ndarray [M, K]
    alpha_ : ndarray [M], the penalty of each attribute (the chosen one when `alpha` is a grid)
    alphas_ : ndarray [A], cv_pinball_ : ndarray [M, A], the grid and its cross-validated pinball loss
        per attribute (only when `alpha` is a sequence or "cv")
    n_samples_ : ndarray [M], labelled rows used per attribute
    n_iter_ : ndarray [M, K], interior-point iterations ("fast" solver only)
    gap_ : ndarray [M, K], certified relative gap to the optimum at the end ("fast" solver only)
    """

    def __init__(
        self,
        quantile_levels: Sequence[float],
        alpha: float | Sequence[float] | str = HeadsSettings.alpha,  # the defaults of `qrm fit-quantiles`
        fit_intercept: bool = False,
        solver: str = HeadsSettings.solver,
        max_samples_per_attribute: int = HeadsSettings.max_samples_per_attribute,
        random_state: int = HeadsSettings.seed,
        n_jobs: int = HeadsSettings.n_jobs,
        highs_solver: str = "highs",
        tol: float = 1e-6,
        max_iter: int = 100,
        device=None,
        cv: int = HeadsSettings.cv,
    ):
        self.quantile_levels = quantile_levels
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.solver = solver
        self.max_samples_per_attribute = max_samples_per_attribute
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.highs_solver = highs_solver
        self.tol = tol
        self.max_iter = max_iter
        self.device = device
        self.cv = cv

    def _alpha_grid(self) -> np.ndarray | None:
        """The penalties to choose from (None for one fixed `alpha`), validated."""
        if isinstance(self.alpha, str):
            if self.alpha != "cv":
                raise ValueError(f'alpha must be a number, a list of numbers or "cv", got {self.alpha!r}.')
            grid = np.array(ALPHA_GRID)
        elif np.ndim(self.alpha) == 0:
            if not self.alpha >= 0:
                raise ValueError(f"alpha must be >= 0, got {self.alpha}.")
            return None
        else:
            try:
                grid = np.asarray(self.alpha, dtype=float)
            except (TypeError, ValueError):
                grid = np.array([np.nan])
            if grid.ndim != 1 or grid.size == 0 or not np.all(grid >= 0):
                raise ValueError(f"An alpha grid must be a non-empty list of numbers >= 0, got {self.alpha}.")
        if not (isinstance(self.cv, int) and self.cv >= 2):
            raise ValueError(f"cv must be an integer >= 2 to choose alpha, got {self.cv!r}.")
        return grid

    def _validate_settings(self) -> np.ndarray:
        levels = np.asarray(self.quantile_levels, dtype=float)
        if levels.ndim != 1 or len(levels) == 0 or np.any(levels <= 0) or np.any(levels >= 1):
            raise ValueError(
                f"quantile_levels must be a non-empty list inside (0, 1), got {self.quantile_levels}."
            )
        if np.any(np.diff(levels) <= 0):
            raise ValueError(f"quantile_levels must be strictly increasing, got {self.quantile_levels}.")
        if self.solver not in SOLVERS:
            raise ValueError(f"Unknown solver {self.solver!r}: expected one of {SOLVERS}.")
        self._alpha_grid()
        if self.max_samples_per_attribute < 1:
            raise ValueError(f"max_samples_per_attribute must be >= 1, got {self.max_samples_per_attribute}.")
        return levels

    @staticmethod
    def _validate_labels(Y) -> np.ndarray:
        Y = as_float64(Y, "labels")
        Y = Y[:, None] if Y.ndim == 1 else Y
        if Y.ndim != 2:
            raise ValueError(f"Expected labels Y [n] or [n, M], got shape {Y.shape}.")
        if np.isinf(Y).any():
            raise ValueError("Y contains infinite values (use NaN for a missing label).")
        empty = [m for m in range(Y.shape[1]) if np.isnan(Y[:, m]).all()]
        if empty:
            raise ValueError(f"Attribute column(s) {empty} have no label at all.")
        return Y

    def _validate(self, X, Y):
        levels = self._validate_settings()
        X = _as_features(X)
        Y = as_float64(Y, "labels")
        if Y.ndim == 1:
            Y = Y[:, None]
        if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
            raise ValueError(
                f"Expected X [n, d] and Y [n] or [n, M] with the same n, got {X.shape} and {Y.shape}."
            )
        if not np.isfinite(X.data if sparse.issparse(X) else X).all():
            raise ValueError("X contains NaN or infinite values.")
        return levels, X, self._validate_labels(Y)

    def _select_rows(self, Y: np.ndarray, sample_weight: np.ndarray | None = None) -> list[np.ndarray]:
        """Labelled rows (of positive weight) of each attribute, at most `max_samples_per_attribute` (seeded)."""
        rng = np.random.default_rng(self.random_state)
        rows_per_attribute = []
        for m in range(Y.shape[1]):
            usable = ~np.isnan(Y[:, m]) if sample_weight is None else ~np.isnan(Y[:, m]) & (sample_weight > 0)
            rows = np.flatnonzero(usable)
            if len(rows) == 0:
                raise ValueError(f"Attribute column {m} has no labelled row with a positive sample weight.")
            if len(rows) > self.max_samples_per_attribute:
                rows = np.sort(rng.choice(rows, self.max_samples_per_attribute, replace=False))
            rows_per_attribute.append(rows)
        return rows_per_attribute

    def fit(self, X, Y, sample_weight=None):
        """Fit all heads. X [n, d]; Y [n] or [n, M], NaN for a missing label (ignored per attribute).

        `sample_weight` [n] >= 0 (optional) has scikit-learn's meaning in both solvers: the loss is the
        weighted mean (1/sum w) sum_i w_i rho_tau(r_i), so an integer weight equals repeating the row and
        a weight of 0 drops it (before the `max_samples_per_attribute` draw). Numpy arrays or torch tensors.
        """
        levels, X, Y = self._validate(X, Y)
        if sample_weight is not None:
            sample_weight = as_float64(sample_weight, "sample_weight")
            if sample_weight.shape != (X.shape[0],):
                raise ValueError(f"sample_weight must have shape ({X.shape[0]},), got {sample_weight.shape}.")
            if not np.isfinite(sample_weight).all() or (sample_weight < 0).any():
                raise ValueError("sample_weight must be finite and non-negative.")
            if not (sample_weight > 0).any():
                raise ValueError("sample_weight is zero for every row: nothing to fit.")
        rows_per_attribute = self._select_rows(Y, sample_weight)
        return self._fit_rows(X, Y, rows_per_attribute, levels, sample_weight)

    def select_rows(self, Y) -> list[np.ndarray]:
        """The rows of Y [n, M] that `fit` uses for each attribute (labelled; at most
        `max_samples_per_attribute`, seeded). Fitting on only these rows, with every other label NaN, gives
        the same heads: `training.features.load_labelled(..., select_rows=heads.select_rows)` reads only
        their embeddings from a feature store."""
        self._validate_settings()
        return self._select_rows(self._validate_labels(Y))

    def _solve(self, problems, levels, desc: str) -> list[tuple]:
        """Fit all K levels of each problem (X [n, d], y [n], alpha, sample weights [n] or None): a list of
        (coef [K, d], intercept [K], ...)."""
        if self.solver == "fast":  # (coef, intercept, iterations [K], gap [K]) per problem
            settings = {"fit_intercept": self.fit_intercept, "tol": self.tol, "max_iter": self.max_iter}
            return [
                fit_quantiles_ipm(
                    _dense(X), y, levels, alpha, device=self.device, sample_weight=weight, **settings
                )
                for X, y, alpha, weight in tqdm(problems, desc=f"{desc} (fast)")
            ]
        K = len(levels)
        fits = Parallel(n_jobs=self.n_jobs, return_as="generator")(
            delayed(_fit_one)(X, y, tau, alpha, self.fit_intercept, self.highs_solver, weight)
            for X, y, alpha, weight in problems
            for tau in levels
        )
        fits = list(tqdm(fits, total=len(problems) * K, desc=desc))
        return [
            (np.stack([coef for coef, _ in fits[i : i + K]]), np.array([b for _, b in fits[i : i + K]]))
            for i in range(0, len(fits), K)
        ]

    def _select_alpha(self, X, Y, rows_per_attribute, levels, grid, sample_weight=None) -> np.ndarray:
        """Cross-validated pinball loss [M, A] of each penalty of `grid`, folds grouped by identical rows of X
        (with `sample_weight`, fits and held-out losses are weighted)."""
        weight = np.ones(X.shape[0]) if sample_weight is None else sample_weight
        problems, held_out = [], []
        for m, rows in enumerate(rows_per_attribute):
            groups = identical_row_groups(X[rows])
            if len(np.unique(groups)) < self.cv:
                raise ValueError(
                    f"Attribute {m} has {len(np.unique(groups))} distinct inputs, fewer than cv={self.cv} folds."
                )
            for train, test in GroupKFold(n_splits=self.cv).split(rows, groups=groups):
                for a, alpha in enumerate(grid):
                    train_weight = None if sample_weight is None else weight[rows[train]]
                    problems.append((X[rows[train]], Y[rows[train], m], alpha, train_weight))
                    held_out.append((m, a, rows[test]))
        losses = np.zeros((Y.shape[1], len(grid)))
        for (m, a, test), (coef, intercept, *_) in zip(
            held_out, self._solve(problems, levels, "choosing alpha by cross-validation"), strict=True
        ):
            predictions = np.sort(X[test] @ coef.T + intercept, axis=-1)  # [n_test, K]
            residual = Y[test, m, None] - predictions  # [n_test, K]
            tau = np.asarray(levels)
            row_losses = np.maximum(tau * residual, (tau - 1) * residual).mean(-1)  # [n_test]
            losses[m, a] += (row_losses * weight[test]).sum()
        return losses / np.array([weight[rows].sum() for rows in rows_per_attribute])[:, None]

    def _fit_rows(self, X, Y, rows_per_attribute, levels, sample_weight=None):
        M, d = Y.shape[1], X.shape[1]
        grid = self._alpha_grid()
        if grid is None:
            self.alpha_ = np.full(M, float(self.alpha))
        else:
            self.alphas_ = grid
            self.cv_pinball_ = self._select_alpha(X, Y, rows_per_attribute, levels, grid, sample_weight)
            self.alpha_ = grid[self.cv_pinball_.argmin(1)]  # the first of equal losses: grids usually ascend
        problems = [
            (X[rows], Y[rows, m], self.alpha_[m], None if sample_weight is None else sample_weight[rows])
            for m, rows in enumerate(rows_per_attribute)
        ]
        results = self._solve(problems, levels, "fitting quantile heads")
        self.coef_ = np.ascontiguousarray(np.stack([result[0] for result in results]))  # [M, K, d]
        self.intercept_ = np.stack([result[1] for result in results])  # [M, K]
        if self.solver == "fast":
            self.n_iter_ = np.stack([result[2] for result in results]).astype(np.int64)
            self.gap_ = np.stack([result[3] for result in results])
            if np.any(self.gap_ > self.tol):
                warnings.warn(
                    f"The fast quantile solver stopped after max_iter={self.max_iter} iterations with a "
                    f"relative gap of {self.gap_.max():.2e} > tol={self.tol} (attribute, level "
                    f"{np.unravel_index(self.gap_.argmax(), self.gap_.shape)}); raise max_iter.",
                    ConvergenceWarning,
                    stacklevel=2,
                )
        self.n_samples_ = np.array([len(rows) for rows in rows_per_attribute])
        self.n_features_in_ = d
        return self

    def predict(self, X) -> np.ndarray:
        """Quantile predictions [n, M, K] (not sorted: crossing levels are left as fitted); X dense or sparse."""
        X = _as_features(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"Expected X with {self.n_features_in_} features, got shape {X.shape}.")
        M, K, d = self.coef_.shape
        linear = np.asarray(X @ self.coef_.reshape(M * K, d).T).reshape(X.shape[0], M, K)
        return linear + self.intercept_[None]

    def score(self, X, Y) -> float:
        """Negative mean pinball loss over attributes and levels (higher is better)."""
        Y = as_float64(Y, "labels")
        Y = Y[:, None] if Y.ndim == 1 else Y
        return -float(np.mean(pinball_loss(Y, self.predict(X), self.quantile_levels)))


class RidgeResidualQuantiles(RegressorMixin, BaseEstimator):
    """Point-estimate baseline: ridge regression per attribute plus quantiles of its residuals.

    The predicted tau-quantile is ridge(x) + (tau-quantile of the cross-validated residuals), so the
    spread is the same for every input: what a scalar reward model can say about uncertainty. The
    penalty of each attribute is the one of `alphas` with the lowest `cv`-fold cross-validated squared
    error, and the residuals are those held-out predictions', not the fit's own, so they are not too
    narrow. Folds never split the rows of one response (identical features, e.g. one conversation rated
    by several annotators): otherwise the other ratings of a held-out response would be in training.
    Fitted `alpha_` [M].
    """

    def __init__(
        self, quantile_levels: Sequence[float], alphas: Sequence[float] = (0.1, 1.0, 10.0, 100.0), cv: int = 5
    ):
        self.quantile_levels = quantile_levels
        self.alphas = alphas
        self.cv = cv

    def fit(self, X, Y):
        """X [n, d]; Y [n] or [n, M] with NaN for missing labels."""
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64)
        Y = Y[:, None] if Y.ndim == 1 else Y
        self.models_, self.residual_quantiles_, self.alpha_ = [], [], []
        for m in range(Y.shape[1]):
            rows = np.flatnonzero(~np.isnan(Y[:, m]))
            x, y = X[rows], Y[rows, m]
            folds = list(GroupKFold(n_splits=self.cv).split(x, groups=identical_row_groups(x)))
            held_out = {alpha: cross_val_predict(Ridge(alpha=alpha), x, y, cv=folds) for alpha in self.alphas}
            alpha = min(self.alphas, key=lambda a: np.mean((y - held_out[a]) ** 2))
            self.models_.append(Ridge(alpha=alpha).fit(x, y))
            self.residual_quantiles_.append(np.quantile(y - held_out[alpha], self.quantile_levels))
            self.alpha_.append(alpha)
        self.residual_quantiles_ = np.array(self.residual_quantiles_)  # [M, K]
        self.alpha_ = np.array(self.alpha_)
        return self

    def predict(self, X) -> np.ndarray:
        """Quantile predictions [n, M, K]."""
        X = np.asarray(X, dtype=np.float64)
        point = np.stack([model.predict(X) for model in self.models_], axis=1)  # [n, M]
        return point[:, :, None] + self.residual_quantiles_[None]


class HeteroscedasticGaussian(RegressorMixin, BaseEstimator):
    """Distributional baseline: a Gaussian per input, with a linear mean head and a linear log-std head.

    For each attribute, mu(x) = x.w + b and log sigma(x) = x.v + c are fitted jointly by minimising the
    mean Gaussian negative log-likelihood plus ``alpha / 2 * (|w|^2 + |v|^2)`` on standardised features
    (L-BFGS). ``alpha`` is picked from `alphas` by `cv`-fold cross-validated likelihood. Rows with
    identical features (one response rated by several annotators) are one group: they stay on one side
    of every split, and are fitted through their count, mean and variance (the likelihood only depends
    on those), which makes the fit as fast as on distinct responses; with fewer distinct responses than
    features, the fit runs in the span of the responses (an orthonormal basis from an SVD: the same
    minimiser, since the L2 penalty does not change under rotation). The tau-quantile is
    mu(x) + sigma(x) * Phi^-1(tau): the cheap distributional reward model, whose spread may vary with
    the input but whose shape is always one symmetric hump.
    """

    def __init__(
        self,
        quantile_levels: Sequence[float],
        alphas: Sequence[float] = (1.0, 10.0, 100.0, 1000.0),
        cv: int = 3,
        max_iter: int = 300,
    ):
        self.quantile_levels = quantile_levels
        self.alphas = alphas
        self.cv = cv
        self.max_iter = max_iter

    @staticmethod
    def _objective(theta, X, count, mean, variance, alpha):
        """Penalised mean Gaussian NLL and its gradient at theta = (w [d], b, v [d], c), for groups of
        rows with standardised features X [g, d], `count` labels each, of mean `mean` and (population)
        variance `variance` [g]."""
        d = X.shape[1]
        w, b, v, c = theta[:d], theta[d], theta[d + 1 : 2 * d + 1], theta[-1]
        log_std = np.clip(X @ v + c, -12.0, 12.0)
        residual = mean - (X @ w + b)
        precision = np.exp(-2 * log_std)
        square = residual**2 + variance  # mean over the group of (y - mu)^2
        weight = count / count.sum()
        nll = weight @ (log_std + 0.5 * square * precision) + 0.5 * np.log(2 * np.pi)
        grad_mean = -weight * residual * precision  # d nll / d mu
        grad_log_std = weight * (1 - square * precision)  # d nll / d log sigma
        grad = np.concatenate(
            [
                X.T @ grad_mean + alpha * w,
                [grad_mean.sum()],
                X.T @ grad_log_std + alpha * v,
                [grad_log_std.sum()],
            ]
        )
        return nll + 0.5 * alpha * (w @ w + v @ v), grad

    def _fit_one(self, X, count, mean, variance, alpha):
        """(w, b, v, c) minimising the penalised NLL of the groups (see `_objective`)."""
        from scipy.optimize import minimize

        d = X.shape[1]
        start = np.zeros(2 * d + 2)
        start[d] = np.average(mean, weights=count)
        spread = np.average((mean - start[d]) ** 2 + variance, weights=count)
        start[-1] = 0.5 * np.log(max(spread, 1e-6))
        theta = minimize(
            self._objective,
            start,
            args=(X, count, mean, variance, alpha),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": self.max_iter},
        ).x
        return theta[:d], theta[d], theta[d + 1 : 2 * d + 1], theta[-1]

    def fit(self, X, Y):
        """X [n, d]; Y [n] or [n, M] with NaN for missing labels."""
        from sklearn.model_selection import KFold

        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64)
        Y = Y[:, None] if Y.ndim == 1 else Y
        self.feature_mean_ = X.mean(0)
        self.feature_scale_ = np.where(X.std(0) > 0, X.std(0), 1.0)
        Z = (X - self.feature_mean_) / self.feature_scale_
        self.params_, self.alpha_ = [], []
        for m in range(Y.shape[1]):
            rows = np.flatnonzero(~np.isnan(Y[:, m]))
            if rows.size == 0:
                raise ValueError(f"Attribute {m} has no label to fit the Gaussian baseline on.")
            unique, group = np.unique(Z[rows], axis=0, return_inverse=True)
            group = group.reshape(-1)
            basis = np.linalg.svd(unique, full_matrices=False)[2].T  # [d, min(g, d)], orthonormal columns
            unique = unique @ basis
            count = np.bincount(group).astype(float)
            mean = np.bincount(group, weights=Y[rows, m]) / count
            variance = np.maximum(np.bincount(group, weights=Y[rows, m] ** 2) / count - mean**2, 0.0)
            best = self.alphas[-1]
            folds = min(self.cv, len(unique))
            if folds >= 2 and len(self.alphas) > 1:
                losses = []
                for alpha in self.alphas:
                    loss = 0.0
                    for train, test in KFold(folds, shuffle=True, random_state=0).split(unique):
                        params = self._fit_one(
                            unique[train], count[train], mean[train], variance[train], alpha
                        )
                        # held-out NLL without the penalty
                        loss += self._objective(
                            np.concatenate([params[0], [params[1]], params[2], [params[3]]]),
                            unique[test], count[test], mean[test], variance[test], 0.0,
                        )[0] * count[test].sum()  # fmt: skip
                    losses.append(loss)
                best = self.alphas[int(np.argmin(losses))]
            self.alpha_.append(best)
            w, b, v, c = self._fit_one(unique, count, mean, variance, best)
            self.params_.append((basis @ w, b, basis @ v, c))
        return self

    def predict_mean_std(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Means and standard deviations, each [n, M]."""
        Z = (np.asarray(X, dtype=np.float64) - self.feature_mean_) / self.feature_scale_
        mean = np.stack([Z @ w + b for w, b, _, _ in self.params_], axis=1)
        std = np.stack([np.exp(np.clip(Z @ v + c, -12.0, 12.0)) for _, _, v, c in self.params_], axis=1)
        return mean, std

    def predict(self, X) -> np.ndarray:
        """Quantile predictions [n, M, K]."""
        from scipy.stats import norm

        mean, std = self.predict_mean_std(X)
        return mean[:, :, None] + std[:, :, None] * norm.ppf(np.asarray(self.quantile_levels, dtype=float))
