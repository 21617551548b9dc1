"""Hardware specs: the siracusa preset's published numbers, validation, and one-line errors for bad YAML."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from mcushard.errors import McushardError
from mcushard.hardware.spec import load_hardware, parse_hardware, preset_names, replace


def _preset_dict():
    return yaml.safe_load((Path(__file__).parents[1] / "src/mcushard/hardware/presets/siracusa.yaml").read_text())


def test_siracusa_published_numbers():
    hw = load_hardware("siracusa")
    chip = hw.chip
    assert chip.cores == 8
    assert chip.l1.size_bytes == 256 * 1024
    assert chip.working.name == "L2" and chip.working.size_bytes == 2 * 1024 * 1024
    mram = chip.level("MRAM")
    assert mram.size_bytes == 4 * 1024 * 1024 and mram.non_volatile and mram.on_chip
    assert chip.offchip.name == "HyperRAM" and not chip.offchip.on_chip
    assert chip.peak_macs_per_s == pytest.approx(8 * 360e6 * 4)
    assert hw.allreduce == "hierarchical"
    assert "siracusa" in preset_names()


@pytest.mark.parametrize("preset", preset_names())
def test_every_number_in_a_preset_states_its_source(preset):
    text = (Path(__file__).parents[1] / f"src/mcushard/hardware/presets/{preset}.yaml").read_text()
    for line in text.splitlines():
        body = line.split("#")[0]
        if ":" in body and body.split(":", 1)[1].strip() not in ("", "true", "false") and "name" not in body:
            if any(ch.isdigit() for ch in body.split(":", 1)[1]):
                assert "#" in line, f"no source comment: {line!r}"


def test_specs_are_frozen_and_replace_revalidates():
    hw = load_hardware("siracusa")
    with pytest.raises(dataclasses.FrozenInstanceError):
        hw.chip.cores = 4
    assert replace(hw.link, bandwidth_bytes_per_s=1e9).bandwidth_bytes_per_s == 1e9
    with pytest.raises(McushardError, match="bandwidth_bytes_per_s"):
        replace(hw.link, bandwidth_bytes_per_s=-1.0)


@pytest.mark.parametrize("mutate,field", [
    (lambda d: d["chip"].__setitem__("cores", -3), "chip.cores"),
    (lambda d: d["chip"]["utilisation"].__setitem__("gemv", 1.5), "chip.utilisation.gemv"),
    (lambda d: d["link"].__setitem__("topology", "torus"), "link.topology"),
    (lambda d: d["chip"].__setitem__("colour", "blue"), "chip.colour"),
    (lambda d: d["chip"]["levels"][1].pop("size_bytes"), "chip.levels.1.size_bytes"),
    (lambda d: d["chip"]["levels"][0].__setitem__("holds_weights", True), "levels.0"),
    (lambda d: d["link"].__setitem__("latency_s", "fast"), "link.latency_s"),
])
def test_bad_values_name_the_file_and_field(tmp_path, mutate, field):
    data = _preset_dict()
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(McushardError) as err:
        load_hardware(str(path))
    assert str(path) in str(err.value) and field in str(err.value)


@pytest.mark.parametrize("text,problem", [("chip: [1, 2\n", "not valid YAML"), ("- 1\n- 2\n", "mapping"),
                                          ("name: x\n", "chip")])
def test_malformed_yaml(text, problem):
    with pytest.raises(McushardError, match=problem):
        parse_hardware(text, "f.yaml")


def test_unknown_preset_or_missing_file():
    with pytest.raises(McushardError, match="neither a hardware preset"):
        load_hardware("no-such-chip")


def test_extends_overrides_only_the_given_fields(tmp_path):
    path = tmp_path / "fast.yaml"
    path.write_text("extends: siracusa\nname: fast\nlink: {bandwidth_bytes_per_s: 1.0e+10}\n"
                    "chip: {levels: [{name: L2, size_bytes: 4194304}]}\n")
    hw, base = load_hardware(str(path)), load_hardware("siracusa")
    assert hw.name == "fast" and hw.link.bandwidth_bytes_per_s == 1e10
    assert hw.link.latency_s == base.link.latency_s
    assert hw.chip.working.size_bytes == 4 * 2**20 and hw.chip.level("MRAM") == base.chip.level("MRAM")
    assert [lv.name for lv in hw.chip.levels] == [lv.name for lv in base.chip.levels]
    hyper = load_hardware("siracusa-hyperbus")
    assert hyper.chip.offchip.bandwidth_bytes_per_s == 4e8 and hyper.chip.offchip.overlaps_compute
    assert hyper.chip.l1 == base.chip.l1


def test_extends_errors(tmp_path):
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\nname: loop\n")
    with pytest.raises(McushardError, match="extends"):
        load_hardware(str(loop))
    with pytest.raises(McushardError, match="neither a hardware preset"):
        parse_hardware("extends: nowhere\n", "x.yaml")
