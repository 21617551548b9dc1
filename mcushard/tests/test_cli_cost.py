"""CLI smoke tests: simulate, sweep, reproduce; bad input is one line and exit code 2."""

import csv
import json

from typer.testing import CliRunner

from mcushard.cli import app, main
from mcushard.hardware.spec import load_hardware
from mcushard.reproduce import PAPER, TARGET_ERROR, figures

runner = CliRunner()


def test_simulate_text_json_and_trace(tmp_path):
    out = runner.invoke(app, ["simulate", "--model", "stories260k", "--chips", "4"])
    assert out.exit_code == 0, out.output
    assert "latency" in out.output and "per chip" in out.output
    trace = tmp_path / "t.json"
    out = runner.invoke(app, ["simulate", "--model", "tiny-mobilebert-test", "--chips", "2", "--mode", "prompt",
                              "--seq-len", "16", "--json", "--trace", str(trace)])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["n_chips"] == 2 and report["mode"] == "prompt" and report["latency_ms"] > 0
    assert sum(c["link_bytes_sent"] for c in report["chips"]) == report["link_bytes"]
    assert json.loads(trace.read_text())["traceEvents"]


def test_simulate_strategies():
    for strategy in ("pp", "hybrid"):
        out = runner.invoke(app, ["simulate", "--model", "tiny-llama-test", "--chips", "2", "--strategy", strategy,
                                  "--json"])
        assert out.exit_code == 0, out.output
        assert json.loads(out.output)["strategy"].startswith(strategy)


def test_sweep_writes_csv_and_plots(tmp_path):
    out = runner.invoke(app, ["sweep", "--model", "stories260k", "--chips", "1-4", "--link-gbps", "1,8",
                              "--objective", "edp", "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert len(rows) == 8 and {r["link_gbps"] for r in rows} == {"1", "8"}
    assert float(rows[0]["speedup"]) == 1.0
    for name in ("speedup.png", "energy.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_reproduce_json_has_exactly_the_issue_keys():
    out = runner.invoke(app, ["reproduce", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert set(data) == {"tinyllama42m_8", "mobilebert_4", "tinyllama_scaled_64"}
    for key, entry in data.items():
        assert set(entry) == {"paper", "model"} and set(entry["model"]) == set(entry["paper"]) == set(PAPER[key])


def test_reproduce_within_targets():
    """TinyLlama figures within 10% of the paper, MobileBERT within 15% (same preset, no per-model knob)."""
    for key, entry in figures(load_hardware("siracusa")).items():
        for metric, paper in entry["paper"].items():
            assert abs(entry["model"][metric] - paper) / paper <= TARGET_ERROR[key], (key, metric, entry)


def test_bad_input_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "hw.yaml"
    bad.write_text("name: x\nchip: {cores: 0}\n")
    for argv in (["simulate", "--model", "stories260k", "--chips", "2", "--hardware", str(bad)],
                 ["simulate", "--model", "mobilebert", "--chips", "2"],
                 ["simulate", "--model", "stories260k", "--chips", "2", "--strategy", "zigzag"],
                 ["sweep", "--chips", "0-3", "--out", str(tmp_path)]):
        monkeypatch.setattr("sys.argv", ["mcushard", *argv])
        try:
            main()
        except SystemExit as exc:
            assert exc.code == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        if "--hardware" in argv:
            assert "hw.yaml" in err and "field chip." in err
