"""HF `config.json` <-> our model configs (Llama, BERT, MobileBERT), with every field type-checked.

A key missing from config.json takes the default of the HF config class (LlamaConfig,
BertConfig, MobileBertConfig), as transformers would; a key present with a wrong type, a
non-finite number or an out-of-range value is a McushardError naming the file and the key.
Features our executors do not implement (rope_scaling, attention biases, bottleneck attention,
relative position embeddings, ...) are refused rather than silently ignored.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mcushard.errors import McushardError
from mcushard.model.config import BertConfig, LlamaConfig, ModelConfig

_REQUIRED = object()  # marks a key that config.json must hold


class _Reader:
    """Typed access to one config.json's values; errors name the file and the key."""

    def __init__(self, data: dict[str, Any], source: Path) -> None:
        self.data = data  # the parsed JSON object
        self.source = source  # the config.json path, for messages

    def fail(self, key: str, problem: str) -> McushardError:
        return McushardError(f"{self.source}: {key!r} {problem}")

    def _raw(self, key: str, default: Any) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _REQUIRED:
            raise McushardError(f"{self.source}: missing key {key!r}")
        return default

    def int(self, key: str, default: Any = _REQUIRED) -> int:
        """A positive integer (every integer field of these configs is a size or a count)."""
        value = self._raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {value!r}")
        if value <= 0:
            raise self.fail(key, f"must be positive, got {value}")
        return value

    def float(self, key: str, default: Any = _REQUIRED) -> float:
        value = self._raw(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"must be a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:
            raise self.fail(key, "is too large") from None
        if not math.isfinite(value):
            raise self.fail(key, f"must be finite, got {value!r}")
        return value

    def bool(self, key: str, default: Any = _REQUIRED) -> bool:
        value = self._raw(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def choice(self, key: str, allowed: tuple[Any, ...], default: Any = _REQUIRED) -> Any:
        value = self._raw(key, default)
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            raise self.fail(key, f"is {value!r}; supported: {', '.join(map(repr, allowed))}")
        return value


def read_config_json(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise McushardError(f"{path}: cannot read: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise McushardError(f"{path}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise McushardError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    return data


def _build(source: Path, cls: type, **values: Any) -> ModelConfig:
    try:
        return cls(**values)
    except McushardError as exc:
        raise McushardError(f"{source}: inconsistent config: {exc}") from None


def llama_from_hf(r: _Reader, name: str) -> LlamaConfig:
    r.choice("hidden_act", ("silu",), "silu")
    r.choice("rope_scaling", (None,), None)
    r.choice("attention_bias", (False,), False)
    r.choice("mlp_bias", (False,), False)
    heads = r.int("num_attention_heads")
    cfg = _build(
        r.source, LlamaConfig,
        dim=r.int("hidden_size"), hidden_dim=r.int("intermediate_size"), n_layers=r.int("num_hidden_layers"),
        n_heads=heads, n_kv_heads=r.int("num_key_value_heads", heads), vocab_size=r.int("vocab_size"),
        max_seq_len=r.int("max_position_embeddings", 2048), norm_eps=r.float("rms_norm_eps", 1e-6),
        rope_theta=r.float("rope_theta", 10000.0),
        shared_classifier=r.bool("tie_word_embeddings", False), name=name,
    )
    head_dim = r.data.get("head_dim")
    if head_dim is not None and head_dim != cfg.head_dim:
        raise r.fail("head_dim",
                     f"is {head_dim!r}; only hidden_size / num_attention_heads = {cfg.head_dim} is supported")
    return cfg


def bert_from_hf(r: _Reader, name: str, model_type: str) -> BertConfig:
    r.choice("position_embedding_type", ("absolute",), "absolute")
    common = {
        "vocab_size": r.int("vocab_size"), "hidden_size": r.int("hidden_size"),
        "num_layers": r.int("num_hidden_layers"), "num_heads": r.int("num_attention_heads"),
        "intermediate_size": r.int("intermediate_size"),
        "max_position_embeddings": r.int("max_position_embeddings", 512),
        "type_vocab_size": r.int("type_vocab_size", 2), "layer_norm_eps": r.float("layer_norm_eps", 1e-12),
        "name": name,
    }
    if model_type == "bert":
        return _build(r.source, BertConfig, hidden_act=r.choice("hidden_act", ("gelu", "relu"), "gelu"), **common)
    r.choice("use_bottleneck_attention", (False,), False)
    if not r.bool("use_bottleneck", True):
        bottleneck = 0
        r.choice("key_query_shared_bottleneck", (False,), False)
    else:
        bottleneck = r.int("intra_bottleneck_size", 128)
    return _build(
        r.source, BertConfig,
        hidden_act=r.choice("hidden_act", ("relu", "gelu"), "relu"),
        embedding_size=r.int("embedding_size", 128), intra_bottleneck_size=bottleneck,
        num_feedforward_networks=r.int("num_feedforward_networks", 4),
        normalization=r.choice("normalization_type", ("no_norm", "layer_norm"), "no_norm"),
        trigram_input=r.bool("trigram_input", True),
        key_query_shared_bottleneck=r.bool("key_query_shared_bottleneck", True), **common,
    )


def config_from_hf(directory: Path) -> ModelConfig:
    """The model config a HF directory's config.json describes."""
    r = _Reader(read_config_json(directory), directory / "config.json")
    model_type = r.choice("model_type", ("llama", "bert", "mobilebert"))
    if model_type == "llama":
        return llama_from_hf(r, directory.name)
    return bert_from_hf(r, directory.name, model_type)


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The config.json of a HF model equal to `cfg` (inverse of `config_from_hf`)."""
    if isinstance(cfg, LlamaConfig):
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "hidden_size": cfg.dim, "intermediate_size": cfg.hidden_dim, "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
            "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.max_seq_len,
            "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
            "tie_word_embeddings": cfg.shared_classifier, "bos_token_id": 1, "eos_token_id": 2,
            "torch_dtype": "float32",
        }
    from mcushard.model.bert_weights import hf_family

    family = hf_family(cfg)
    out: dict[str, Any] = {
        "model_type": family, "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size, "hidden_act": cfg.hidden_act,
        "max_position_embeddings": cfg.max_position_embeddings, "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.layer_norm_eps, "torch_dtype": "float32",
    }
    if family == "mobilebert":
        out |= {
            "embedding_size": cfg.emb_size, "trigram_input": cfg.trigram_input,
            "use_bottleneck": cfg.use_bottleneck, "use_bottleneck_attention": False,
            "intra_bottleneck_size": cfg.intra_bottleneck_size or cfg.hidden_size,
            "key_query_shared_bottleneck": cfg.key_query_shared_bottleneck and cfg.use_bottleneck,
            "num_feedforward_networks": cfg.num_feedforward_networks,
            "normalization_type": cfg.normalization,
        }
    return out
