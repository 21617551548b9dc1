"""llama2.c tokenizer.bin decoding and `generate`'s text output."""

import json
import struct

import pytest
from typer.testing import CliRunner

from mcushard.cli import app
from mcushard.errors import McushardError
from mcushard.model.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def llama_tokenizer():
    from mcushard.data import shared_file

    return load_tokenizer(shared_file("tinyllamas/tokenizer.bin"), 32000)


def _write(path, pieces, max_len=None):
    body = b"".join(struct.pack("<fi", -float(i), len(p)) + p for i, p in enumerate(pieces))
    path.write_bytes(struct.pack("<i", max_len or max(map(len, pieces))) + body)
    return path


def test_llama2_vocabulary(llama_tokenizer):
    t = llama_tokenizer
    assert t.vocab_size == 32000 and t.max_token_length == 27
    assert t.pieces[1] == b"\n<s>\n" and t.pieces[13] == b"<0x0A>"
    # Llama 2's ids for "Once upon a time," after BOS: the leading space of " Once" is dropped
    assert t.decode([9038, 2501, 263, 931, 29892]) == "Once upon a time,"
    assert t.decode([9038], start=263) == " Once"
    assert t.decode([13, 3, 9038]) == "\n Once"  # <0x0A> is a newline byte, <0x00> is skipped
    assert t.decode([931, 1, 931]) == "time"  # BOS ends the text, as in run.c
    # byte-fallback tokens spelling a UTF-8 character (U+00E9: 0xC3 0xA9) are kept, unlike run.c
    assert t.decode([3 + 0xC3, 3 + 0xA9]) == "\u00e9"


def test_bad_tokenizer_files(tmp_path):
    good = _write(tmp_path / "t.bin", [b"<unk>", b"<s>", b" a", b"<0x41>"])
    assert load_tokenizer(good, 4).decode([3, 2]) == "A a"
    with pytest.raises(McushardError, match="holds 4 tokens, the model's vocabulary has 5"):
        load_tokenizer(good, 5)
    raw = good.read_bytes()
    (tmp_path / "cut.bin").write_bytes(raw[:-1])
    with pytest.raises(McushardError, match="cut.bin: truncated inside the bytes of token 3"):
        load_tokenizer(tmp_path / "cut.bin")
    (tmp_path / "cut.bin").write_bytes(raw[:-8])
    with pytest.raises(McushardError, match="truncated inside the entry of token 3"):
        load_tokenizer(tmp_path / "cut.bin")
    (tmp_path / "neg.bin").write_bytes(raw[:4] + struct.pack("<fi", 0.0, -3) + raw[12:])
    with pytest.raises(McushardError, match="token 0 has length -3"):
        load_tokenizer(tmp_path / "neg.bin")
    (tmp_path / "hdr.bin").write_bytes(struct.pack("<i", 0) + raw[4:])
    with pytest.raises(McushardError, match="max_token_length is 0"):
        load_tokenizer(tmp_path / "hdr.bin")
    with pytest.raises(McushardError, match="outside the vocabulary of 4"):
        load_tokenizer(good).decode([7])


def test_generate_prints_text_for_32000_vocab(llama_tokenizer):
    runner = CliRunner()
    ids = runner.invoke(app, ["generate", "stories15m", "--steps", "6", "--tokens"])
    assert ids.exit_code == 0, ids.output
    ids = json.loads(ids.stdout)
    text = runner.invoke(app, ["generate", "stories15m", "--steps", "6"])
    assert text.exit_code == 0, text.output
    assert text.stdout == llama_tokenizer.decode(ids) + "\n"


def test_generate_prints_ids_for_other_vocab(stories260k_path):
    result = CliRunner().invoke(app, ["generate", str(stories260k_path), "--steps", "5"])
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == ["461", "461", "401", "401", "401"]
