"""Plans: every weight element held exactly once, GQA / more-chips-than-heads layouts, schedules."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcushard.errors import McushardError
from mcushard.model.config import BertConfig, LlamaConfig, get_preset
from mcushard.partition import make_plan
from mcushard.partition.collectives import ALGORITHMS, bytes_sent, schedule
from mcushard.partition.plan import AllReduce, Compute, check_coverage, model_shapes


def _assert_exactly_once(plan):
    """Count, per element of every tensor, how many chips hold it: 1, or all chips for replicated."""
    shapes = model_shapes(plan.model)
    # per tensor: [rows, cols] (1-D tensors as [rows, 1]) count of chips holding each element
    counts = {name: np.zeros(shape if len(shape) == 2 else (shape[0], 1), np.int32) for name, shape in shapes.items()}
    replicated = set()
    for shard in plan.shards:
        for s in shard:
            counts[s.tensor][s.rows[0]:s.rows[1], s.cols[0]:s.cols[1]] += 1
            if s.replicated:
                replicated.add(s.tensor)
    for name, c in counts.items():
        if plan.scope == "blocks" and not name.startswith(("layers.", "encoder.")):
            assert c.max() == 0, name
            continue
        if name in replicated:
            holders = sum(any(s.tensor == name for s in shard) for shard in plan.shards)
            assert (c == holders).all(), name
        else:
            assert (c == 1).all(), f"{name}: elements held {np.unique(c)} times"


llama_cfgs = st.builds(
    lambda kv, rep, hd, dim_mult, hidden, layers, vocab: LlamaConfig(
        dim=kv * rep * hd, hidden_dim=hidden, n_layers=layers, n_heads=kv * rep, n_kv_heads=kv,
        vocab_size=vocab, max_seq_len=32, name="hyp-llama"),
    kv=st.integers(1, 4), rep=st.integers(1, 3), hd=st.sampled_from([4, 8, 16]), dim_mult=st.just(1),
    hidden=st.integers(8, 80), layers=st.integers(1, 3), vocab=st.integers(8, 100))


@settings(max_examples=40, deadline=None)
@given(cfg=llama_cfgs, n=st.integers(1, 12), strategy=st.sampled_from(["tp", "pp", "hybrid"]))
def test_llama_every_weight_byte_once(cfg, n, strategy):
    try:
        plan = make_plan(cfg, n, strategy)
    except McushardError as exc:  # more stages than layers, more chips than head_dim allows
        assert any(k in str(exc) for k in ("stages", "head_dim", "divide", "cannot split"))
        return
    _assert_exactly_once(plan)
    check_coverage(plan)


bert_cfgs = st.builds(
    lambda heads, hd, inter, layers, mobile, ffns: BertConfig(
        vocab_size=50, hidden_size=heads * hd * (2 if mobile else 1), num_layers=layers, num_heads=heads,
        intermediate_size=inter, max_position_embeddings=16, embedding_size=heads * hd if mobile else 0,
        intra_bottleneck_size=heads * hd if mobile else 0, num_feedforward_networks=ffns if mobile else 1,
        normalization="no_norm" if mobile else "layer_norm", trigram_input=mobile,
        key_query_shared_bottleneck=mobile, name="hyp-bert"),
    heads=st.integers(1, 4), hd=st.sampled_from([3, 4, 8]), inter=st.integers(8, 40), layers=st.integers(1, 2),
    mobile=st.booleans(), ffns=st.integers(1, 4))


@settings(max_examples=30, deadline=None)
@given(cfg=bert_cfgs, n=st.integers(1, 8))
def test_bert_every_weight_byte_once(cfg, n):
    try:
        plan = make_plan(cfg, n, "tp")
    except McushardError as exc:
        assert "head_dim" in str(exc) or "cannot split" in str(exc)
        return
    _assert_exactly_once(plan)


@pytest.mark.parametrize("name", ["tinyllama-42m", "stories260k", "mobilebert", "tiny-bert-test"])
def test_one_chip_is_the_unpartitioned_model(name):
    cfg = get_preset(name)
    plan = make_plan(cfg, 1)
    shapes = model_shapes(cfg)
    assert plan.bytes_held(0) == sum(int(np.prod(s)) for s in shapes.values())
    assert not any(isinstance(s, AllReduce) for s in plan.steps)
    assert all(s.rows == (0, shapes[s.tensor][0]) for s in plan.shards[0])
    matmul_macs = sum(w.macs for s in plan.steps if isinstance(s, Compute) and s.kernel == "matmul" for w in s.work)
    if name == "tinyllama-42m":  # every matrix once per token (the tied classifier reuses the embedding)
        assert matmul_macs == sum(int(np.prod(v)) for k, v in shapes.items() if len(v) == 2)


def test_paper_scheme_on_tinyllama_8_chips():
    plan = make_plan(get_preset("tinyllama-42m"), 8)
    assert not plan.notes
    reductions = [s for s in plan.steps if isinstance(s, AllReduce) and s.block.startswith("layers.")]
    assert len(reductions) == 2 * 8  # two all-reduces per block
    assert {s.elements for s in reductions} == {512}
    held = {s.tensor: s for s in plan.shards[3] if s.tensor.startswith("layers.0.")}
    assert held["layers.0.wq"].rows == (192, 256) and held["layers.0.wo"].cols == (192, 256)
    assert held["layers.0.w2"].cols == (516, 688)  # 1376 hidden rows over 8 chips


def test_more_chips_than_heads_splits_within_heads():
    plan = make_plan(get_preset("tinyllama-42m"), 64)
    assert plan.notes and "within heads" in plan.notes[0]
    scores = [s for s in plan.steps if isinstance(s, AllReduce) and s.label == "attn.scores"]
    assert len(scores) == 8 * 8 and all(len(s.group) == 8 and s.elements_per_key == 1 for s in scores)
    assert len(set(plan.kv_elements)) == 1  # KV cache split evenly, never duplicated
    _assert_exactly_once(plan)


def test_gqa_keeps_query_heads_with_their_kv_head():
    cfg = get_preset("stories260k")  # 8 query heads, 4 KV heads
    plan = make_plan(cfg, 2)
    held = {s.tensor: s for s in plan.shards[1] if s.tensor.startswith("layers.0.")}
    hd = cfg.head_dim
    assert held["layers.0.wk"].rows == (2 * hd, 4 * hd) and held["layers.0.wq"].rows == (4 * hd, 8 * hd)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("p", [2, 3, 5, 8, 16])
@pytest.mark.parametrize("n", [1, 7, 64])
def test_schedules_sum_exactly(algorithm, p, n):
    rng = np.random.default_rng(p * 100 + n)
    vectors = rng.integers(-1000, 1000, (p, n))  # [p chips, n elements]
    group = tuple(range(10, 10 + p))  # chips need not start at 0
    x = {c: v.copy() for c, v in zip(group, vectors)}
    for rnd in schedule(algorithm, group, n):
        snap = {c: v.copy() for c, v in x.items()}
        for t in rnd:
            if t.op == "reduce":
                x[t.dst][t.start:t.stop] += snap[t.src][t.start:t.stop]
            else:
                x[t.dst][t.start:t.stop] = snap[t.src][t.start:t.stop]
    for v in x.values():
        np.testing.assert_array_equal(v, vectors.sum(0))
    if algorithm == "ring" and n >= p:  # bandwidth-optimal: 2 (p-1)/p of the vector per chip
        sent = bytes_sent(schedule(algorithm, group, n), 4)
        assert sum(sent.values()) == pytest.approx(2 * (p - 1) * n * 4, rel=0.01 + p / n)


def test_plan_manifest_is_json():
    import json

    plan = make_plan(get_preset("tiny-llama-test"), 4, "hybrid")
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["n_chips"] == 4 and len(data["chips"]) == 4
    total = sum(int(np.prod(s)) for s in model_shapes(plan.model).values())
    assert sum(c["bytes_held"] for c in data["chips"]) >= total
    assert {s["type"] for s in data["steps"]} >= {"Compute", "AllReduce"}
    assert data["chips"][1]["slices"][0].keys() == {"tensor", "rows", "cols", "replicated"}
