"""HF directory reader/writer: agreement with transformers (optional extra), round trips, bad input."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcushard.errors import McushardError
from mcushard.model.config import LlamaConfig, get_preset
from mcushard.model.hf import hf_rows_to_interleaved, interleaved_rows_to_hf, load_hf, save_hf
from mcushard.model.weights import random_llama, random_weights
from mcushard.runtime.reference import LlamaFP32

GQA = LlamaConfig(dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=40,
                  max_seq_len=16, rope_theta=500.0, norm_eps=1e-6, name="gqa")
TOKENS = [1, 7, 3, 39, 12, 12, 5, 0]  # positions 0..7


def _scaled_llama(cfg: LlamaConfig, seed: int):
    """Random weights large enough that logits are O(1), so a 1e-4 agreement means something."""
    weights = random_llama(cfg, seed)
    return {n: w if n.endswith("norm") else 10 * w for n, w in weights.items()}


def _our_logits(cfg, weights, tokens=TOKENS):
    decoder = LlamaFP32(cfg, weights)
    return np.stack([decoder.step(t, pos) for pos, t in enumerate(tokens)])  # [T, vocab]


def test_permutation_is_inverted():
    w = np.arange(2 * 8 * 3, dtype=np.float32).reshape(16, 3)  # 2 heads of head_dim 8
    hf = interleaved_rows_to_hf(w, 2)
    # head 0 in HF order: first halves of the pairs (rows 0, 2, 4, 6), then the second halves
    np.testing.assert_array_equal(hf[:8, 0], w[[0, 2, 4, 6, 1, 3, 5, 7], 0])
    np.testing.assert_array_equal(hf_rows_to_interleaved(hf, 2), w)


@pytest.mark.parametrize("preset", ["tiny-llama-test", "tiny-mobilebert-test", "tiny-bert-test"])
def test_round_trip(tmp_path, preset):
    cfg = get_preset(preset)
    weights = random_weights(cfg, 3)
    save_hf(tmp_path / "m", cfg, weights)
    loaded_cfg, loaded = load_hf(tmp_path / "m")
    assert loaded_cfg == cfg.replace(name="m")
    assert loaded.keys() == weights.keys()
    for name in weights:
        np.testing.assert_array_equal(loaded[name], weights[name])


def test_cli_generates_from_a_hf_directory(tmp_path, stories260k):
    from test_reference import GOLDEN_PREFIX
    from typer.testing import CliRunner

    from mcushard.cli import app

    save_hf(tmp_path / "s260k", *stories260k)
    result = CliRunner().invoke(app, ["generate", str(tmp_path / "s260k"), "--steps", "20", "--tokens"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == GOLDEN_PREFIX


def test_float16_tensors_and_split_files(tmp_path):
    from safetensors.numpy import load_file, save_file

    cfg = GQA.replace(shared_classifier=False)
    save_hf(tmp_path, cfg, random_llama(cfg))
    tensors = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    names = sorted(tensors)
    save_file({n: tensors[n].astype(np.float16) for n in names[:5]}, tmp_path / "a.safetensors")
    save_file({n: tensors[n] for n in names[5:]}, tmp_path / "b.safetensors")
    _, weights = load_hf(tmp_path)
    assert weights["output"].dtype == np.float32 and len(weights) == 2 + 9 * 2 + 1


# -- agreement with transformers (the optional `hf` extra) -----------------------------------------


@pytest.fixture(scope="module")
def hf():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return torch, transformers


def _hf_logits(torch, model, tokens=TOKENS):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()  # [T, vocab]


@pytest.mark.parametrize("tied", [False, True])
def test_transformers_checkpoint_gives_transformers_logits(tmp_path, hf, tied):
    torch, transformers = hf
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=40, max_position_embeddings=16, rms_norm_eps=1e-6,
        rope_theta=500.0, tie_word_embeddings=tied, attn_implementation="eager",
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    model.save_pretrained(tmp_path, safe_serialization=True)
    cfg, weights = load_hf(tmp_path)
    assert cfg == GQA.replace(shared_classifier=tied, name=tmp_path.name)
    expected = _hf_logits(torch, model)
    assert np.abs(expected).max() > 1.0  # logits of order 1: the tolerance below is meaningful
    np.testing.assert_allclose(_our_logits(cfg, weights), expected, atol=1e-4, rtol=0)
    # without undoing the RoPE permutation the logits differ from position 1 on
    for layer in range(cfg.n_layers):
        p = f"layers.{layer}."
        weights[p + "wq"] = interleaved_rows_to_hf(weights[p + "wq"], cfg.n_heads)
        weights[p + "wk"] = interleaved_rows_to_hf(weights[p + "wk"], cfg.n_kv_heads)
    assert np.abs(_our_logits(cfg, weights)[1:] - expected[1:]).max() > 1e-2


def test_our_checkpoint_loads_in_transformers(tmp_path, hf):
    torch, transformers = hf
    cfg = GQA.replace(shared_classifier=False)
    weights = _scaled_llama(cfg, 5)
    save_hf(tmp_path, cfg, weights)
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    np.testing.assert_allclose(_our_logits(cfg, weights), _hf_logits(torch, model), atol=1e-4, rtol=0)


def test_stories260k_through_hf_matches_llama2c(tmp_path, stories260k, hf):
    """The real model written as a HF directory: transformers' greedy choice at every position of
    llama2.c's 256-token sequence is that sequence's next token (so its greedy decode is llama2.c's)."""
    from test_reference import GOLDEN_256

    torch, transformers = hf
    cfg, weights = stories260k
    save_hf(tmp_path, cfg.replace(norm_eps=1e-5), weights)
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    logits = _hf_logits(torch, model, [1] + GOLDEN_256[:-1])  # [256, vocab], one teacher-forced pass
    assert logits.argmax(axis=-1).tolist() == GOLDEN_256


def test_bfloat16_checkpoint(tmp_path, hf):
    torch, _ = hf
    from safetensors.torch import load_file, save_file

    save_hf(tmp_path, GQA, random_llama(GQA))
    tensors = load_file(tmp_path / "model.safetensors")
    save_file({n: t.to(torch.bfloat16) for n, t in tensors.items()}, tmp_path / "model.safetensors")
    _, weights = load_hf(tmp_path)
    expected = tensors["model.norm.weight"].to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(weights["norm"], expected)


@pytest.mark.parametrize("preset", ["tiny-mobilebert-test", "tiny-bert-test"])
def test_transformers_bert_checkpoint_loads(tmp_path, hf, preset):
    torch, transformers = hf
    cfg = get_preset(preset)
    save_hf(tmp_path / "ours", cfg, random_weights(cfg))
    hf_config = transformers.AutoConfig.from_pretrained(tmp_path / "ours")
    torch.manual_seed(0)
    model = transformers.AutoModelForMaskedLM.from_config(hf_config)  # prefixed names + cls head
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    loaded_cfg, weights = load_hf(tmp_path / "hf")
    assert loaded_cfg == cfg.replace(name="hf")
    state = model.base_model.state_dict()
    assert set(weights) <= set(state)
    for name, value in weights.items():
        np.testing.assert_array_equal(value, state[name].numpy())


# -- bad input --------------------------------------------------------------------------------------


@pytest.fixture
def llama_dir(tmp_path):
    save_hf(tmp_path / "m", GQA, random_llama(GQA))
    return tmp_path / "m"


def _edit_config(directory, **changes):
    path = directory / "config.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


_DELETE = object()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_size": -32}, "'hidden_size' must be positive, got -32"),
        ({"hidden_size": 30}, "n_heads 4 does not divide dim 30"),
        ({"num_key_value_heads": 3}, "n_kv_heads 3 does not divide n_heads 4"),
        ({"hidden_size": "32"}, "'hidden_size' must be an integer, got '32'"),
        ({"hidden_size": True}, "'hidden_size' must be an integer"),
        ({"rms_norm_eps": "NaN"}, "'rms_norm_eps' must be a number"),
        ({"num_hidden_layers": 3}, r"config.json says 3 layers, the safetensors hold layers \[0, 1\]"),
        ({"num_hidden_layers": 10**12}, "config.json says 1000000000000 layers"),
        ({"vocab_size": 41}, r"has shape \[40, 32\], config.json implies \[41, 32\]"),
        ({"tie_word_embeddings": False}, "1 tensors missing, e.g. output"),
        ({"hidden_act": "gelu"}, "'hidden_act' is 'gelu'; supported: 'silu'"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "'rope_scaling'"),
        ({"model_type": "gpt2"}, "'model_type' is 'gpt2'"),
        ({"vocab_size": _DELETE}, "missing key 'vocab_size'"),
        ({"head_dim": 4}, "'head_dim' is 4"),
    ],
)
def test_bad_config(llama_dir, changes, message):
    _edit_config(llama_dir, **changes)
    with pytest.raises(McushardError, match=message) as info:
        load_hf(llama_dir)
    assert str(llama_dir) in str(info.value)


def test_bad_files(llama_dir):
    from safetensors.numpy import load_file, save_file

    config, weights_file = llama_dir / "config.json", llama_dir / "model.safetensors"
    raw_config, raw = config.read_text(), weights_file.read_bytes()
    config.write_text("{not json")
    with pytest.raises(McushardError, match="config.json: invalid JSON"):
        load_hf(llama_dir)
    config.write_text("[1, 2]")
    with pytest.raises(McushardError, match="must hold a JSON object, got list"):
        load_hf(llama_dir)
    config.write_text(raw_config)
    weights_file.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(McushardError, match="model.safetensors: not a readable safetensors file"):
        load_hf(llama_dir)
    weights_file.write_bytes(raw)
    tensors = load_file(weights_file)
    tensors["model.layers.1.mlp.up_proj.weight"][3, 4] = np.nan
    save_file(tensors, weights_file)
    with pytest.raises(McushardError, match=r"'layers.1.w3' holds NaN"):
        load_hf(llama_dir)
    tensors["model.layers.1.mlp.up_proj.weight"][3, 4] = 0
    save_file(tensors | {"model.layers.0.self_attn.q_bias": np.zeros(3, np.float32)}, weights_file)
    with pytest.raises(McushardError, match="unexpected tensor 'model.layers.0.self_attn.q_bias'"):
        load_hf(llama_dir)
    save_file({n: v.astype(np.int8) for n, v in tensors.items()}, weights_file)
    with pytest.raises(McushardError, match="has dtype I8; only floating point"):
        load_hf(llama_dir)
    del tensors["model.norm.weight"]
    save_file(tensors, weights_file)
    with pytest.raises(McushardError, match="1 tensors missing, e.g. norm"):
        load_hf(llama_dir)
    weights_file.unlink()
    with pytest.raises(McushardError, match="no .safetensors file"):
        load_hf(llama_dir)
    config.unlink()
    with pytest.raises(McushardError, match="config.json: cannot read"):
        load_hf(llama_dir)


# -- fuzz: every outcome is a valid load or a McushardError ----------------------------------------

_JSON_VALUES = st.one_of(
    st.integers(-3, 80), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.none(), st.text(max_size=6), st.sampled_from(["silu", "gelu", "no_norm", "llama", "mobilebert"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_KEYS = ["model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
         "num_key_value_heads", "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta",
         "tie_word_embeddings", "hidden_act", "head_dim", "rope_scaling", "embedding_size",
         "use_bottleneck", "intra_bottleneck_size", "normalization_type", "num_feedforward_networks",
         "trigram_input", "key_query_shared_bottleneck", "use_bottleneck_attention", "type_vocab_size"]


def _try_load(directory):
    try:
        cfg, weights = load_hf(directory)
    except McushardError as exc:
        assert str(directory) in str(exc)
        return
    assert all(np.all(np.isfinite(w)) for w in weights.values())
    assert cfg.kind in ("llama", "bert")


@pytest.fixture(params=["tiny-llama-test", "tiny-mobilebert-test"])
def any_dir(tmp_path, request):
    cfg = get_preset(request.param)
    save_hf(tmp_path / "m", cfg, random_weights(cfg))
    return tmp_path / "m"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(_KEYS), _JSON_VALUES | st.just(_DELETE), min_size=1, max_size=4))
def test_fuzz_config(any_dir, changes):
    config = any_dir / "config.json"
    original = config.read_text()
    try:
        _edit_config(any_dir, **changes)
        _try_load(any_dir)
    finally:
        config.write_text(original)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    cut=st.none() | st.integers(0, 10**6),
    header_len=st.none() | st.integers(0, 2**64 - 1),
)
def test_fuzz_safetensors(llama_dir, flips, cut, header_len):
    path = llama_dir / "model.safetensors"
    original = path.read_bytes()
    raw = bytearray(original)
    header_end = 8 + int.from_bytes(raw[:8], "little")
    for pos, value in flips:  # mostly inside the JSON header, where the structure lives
        raw[pos % (header_end if pos % 2 else len(raw))] = value
    if header_len is not None:
        raw[:8] = header_len.to_bytes(8, "little")
    if cut is not None:
        raw = raw[: cut % len(raw)]
    try:
        path.write_bytes(bytes(raw))
        _try_load(llama_dir)
    finally:
        path.write_bytes(original)


def test_bert_heads_skipped_and_strays_refused(tmp_path):
    from safetensors.numpy import load_file, save_file

    cfg = get_preset("tiny-mobilebert-test")
    save_hf(tmp_path, cfg, random_weights(cfg))
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    head = {"cls.predictions.bias": np.zeros(100, np.float32), "mobilebert.pooler.dense.bias": np.zeros(64, np.float32)}
    save_file(tensors | head, path)
    assert load_hf(tmp_path)[0] == cfg.replace(name=tmp_path.name)
    save_file(tensors | {"mobilebert.encoder.layer.0.extra.weight": np.zeros(3, np.float32)}, path)
    with pytest.raises(McushardError, match="unexpected tensor 'mobilebert.encoder.layer.0.extra.weight'"):
        load_hf(tmp_path)
    save_file(tensors, path)
    _edit_config(tmp_path, num_feedforward_networks=2**62)  # rejected before any per-FFN table is built
    with pytest.raises(McushardError, match="says 4611686018427387904 FFNs per layer, the safetensors hold "
                       r"stacked FFNs \[0\]"):
        load_hf(tmp_path)
    _edit_config(tmp_path, num_feedforward_networks=2, key_query_shared_bottleneck=False)
    with pytest.raises(McushardError, match="config.json: .*key_query_shared_bottleneck"):
        load_hf(tmp_path)
