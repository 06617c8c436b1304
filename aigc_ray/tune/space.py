"""Search spaces from the spec to Ray Tune, for random/grid search, Optuna and PBT."""

from __future__ import annotations

from ..spec.sections import SearchDim, SweepSpec


def tune_domain(dim: SearchDim):
    """A Tune sampling domain (or grid) for one dimension."""
    from ray import tune

    if dim.type == "uniform":
        return tune.uniform(dim.low, dim.high)
    if dim.type == "loguniform":
        return tune.loguniform(dim.low, dim.high)
    if dim.type == "int":
        return tune.randint(int(dim.low), int(dim.high) + 1)
    if dim.type == "choice":
        return tune.choice(list(dim.values))
    return tune.grid_search(list(dim.values))


def param_space(defaults: dict, sweep: SweepSpec) -> dict:
    """The trainable's config: every default, with the searched dimensions as Tune domains."""
    return {**defaults, **{name: tune_domain(dim) for name, dim in sweep.search_space.items()}}


def pbt_mutations(sweep: SweepSpec, structural: frozenset[str] = frozenset()) -> dict:
    """What PBT may resample or perturb on explore: every non-grid dimension that does not change
    the network's shape (an exploit copies the donor's whole config, so those stay consistent
    with the donor's checkpoint)."""
    return {
        name: tune_domain(dim)
        for name, dim in sweep.search_space.items()
        if dim.type != "grid" and name not in structural
    }


def scheduler(sweep: SweepSpec, structural: frozenset[str] = frozenset()):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if sweep.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=sweep.max_iterations,
            grace_period=min(sweep.grace_period, sweep.max_iterations),
            reduction_factor=sweep.reduction_factor,
        )
    if sweep.scheduler == "pbt":
        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=sweep.perturbation_interval,
            hyperparam_mutations=pbt_mutations(sweep, structural),
            quantile_fraction=0.5,
            resample_probability=0.25,
            synch=False,
        )
    return FIFOScheduler()


def search_alg(sweep: SweepSpec):
    if sweep.search_alg != "optuna":
        return None
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    return ConcurrencyLimiter(OptunaSearch(seed=sweep.seed), max_concurrent=sweep.max_concurrent_trials)
