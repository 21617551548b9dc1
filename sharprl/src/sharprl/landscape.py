"""Sharpness of a trained SHAC actor: SAM sharpness, top Hessian eigenvalue, loss landscapes.

The loss is SHAC's own short-horizon actor loss (:meth:`sharprl.shac.Learner.rollout_loss`) at the
run's final training state (normaliser statistics, target critic), over a FIXED batch: start states
from ``reset(PRNGKey(batch_seed))`` (the same for every run, so runs are compared on the same
starts), the same reset states and the same policy/noise keys for every evaluation. It is thus a
deterministic function of the actor parameters only.

- SAM sharpness: ``max_{||eps|| <= rho} L(theta + eps) - L(theta)``, by a few projected, normalised
  gradient-ascent steps started at SAM's first-order step ``rho g / ||g||``; with ``adaptive=True``
  the ball is ASAM's, ``||T^-1 eps|| <= rho`` with ``T = |theta| + eta``.
- Top Hessian eigenvalue: power iteration on Hessian-vector products, ``jax.jvp`` of ``jax.grad``
  through the whole rollout (forward-over-reverse); the Rayleigh quotient of the last iterate.
- Loss landscapes (Li et al., 2018): random Gaussian directions, filter-normalised (each output
  unit's column of a kernel rescaled to that column's norm in theta; biases and other 1-D
  parameters get no component), 1-D ``L(theta + a d)`` and 2-D ``L(theta + a d1 + b d2)``.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from sharprl import checkpoint
from sharprl.envs import Perturbation, make_task
from sharprl.errors import SharprlError
from sharprl.shac import Learner
from sharprl.shac_config import ALGOS, SHACConfig


@dataclasses.dataclass(frozen=True)
class SharpnessSpec:
    """Settings of the sharpness measurements."""

    rho: float = 0.05  # radius of the SAM ball (L2, in parameter space)
    asam_rho: float = 0.5  # radius of the ASAM ball (in T^-1 scaled coordinates)
    asam_eta: float = 0.01  # ASAM's T = |theta| + eta
    ascent_steps: int = 5  # projected gradient-ascent steps after the first SAM step
    power_iterations: int = 20  # Hessian power-iteration steps
    alphas_1d: int = 21  # points of the 1-D landscape on [-span, span]
    alphas_2d: int = 11  # points per axis of the 2-D landscape on [-span, span]
    span: float = 1.0  # landscape extent in units of the filter-normalised direction
    batch_seed: int = 1234  # seed of the fixed start states and rollout keys
    num_envs: int | None = None  # start states in the batch (None: the run's num_envs)

    def __post_init__(self) -> None:
        if self.rho <= 0 or self.asam_rho <= 0 or self.span <= 0:
            raise SharprlError("sharpness rho, asam_rho and span must be > 0")
        if self.ascent_steps < 0 or self.power_iterations < 1 or self.alphas_1d < 3 or self.alphas_2d < 3:
            raise SharprlError("need ascent_steps >= 0, power_iterations >= 1, alphas >= 3")


@dataclasses.dataclass(frozen=True)
class ActorLoss:
    """SHAC's actor loss of one run on a fixed batch, with jitted value, gradient and HVP."""

    params: Any  # the run's final actor parameters (flax pytree)
    value: Any  # params -> () loss
    grad: Any  # params -> gradient pytree
    hvp: Any  # (params, tangent pytree) -> Hessian-vector product pytree
    meta: dict[str, Any]  # the checkpoint's metadata


def actor_loss(run_dir: str | Path, spec: SharpnessSpec = SharpnessSpec()) -> ActorLoss:
    """Rebuild the run's Learner and final training state; close the loss over a fixed batch."""
    meta = checkpoint.load_meta(run_dir)
    if meta.get("algo") not in ALGOS:
        raise SharprlError(
            f"{run_dir}: sharpness needs a SHAC-family run ({', '.join(ALGOS)}), got {meta.get('algo')!r}"
        )
    cfg_json = dict(meta["config"])
    for name in ("actor_hidden", "critic_hidden"):
        cfg_json[name] = tuple(cfg_json[name])
    saved_config = SHACConfig(**cfg_json)
    config = saved_config
    if spec.num_envs is not None:  # a different batch for the loss; the saved state keeps its sizes
        config = dataclasses.replace(saved_config, num_envs=spec.num_envs, critic_minibatches=1)
    task = make_task(
        meta["env"], meta["backend"], Perturbation(**meta.get("train_perturbation", {})), int(meta["episode_length"])
    )
    learner = Learner(config, task)
    template = Learner(saved_config, task).init(jax.random.PRNGKey(config.seed))
    state, _ = checkpoint.load_train_state(run_dir, template)
    k_start, k_reset, k_roll = jax.random.split(jax.random.PRNGKey(spec.batch_seed), 3)
    n = config.num_envs
    reset = jax.jit(jax.vmap(task.reset))
    starts = reset(jax.random.split(k_start, n))  # batched brax State, (n, ...)
    resets = reset(jax.random.split(k_reset, n))
    state = state.replace(env_state=starts, episode_step=jnp.zeros(n, jnp.int32))

    def loss(p, s, r, k):
        return learner.rollout_loss(p, s, r, k)[0]

    value = jax.jit(loss)
    grad = jax.jit(jax.grad(loss))

    @jax.jit
    def hvp(p, v, s, r, k):
        return jax.jvp(lambda q: jax.grad(loss)(q, s, r, k), (p,), (v,))[1]

    bind = {"s": state, "r": resets, "k": jax.random.split(k_roll, n)}  # one rollout key per env
    return ActorLoss(state.actor_params, partial(value, **bind), partial(grad, **bind), partial(hvp, **bind), meta)


def _norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree_util.tree_leaves(tree)))


def _axpy(a, x, y):
    """a * x + y for pytrees."""
    return jax.tree.map(lambda u, v: a * u + v, x, y)


def sam_sharpness(
    loss: ActorLoss, rho: float, steps: int, adaptive: bool = False, eta: float = 0.01
) -> dict[str, float]:
    """Largest loss increase found in the (A)SAM ball of radius rho; also the first-step value."""
    theta = loss.params
    scale = jax.tree.map(lambda p: jnp.abs(p) + eta if adaptive else jnp.ones_like(p), theta)  # T
    base = float(loss.value(theta))
    z = jax.tree.map(jnp.zeros_like, theta)  # eps = T z, ball ||z|| <= rho
    best = first = base
    for step in range(steps + 1):
        eps = jax.tree.map(jnp.multiply, scale, z)
        g_z = jax.tree.map(jnp.multiply, scale, loss.grad(jax.tree.map(jnp.add, theta, eps)))  # dL/dz
        g_norm = _norm(g_z)
        if not bool(jnp.isfinite(g_norm)) or float(g_norm) == 0.0:
            break
        lr = rho if step == 0 else rho / 2
        z = _axpy(lr / g_norm, g_z, z)
        z = jax.tree.map(partial(jnp.multiply, jnp.minimum(1.0, rho / _norm(z))), z)  # project onto the ball
        value = float(loss.value(jax.tree.map(lambda p, t, a: p + t * a, theta, scale, z)))
        first = value if step == 0 else first
        best = max(best, value) if np.isfinite(value) else best
    return {"loss": base, "first_step_increase": first - base, "sharpness": best - base}


def top_hessian_eigenvalue(loss: ActorLoss, iterations: int, seed: int = 0) -> dict[str, Any]:
    """The largest (algebraic) Hessian eigenvalue by power iteration on Hessian-vector products.

    Power iteration finds the eigenvalue of largest magnitude. When that one is negative (the actor
    sits on a saddle or a maximum along some direction), a second power iteration on ``H - dominant I``
    (whose eigenvalues are all >= 0, so its dominant one is ``top - dominant``) gives the
    largest positive curvature, which is what sharpness means. Returns ``eigenvalue`` (the top one),
    ``dominant`` (largest magnitude) and the histories.
    """
    flat, unravel = ravel_pytree(loss.params)
    v0 = jax.random.normal(jax.random.PRNGKey(seed), flat.shape, flat.dtype)  # (num_params,)

    def hvp(v):  # (num_params,) -> (num_params,)
        return ravel_pytree(loss.hvp(loss.params, unravel(v)))[0]

    history = _power_iteration(hvp, v0, iterations)
    dominant = history[-1]
    if not (np.isfinite(dominant) and dominant < 0):
        return {"eigenvalue": dominant, "dominant": dominant, "history": history, "shifted_history": []}
    shifted = _power_iteration(lambda v: hvp(v) - dominant * v, v0, iterations)
    return {"eigenvalue": shifted[-1] + dominant, "dominant": dominant, "history": history, "shifted_history": shifted}


def _power_iteration(matvec, v: jax.Array, iterations: int) -> list[float]:
    """Rayleigh quotients ``v . A v`` of power iteration with ``matvec``; ``v: (n,)``, any scale."""
    v = v / jnp.linalg.norm(v)
    history = []
    for _ in range(iterations):
        av = matvec(v)  # (n,)
        history.append(float(jnp.vdot(v, av)))
        norm = jnp.linalg.norm(av)
        if not bool(jnp.isfinite(norm)) or float(norm) == 0.0:
            break
        v = av / norm
    return history


def filter_normalized_direction(params, key: jax.Array):
    """Gaussian direction, each kernel column rescaled to theta's column norm; 1-D leaves zero."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    out = []
    for leaf, k in zip(leaves, keys):
        if leaf.ndim <= 1:
            out.append(jnp.zeros_like(leaf))
            continue
        d = jax.random.normal(k, leaf.shape, leaf.dtype)  # (..., in, out): filters along the last axis
        axes = tuple(range(leaf.ndim - 1))
        d_norm = jnp.sqrt(jnp.sum(d**2, axis=axes, keepdims=True))  # (1, out)
        p_norm = jnp.sqrt(jnp.sum(leaf**2, axis=axes, keepdims=True))  # (1, out)
        out.append(d * p_norm / jnp.maximum(d_norm, 1e-12))
    return jax.tree_util.tree_unflatten(treedef, out)


def landscapes(loss: ActorLoss, spec: SharpnessSpec) -> dict[str, Any]:
    """1-D and 2-D filter-normalised loss landscapes around the run's parameters."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(spec.batch_seed + 1))
    d1 = filter_normalized_direction(loss.params, k1)
    d2 = filter_normalized_direction(loss.params, k2)

    def at(a: float, b: float) -> float:
        return float(loss.value(jax.tree.map(lambda p, x, y: p + a * x + b * y, loss.params, d1, d2)))

    a1 = np.linspace(-spec.span, spec.span, spec.alphas_1d)
    a2 = np.linspace(-spec.span, spec.span, spec.alphas_2d)
    return {
        "alphas_1d": a1.tolist(),
        "loss_1d": [at(a, 0.0) for a in a1],
        "alphas_2d": a2.tolist(),
        "loss_2d": [[at(a, b) for a in a2] for b in a2],  # rows: direction 2, columns: direction 1
    }


def measure(run_dir: str | Path, spec: SharpnessSpec = SharpnessSpec()) -> dict[str, Any]:
    """Every sharpness measure of one SHAC-family run as a JSON-ready dict."""
    loss = actor_loss(run_dir, spec)
    sam = sam_sharpness(loss, spec.rho, spec.ascent_steps)
    asam = sam_sharpness(loss, spec.asam_rho, spec.ascent_steps, adaptive=True, eta=spec.asam_eta)
    eig = top_hessian_eigenvalue(loss, spec.power_iterations, spec.batch_seed)
    return {
        "run_dir": str(run_dir),
        "algo": loss.meta["algo"],
        "seed": int(loss.meta.get("config", {}).get("seed", 0)),
        "loss": sam["loss"],
        "sam_sharpness": sam["sharpness"],
        "sam_first_step_increase": sam["first_step_increase"],
        "asam_sharpness": asam["sharpness"],
        "hessian_top_eigenvalue": eig["eigenvalue"],
        "hessian_dominant_eigenvalue": eig["dominant"],
        "hessian_power_history": eig["history"],
        **landscapes(loss, spec),
        "spec": dataclasses.asdict(spec),
    }


def write_plots(results: list[dict[str, Any]], out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """landscape_1d.png (one curve per run) and landscape_2d.png (one contour per run)."""
    from sharprl import plots

    out = Path(out_dir)
    labels = [f"{r['algo']} s{r['seed']}" for r in results]
    one = {lab: (np.array(r["alphas_1d"]), np.array(r["loss_1d"])) for lab, r in zip(labels, results)}
    two = {lab: (np.array(r["alphas_2d"]), np.array(r["loss_2d"])) for lab, r in zip(labels, results)}
    return {
        "landscape_1d": plots.lines(
            out / "landscape_1d.png",
            one,
            "step along filter-normalised direction",
            "SHAC actor loss",
            f"{title} 1-D loss landscape".strip(),
        ),
        "landscape_2d": plots.contours(out / "landscape_2d.png", two, f"{title} 2-D loss landscape".strip()),
    }
