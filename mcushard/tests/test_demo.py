"""`make demo`'s mcushard job end to end: every stage runs and reports what it checked."""

import re

from mcushard import demo


def test_demo_runs_every_stage_and_its_checks_pass(capsys):
    demo.main()
    out = capsys.readouterr().out
    agreement = float(re.search(r"teacher-forced top-1 agreement with fp32 over 256 positions: ([\d.]+)%", out)[1])
    assert agreement >= 90.0
    assert "TinyLlama" in out or "tinyllama" in out  # the paper's figures table
    assert "link bytes equal the cost model's, every token and link: yes" in out
    assert "bit-identical to the single-process int8 run" in out
    error = float(re.search(r"max \|shards - whole model\| over 8 positions: ([\d.e+-]+)", out)[1])
    assert error < 2e-4
