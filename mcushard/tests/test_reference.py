import json

from typer.testing import CliRunner

from mcushard.cli import app
from mcushard.runtime.generate import generate
from mcushard.runtime.reference import LlamaFP32

# greedy decoding of stories260K from BOS by llama2.c's run.c (given in the issue)
GOLDEN_PREFIX = [461, 461, 401, 401, 401, 461, 378, 455, 473, 456, 435, 299, 362, 409, 283, 264, 283, 452, 288, 13]


def test_fp32_matches_llama2c_prefix(stories260k):
    cfg, weights = stories260k
    assert generate(LlamaFP32(cfg, weights), len(GOLDEN_PREFIX)) == GOLDEN_PREFIX


def test_cli_generate_tokens(stories260k_path):
    result = CliRunner().invoke(app, ["generate", str(stories260k_path), "--steps", "20", "--tokens"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == GOLDEN_PREFIX
