"""Policy interface and atomic checkpoints."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sharprl import checkpoint, networks
from sharprl.errors import SharprlError

SPEC = networks.PolicySpec(observation_size=5, action_size=2, hidden_sizes=(8, 4))


def _params():
    _, init = networks.policy_factory(SPEC)
    norm, actor = init(jax.random.PRNGKey(1))
    norm = networks.update_normalizer(norm, jnp.arange(15.0).reshape(3, 5))
    return norm, actor


def test_policy_round_trip_gives_same_actions(tmp_path):
    params = _params()
    make_policy, _ = networks.policy_factory(SPEC)
    checkpoint.save(tmp_path, spec=SPEC, policy_params=params, meta={"algo": "shac", "env": "x"})
    loaded = checkpoint.load_policy(tmp_path)
    assert loaded.spec == SPEC and loaded.meta["algo"] == "shac"
    obs = jnp.linspace(-1, 1, 20).reshape(4, 5)  # (4, obs)
    key = jax.random.PRNGKey(3)
    for deterministic in (True, False):
        a = make_policy(params, deterministic)(obs, key)
        b = loaded.make_policy(loaded.params, deterministic)(obs, key)
        assert a.shape == (4, 2)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.all(np.abs(np.asarray(a)) <= 1.0)


def test_train_state_round_trip_and_refuses_nan(tmp_path):
    params = _params()
    state = {"step": jnp.int32(7), "w": jnp.ones(3)}
    checkpoint.save(tmp_path, spec=SPEC, policy_params=params, meta={"epoch": 7}, train_state=state)
    restored, meta = checkpoint.load_train_state(tmp_path, {"step": jnp.int32(0), "w": jnp.zeros(3)})
    assert int(restored["step"]) == 7 and meta["epoch"] == 7
    bad = {"step": jnp.int32(8), "w": jnp.array([1.0, jnp.nan, 0.0])}
    with pytest.raises(SharprlError, match="non-finite"):
        checkpoint.save(tmp_path, spec=SPEC, policy_params=params, meta={"epoch": 8}, train_state=bad)
    assert checkpoint.load_meta(tmp_path)["epoch"] == 7  # the old checkpoint survives


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(SharprlError, match="no checkpoint.msgpack"):
        checkpoint.load_policy(tmp_path)
    (tmp_path / checkpoint.CHECKPOINT_FILE).write_bytes(b"garbage")
    with pytest.raises(SharprlError, match="unreadable"):
        checkpoint.load_meta(tmp_path)


def test_metrics_append_and_truncate(tmp_path):
    for i in range(4):
        assert checkpoint.append_metrics(tmp_path, {"epoch": i, "ret": i * 1.5}) == i + 1
    checkpoint.truncate_metrics(tmp_path, 2)
    rows = checkpoint.read_metrics(tmp_path)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    with pytest.raises(SharprlError, match="columns"):  # a run written by another version: not mixed in
        checkpoint.append_metrics(tmp_path, {"epoch": 2, "ret": 3.0, "eval_length": 9.0})
    assert len(checkpoint.read_metrics(tmp_path)) == 2


def test_spec_json_round_trip_and_unknown_kind():
    assert networks.PolicySpec.from_json(SPEC.to_json()) == SPEC
    with pytest.raises(SharprlError, match="unknown policy kind"):
        networks.policy_factory(networks.PolicySpec(3, 1, kind="nope"))


def test_best_keeps_the_highest_finite_evaluation_and_a_fresh_start_forgets_it(tmp_path):
    params = _params()
    worse = jax.tree.map(lambda x: x * 0, params)
    best = tmp_path / checkpoint.BEST_DIR
    assert checkpoint.save_best(tmp_path, spec=SPEC, policy_params=params, meta={"epoch": 1}, eval_return=5.0)
    for epoch, value in ((2, 4.0), (3, 5.0), (4, float("nan"))):  # lower, equal, non-finite: kept out
        assert not checkpoint.save_best(tmp_path, spec=SPEC, policy_params=worse, meta={"epoch": epoch},
                                        eval_return=value)  # fmt: skip
    loaded = checkpoint.load_policy(best)
    assert loaded.meta["epoch"] == 1 and loaded.meta["eval_return"] == 5.0
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(params)))
    assert checkpoint.save_best(tmp_path, spec=SPEC, policy_params=worse, meta={"epoch": 5}, eval_return=6.0)
    assert checkpoint.load_meta(best)["epoch"] == 5
    (best / checkpoint.CHECKPOINT_FILE).write_bytes(b"forged")  # never silently replaced
    with pytest.raises(SharprlError, match="unreadable"):
        checkpoint.save_best(tmp_path, spec=SPEC, policy_params=params, meta={}, eval_return=9.0)
    checkpoint.append_metrics(tmp_path, {"epoch": 1})
    checkpoint.start_fresh(tmp_path)
    assert not best.exists() and checkpoint.read_metrics(tmp_path) == []
