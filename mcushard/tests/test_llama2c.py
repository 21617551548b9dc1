"""llama2.c reader and writer: round trips, bad files, and a hypothesis fuzz of the reader."""

import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcushard.errors import McushardError
from mcushard.model.config import LlamaConfig
from mcushard.model.llama2c import HEADER_BYTES, expected_bytes, load_llama2c, write_llama2c
from mcushard.model.weights import llama_shapes, random_llama

SMALL = LlamaConfig(dim=8, hidden_dim=12, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=10,
                    max_seq_len=4, name="small")


def _write(tmp_path, cfg=SMALL, seed=0, name="m.bin"):
    path = tmp_path / name
    weights = random_llama(cfg, seed)
    write_llama2c(path, cfg, weights)
    return path, weights


@pytest.mark.parametrize("shared", [True, False])
def test_round_trip(tmp_path, shared):
    cfg = SMALL.replace(shared_classifier=shared)
    path, weights = _write(tmp_path, cfg)
    header = struct.unpack("<7i", path.read_bytes()[:HEADER_BYTES])
    assert header == (8, 12, 2, 2, 1, 10 if shared else -10, 4)  # negative vocab: unshared classifier
    assert path.stat().st_size == expected_bytes(cfg)
    loaded_cfg, loaded = load_llama2c(path)
    assert loaded_cfg.replace(name="small") == cfg
    assert loaded.keys() == weights.keys() == llama_shapes(cfg).keys()
    for name in weights:
        np.testing.assert_array_equal(loaded[name], weights[name])


def test_stories260k_rewrites_to_the_same_tensors(tmp_path, stories260k, stories260k_path):
    cfg, weights = stories260k
    out = tmp_path / "copy.bin"
    write_llama2c(out, cfg, weights)
    original, copy = stories260k_path.read_bytes(), out.read_bytes()
    assert len(copy) == len(original)
    # identical apart from the RoPE tables, which llama2.c's export computed in PyTorch
    rope_start = len(original) - 4 * cfg.max_seq_len * cfg.head_dim
    assert copy[:rope_start] == original[:rope_start]
    tables = np.frombuffer(original[rope_start:], "<f4")
    np.testing.assert_allclose(np.frombuffer(copy[rope_start:], "<f4"), tables, atol=1e-5)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file behind


def test_writer_rejects_what_the_format_cannot_hold(tmp_path):
    weights = random_llama(SMALL)
    with pytest.raises(McushardError, match="rope_theta"):
        write_llama2c(tmp_path / "a.bin", SMALL.replace(rope_theta=5e5), weights)
    del weights["layers.1.w2"]
    with pytest.raises(McushardError, match=r"layers\.1\.w2.*missing"):
        write_llama2c(tmp_path / "a.bin", SMALL, weights)
    assert not (tmp_path / "a.bin").exists()


def _patch_header(raw: bytes, index: int, value: int) -> bytes:
    return raw[: 4 * index] + struct.pack("<i", value) + raw[4 * index + 4:]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (0, 9, "n_heads 2 does not divide dim 9"),
        (3, 0, "n_heads: must be a positive integer, got 0"),
        (1, -5, "hidden_dim: must be a positive integer, got -5"),
        (4, 3, "n_kv_heads 3 does not divide n_heads 2"),
        (2, 3, "truncated"),
        (2, 2**31 - 1, "truncated"),  # billions of layers: rejected from the size alone
        (2, 1, "has trailing bytes"),
    ],
)
def test_forged_headers(tmp_path, field, value, message):
    path, _ = _write(tmp_path)
    path.write_bytes(_patch_header(path.read_bytes(), field, value))
    with pytest.raises(McushardError, match=message) as info:
        load_llama2c(path)
    assert str(path) in str(info.value)


def test_truncated_nan_and_missing(tmp_path):
    path, _ = _write(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-4])
    with pytest.raises(McushardError, match="truncated"):
        load_llama2c(path)
    path.write_bytes(raw[:10])
    with pytest.raises(McushardError, match="shorter than the 28-byte header"):
        load_llama2c(path)
    nan = np.float32(np.nan).tobytes()
    path.write_bytes(raw[:HEADER_BYTES] + nan + raw[HEADER_BYTES + 4:])
    with pytest.raises(McushardError, match="'tok_embeddings' holds NaN"):
        load_llama2c(path)
    with pytest.raises(McushardError, match="cannot read"):
        load_llama2c(tmp_path / "absent.bin")


def test_cli_reports_bad_checkpoint(tmp_path):
    path = tmp_path / "bad.bin"
    path.write_bytes(b"\x01\x02")
    result = subprocess.run([sys.executable, "-m", "mcushard", "generate", str(path)],
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {path}: truncated") and "Traceback" not in result.stderr


@st.composite
def mutations(draw):
    kind = draw(st.sampled_from(["flip", "truncate", "header", "append"]))
    if kind == "flip":
        return kind, draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8))
    if kind == "truncate":
        return kind, draw(st.integers(0, 10**6))
    if kind == "header":
        return kind, draw(st.lists(st.tuples(st.integers(0, 6), st.integers(-(2**31), 2**31 - 1)),
                                   min_size=1, max_size=4))
    return kind, draw(st.binary(min_size=1, max_size=64))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=mutations())
def test_fuzz_reader(tmp_path, mutation):
    path, _ = _write(tmp_path)
    raw = bytearray(path.read_bytes())
    kind, arg = mutation
    if kind == "flip":
        for pos, value in arg:
            raw[pos % len(raw)] = value
    elif kind == "truncate":
        raw = raw[: arg % len(raw)]
    elif kind == "header":
        for field, value in arg:
            raw[4 * field: 4 * field + 4] = struct.pack("<i", value)
    else:
        raw += arg
    path.write_bytes(bytes(raw))
    try:
        cfg, weights = load_llama2c(path)
    except McushardError as exc:
        assert str(path) in str(exc)
        return
    assert weights.keys() == llama_shapes(cfg).keys()
    assert all(np.all(np.isfinite(w)) for w in weights.values())
