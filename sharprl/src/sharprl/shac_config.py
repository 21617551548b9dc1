"""SHAC configuration: one frozen dataclass, with presets per task (Xu et al., ICLR 2022).

The Ant preset follows the reference implementation's Ant settings (NVlabs/DiffRL,
``examples/cfg/shac/ant.yaml``); hopper, humanoid and halfcheetah follow that repository's configs for
those tasks. ``cartpole`` is a tiny configuration for tests and the demo.
"""

from __future__ import annotations

import dataclasses

from sharprl.errors import SharprlError

ALGOS = ("shac", "shac-sam", "shac-asam")


@dataclasses.dataclass(frozen=True)
class SHACConfig:
    """Every knob of a SHAC / SHAC-SAM / SHAC-ASAM training run."""

    num_envs: int = 64  # parallel environments per rollout
    horizon: int = 32  # short-horizon length: env steps per actor gradient (steps_num)
    epochs: int = 2000  # actor updates; env steps = epochs * num_envs * horizon
    actor_hidden: tuple[int, ...] = (128, 64, 32)  # Gaussian actor MLP widths
    critic_hidden: tuple[int, ...] = (64, 64)  # value critic MLP widths
    activation: str = "elu"  # hidden activation of both networks
    layer_norm: bool = False  # LayerNorm after each hidden activation, orthogonal init (the reference's networks)
    log_std_init: float = -1.0  # initial state-independent log std of the actor
    actor_lr: float = 2e-3  # actor Adam learning rate at epoch 0
    critic_lr: float = 2e-3  # critic Adam learning rate at epoch 0
    final_lr: float = 1e-5  # both rates decay linearly to this at the last epoch
    adam_b1: float = 0.7  # Adam beta1 (both optimisers)
    adam_b2: float = 0.95  # Adam beta2 (both optimisers)
    grad_norm_clip: float = 1.0  # global-norm clip of actor and critic gradients
    gamma: float = 0.99  # discount factor
    td_lambda: float = 0.95  # lambda of the critic's TD(lambda) targets
    target_critic_alpha: float = 0.2  # target <- alpha * target + (1 - alpha) * critic, each epoch
    critic_iterations: int = 16  # passes over the epoch's (horizon * num_envs) critic samples
    critic_minibatches: int = 4  # minibatches per pass (DiffRL num_batch)
    reward_scale: float = 1.0  # multiplies rewards inside the losses (logged returns are raw)
    healthy_barrier: float = 0.0  # training-only penalty weight as the body nears its healthy range's ends
    healthy_margin: float = 0.1  # width of that barrier, in the range's units (m for heights, rad for angles)
    upright_barrier: float = 0.0  # training-only penalty weight on a torso tilting past upright_min (ant, humanoid)
    upright_min: float = 0.7  # smallest world-z component of the torso's up axis that costs nothing
    remat: bool = True  # recompute each rollout step in the backward pass (less memory traffic; same gradient)
    normalize_observations: bool = True  # running mean/std observation normalisation
    episode_length: int = 1000  # time limit; truncated episodes bootstrap from the target critic
    sharpness: str | None = None  # None (SHAC), "sam" or "asam" on the actor update
    rho: float = 0.05  # radius of the ascent step (preset(): 0.05 for SAM, 0.5 for ASAM, Kwon et al.'s defaults)
    asam_eta: float = 0.01  # ASAM's T = |theta| + eta
    critic_sharpness: bool = False  # also apply the same SAM/ASAM step to critic updates
    eval_every_epochs: int = 50  # deterministic evaluation cadence (0: only at the end)
    eval_episodes: int = 16  # episodes per evaluation
    checkpoint_every_epochs: int = 20  # checkpoint cadence (and always at the end)
    seed: int = 0  # PRNG seed for networks, envs and noise

    def __post_init__(self) -> None:
        checks = {
            "num_envs": self.num_envs >= 1,
            "horizon": self.horizon >= 1,
            "epochs": self.epochs >= 1,
            "gamma": 0.0 < self.gamma <= 1.0,
            "td_lambda": 0.0 <= self.td_lambda <= 1.0,
            "target_critic_alpha": 0.0 <= self.target_critic_alpha < 1.0,
            "critic_iterations": self.critic_iterations >= 1,
            "critic_minibatches": self.critic_minibatches >= 1
            and (self.num_envs * self.horizon) % self.critic_minibatches == 0,
            "rho": self.rho >= 0.0,
            "healthy_barrier": self.healthy_barrier >= 0.0,
            "healthy_margin": self.healthy_margin > 0.0,
            "upright_barrier": self.upright_barrier >= 0.0,
            "upright_min": -1.0 < self.upright_min < 1.0,
            "sharpness": self.sharpness in (None, "sam", "asam"),
            "episode_length": self.episode_length >= 1,
            "eval_episodes": self.eval_episodes >= 1,
            "checkpoint_every_epochs": self.checkpoint_every_epochs >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise SharprlError(f"invalid SHAC config: {values}")

    @property
    def env_steps_per_epoch(self) -> int:
        return self.num_envs * self.horizon

    @property
    def algo(self) -> str:
        return "shac" if self.sharpness is None else f"shac-{self.sharpness}"


PRESETS: dict[str, SHACConfig] = {
    "ant": SHACConfig(healthy_barrier=20.0, healthy_margin=0.2, upright_barrier=20.0),
    "halfcheetah": SHACConfig(),
    "hopper": SHACConfig(num_envs=256, critic_lr=2e-4),
    "humanoid": SHACConfig(
        actor_hidden=(256, 128), critic_hidden=(128, 128), critic_lr=5e-4, target_critic_alpha=0.995
    ),
    "cartpole": SHACConfig(
        num_envs=16,
        horizon=8,
        epochs=60,
        actor_hidden=(32, 32),
        critic_hidden=(32, 32),
        critic_iterations=4,
        critic_minibatches=2,
        episode_length=200,
        eval_every_epochs=20,
        eval_episodes=8,
        checkpoint_every_epochs=10,
    ),
}


def preset(
    env: str, algo: str = "shac", rho: float | None = None, seed: int = 0, env_steps: int | None = None, **overrides
) -> SHACConfig:
    """The task's preset for ``algo`` (shac, shac-sam, shac-asam), optionally resized to ``env_steps``."""
    if env not in PRESETS:
        raise SharprlError(f"no SHAC preset for env {env!r}: expected one of {', '.join(PRESETS)}")
    if algo not in ALGOS:
        raise SharprlError(f"unknown SHAC algorithm {algo!r}: expected one of {', '.join(ALGOS)}")
    cfg = dataclasses.replace(PRESETS[env], sharpness=None if algo == "shac" else algo.split("-")[1], seed=seed)
    cfg = dataclasses.replace(cfg, rho=rho if rho is not None else (0.5 if algo == "shac-asam" else 0.05))
    cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg  # before sizing: they may change an epoch
    if env_steps is not None:
        if env_steps < cfg.env_steps_per_epoch:
            raise SharprlError(f"--env-steps {env_steps} is less than one epoch ({cfg.env_steps_per_epoch} steps)")
        cfg = dataclasses.replace(cfg, epochs=env_steps // cfg.env_steps_per_epoch)
    return cfg


# Fields that `sharprl train` sets through their own flags, not through `--set`.
FLAG_FIELDS = {
    "seed": "--seed",
    "epochs": "--env-steps",
    "sharpness": "--algo",
    "rho": "--rho",
    "episode_length": "--episode-length",
}
