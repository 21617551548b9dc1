"""Actor and critic networks and the policy interface shared by every algorithm.

A *policy* is a function ``policy(obs, key) -> action`` with ``obs: (..., obs_size)`` raw (not yet
normalised) observations and ``action: (..., action_size)`` in [-1, 1]. Algorithms hand out a
``make_policy(params, deterministic) -> policy`` factory; ``params`` is whatever pytree the factory
expects. For sharprl's own Gaussian actor it is ``(normalizer_state, actor_params)``, the same layout
brax.training uses, so observation normalisation statistics always travel with the weights.

A :class:`PolicySpec` names the factory (``kind``) and its sizes; it is stored in every checkpoint so
``sharprl evaluate`` can rebuild any algorithm's policy. Other modules (e.g. ``sharprl.baselines``)
add kinds with :func:`register_policy_kind`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from brax.training.acme import running_statistics

from sharprl.errors import SharprlError

Params = Any  # a pytree of arrays
PolicyFn = Callable[[jax.Array, jax.Array], jax.Array]  # (obs, key) -> action
MakePolicy = Callable[..., PolicyFn]  # (params, deterministic=False) -> policy
NormalizerState = running_statistics.RunningStatisticsState

GAUSSIAN_KIND = "gaussian_tanh_mlp"

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "elu": nn.elu,
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "swish": nn.swish,
    "silu": nn.silu,
}


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation called ``name``; SharprlError for an unknown one."""
    if name not in _ACTIVATIONS:
        raise SharprlError(f"unknown activation {name!r}: expected one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """Everything needed to rebuild a policy from its saved parameters."""

    observation_size: int  # length of the raw observation vector
    action_size: int  # length of the action vector (actions live in [-1, 1])
    kind: str = GAUSSIAN_KIND  # which registered factory builds the policy
    hidden_sizes: tuple[int, ...] = (128, 64, 32)  # actor MLP widths (SHAC's Ant actor)
    activation: str = "elu"  # hidden-layer activation name (see activation_fn)
    log_std_init: float = -1.0  # initial log standard deviation of the Gaussian (state independent)
    layer_norm: bool = False  # LayerNorm after each hidden activation (SHAC's reference networks)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["hidden_sizes"] = list(self.hidden_sizes)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PolicySpec:
        """Inverse of to_json; SharprlError on a malformed dict."""
        try:
            fields = {f.name for f in dataclasses.fields(cls)}
            unknown = set(data) - fields
            if unknown:
                raise SharprlError(f"policy spec has unknown fields {sorted(unknown)}")
            kwargs = dict(data)
            kwargs["hidden_sizes"] = tuple(int(h) for h in data.get("hidden_sizes", ()))
            return cls(**kwargs)
        except TypeError as exc:
            raise SharprlError(f"malformed policy spec {data!r}: {exc}") from None


def mlp_torso(x: jax.Array, hidden_sizes: Sequence[int], activation: str, layer_norm: bool) -> jax.Array:
    """Hidden layers Dense -> activation (-> LayerNorm); ``x: (..., in)`` -> ``(..., hidden_sizes[-1])``.

    With ``layer_norm`` the weights start orthogonal with gain sqrt(2) and zero biases, and each
    hidden layer is normalised after its activation, as in SHAC's reference networks: LayerNorm
    bounds how fast the output can change with the input, which keeps the policy (and the loss seen
    through the physics) from becoming arbitrarily sharp. Call inside a compact flax module.
    """
    act = activation_fn(activation)
    dense = (
        partial(nn.Dense, kernel_init=nn.initializers.orthogonal(2.0**0.5), bias_init=nn.initializers.zeros)
        if layer_norm
        else nn.Dense
    )
    for width in hidden_sizes:
        x = act(dense(width)(x))  # (..., width)
        if layer_norm:
            x = nn.LayerNorm()(x)  # (..., width)
    return x


class GaussianActor(nn.Module):
    """MLP giving the mean and log-std of a Gaussian over pre-tanh actions."""

    action_size: int  # output width
    hidden_sizes: Sequence[int] = (128, 64, 32)  # hidden widths
    activation: str = "elu"  # hidden activation name
    log_std_init: float = -1.0  # initial value of the state-independent log-std
    layer_norm: bool = False  # LayerNorm after each hidden activation (see mlp_torso)

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        # obs: (..., obs_size), already normalised
        x = mlp_torso(obs, self.hidden_sizes, self.activation, self.layer_norm)  # (..., hidden[-1])
        mean = nn.Dense(self.action_size)(x)  # (..., action_size)
        log_std = self.param("log_std", nn.initializers.constant(self.log_std_init), (self.action_size,))
        return mean, jnp.broadcast_to(log_std, mean.shape)  # both (..., action_size)


class ValueCritic(nn.Module):
    """MLP state-value function V(obs)."""

    hidden_sizes: Sequence[int] = (64, 64)  # hidden widths (SHAC's Ant critic)
    activation: str = "elu"  # hidden activation name
    layer_norm: bool = False  # LayerNorm after each hidden activation (see mlp_torso)

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        # obs: (..., obs_size), already normalised
        x = mlp_torso(obs, self.hidden_sizes, self.activation, self.layer_norm)  # (..., hidden[-1])
        return nn.Dense(1)(x)[..., 0]  # (...,)


def make_actor(spec: PolicySpec) -> GaussianActor:
    """The flax actor module a Gaussian PolicySpec describes."""
    return GaussianActor(
        spec.action_size, tuple(spec.hidden_sizes), spec.activation, spec.log_std_init, spec.layer_norm
    )


def init_normalizer(observation_size: int) -> NormalizerState:
    """Running mean/std statistics of observations, initially mean 0, std 1."""
    return running_statistics.init_state(jax.ShapeDtypeStruct((observation_size,), jnp.float32))


def update_normalizer(state: NormalizerState, obs: jax.Array) -> NormalizerState:
    """Add a batch ``obs: (..., obs_size)`` to the running statistics (no gradient flows)."""
    return running_statistics.update(state, jax.lax.stop_gradient(obs))


def normalize(obs: jax.Array, state: NormalizerState) -> jax.Array:
    """(obs - mean) / std with the given statistics; ``obs: (..., obs_size)``. Differentiable in obs."""
    return running_statistics.normalize(obs, state)


def gaussian_action(
    actor: GaussianActor, actor_params: Params, obs_normalized: jax.Array, key: jax.Array, deterministic: bool
) -> jax.Array:
    """tanh of a reparameterised Gaussian sample (or of the mean); differentiable in the params and obs."""
    mean, log_std = actor.apply(actor_params, obs_normalized)  # (..., action_size) each
    if deterministic:
        return jnp.tanh(mean)
    noise = jax.random.normal(key, mean.shape, mean.dtype)  # (..., action_size)
    return jnp.tanh(mean + jnp.exp(log_std) * noise)


def _gaussian_factory(spec: PolicySpec) -> tuple[MakePolicy, Callable[[jax.Array], Params]]:
    actor = make_actor(spec)

    def make_policy(params: Params, deterministic: bool = False) -> PolicyFn:
        normalizer_state, actor_params = params

        def policy(obs: jax.Array, key: jax.Array) -> jax.Array:
            return gaussian_action(actor, actor_params, normalize(obs, normalizer_state), key, deterministic)

        return policy

    def init_params(key: jax.Array) -> Params:
        dummy = jnp.zeros((1, spec.observation_size), jnp.float32)
        return init_normalizer(spec.observation_size), actor.init(key, dummy)

    return make_policy, init_params


PolicyFactory = Callable[[PolicySpec], tuple[MakePolicy, Callable[[jax.Array], Params]]]
_FACTORIES: dict[str, PolicyFactory] = {GAUSSIAN_KIND: _gaussian_factory}
_BUILT: dict[tuple[PolicyFactory, PolicySpec], tuple[MakePolicy, Callable[[jax.Array], Params]]] = {}


def register_policy_kind(kind: str, factory: PolicyFactory) -> None:
    """Teach sharprl a new policy kind: ``factory(spec) -> (make_policy, init_params(key))``.

    ``init_params`` gives a parameter pytree of the right structure (the template for loading).
    """
    _FACTORIES[kind] = factory


def policy_factory(spec: PolicySpec) -> tuple[MakePolicy, Callable[[jax.Array], Params]]:
    """``(make_policy, init_params)`` for a spec; SharprlError for an unknown kind."""
    if spec.kind not in _FACTORIES:
        raise SharprlError(f"unknown policy kind {spec.kind!r}: known kinds are {sorted(_FACTORIES)}")
    key = (_FACTORIES[spec.kind], spec)
    if key not in _BUILT:  # the same make_policy object per spec, so compiled evaluations are reused
        _BUILT[key] = _FACTORIES[spec.kind](spec)
    return _BUILT[key]


def registered_kinds() -> tuple[str, ...]:
    """Names of the policy kinds known so far."""
    return tuple(sorted(_FACTORIES))
