"""Decoder for llama2.c's `tokenizer.bin` (token ids -> text).

File layout (little-endian): int32 max_token_length, then for each token in id order: float32
score, int32 byte length, the token's bytes. The file has no token count: it ends after the last
token, and the count must equal the model's vocab size.

Decoding follows llama2.c's `decode` + `safe_printf`: after BOS (id 1) a leading space is dropped,
a piece `<0xXX>` stands for the single byte 0xXX, and a single-byte piece that is a control
character (neither printable ASCII nor whitespace) is skipped. One deliberate difference: llama2.c
also skips lone bytes >= 0x80, losing the UTF-8 characters that byte-fallback tokens spell; here they
are kept and the bytes are decoded as UTF-8 (invalid sequences become U+FFFD). Generation stops at a
BOS token, which in llama2.c's models delimits stories, as `run.c` does.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

from mcushard.errors import McushardError
from mcushard.runtime.generate import BOS

_BYTE_PIECE = re.compile(rb"<0x([0-9A-Fa-f]{2})>")
_WHITESPACE = b" \t\n\v\f\r"


@dataclass(frozen=True)
class Tokenizer:
    """A llama2.c vocabulary: each token's bytes and merge score."""

    pieces: tuple[bytes, ...]  # token id -> its bytes (a leading space marks a word start)
    scores: tuple[float, ...]  # token id -> BPE merge score (used for encoding only; kept for completeness)
    max_token_length: int  # longest piece in bytes, as the header states

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def piece(self, prev: int, token: int) -> bytes:
        """The bytes token `token` contributes after token `prev` (llama2.c's decode + safe_printf)."""
        if not 0 <= token < len(self.pieces):
            raise McushardError(f"token id {token} outside the vocabulary of {len(self.pieces)}")
        piece = self.pieces[token]
        if prev == BOS and piece.startswith(b" "):
            piece = piece[1:]
        m = _BYTE_PIECE.fullmatch(piece)
        if m:
            piece = bytes([int(m.group(1), 16)])
        if len(piece) == 1 and piece[0] < 0x80 and not (0x20 <= piece[0] < 0x7F or piece in _WHITESPACE):
            return b""  # a control byte
        return piece

    def decode(self, tokens: list[int], start: int = BOS) -> str:
        """Text of `tokens` generated after `start`, up to (excluding) the first BOS."""
        out, prev = [], start
        for token in tokens:
            if token == BOS:
                break
            out.append(self.piece(prev, token))
            prev = token
        return b"".join(out).decode("utf-8", errors="replace")


def load_tokenizer(path: str | Path, vocab_size: int | None = None) -> Tokenizer:
    """Read a tokenizer.bin; with `vocab_size`, its token count must match."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise McushardError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) < 4:
        raise McushardError(f"{path}: truncated: {len(raw)} bytes, shorter than the 4-byte header")
    (max_len,) = struct.unpack_from("<i", raw, 0)
    if max_len <= 0:
        raise McushardError(f"{path}: bad header: max_token_length is {max_len}")
    pieces: list[bytes] = []
    scores: list[float] = []
    offset = 4
    while offset < len(raw):
        if offset + 8 > len(raw):
            raise McushardError(f"{path}: truncated inside the entry of token {len(pieces)}")
        score, length = struct.unpack_from("<fi", raw, offset)
        if not 0 <= length <= max_len:
            raise McushardError(
                f"{path}: token {len(pieces)} has length {length}, outside 0..max_token_length {max_len}"
            )
        if offset + 8 + length > len(raw):
            raise McushardError(f"{path}: truncated inside the bytes of token {len(pieces)}")
        pieces.append(raw[offset + 8: offset + 8 + length])
        scores.append(score)
        offset += 8 + length
    if vocab_size is not None and len(pieces) != vocab_size:
        raise McushardError(f"{path}: holds {len(pieces)} tokens, the model's vocabulary has {vocab_size}")
    return Tokenizer(tuple(pieces), tuple(scores), max_len)
