"""Hyperparameter importance of a sweep: optuna's fANOVA over a study rebuilt from the trials' records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

IMPORTANCE_SEED = 0  # fixed, so that a report is reproducible
LOG_SCALE_RATIO = 10  # positive floats spanning a factor ≥ 10 are treated as log-scaled


def distribution(values: Sequence[Any]):
    """The optuna distribution a searched hyperparameter's observed values imply."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    kinds = {type(value) for value in values}
    if kinds == {int}:
        return IntDistribution(min(values), max(values))
    if kinds and kinds <= {int, float}:
        low, high = float(min(values)), float(max(values))
        return FloatDistribution(low, high, log=low > 0 and high / low >= LOG_SCALE_RATIO)
    return CategoricalDistribution(sorted(set(values), key=repr))


def param_importances(trials: Sequence[tuple[dict[str, Any], float]]) -> dict[str, float] | None:
    """{name: importance} (summing to 1, most important first) from (params, value) pairs, or None when there
    are fewer than two trials or no parameter varies."""
    if len(trials) < 2:
        return None
    names = sorted({name for params, _ in trials for name in params})
    varying = [name for name in names if len({repr(params.get(name)) for params, _ in trials}) > 1]
    if not varying:
        return None
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        distributions = {name: distribution([params.get(name) for params, _ in trials]) for name in varying}
        study = optuna.create_study(direction="maximize")
        for params, value in trials:
            study.add_trial(optuna.trial.create_trial(
                params={name: _as_float(params.get(name), distributions[name]) for name in varying},
                distributions=distributions, value=value))
        importances = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=IMPORTANCE_SEED))
    finally:
        optuna.logging.set_verbosity(verbosity)
    return {name: float(importance) for name, importance in importances.items()}


def _as_float(value: Any, distribution) -> Any:
    from optuna.distributions import FloatDistribution

    return float(value) if isinstance(distribution, FloatDistribution) else value
