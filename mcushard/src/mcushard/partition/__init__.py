"""Partitioning a model across chips: the Plan and the strategies that build it."""

from mcushard.errors import McushardError


def make_plan(cfg, n_chips: int, strategy: str = "tp", algorithm: str = "hierarchical", tp_size: int = 0,
              scope: str = "model"):
    """Build a plan: strategy tp | pp | hybrid (tensor-parallel groups of `tp_size`, default ~sqrt(2N)).

    scope "model" covers everything; "blocks" only the transformer blocks (no embedding or head)."""
    if scope not in ("model", "blocks"):
        raise McushardError(f"unknown scope {scope!r}; use model or blocks")
    from mcushard.partition.hybrid import default_tp_size, hybrid
    from mcushard.partition.pipeline import pipeline
    from mcushard.partition.tensor_parallel import tensor_parallel

    if strategy == "tp":
        return tensor_parallel(cfg, n_chips, algorithm, scope)
    if strategy == "pp":
        return pipeline(cfg, n_chips, algorithm, scope)
    if strategy == "hybrid":
        return hybrid(cfg, n_chips, tp_size or default_tp_size(n_chips), algorithm, scope)
    raise McushardError(f"unknown strategy {strategy!r}; use tp, pp or hybrid")
