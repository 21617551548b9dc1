"""``--set FIELD=VALUE`` overrides of a frozen config dataclass (SHACConfig, APGConfig, PPOConfig)."""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping

from sharprl.errors import SharprlError


def parse_overrides(pairs: list[str], config_cls: type, owned: Mapping[str, str]) -> dict[str, object]:
    """``["actor_lr=1e-3", "actor_hidden=[64, 64]"]`` -> field overrides of ``config_cls``, type-checked.

    Values are read as JSON (``1e-3``, ``true``, ``[64, 64]``), anything else as a string. Unknown
    fields, the fields other flags own (``owned``: field -> flag) and values of the wrong type are
    errors; the dataclass's own checks run when the caller builds the config.
    """
    hints = typing.get_type_hints(config_cls)
    fields = [f.name for f in dataclasses.fields(config_cls)]
    out: dict[str, object] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or name not in fields:
            allowed = ", ".join(sorted(set(fields) - set(owned)))
            raise SharprlError(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of: {allowed}")
        if name in owned:
            raise SharprlError(f"--set {name}: use {owned[name]} instead")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text.strip()
        out[name] = _coerce(name, value, hints[name])
    return out


def _coerce(name: str, value: object, hint: object) -> object:
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list) and all(type(v) is int for v in value):
        return tuple(value)
    if hint is float and type(value) in (int, float):
        return float(value)
    if hint in (int, bool, str) and type(value) is hint:
        return value
    raise SharprlError(f"--set {name}={value!r}: expected {getattr(hint, '__name__', hint)}")
