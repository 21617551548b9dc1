"""SHAC on a tiny differentiable toy task: learning, SAM's same-start gradient, non-finite skips."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy_env import tall_task, toy_task

from sharprl import checkpoint, shac
from sharprl.errors import SharprlError
from sharprl.evaluate import evaluate
from sharprl.overrides import parse_overrides
from sharprl.shac_config import FLAG_FIELDS, SHACConfig, preset

TOY = SHACConfig(
    num_envs=16, horizon=8, epochs=40, actor_hidden=(16,), critic_hidden=(16,), actor_lr=1e-2, critic_lr=1e-2,
    critic_iterations=2, critic_minibatches=2, episode_length=50, eval_every_epochs=0, eval_episodes=4,
    checkpoint_every_epochs=5,
)  # fmt: skip


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_learning_raises_the_return_on_an_easy_task():
    task = toy_task()
    learner = shac.learner_for(TOY, task)
    state = learner.init(jax.random.PRNGKey(0))
    before = evaluate(learner.make_policy, learner.policy_params(state), task, episodes=16, seed=0).mean_return
    critic_losses = []
    for _ in range(TOY.epochs):
        state, m = learner.epoch_fn(state)
        critic_losses.append(float(m["critic_loss"]))
    after = evaluate(learner.make_policy, learner.policy_params(state), task, episodes=16, seed=0).mean_return
    assert int(state.skipped_actor) == 0 and int(state.epoch) == TOY.epochs
    assert before < 0 and after > 0.5 * before, (before, after)  # return = -sum |pos|^2: at least halved
    assert np.mean(critic_losses[-5:]) < np.mean(critic_losses[:5]), critic_losses


def test_sam_second_gradient_uses_the_same_starts_keys_and_statistics():
    task = toy_task()
    cfg = dataclasses.replace(TOY, sharpness="sam", rho=0.1)
    learner = shac.Learner(cfg, task, shards=2)  # a private instance: its rollout loss gets instrumented
    calls = []

    def record(start_obs, reset_obs, keys, norm_mean, target_leaf, actor_leaves):
        calls.append([np.asarray(x) for x in (start_obs, reset_obs, keys, norm_mean, target_leaf)] + [actor_leaves])

    original = learner.rollout_loss

    def instrumented(actor_params, state, reset_states, env_keys):
        flat = jnp.concatenate([x.ravel() for x in jax.tree.leaves(actor_params)])
        jax.debug.callback(
            lambda *a: record(*a[:5], np.asarray(a[5])), state.env_state.obs, reset_states.obs, env_keys,
            state.normalizer.mean, jax.tree.leaves(state.target_critic_params)[0], flat,
        )  # fmt: skip
        return original(actor_params, state, reset_states, env_keys)

    learner.rollout_loss = instrumented
    learner.epoch_fn = shac.schedule.ThreadedEpoch(learner)  # compiles the instrumented loss
    state = learner.init(jax.random.PRNGKey(1))
    for _ in range(2):  # the second epoch has non-trivial normaliser statistics
        state, m = learner.epoch_fn(state)
    # per epoch and shard (threads: any order) two loss evaluations, at theta and at theta + eps
    assert len(calls) == 8 and all(c[0].shape[0] == TOY.num_envs // 2 for c in calls)
    groups: dict[bytes, list] = {}
    for c in calls:
        groups.setdefault(c[0].tobytes(), []).append(c)
    assert sorted(len(g) for g in groups.values()) == [2, 2, 2, 2]  # 4 distinct shard windows, 2 calls each
    for first, second in groups.values():
        for a, b in zip(first[:5], second[:5]):
            np.testing.assert_array_equal(a, b)
        assert np.isclose(np.linalg.norm(second[5] - first[5]), 0.1, rtol=1e-3)  # ||eps|| = rho


def test_sam_leaves_the_critic_and_normaliser_as_plain_shac_does():
    task = toy_task()
    plain, sam = shac.learner_for(TOY, task), shac.learner_for(dataclasses.replace(TOY, sharpness="asam"), task)
    s0 = plain.init(jax.random.PRNGKey(2))
    s_plain, _ = plain.epoch_fn(s0)
    s_sam, _ = sam.epoch_fn(dataclasses.replace(s0, actor_opt_state=sam.actor_opt.init(s0.actor_params)))
    assert _leaves_equal(s_plain.critic_params, s_sam.critic_params)
    assert _leaves_equal(s_plain.normalizer, s_sam.normalizer)
    assert _leaves_equal(s_plain.env_state.obs, s_sam.env_state.obs)
    assert not _leaves_equal(s_plain.actor_params, s_sam.actor_params)


def _with_and_without(shaped: SHACConfig, plain: SHACConfig, set_obs):
    """Rollout loss, trajectory and gradient of ``shaped`` and ``plain`` on the tall toy from the same starts
    (``set_obs``: (n, obs) -> (n, obs)), keys and resets; checks that the logged (raw) reward is the same."""
    task = tall_task()
    learners = shac.Learner(shaped, task), shac.Learner(plain, task)
    state = learners[0].init(jax.random.PRNGKey(3))
    state = state.replace(env_state=state.env_state.replace(obs=set_obs(state.env_state.obs)))
    resets = jax.vmap(task.reset)(jax.random.split(jax.random.PRNGKey(4), TOY.num_envs))
    args = (state.actor_params, state, resets, jax.random.split(jax.random.PRNGKey(5), TOY.num_envs))
    out = [jax.value_and_grad(learner.rollout_loss, has_aux=True)(*args) for learner in learners]
    (loss_s, (traj_s, _, _)), grad_s = out[0]
    (loss_p, (traj_p, _, _)), grad_p = out[1]
    np.testing.assert_array_equal(traj_s["raw_reward"], traj_p["raw_reward"])  # what is logged is Brax's reward
    return (loss_s, traj_s, grad_s), (loss_p, traj_p, grad_p)


def test_the_healthy_barrier_reaches_the_actor_loss_but_not_the_logged_reward():
    # tall toy: torso height = the point mass's third coordinate, healthy range (0.2, 1.0)
    barrier = dataclasses.replace(TOY, horizon=2, healthy_barrier=5.0, healthy_margin=0.1)
    plain = dataclasses.replace(barrier, healthy_barrier=0.0)
    heights = jnp.tile(jnp.array([0.97, 0.5, 0.25, 0.6]), TOY.num_envs // 4)  # (n,): top, inside, floor, inside
    (loss_b, traj_b, grad_b), (loss_p, traj_p, grad_p) = _with_and_without(
        barrier, plain, lambda obs: obs.at[:, 2].set(heights).at[:, 3:].set(0.0)
    )
    penalty = (traj_p["reward"][0] - traj_b["reward"][0]) / (barrier.reward_scale * barrier.healthy_barrier)  # (n,)
    z = traj_b["obs"][1][:, 2]  # (n,) height after the first step
    expected = jnp.maximum(z - 0.9, 0.0) ** 2 / 0.01 + jnp.maximum(0.3 - z, 0.0) ** 2 / 0.01
    np.testing.assert_allclose(penalty, expected, rtol=1e-4, atol=1e-6)
    assert float(penalty[0]) > 0.3 and float(penalty[1]) == 0.0 and float(penalty[2]) > 0.05
    assert float(loss_b) > float(loss_p) and not _leaves_equal(grad_b, grad_p)


def test_the_upright_barrier_charges_a_tilted_torso_in_the_actor_loss_only():
    # tall toy: the torso's tilt is the point mass's first coordinate, its up axis has z = cos(tilt)
    upright = dataclasses.replace(TOY, horizon=2, upright_barrier=5.0, upright_min=0.7)
    plain = dataclasses.replace(upright, upright_barrier=0.0)
    tilts = jnp.tile(jnp.array([2.5, 0.1, -1.2, 0.5]), TOY.num_envs // 4)  # (n,): tipped, upright, tipped, upright
    (loss_u, traj_u, grad_u), (loss_p, traj_p, grad_p) = _with_and_without(
        upright, plain, lambda obs: obs.at[:, 0].set(tilts).at[:, 2].set(0.6).at[:, 3:].set(0.0)  # heights inside
    )
    penalty = (traj_p["reward"][0] - traj_u["reward"][0]) / (upright.reward_scale * upright.upright_barrier)  # (n,)
    tilt = traj_u["obs"][1][:, 0]  # (n,) tilt after the first step
    expected = (jnp.maximum(0.7 - jnp.cos(tilt), 0.0) / 1.7) ** 2
    np.testing.assert_allclose(penalty, expected, rtol=1e-4, atol=1e-6)
    assert float(penalty[0]) > 0.5 and float(penalty[1]) == 0.0 and float(penalty[2]) > 0.0
    assert float(loss_u) > float(loss_p) and not _leaves_equal(grad_u, grad_p)


def test_actor_loss_is_the_windows_discounted_returns_plus_bootstrapped_values():
    # episodes of 6 steps inside windows of 8: truncations cut windows early, and those bootstrap too
    cfg = dataclasses.replace(TOY, episode_length=6, remat=False)
    task = toy_task(episode_length=6)
    learner = shac.Learner(cfg, task)
    state = learner.init(jax.random.PRNGKey(6))
    resets = jax.vmap(task.reset)(jax.random.split(jax.random.PRNGKey(7), cfg.num_envs))
    args = (state.actor_params, state, resets, jax.random.split(jax.random.PRNGKey(8), cfg.num_envs))
    (loss, (traj, _, _)), grad = jax.value_and_grad(learner.rollout_loss, has_aux=True)(*args)
    reward, cut, ep_done, value = (np.asarray(traj[k], np.float64) for k in ("reward", "done", "ep_done", "next_value"))
    assert cut[:-1].any() and cut[-1].all()  # windows cut inside the horizon, and all at its end
    total, acc, disc = 0.0, np.zeros(cfg.num_envs), np.ones(cfg.num_envs)
    for t in range(cfg.horizon):  # the SHAC window loss, one step at a time
        acc = acc + disc * reward[t]
        total += np.sum(cut[t] * (acc + cfg.gamma * disc * value[t]))  # value is 0 after a termination
        disc = np.where(ep_done[t] > 0, 1.0, disc * cfg.gamma)
        acc = np.where(ep_done[t] > 0, 0.0, acc)
    np.testing.assert_allclose(float(loss), -total / (cfg.horizon * cfg.num_envs), rtol=1e-5)
    # rematerialising the steps in the backward pass changes the schedule, not the gradient
    remat = shac.Learner(dataclasses.replace(cfg, remat=True), task)
    loss_r, grad_r = jax.value_and_grad(lambda p: remat.rollout_loss(p, *args[1:])[0])(args[0])
    np.testing.assert_allclose(float(loss_r), float(loss), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grad_r), jax.tree.leaves(grad), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_non_finite_gradient_skips_the_update_and_is_reported(tmp_path):
    cfg = dataclasses.replace(TOY, horizon=4, epochs=4, checkpoint_every_epochs=2)
    task = toy_task(episode_length=1000, poison_step=6)  # the 6th step falls in epoch 2
    _, params, rows = shac.train(cfg, task, run_dir=tmp_path)
    assert [r["skipped_actor"] for r in rows] == [0, 1, 1, 1]
    assert np.isnan(rows[1]["grad_norm"]) and np.isfinite(rows[2]["grad_norm"])
    saved = checkpoint.load_policy(tmp_path)
    assert checkpoint.all_finite(saved.params) and _leaves_equal(saved.params, params)
    assert [r["skipped_actor"] for r in checkpoint.read_metrics(tmp_path)] == ["0", "1", "1", "1"]


def test_the_best_evaluated_policy_is_kept_beside_the_last_one(tmp_path):
    cfg = dataclasses.replace(TOY, epochs=6, eval_every_epochs=1, checkpoint_every_epochs=3)
    task = toy_task()
    shac.train(cfg, task, run_dir=tmp_path)
    rows = checkpoint.read_metrics(tmp_path)
    top = max(rows, key=lambda r: float(r["eval_return"]))
    best = checkpoint.load_policy(tmp_path / checkpoint.BEST_DIR)
    assert best.meta["eval_return"] == float(top["eval_return"]) and best.meta["epoch"] == int(top["epoch"])
    again = evaluate(best.make_policy, best.params, task, episodes=cfg.eval_episodes, seed=cfg.seed + 1)
    assert again.mean_return == pytest.approx(best.meta["eval_return"], rel=1e-6)  # the evaluated parameters


def test_presets_hold_the_reference_ant_settings():
    cfg = preset("ant", "shac-asam", seed=3, env_steps=1_000_000)
    assert (cfg.num_envs, cfg.horizon, cfg.actor_hidden, cfg.critic_hidden) == (64, 32, (128, 64, 32), (64, 64))
    assert (cfg.actor_lr, cfg.critic_lr, cfg.adam_b1, cfg.adam_b2, cfg.grad_norm_clip) == (2e-3, 2e-3, 0.7, 0.95, 1.0)
    assert (cfg.gamma, cfg.td_lambda, cfg.critic_iterations, cfg.episode_length) == (0.99, 0.95, 16, 1000)
    assert (cfg.sharpness, cfg.rho, cfg.seed, cfg.epochs) == ("asam", 0.5, 3, 488)
    assert preset("ant", "shac-sam").rho == 0.05 and preset("ant").sharpness is None
    assert (cfg.healthy_barrier, cfg.healthy_margin, cfg.upright_barrier, cfg.layer_norm) == (20.0, 0.2, 20.0, False)


def test_preset_sizes_the_run_after_overrides_that_change_an_epoch():
    cfg = preset("cartpole", "shac", env_steps=150 * 32 * 32, num_envs=32, horizon=32)
    assert (cfg.num_envs, cfg.horizon, cfg.epochs) == (32, 32, 150)
    assert preset("cartpole", "shac", env_steps=1280).epochs == 1280 // (16 * 8)


def test_parse_overrides_types_each_field_and_refuses_the_rest():
    def shac_overrides(pairs):
        return parse_overrides(pairs, SHACConfig, FLAG_FIELDS)

    got = shac_overrides(["actor_lr=1e-3", "horizon=16", "actor_hidden=[64, 32]", "remat=false", "activation=tanh"])
    assert got == {"actor_lr": 1e-3, "horizon": 16, "actor_hidden": (64, 32), "remat": False, "activation": "tanh"}
    assert shac_overrides(["gamma=1"]) == {"gamma": 1.0} and isinstance(shac_overrides(["gamma=1"])["gamma"], float)
    for bad, text in (
        ("horizon=1.5", "expected int"),
        ("remat=1", "expected bool"),
        ("actor_hidden=64", "expected"),
        ("epochs=3", "--env-steps"),
        ("nope", "FIELD=VALUE"),
        ("actor_hidden=[1.5]", "expected"),
    ):
        with pytest.raises(SharprlError, match=text):
            shac_overrides([bad])
