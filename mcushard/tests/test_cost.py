"""Cost model: golden numbers for the siracusa preset, breakdowns that add up, monotonicity, placement."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcushard.cost.simulate import simulate
from mcushard.cost.trace import trace_json
from mcushard.errors import McushardError
from mcushard.hardware.spec import load_hardware, replace
from mcushard.model.config import get_preset
from mcushard.partition import make_plan
from mcushard.partition.collectives import bytes_sent, plan_link_bytes, schedule
from mcushard.partition.plan import AllReduce, Send
from mcushard.placement import place, workload
from mcushard.sweep import variant

HW = load_hardware("siracusa")


def _run(model, n, mode="decode", scope="model", strategy="tp", hw=HW, **kw):
    cfg = get_preset(model)
    return simulate(make_plan(cfg, n, strategy, hw.allreduce, scope=scope), hw,
                    workload(cfg, mode, kv_len=kw.get("kv_len", 128), seq_len=kw.get("seq_len", 64)))


# (model, chips, mode, scope) -> (latency_s, energy_j, off-chip bytes, link bytes) on the siracusa preset
GOLDEN = {
    ("tinyllama-42m", 1, "decode", "model"): (0.02317947417989418, 0.0010790273414497359, 36930048, 0),
    ("tinyllama-42m", 8, "decode", "model"): (0.0007740643796296296, 0.0010044449035925933, 0, 466032),
    ("tinyllama-42m", 64, "decode", "blocks"): (0.00020860074074074075, 0.0007757571745185145, 0, 4587520),
    ("mobilebert", 4, "prompt", "model"): (0.04475442973544991, 0.028528905513354363, 1736704, 37896192),
    ("stories260k", 4, "prompt", "model"): (0.0006971200555555556, 0.00037035086455555554, 0, 1007664),
}


def test_golden_numbers_siracusa_hyperbus():
    """The what-if preset: a 400 MB/s HyperBus makes the single chip 4x slower, the 8 chips no slower."""
    hw = load_hardware("siracusa-hyperbus")
    one, eight = _run("tinyllama-42m", 1, scope="blocks", hw=hw), _run("tinyllama-42m", 8, scope="blocks", hw=hw)
    assert one.latency_s == pytest.approx(0.05240512641975308, rel=1e-9)
    assert one.energy_j == pytest.approx(0.0019449822899753084, rel=1e-9)
    assert eight.latency_s == pytest.approx(_run("tinyllama-42m", 8, scope="blocks").latency_s, rel=1e-12)


@pytest.mark.parametrize("key", list(GOLDEN))
def test_golden_numbers_siracusa(key):
    r = _run(*key)
    latency, energy, offchip, link = GOLDEN[key]
    assert r.latency_s == pytest.approx(latency, rel=1e-9)
    assert r.energy_j == pytest.approx(energy, rel=1e-9)
    assert (r.offchip_bytes, r.link_bytes) == (offchip, link)


@pytest.mark.parametrize("model,n,mode,strategy", [
    ("tinyllama-42m", 8, "decode", "tp"), ("stories260k", 5, "prompt", "pp"),
    ("mobilebert", 4, "prompt", "hybrid"), ("stories260k", 6, "decode", "tp")])
def test_breakdowns_add_up(model, n, mode, strategy):
    r = _run(model, n, mode, strategy=strategy)
    for c in r.chips:
        assert c.compute_s + c.memory_stall_s + c.comm_s + c.idle_s == pytest.approx(r.latency_s, rel=1e-9)
    assert sum(t for _, t, _ in r.blocks) == pytest.approx(r.latency_s, rel=1e-9)
    assert sum(e for _, _, e in r.blocks) == pytest.approx(r.energy_j, rel=1e-9)
    assert sum(r.energy_breakdown_j.values()) == pytest.approx(r.energy_j, rel=1e-12)
    assert r.edp_js == pytest.approx(r.energy_j * r.latency_s)


def test_superlinear_because_weights_leave_offchip():
    one, eight = _run("tinyllama-42m", 1, scope="blocks"), _run("tinyllama-42m", 8, scope="blocks")
    assert one.offchip_bytes > 15e6 and eight.offchip_bytes == 0
    assert one.latency_s / eight.latency_s > 8


def test_tensor_parallel_beats_pipeline_for_one_stream():
    assert _run("tinyllama-42m", 8).latency_s * 5 < _run("tinyllama-42m", 8, strategy="pp").latency_s


def test_link_bytes_are_the_plan_schedules():
    """What a runtime counts per link equals the plan's all-reduce schedules and sends."""
    cfg = get_preset("tinyllama-42m")
    plan = make_plan(cfg, 8, "hybrid", HW.allreduce)
    r = simulate(plan, HW, workload(cfg, "decode", kv_len=16))
    expected: dict = {}
    for step in plan.steps:
        if isinstance(step, AllReduce):
            n = step.elements + step.elements_per_key * 16
            for pair, b in bytes_sent(schedule(step.algorithm, step.group, n, HW.group_size), step.elem_bytes).items():
                expected[pair] = expected.get(pair, 0) + b
        elif isinstance(step, Send):
            pair = (step.src, step.dst)
            expected[pair] = expected.get(pair, 0) + step.elements * step.elem_bytes
    assert plan_link_bytes(plan, HW.group_size, tokens=1, keys=16) == expected
    assert r.link_bytes_per_pair == expected
    assert [c.bytes_held for c in r.chips] == [plan.bytes_held(c) for c in range(8)]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 16), strategy=st.sampled_from(["tp", "pp", "hybrid"]), factor=st.floats(1.0, 100.0),
       algorithm=st.sampled_from(["ring", "tree", "hierarchical"]), mode=st.sampled_from(["decode", "prompt"]))
def test_more_link_bandwidth_never_slows_a_plan(n, strategy, factor, algorithm, mode):
    cfg = get_preset("stories260k")
    try:
        plan = make_plan(cfg, n, strategy, algorithm)
    except McushardError:
        return
    wl = workload(cfg, mode, kv_len=32, seq_len=16)
    slow = simulate(plan, HW, wl)
    fast = simulate(plan, variant(HW, HW.link.bandwidth_bytes_per_s * factor / 1e9, None, None), wl)
    assert fast.latency_s <= slow.latency_s * (1 + 1e-12)


def test_impossible_placement_names_chip_level_and_bytes():
    tiny_l2 = variant(HW, None, 8, None)  # 8 KiB of L2
    cfg = get_preset("tinyllama-42m")
    with pytest.raises(McushardError, match=r"chip 0: L2 cannot hold activations: needs \d+ bytes, \d+ available"):
        place(make_plan(cfg, 2), tiny_l2.chip, workload(cfg, "prompt", seq_len=64))
    no_offchip = replace(HW, chip=replace(HW.chip, levels=HW.chip.levels[:3]))
    no_room = r"chip 0: on-chip memory \(no off-chip level\) cannot hold weights .*: needs \d+ "
    with pytest.raises(McushardError, match=no_room):
        place(make_plan(cfg, 1), no_offchip.chip, workload(cfg, "decode"))


def test_placement_keeps_weights_on_chip_when_they_fit():
    cfg = get_preset("tinyllama-42m")
    pl = place(make_plan(cfg, 8), HW.chip, workload(cfg, "decode"))
    assert all(c.offchip_weight_bytes == 0 and c.kv_level == "L2" for c in pl.chips)
    assert set(pl.chips[0].home.values()) <= {"MRAM", "L2"}
    one = place(make_plan(cfg, 1), HW.chip, workload(cfg, "decode")).chips[0]
    assert one.offchip_weight_bytes > 30e6 and one.used_bytes["MRAM"] <= 4 * 2**20


def test_trace_is_chrome_json():
    cfg = get_preset("stories260k")
    r = simulate(make_plan(cfg, 4), HW, workload(cfg, "decode", kv_len=8), trace=True)
    data = json.loads(trace_json(r))
    spans = [e for e in data["traceEvents"] if e["ph"] == "X"]
    assert {e["tid"] for e in spans} == {0, 1, 2, 3}
    assert max(e["ts"] + e["dur"] for e in spans) == pytest.approx(r.latency_s * 1e6, rel=1e-3)
