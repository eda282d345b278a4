"""Risk measures over quantile estimates.

Every function takes a tensor ``q`` of shape ``[..., K]``: the estimates of the reward quantiles at
``K`` levels tau_1 < ... < tau_K (for a QRM, ``output.reward_quantiles`` [B, K] or
``output.attribute_quantiles`` [B, M, K] at ``config.quantile_levels``). All leading dimensions are
batch dimensions and the result has shape ``[...]`` (the last dimension is reduced).

The K estimates are read as a discrete distribution with K equally likely atoms, each carrying 1/K of
the probability mass, as in the paper (eq. 4 approximates E[u(r)] by averaging u over the quantile
estimates). So ``expectation`` is the plain mean over K and the utility, certainty equivalent,
CVaR and variance are those of that discrete distribution. ``quantile`` alone uses the levels as
positions: it interpolates the quantile function linearly between them.

All functions are differentiable with torch autograd, work on any device, and return the dtype of
``q`` (a floating-point tensor; lists and integer tensors are converted to the default float dtype).

Example::

    out = model(**batch)
    r = out.reward_quantiles                                    # [B, K]
    risk.exponential_utility(r, lam=1.0)                        # paper eq. 4, [B]
    risk.certainty_equivalent(r, lam=1.0)                       # same ranking, in reward units
    risk.cvar(r, model.config.quantile_levels, alpha=0.25)      # mean of the worst 25 %

Risk measures by name: :data:`RISK_MEASURES` maps each name to its function and parameters, and
:func:`resolve` turns a spec such as ``"quantile:0.1"``, ``"cvar"`` or ``"exp_utility:2"`` into a
function of ``q`` alone. Scoring, the CLI and the risk-aware trainers all go through it::

    score = risk.resolve("cvar:0.1", model.config.quantile_levels)
    score(r)                                                    # [B], same as risk.cvar(r, levels, 0.1)

Measures of the whole output read a QRM's members too (its epistemic spread, `config.num_members` > 1):
:func:`parse_output` turns ``"lcb:1"`` (expected reward minus 1 epistemic std), ``"worst_member"`` or
``"cvar:0.25+lcb:1"`` (any measure above, minus 1 epistemic std) into an :class:`OutputRiskMeasure`::

    score = risk.parse_output("cvar:0.25+lcb:1")
    score(out, model.config.quantile_levels)                    # [B]
"""

from __future__ import annotations

import functools
import math
import numbers
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass


class _TorchOnFirstUse:
    """Stands for the torch module until a function needs it, then imports it and puts the module in its
    place: the registry (names, parameters, `parse`) builds the `qrm` parser, which must start without torch."""

    def __getattr__(self, name):
        import torch as module

        globals()["torch"] = module
        return getattr(module, name)


torch = _TorchOnFirstUse()

__all__ = [
    "expectation",
    "exponential_utility",
    "certainty_equivalent",
    "cvar",
    "quantile",
    "variance",
    "RiskParameter",
    "RiskMeasure",
    "RISK_MEASURES",
    "RISK_PARAMETERS",
    "parse",
    "resolve",
    "lower_confidence_bound",
    "worst_member",
    "OutputRiskMeasure",
    "EPISTEMIC_MEASURES",
    "parse_output",
]


def _as_quantiles(q) -> torch.Tensor:
    """``q`` as a floating-point tensor with a non-empty last dimension K."""
    if not isinstance(q, torch.Tensor):
        q = torch.as_tensor(q)
    if q.is_complex():
        raise TypeError(f"quantile estimates must be real, got a {q.dtype} tensor.")
    if not q.is_floating_point():
        q = q.to(torch.get_default_dtype())
    if q.dim() == 0:
        raise ValueError("quantile estimates must have shape [..., K] with the K levels last, got a scalar.")
    if q.shape[-1] == 0:
        raise ValueError(
            f"quantile estimates must have at least one level (K >= 1), got shape {tuple(q.shape)}."
        )
    return q


def _as_levels(
    levels: torch.Tensor | Sequence[float], q: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``levels`` validated against ``q`` (1-D, K entries, strictly increasing in [0, 1]), on q's device,
    in ``dtype`` (default: q's dtype)."""
    if isinstance(levels, torch.Tensor):
        values = levels.detach().to("cpu", torch.float64)
    else:  # straight to float64: torch.as_tensor would round Python floats to the default float32
        values = torch.as_tensor(levels, dtype=torch.float64)
    num_levels = q.shape[-1]
    if values.dim() != 1:
        raise ValueError(
            f"`levels` must be 1-D with K = {num_levels} entries, got shape {tuple(values.shape)}."
        )
    if values.numel() != num_levels:
        raise ValueError(
            f"`levels` has {values.numel()} entries but the quantile estimates have K = {num_levels} "
            f"(last dimension of shape {tuple(q.shape)})."
        )
    if not torch.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        raise ValueError(f"`levels` must lie in [0, 1], got {values.tolist()}.")
    if (values[1:] <= values[:-1]).any():
        raise ValueError(f"`levels` must be strictly increasing (sorted, no repeats), got {values.tolist()}.")
    return values.to(q.device, dtype or q.dtype)


def _as_positive(value, name: str) -> float:
    """A finite number > 0 (Python number or one-element tensor)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"`{name}` must be a single number, got a tensor of shape {tuple(value.shape)}.")
        value = value.item()
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a number, got {value!r}.") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value}.")
    return value


def expectation(q) -> torch.Tensor:
    r"""Expected reward: the mean of the K quantile estimates.

    .. math:: \mathbb{E}[r] \approx \frac{1}{K} \sum_{k=1}^{K} q_k

    Args:
        q: quantile estimates, shape ``[..., K]``.

    Returns:
        Tensor of shape ``[...]``.
    """
    return _as_quantiles(q).mean(-1)


def exponential_utility(q, lam: float) -> torch.Tensor:
    r"""Exponential (CARA) utility of the paper, eq. 4, averaged over the quantile estimates.

    .. math:: U_\lambda = \mathbb{E}[-e^{-\lambda r}] \approx \frac{1}{K} \sum_{k=1}^{K} -e^{-\lambda q_k}

    Concave in the reward, so it penalises the left tail: at equal mean, a more spread (e.g.
    bimodal) distribution has a lower utility. Values are negative and not in reward units; they
    overflow to ``-inf`` once ``-lam * q_k`` exceeds the dtype's exp range (about 88 in float32,
    709 in float64; computed in float64, so any finite ``lam`` > 0 gives a number or ``-inf``, never
    NaN). :func:`certainty_equivalent` gives the same ranking in reward units without overflow.

    Args:
        q: quantile estimates, shape ``[..., K]``.
        lam: risk aversion lambda, a finite number > 0.

    Returns:
        Tensor of shape ``[...]``.

    Raises:
        ValueError: if ``lam`` is not a finite number > 0.
    """
    q = _as_quantiles(q)
    lam = _as_positive(lam, "lam")
    # In float64: in float32, lam > 3.4e38 is inf and inf * 0 is NaN.
    return -torch.exp(-lam * q.to(torch.float64)).mean(-1).to(q.dtype)


def certainty_equivalent(q, lam: float) -> torch.Tensor:
    r"""Certainty equivalent of the exponential utility: the sure reward with the same utility.

    .. math:: CE_\lambda = -\frac{1}{\lambda} \log \frac{1}{K} \sum_{k=1}^{K} e^{-\lambda q_k},
              \qquad U_\lambda = -e^{-\lambda\, CE_\lambda}

    So it ranks exactly like :func:`exponential_utility` (a strictly increasing function of it), but
    is in reward units: ``min_k q_k <= CE <= mean_k q_k``, it tends to the expectation as
    ``lam -> 0+`` and to the smallest estimate as ``lam -> inf``.

    Computed stably with the log-sum-exp shift by the largest exponent (the smallest estimate m):
    ``CE = m - log1p(mean_k expm1(-lam (q_k - m))) / lam``. Every exponent is <= 0, so nothing
    overflows even for ``lam * q ~ +-1000``, and ``log1p``/``expm1`` keep full precision for tiny
    ``lam`` (no cancellation against log K). Computed in float64 (returned in q's dtype), so every finite
    ``lam`` > 0 works; where ``lam * (max_k q_k - m) < 1e-20`` the expansion ``mean - lam/2 Var`` is
    used, exact there to double precision where ``lam * (q_k - m)`` would reach the subnormal floats.

    Args:
        q: quantile estimates, shape ``[..., K]``.
        lam: risk aversion lambda, a finite number > 0.

    Returns:
        Tensor of shape ``[...]``.

    Raises:
        ValueError: if ``lam`` is not a finite number > 0.
    """
    q = _as_quantiles(q)
    lam = _as_positive(lam, "lam")
    # In float64: in float32, lam > 3.4e38 is inf and inf * 0 is NaN.
    wide = q.to(torch.float64)
    # The result does not depend on the shift m (its partial derivative is 0), so m needs no gradient.
    shift = wide.detach().amin(-1, keepdim=True)
    gap = wide - shift
    # log mean_k exp(-lam (q_k - m)), in (-log K, 0]
    log_mean = torch.log1p(torch.expm1(-lam * gap).mean(-1))
    exact = shift.squeeze(-1) - log_mean / lam
    # Where lam * (q_k - m) nears the subnormal floats the exact form loses its digits (for lam = 5e-324 it
    # returns m): there the expansion mean - lam/2 var is exact to double precision (next term ~ lam^2).
    expansion = wide.mean(-1) - lam / 2 * gap.var(-1, correction=0)
    tiny = lam * gap.detach().amax(-1) < 1e-20
    return torch.where(tiny, expansion, exact).to(q.dtype)


def cvar(q, levels: torch.Tensor | Sequence[float], alpha: float) -> torch.Tensor:
    r"""Conditional value at risk (expected shortfall): the mean of the lower ``alpha``-tail.

    The K estimates are sorted (they may cross) into :math:`q_{(1)} \le \dots \le q_{(K)}` and each
    carries 1/K of the mass. The tail of mass ``alpha`` takes the :math:`n = \lfloor \alpha K \rfloor`
    smallest estimates fully and the fraction :math:`f = \alpha K - n` of the next one:

    .. math:: \mathrm{CVaR}_\alpha = \frac{1}{\alpha K} \Big( \sum_{i=1}^{n} q_{(i)} + f\, q_{(n+1)} \Big)
              = \frac{1}{\alpha} \int_0^\alpha F^{-1}(u)\, du

    where :math:`F^{-1}` is the step quantile function of the K equally likely atoms. ``alpha = 1``
    gives :func:`expectation`; small ``alpha`` tends to the smallest estimate.

    ``levels`` does not change the weights (every estimate carries 1/K, as in :func:`expectation`
    and the paper's eq. 4); it is validated (K entries, strictly increasing in [0, 1]) so that a
    tensor is never paired with the wrong levels or the wrong dimension.

    Args:
        q: quantile estimates, shape ``[..., K]``.
        levels: the K quantile levels of ``q`` (tensor or list).
        alpha: tail mass, in (0, 1].

    Returns:
        Tensor of shape ``[...]``.

    Raises:
        ValueError: if ``alpha`` is not in (0, 1] or ``levels`` does not fit ``q``.
    """
    q = _as_quantiles(q)
    _as_levels(levels, q)
    if isinstance(alpha, torch.Tensor) and alpha.numel() == 1:
        alpha = alpha.item()
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"`alpha` must be a number in (0, 1], got {alpha!r}.")
    alpha = float(alpha)
    if not 0 < alpha <= 1:  # also rejects NaN
        raise ValueError(f"`alpha` must lie in (0, 1], got {alpha}.")
    num_levels = q.shape[-1]
    tail = alpha * num_levels  # tail mass in units of one estimate
    # e.g. 0.3 * 10 = 3.0000000000000004: whole estimates only (never rounded to 0: 1e-300 * 10 stays a tail)
    if round(tail) >= 1 and abs(tail - round(tail)) < 1e-9:
        tail = float(round(tail))
    # weight of the i-th smallest estimate: the part of [i - 1, i] inside [0, tail], divided by tail
    index = torch.arange(num_levels, device=q.device, dtype=torch.float64)
    weights = ((tail - index).clamp(0, 1) / tail).to(q.dtype)
    return (q.sort(-1).values * weights).sum(-1)


def quantile(q, levels: torch.Tensor | Sequence[float], tau) -> torch.Tensor:
    r"""The ``tau``-quantile, by linear interpolation between the levels.

    The estimates are sorted along K first (so the quantile function is non-decreasing even if
    estimates cross; a no-op for a QRM with ``monotone_quantiles=True``). For
    :math:`\tau_j \le \tau \le \tau_{j+1}`:

    .. math:: Q(\tau) = q_{(j)} + \frac{\tau - \tau_j}{\tau_{j+1} - \tau_j} \big( q_{(j+1)} - q_{(j)} \big)

    Outside the estimated range, ``tau < levels[0]`` returns the first and ``tau > levels[-1]`` the
    last quantile (clamping: nothing is extrapolated into the unknown tails). At ``tau = levels[k]``
    the result is the k-th (sorted) estimate. Levels, ``tau`` and the interpolation weights are
    handled in at least float32 (so bfloat16 estimates keep distinct levels); the result has q's dtype.

    Args:
        q: quantile estimates, shape ``[..., K]``.
        levels: the K strictly increasing quantile levels of ``q`` (tensor or list), in [0, 1].
        tau: the level to evaluate, in [0, 1]: a number or a tensor broadcastable with ``q.shape[:-1]``
            (e.g. shape ``[B]`` for one level per row, or ``[L, 1]`` for L levels of every row of a
            ``[B, K]`` tensor).

    Returns:
        Tensor of shape ``broadcast(q.shape[:-1], tau.shape)``.

    Raises:
        ValueError: if ``levels`` does not fit ``q``, ``tau`` is outside [0, 1] or does not broadcast.
    """
    q = _as_quantiles(q)
    # Levels, tau and the interpolation weight in at least float32: in bfloat16, close levels would merge.
    position_dtype = torch.promote_types(q.dtype, torch.float32)
    levels = _as_levels(levels, q, position_dtype)
    given = tau
    tau = torch.as_tensor(given, device=q.device)
    if tau.is_complex() or tau.dtype == torch.bool:
        raise TypeError(f"`tau` must be a real number or tensor, got {tau.dtype}.")
    if tau.is_floating_point() and not isinstance(given, torch.Tensor):
        # straight to float64: torch.as_tensor would round Python floats to the default float32
        tau = torch.as_tensor(given, dtype=torch.float64, device=q.device)
    outside = ~((tau >= 0) & (tau <= 1))  # NaN counts as outside
    if outside.any():
        raise ValueError(f"`tau` must lie in [0, 1], got {tau.detach()[outside].flatten()[:8].tolist()}.")
    tau = tau.to(position_dtype)
    try:
        batch_shape = torch.broadcast_shapes(q.shape[:-1], tau.shape)
    except RuntimeError:
        raise ValueError(
            f"`tau` of shape {tuple(tau.shape)} does not broadcast with the batch shape {tuple(q.shape[:-1])} "
            f"of the quantile estimates {tuple(q.shape)}."
        ) from None
    num_levels = q.shape[-1]
    q = q.sort(-1).values.expand(*batch_shape, num_levels)
    if num_levels == 1:
        return q[..., 0].contiguous()  # a single estimate: constant quantile function
    tau = tau.expand(batch_shape).clamp(levels[0], levels[-1])
    low = (torch.searchsorted(levels, tau.detach().contiguous(), right=True) - 1).clamp(0, num_levels - 2)
    q_low = q.gather(-1, low.unsqueeze(-1)).squeeze(-1).to(position_dtype)
    q_high = q.gather(-1, (low + 1).unsqueeze(-1)).squeeze(-1).to(position_dtype)
    fraction = (tau - levels[low]) / (levels[low + 1] - levels[low])
    return (q_low + fraction * (q_high - q_low)).to(q.dtype)


def variance(q) -> torch.Tensor:
    r"""Variance of the K estimates as a discrete distribution (1/K each, population variance).

    .. math:: \mathrm{Var}[r] \approx \frac{1}{K} \sum_{k=1}^{K} (q_k - \bar q)^2,
              \qquad \bar q = \frac{1}{K} \sum_{k=1}^{K} q_k

    Args:
        q: quantile estimates, shape ``[..., K]``.

    Returns:
        Tensor of shape ``[...]`` (0 when K = 1).
    """
    q = _as_quantiles(q)
    return (q - q.mean(-1, keepdim=True)).square().mean(-1)


# ----------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class RiskParameter:
    """A numeric parameter of a risk measure: its keyword, default and admissible interval
    (``low`` excluded; ``high`` included when ``include_high``)."""

    name: str
    default: float
    low: float
    high: float = math.inf
    include_high: bool = False
    help: str = ""

    @property
    def domain(self) -> str:
        """``a finite number > 0`` or ``lie in (0, 1]``: what error messages ask for."""
        if self.high == math.inf:
            return f"be a finite number > {self.low:g}"
        return f"lie in ({self.low:g}, {self.high:g}{']' if self.include_high else ')'}"

    def check(self, value, label: str | None = None) -> float:
        """``value`` as a float inside the domain; ValueError naming ``label`` (default: the keyword)."""
        label = label or self.name
        loaded_torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
        if loaded_torch is not None and isinstance(value, loaded_torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"`{label}` must {self.domain}, got {value!r}.")
        value = float(value)
        inside = self.low < value and (value <= self.high if self.include_high else value < self.high)
        if not (inside and math.isfinite(value)):  # also rejects NaN
            raise ValueError(f"`{label}` must {self.domain}, got {value!r}.")
        return value


@dataclass(frozen=True)
class RiskMeasure:
    """A risk measure of the registry: a score of a reward distribution where higher is better.

    ``function(q, [levels,] **parameters)`` maps quantile estimates [..., K] to [...]; ``uses_levels``
    says whether it takes the K levels as second argument. Call the measure itself with the levels
    (ignored when not used) and parameter values (defaults for those left out).
    """

    name: str
    function: Callable[..., torch.Tensor]
    parameters: tuple[RiskParameter, ...] = ()
    uses_levels: bool = False
    help: str = ""

    def values(self, **given) -> dict[str, float]:
        """Checked values of every parameter: ``given`` ones, the defaults for the others."""
        unknown = set(given) - {p.name for p in self.parameters}
        if unknown:
            known = [p.name for p in self.parameters] or "none"
            raise TypeError(
                f"Risk measure {self.name!r} has no parameter {sorted(unknown)} (its parameters: {known})."
            )
        return {p.name: p.check(given.get(p.name, p.default)) for p in self.parameters}

    def __call__(self, q, levels=None, **parameters) -> torch.Tensor:
        values = self.values(**parameters)
        if not self.uses_levels:
            return self.function(q, **values)
        if levels is None:
            raise ValueError(f"Risk measure {self.name!r} needs the quantile levels of the estimates.")
        return self.function(q, levels, **values)


#: The parameters of the registered measures by keyword (shared: `exp_utility` and `certainty_equivalent`
#: both take `lam`).
RISK_PARAMETERS: dict[str, RiskParameter] = {
    parameter.name: parameter
    for parameter in (
        RiskParameter("lam", 1.0, 0.0, help="risk aversion lambda"),
        # the worst 10 %: the one default of every entry point (`qrm score`, `evaluate`, `rewardbench`,
        # the risk-aware trainers); the paper fixes no CVaR level
        RiskParameter("alpha", 0.1, 0.0, 1.0, include_high=True, help="tail mass"),
        RiskParameter("tau", 0.1, 0.0, 1.0, help="quantile level"),
    )
}
_LAM, _ALPHA, _TAU = (RISK_PARAMETERS[name] for name in ("lam", "alpha", "tau"))

#: Every risk measure by name. A new measure is a function above and one line here.
RISK_MEASURES: dict[str, RiskMeasure] = {
    measure.name: measure
    for measure in (
        RiskMeasure("expectation", expectation, help="the expected reward (risk-neutral)"),
        RiskMeasure(
            "exp_utility",
            exponential_utility,
            (_LAM,),
            help="mean of -exp(-lam q) over the quantiles (paper eq. 4)",
        ),
        RiskMeasure(
            "certainty_equivalent",
            certainty_equivalent,
            (_LAM,),
            help="same ranking as exp_utility, in reward units",
        ),
        RiskMeasure("cvar", cvar, (_ALPHA,), uses_levels=True, help="mean of the lower alpha tail"),
        RiskMeasure("quantile", quantile, (_TAU,), uses_levels=True, help="the tau-quantile"),
    )
}


def parse(spec: str, **defaults) -> tuple[RiskMeasure, dict[str, float]]:
    """A spec ``"name"`` or ``"name:v1[,v2...]"`` (parameter values in the measure's order, e.g.
    ``"quantile:0.1"``, ``"cvar:0.25"``, ``"exp_utility:2"``) → the registered measure and the checked
    values of all its parameters.

    ``defaults`` give values for the parameters the spec leaves out (before the registry's defaults);
    the ones a measure does not have are ignored, so one set of defaults serves every measure.

    Raises:
        ValueError: for an unknown name, too many values, or a value outside its interval.
    """
    if not isinstance(spec, str):
        raise TypeError(f"A risk measure spec must be a string such as 'quantile:0.1', got {spec!r}.")
    name, _, arguments = spec.strip().partition(":")
    measure = RISK_MEASURES.get(name.strip())
    if measure is None:
        raise ValueError(
            f"Unknown risk measure {name.strip()!r} in {spec!r}; known: {', '.join(RISK_MEASURES)}."
        )
    texts = [text.strip() for text in arguments.split(",")] if arguments.strip() else []
    if len(texts) > len(measure.parameters):
        names = [p.name for p in measure.parameters]
        raise ValueError(
            f"Risk measure {measure.name!r} takes {len(names)} parameter(s) {names}, got {len(texts)} in {spec!r}."
        )
    values = {p.name: defaults[p.name] for p in measure.parameters if p.name in defaults}
    for parameter, text in zip(measure.parameters, texts, strict=False):
        try:
            values[parameter.name] = float(text)
        except ValueError:
            raise ValueError(f"`{parameter.name}` of {spec!r} must be a number, got {text!r}.") from None
    return measure, measure.values(**values)


def resolve(
    spec: str, levels: torch.Tensor | Sequence[float] | None = None, **defaults
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function ``q [..., K] -> [...]`` of a spec (see :func:`parse`), with the levels of ``q`` bound.

    Example: ``resolve("quantile:0.1", model.config.quantile_levels)(out.reward_quantiles)``.
    ``levels`` may be left out for measures that do not use them (``expectation``, ``exp_utility``, ...).
    """
    measure, values = parse(spec, **defaults)
    if measure.uses_levels and levels is None:
        raise ValueError(
            f"Risk measure {measure.name!r} ({spec!r}) needs the quantile levels of the estimates."
        )
    return functools.partial(measure, levels=levels, **values)


# ------------------------------------------------------------------------- measures of the whole output


def lower_confidence_bound(reward, epistemic_std, k: float) -> torch.Tensor:
    r"""Lower confidence bound over the members: ``reward - k * epistemic_std`` (both ``[...]``).

    With ``reward`` a QRM's expected reward (``logits[:, 0]``) and ``epistemic_std`` its
    ``reward_epistemic_std``, the reward a policy cannot raise by going where the members disagree.
    """
    return reward - _as_positive(k, "k") * epistemic_std


def worst_member(member_rewards) -> torch.Tensor:
    """The lowest of the members' expected rewards: ``member_rewards`` [..., E] -> [...]."""
    return _as_quantiles(member_rewards).amin(-1)


#: The penalty of the epistemic measures: `lcb:k` subtracts k times the epistemic std.
EPISTEMIC_PENALTY = RiskParameter("k", 1.0, 0.0, help="epistemic std subtracted, in units of the std")
#: Measures that read the members (`lcb`, `worst_member`), by name.
EPISTEMIC_MEASURES = {"lcb": (EPISTEMIC_PENALTY,), "worst_member": ()}


@dataclass(frozen=True)
class OutputRiskMeasure:
    """A risk measure of a QRM's whole output: an aleatoric measure of its reward quantiles (any of
    :data:`RISK_MEASURES`) and optionally an epistemic part read from its members.

    ``epistemic`` is None, ``"lcb"`` (subtract ``penalty`` times ``reward_epistemic_std``) or
    ``"worst_member"`` (the lowest member expected reward, alone). An output without members (any model
    without ``reward_epistemic_std``, or one member) has no epistemic spread: ``lcb`` is then the
    aleatoric measure and ``worst_member`` the expected reward.
    """

    aleatoric: RiskMeasure
    values: dict
    epistemic: str | None = None
    penalty: float = 0.0

    @property
    def reads_members(self) -> bool:
        """Whether the measure reads the members' spread (an `lcb` or `worst_member` part)."""
        return self.epistemic is not None

    def aleatoric_score(self, output, levels) -> torch.Tensor:
        """The aleatoric measure of ``output.reward_quantiles`` [B, K]; for ``expectation`` the model's
        own expected reward ``output.logits[:, 0]`` (whatever its quantile mixing)."""
        if self.aleatoric.name == "expectation":
            return output.logits[:, 0].float()
        return self.aleatoric(output.reward_quantiles.float(), levels, **self.values)

    def __call__(self, output, levels=None) -> torch.Tensor:
        """The score [B] of a QRM output (``logits``, ``reward_quantiles`` and, when it has members,
        ``reward_epistemic_std`` and ``member_rewards``)."""
        if self.epistemic == "worst_member":
            members = getattr(output, "member_rewards", None)
            return output.logits[:, 0].float() if members is None else worst_member(members.float())
        score = self.aleatoric_score(output, levels)
        spread = getattr(output, "reward_epistemic_std", None)
        if self.epistemic == "lcb" and spread is not None:
            score = lower_confidence_bound(score, spread.float(), self.penalty)
        return score


def parse_output(spec: str, **defaults) -> OutputRiskMeasure:
    """A spec of a measure of the whole output -> :class:`OutputRiskMeasure`.

    ``"<aleatoric>"`` (any :func:`parse` spec), ``"lcb[:k]"`` (expected reward minus k epistemic std),
    ``"<aleatoric>+lcb[:k]"`` (e.g. ``"cvar:0.25+lcb:1"``: cvar minus k epistemic std) or
    ``"worst_member"``. ``defaults`` as for :func:`parse` (``k`` for lcb too).

    Raises:
        ValueError: for an unknown name, a value outside its interval, or ``worst_member`` combined.
    """
    if not isinstance(spec, str):
        raise TypeError(f"A risk measure spec must be a string such as 'lcb:1', got {spec!r}.")
    parts = [part.strip() for part in spec.split("+")]
    epistemic_parts = [p for p in parts if p.partition(":")[0].strip() in EPISTEMIC_MEASURES]
    aleatoric_parts = [p for p in parts if p not in epistemic_parts]
    if len(epistemic_parts) > 1 or len(aleatoric_parts) > 1:
        raise ValueError(
            f"{spec!r}: a spec is one measure of the quantiles, optionally '+lcb:k' (e.g. 'cvar:0.25+lcb:1')."
        )
    measure, values = parse(aleatoric_parts[0] if aleatoric_parts else "expectation", **defaults)
    if not epistemic_parts:
        return OutputRiskMeasure(measure, values)
    name, _, argument = epistemic_parts[0].partition(":")
    name = name.strip()
    if name == "worst_member":
        if argument.strip() or aleatoric_parts:
            raise ValueError(f"{spec!r}: worst_member takes no parameter and combines with no other measure.")
        return OutputRiskMeasure(measure, values, "worst_member")
    try:
        penalty = float(argument) if argument.strip() else defaults.get("k", EPISTEMIC_PENALTY.default)
    except ValueError:
        raise ValueError(f"`k` of {spec!r} must be a number, got {argument.strip()!r}.") from None
    return OutputRiskMeasure(measure, values, "lcb", EPISTEMIC_PENALTY.check(penalty, "k"))
