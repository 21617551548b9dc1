"""Reader and writer for HF-style model directories: `config.json` + one or more `*.safetensors`.

Llama (LlamaForCausalLM) tensors are renamed to ours (see `model/weights.py`):
  model.embed_tokens -> tok_embeddings, model.norm -> norm, lm_head -> output (untied only),
  model.layers.L.self_attn.{q,k,v,o}_proj -> layers.L.w{q,k,v,o},
  model.layers.L.mlp.{gate,up,down}_proj -> layers.L.w{1,3,2},
  model.layers.L.{input,post_attention}_layernorm -> layers.L.{attention,ffn}_norm.

RoPE convention. HF's Llama rotates the two halves of each head (`rotate_half`: pair i is
(x[i], x[i + head_dim/2])), while llama2.c and `runtime/reference.py` rotate interleaved pairs
(x[2i], x[2i+1]). HF's conversion script therefore permutes the rows of q_proj and k_proj head by
head; this reader undoes that permutation (`hf_rows_to_interleaved`) and the writer re-applies it,
so a HF checkpoint and ours compute the same logits.

BERT / MobileBERT tensors keep HF's state-dict names without the leading "bert." / "mobilebert."
prefix (`model/bert_weights.py`); task-head tensors (pooler, cls, classifier, qa_outputs) are skipped.

Every inconsistency (missing or unexpected tensors, wrong shapes, layer counts that disagree with
config.json, unreadable files, NaN values) is a McushardError naming the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mcushard.atomic import write_bytes_atomic, write_text_atomic
from mcushard.errors import McushardError
from mcushard.model.config import BertConfig, LlamaConfig, ModelConfig
from mcushard.model.hf_config import config_from_hf, config_to_hf
from mcushard.model.weights import Weights, check_finite, llama_shapes

# HF name inside model.layers.L. -> our name inside layers.L.
_LLAMA_LAYER = {
    "self_attn.q_proj.weight": "wq", "self_attn.k_proj.weight": "wk", "self_attn.v_proj.weight": "wv",
    "self_attn.o_proj.weight": "wo", "mlp.gate_proj.weight": "w1", "mlp.up_proj.weight": "w3",
    "mlp.down_proj.weight": "w2", "input_layernorm.weight": "attention_norm",
    "post_attention_layernorm.weight": "ffn_norm",
}
_LLAMA_TOP = {"model.embed_tokens.weight": "tok_embeddings", "model.norm.weight": "norm", "lm_head.weight": "output"}
_LLAMA_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
_BERT_LAYER_RE = re.compile(r"encoder\.layer\.(\d+)\.(?:ffn\.(\d+)\.)?")
_BERT_HEADS = ("pooler.", "cls.", "classifier.", "qa_outputs.", "embeddings.position_ids")
_FLOAT_DTYPES = {"F16", "F32", "F64", "BF16"}


def hf_rows_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo HF's RoPE row permutation. w: [n_heads * head_dim, dim]; row j*hd/2 + i -> row 2i + j."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def interleaved_rows_to_hf(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Apply HF's RoPE row permutation (inverse of `hf_rows_to_interleaved`)."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


class _Tensor:
    """Where one stored tensor lives, read from the safetensors header only."""

    def __init__(self, file: Path, key: str, shape: tuple[int, ...], dtype: str) -> None:
        self.file = file  # the .safetensors file holding it
        self.key = key  # its name in that file
        self.shape = shape  # as stored
        self.dtype = dtype  # safetensors dtype string, e.g. "F32"


def _index(directory: Path) -> dict[str, _Tensor]:
    """Name -> _Tensor over every .safetensors file of the directory (headers only, no data)."""
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise McushardError(f"{directory}: no .safetensors file next to config.json")
    index: dict[str, _Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="np") as f:
                keys = list(f.keys())  # a safe_open handle, not a dict
                found = [(k, tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in keys]
        except Exception as exc:  # noqa: BLE001 - the Rust extension raises unrelated types for bad files
            raise McushardError(f"{file}: not a readable safetensors file: {exc}") from None
        for key, shape, dtype in found:
            if key in index:
                raise McushardError(f"{file}: tensor {key!r} also stored in {index[key].file.name}")
            index[key] = _Tensor(file, key, shape, dtype)
    return index


def _read(t: _Tensor) -> np.ndarray:
    """The tensor's values as float32."""
    from safetensors import safe_open

    if t.dtype not in _FLOAT_DTYPES:
        raise McushardError(f"{t.file}: tensor {t.key!r} has dtype {t.dtype}; only floating point is supported")
    try:
        if t.dtype == "BF16":  # numpy has no bfloat16: go through torch when it is installed
            try:
                import torch  # noqa: F401
            except ImportError:
                raise McushardError(
                    f"{t.file}: tensor {t.key!r} is bfloat16, which needs torch (pip install "
                    "'mcushard[hf]') or a float16/float32 copy of the checkpoint"
                ) from None
            with safe_open(str(t.file), framework="pt") as f:
                return f.get_tensor(t.key).float().numpy()
        with safe_open(str(t.file), framework="np") as f:
            return np.asarray(f.get_tensor(t.key), dtype=np.float32)
    except McushardError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt data past the header, as above
        raise McushardError(f"{t.file}: cannot read tensor {t.key!r}: {exc}") from None


def _check_layers(directory: Path, found: set[int], n_layers: int) -> None:
    """Compare layer indices in the files with config.json before building any per-layer table."""
    if len(found) != n_layers or found != set(range(n_layers)):  # len first: n_layers may be forged
        raise McushardError(
            f"{directory}: config.json says {n_layers} layers, the safetensors hold layers "
            f"{sorted(found)[:8]}{' ...' if len(found) > 8 else ''}"
        )


def _match(directory: Path, renamed: dict[str, _Tensor], shapes: dict[str, tuple[int, ...]]) -> None:
    missing = [n for n in shapes if n not in renamed]
    if missing:
        raise McushardError(
            f"{directory}: {len(missing)} tensors missing, e.g. {', '.join(missing[:3])}"
        )
    for name, shape in shapes.items():
        t = renamed[name]
        if t.shape != shape:
            raise McushardError(
                f"{t.file}: tensor {t.key!r} has shape {list(t.shape)}, config.json implies {list(shape)}"
            )


def _put(renamed: dict[str, _Tensor], name: str, t: _Tensor) -> None:
    if name in renamed:
        raise McushardError(f"{t.file}: tensors {renamed[name].key!r} and {t.key!r} are both our {name!r}")
    renamed[name] = t


def _rename_llama(directory: Path, cfg: LlamaConfig, index: dict[str, _Tensor]) -> dict[str, _Tensor]:
    renamed: dict[str, _Tensor] = {}
    layers: set[int] = set()
    for key, t in index.items():
        m = _LLAMA_LAYER_RE.fullmatch(key)
        if m and m.group(2) in _LLAMA_LAYER:
            layers.add(int(m.group(1)))
            _put(renamed, f"layers.{int(m.group(1))}.{_LLAMA_LAYER[m.group(2)]}", t)
        elif key in _LLAMA_TOP:
            if not (key == "lm_head.weight" and cfg.shared_classifier):  # a tied copy is redundant
                _put(renamed, _LLAMA_TOP[key], t)
        elif not key.endswith("rotary_emb.inv_freq"):  # a buffer some old checkpoints carry
            raise McushardError(f"{t.file}: unexpected tensor {key!r} for a Llama model")
    _check_layers(directory, layers, cfg.n_layers)
    return renamed


def _rename_bert(directory: Path, cfg: BertConfig, index: dict[str, _Tensor]) -> dict[str, _Tensor]:
    renamed: dict[str, _Tensor] = {}
    layers: set[int] = set()
    stacked: set[int] = set()  # indices N of encoder.layer.L.ffn.N
    for key, t in index.items():
        name = key.split(".", 1)[1] if key.startswith(("bert.", "mobilebert.")) else key
        if name.startswith(_BERT_HEADS) or key.startswith(_BERT_HEADS):
            continue
        m = _BERT_LAYER_RE.match(name)
        if m:
            layers.add(int(m.group(1)))
            if m.group(2) is not None:
                stacked.add(int(m.group(2)))
        _put(renamed, name, t)
    _check_layers(directory, layers, cfg.num_layers)
    # stacked FFNs are encoder.layer.L.ffn.0 .. ffn.(n-2); the last FFN is the block's own
    if len(stacked) != cfg.num_feedforward_networks - 1 or stacked != set(range(len(stacked))):
        raise McushardError(
            f"{directory}: config.json says {cfg.num_feedforward_networks} FFNs per layer, the safetensors "
            f"hold stacked FFNs {sorted(stacked)[:8]} besides the block's own"
        )
    return renamed


def load_hf(directory: str | Path) -> tuple[ModelConfig, Weights]:
    """Read a HF-style directory into (config, float32 weights under our names)."""
    directory = Path(directory)
    cfg = config_from_hf(directory)
    index = _index(directory)
    if isinstance(cfg, LlamaConfig):
        renamed = _rename_llama(directory, cfg, index)
        shapes = llama_shapes(cfg)
    else:
        from mcushard.model.bert_weights import bert_shapes

        renamed = _rename_bert(directory, cfg, index)
        try:
            shapes = bert_shapes(cfg)
        except McushardError as exc:
            raise McushardError(f"{directory / 'config.json'}: {exc}") from None
        extra = [n for n in renamed if n not in shapes]
        if extra:
            raise McushardError(f"{renamed[extra[0]].file}: unexpected tensor {renamed[extra[0]].key!r}")
    _match(directory, renamed, shapes)
    weights = {name: _read(renamed[name]) for name in shapes}
    if isinstance(cfg, LlamaConfig):
        for layer in range(cfg.n_layers):
            p = f"layers.{layer}."
            weights[p + "wq"] = hf_rows_to_interleaved(weights[p + "wq"], cfg.n_heads)
            weights[p + "wk"] = hf_rows_to_interleaved(weights[p + "wk"], cfg.n_kv_heads)
    check_finite(weights, str(directory))
    return cfg, weights


def save_hf(directory: str | Path, cfg: ModelConfig, weights: Weights) -> None:
    """Write `cfg` and `weights` as a HF directory (config.json + model.safetensors), each atomically.

    Llama is written as LlamaForCausalLM (q/k rows permuted to HF's RoPE order, no lm_head when
    tied); BERT / MobileBERT with the "bert." / "mobilebert." prefix of HF's task models.
    """
    import json

    from safetensors.numpy import save

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise McushardError(f"{directory}: cannot create: {exc.strerror}") from None
    if isinstance(cfg, LlamaConfig):
        shapes = llama_shapes(cfg)
        hf_name = {ours: hf for hf, ours in _LLAMA_TOP.items()}
        hf_name |= {f"layers.{layer}.{ours}": f"model.layers.{layer}.{hf}"
                    for layer in range(cfg.n_layers) for hf, ours in _LLAMA_LAYER.items()}
    else:
        from mcushard.model.bert_weights import bert_shapes, hf_family

        shapes = bert_shapes(cfg)
        hf_name = {name: f"{hf_family(cfg)}.{name}" for name in shapes}
    tensors: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name not in weights or tuple(weights[name].shape) != shape:
            got = "missing" if name not in weights else f"shape {tuple(weights[name].shape)}"
            raise McushardError(f"{directory}: cannot write tensor {name!r}: {got}, expected {shape}")
        value = np.ascontiguousarray(weights[name], dtype=np.float32)
        if isinstance(cfg, LlamaConfig) and name.endswith((".wq", ".wk")):
            value = interleaved_rows_to_hf(value, cfg.n_heads if name.endswith(".wq") else cfg.n_kv_heads)
        tensors[hf_name[name]] = np.ascontiguousarray(value)
    write_bytes_atomic(directory / "model.safetensors", save(tensors, metadata={"format": "pt"}))
    write_text_atomic(directory / "config.json", json.dumps(config_to_hf(cfg), indent=2) + "\n")
