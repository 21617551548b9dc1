import json

from typer.testing import CliRunner

from mcushard.cli import app
from mcushard.runtime.generate import generate
from mcushard.runtime.reference import LlamaFP32

# greedy decoding of stories260K from BOS by llama2.c's run.c (given in the issue)
GOLDEN_PREFIX = [461, 461, 401, 401, 401, 461, 378, 455, 473, 456, 435, 299, 362, 409, 283, 264, 283, 452, 288, 13]

# 256 greedy steps of stories260K from BOS, printed as ids by llama2.c's run.c (commit 350e04f of
# karpathy/llama2.c, built with gcc -O3 and -O0: identical output), `run stories260K.bin -t 0 -n 256`.
# The narrowest top-1/top-2 logit gap along this sequence is 1.1e-3 (position 213), far above fp32
# rounding, so the full vector is a fair exact-match check.
GOLDEN_256 = [
    461, 461, 401, 401, 401, 461, 378, 455, 473, 456, 435, 299, 362, 409, 283, 264,
    283, 452, 288, 13, 431, 431, 431, 431, 431, 431, 431, 431, 431, 431, 431, 431,
    431, 293, 430, 417, 363, 416, 315, 342, 418, 424, 400, 442, 402, 303, 266, 299,
    374, 466, 396, 303, 271, 362, 390, 469, 306, 469, 423, 314, 347, 305, 356, 333,
    333, 333, 333, 425, 377, 354, 304, 304, 304, 304, 304, 330, 341, 382, 468, 473,
    473, 402, 402, 299, 299, 483, 456, 473, 456, 473, 465, 465, 465, 341, 317, 436,
    363, 454, 315, 377, 360, 408, 472, 453, 327, 316, 266, 417, 277, 299, 369, 283,
    266, 417, 264, 277, 277, 277, 439, 456, 407, 407, 309, 341, 436, 330, 466, 377,
    422, 436, 472, 465, 466, 407, 407, 407, 407, 407, 465, 466, 473, 330, 330, 386,
    431, 304, 304, 472, 453, 380, 299, 299, 483, 475, 452, 477, 295, 412, 302, 330,
    275, 377, 271, 341, 438, 452, 287, 302, 341, 438, 303, 303, 303, 283, 266, 417,
    277, 277, 277, 409, 281, 303, 303, 462, 402, 402, 402, 402, 299, 299, 277, 333,
    333, 333, 333, 333, 299, 299, 299, 292, 325, 329, 382, 374, 458, 465, 465, 466,
    465, 466, 465, 442, 456, 407, 465, 465, 473, 473, 473, 473, 473, 407, 465, 465,
    473, 473, 473, 407, 465, 465, 465, 466, 465, 465, 465, 466, 465, 465, 465, 465,
    473, 465, 465, 465, 465, 473, 330, 327, 435, 445, 435, 396, 454, 388, 369, 367,
]


def test_fp32_matches_llama2c_prefix(stories260k):
    cfg, weights = stories260k
    assert generate(LlamaFP32(cfg, weights), len(GOLDEN_PREFIX)) == GOLDEN_PREFIX


def test_fp32_matches_llama2c_256_steps(stories260k):
    cfg, weights = stories260k
    assert GOLDEN_256[:20] == GOLDEN_PREFIX and len(GOLDEN_256) == 256
    assert generate(LlamaFP32(cfg, weights), 256) == GOLDEN_256


def test_cli_generate_tokens(stories260k_path):
    result = CliRunner().invoke(app, ["generate", str(stories260k_path), "--steps", "20", "--tokens"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == GOLDEN_PREFIX
