"""`wavenet bench quality`: a preset trained for fixed budgets, scored and listened to per budget."""

import json

import pytest

from wavenet.cli import main


@pytest.mark.training
def test_bench_quality_trains_each_budget_afresh_and_reports_bits_and_checks_per_label(capsys):
    rc = main(["bench", "quality", "--quick", "--json", "--preset", "tiny", "--budgets", "256,1024",
               "--set", "model.num_classes=auto", "--set", "generate.seconds=0.25"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["rows"]
    # Budgets in predicted samples: the tiny preset predicts 4 x 256 per step.
    assert [r["budget_samples"] for r in rows] == [1024, 1024] and [r["steps"] for r in rows] == [1, 1]
    for r in rows:
        assert 0 < r["bits_per_sample"] <= 8.5 and r["bigram_bits"] > 0
        # One clip per genre of the demo corpus, each checked against its own genre.
        assert sorted(r["checks_passed_per_label"]) == ["drums", "organ", "strings"]
        assert 0.0 <= r["checks_passed_fraction"] <= 1.0
        assert sorted(r["failed"]) == ["drums", "organ", "strings"]
    assert result["table"].splitlines()[0].startswith("| budget (samples) | steps |")
    assert len(result["table"].splitlines()) == 2 + len(rows)


def test_bench_quality_budgets_are_checked_in_one_line(capsys):
    assert main(["bench", "quality", "--budgets", "10,x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--budgets must be positive sample counts" in err[0]


def test_default_budgets_bracket_the_presets_own_training():
    from wavenet.bench.quality import default_budgets
    from wavenet.config import preset

    demo = preset("demo")
    per_step = demo.train.global_batch_size * demo.train.window
    steps = [b // per_step for b in default_budgets(demo)]
    assert steps == [demo.train.steps // 4, demo.train.steps // 2, demo.train.steps, 2 * demo.train.steps]
    assert all(b % per_step == 0 for b in default_budgets(demo))
    longer = demo.with_overrides({"train.steps": 1000})
    assert [b // per_step for b in default_budgets(longer)] == [250, 500, 1000, 2000]


def test_the_table_of_an_unconditioned_run_has_no_empty_label_column():
    from wavenet.bench.quality import table

    row = {"budget_samples": 9_830_400, "steps": 600, "train_seconds": 225.0, "bits_per_sample": 5.86,
           "bigram_bits": 6.46, "checks_passed_fraction": 2 / 3, "checks_passed_per_label": {}}
    lines = table({"rows": [row]}).splitlines()
    assert lines[0].endswith("| checks passed |") and lines[2] == "| 9,830,400 | 600 | 225 | 5.86 (6.46) | 67% |"
    assert {line.count("|") for line in lines} == {6}
    genres = dict(row, checks_passed_per_label={"drums": 1.0, "organ": 0.5})
    lines = table({"rows": [genres]}).splitlines()
    assert lines[0].endswith("| checks passed | drums | organ |") and lines[2].endswith("| 67% | 100% | 50% |")
    assert {line.count("|") for line in lines} == {8}
