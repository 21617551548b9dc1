"""The learning-curve summary: first passage of a return and the sample-efficiency ratio to a baseline."""

from sharprl.curves import Curve, first_passage, summary_table

# evaluations at 0, 100, 200, 300 env steps
BASELINE = Curve("ppo seed 0", "ppo", (0, 100, 200, 300), (0.0, 1.0, 2.0, 3.0), (10.0, 50.0, 90.0, 130.0))


def test_first_passage_interpolates_between_evaluations():
    assert first_passage(BASELINE, 70.0) == 150.0  # halfway from 50 (at 100) to 90 (at 200)
    assert first_passage(BASELINE, 90.0) == 200.0
    assert first_passage(BASELINE, 5.0) == 0.0  # the first evaluation already reaches it
    assert first_passage(BASELINE, 131.0) is None
    dips = Curve("shac seed 0", "shac", (10, 20, 30, 40), (0.0,) * 4, (0.0, 100.0, 20.0, 200.0))
    assert first_passage(dips, 60.0) == 16.0  # the first crossing, not the later one


def test_summary_table_reports_target_and_ratio_to_the_baseline():
    run = Curve("shac seed 0", "shac", (10, 20, 30), (60.0, 120.0, 180.0), (20.0, 70.0, 40.0))
    table = summary_table([run, BASELINE], target_return=60.0, baseline=BASELINE)
    head, _, shac_row, ppo_row = table.splitlines()
    assert "first reaches 60 (ratio" in head and "ppo seed 0 for the best return (ratio)" in head
    # best 70 at 20 steps; the baseline first reaches 70 at 150 steps: 7.5x; 60 is first reached at
    # 18 steps, by the baseline at 125: 6.9x
    assert shac_row == "| shac seed 0 | 30 | 3 min | 40 | 70 (at 20) | 18 (6.9x) | 150 (7.5x) |"
    assert ppo_row.endswith("| 125 (1.0x) | 300 (1.0x) |")
    unreachable = Curve("apg seed 0", "apg", (10,), (1.0,), (500.0,))
    row = summary_table([unreachable], target_return=600.0, baseline=BASELINE).splitlines()[-1]
    assert row.endswith("| not within 10 | not within 300 |")
    assert "ratio" not in summary_table([run]).splitlines()[0]
    untrained = Curve("shac seed 1", "shac", (), (), (), train_points=((512, 120.0, -3.0),))
    row = summary_table([untrained], target_return=60.0, baseline=BASELINE).splitlines()[-1]
    assert row == "| shac seed 1 | 512 | 2 min | (no evaluation yet) | - | - | - |"
