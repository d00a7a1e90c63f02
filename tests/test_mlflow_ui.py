"""The MLflow UI as a person opens it (issue 11, Deliver 6): a real ``mlflow server`` on
127.0.0.1, runs logged through our tracking API, and the pages loaded in headless Chromium
(Debian's ``chromium``; kept to loopback). The link ``make run`` prints must open the
experiment's comparison view: the model-training view, full run names, the key metrics first
and in order, then the key parameters; its charts start with the "Compare models" section;
the run page and MLflow's compare page show the key metrics.

Without chromium this is skipped, unless WAVENET_REQUIRE_CONTAINERS=1 (CI: scripts/setup-services.sh
installs it), where that is a failure.
"""

import pytest
from conftest import REQUIRE_CONTAINERS, run_mlflow_server

from devtools.mlflow_ui import budget_ms, chromium, find_chromium, pages, runs_table
from wavenet.edges import tracking

pytestmark = pytest.mark.slow

TRAINING = {  # run name -> (learning rate, eval/bits_per_sample): two models to compare
    "tiny-d1b3ed8ea-1128T101010": (0.003, 3.2117),
    "tiny-d1b3ed8ea-1128T111111": (0.001, 3.4723),
}


@pytest.fixture(scope="module")
def browser():
    found = find_chromium()
    if not found:
        reason = "no chromium (apt-get install chromium; scripts/setup-services.sh does)"
        if REQUIRE_CONTAINERS:
            pytest.fail(f"{reason} (WAVENET_REQUIRE_CONTAINERS=1)")
        pytest.skip(reason)
    return found


def _log_training_runs(uri: str) -> dict[str, str]:
    """Two training runs as the pipeline logs them (params, curves, evaluation and the clips'
    checks on the training run, an evaluate child with the gate's number); their ids by name."""
    ids = {}
    for name, (lr, bits) in TRAINING.items():
        params = {"preset": "tiny", "train.steps": 30, "train.learning_rate": lr, "model.stacks": 1}
        with tracking.start_run("ui-test", run_name=name, tracking_uri=uri, params=params,
                                tags={"wavenet.stage": "train", "data.version": "1b3ed8eaa9"}) as run:
            for step in (10, 20, 30):
                tracking.log_metrics({"train_bits_per_sample": bits + 1.0 / step}, step=step)
            for step in (15, 30):
                tracking.log_metrics({"val_bits_per_sample": bits + 0.5 / step}, step=step)
            ids[name] = run.info.run_id
        # The generate step's audio checks land on the training run too (samples/...).
        tracking.log_metrics_to_run(ids[name], {"eval/bits_per_sample": bits,
                                                "samples/checks_passed_fraction": 0.5,
                                                "eval/baseline_bigram_bits": 5.0166,
                                                "eval/baseline_unigram_bits": 7.5731}, uri)
        with tracking.start_run("ui-test", run_name=tracking.child_run_name("evaluate", name),
                                tracking_uri=uri, tags={"wavenet.stage": "evaluate",
                                                        "mlflow.parentRunId": ids[name]}):
            tracking.log_metrics({"gate/promoted": 1.0})
    return ids


def test_the_printed_link_opens_the_comparison_view(browser, tmp_path):
    with run_mlflow_server(tmp_path / "mlflow") as server:
        ids = _log_training_runs(server.uri)
        exp_id = tracking.experiment_id("ui-test", server.uri)
        newest_first = [ids[n] for n in sorted(TRAINING, reverse=True)]
        found = pages(server.uri, exp_id, newest_first)
        assert found["experiment"] == tracking.experiment_page(server.uri, exp_id)
        # Wide enough for every column of the table: the grid renders only what fits.
        dom = {page: chromium(browser, url, width=2800, budget_ms=budget_ms(page)) for page, url in found.items()}

    # The runs table: the named view is applied, run names at full width, then the key
    # metrics in their order, then the key parameters.
    assert "WaveNet: compare models" in dom["experiment"]
    table = runs_table(dom["experiment"])
    run_name = "attributes.`Run Name`"
    assert run_name in table.pinned and table.widths[run_name] >= 300, table
    metrics = [f"metrics.`{m}`" for m in tracking.KEY_METRICS]
    assert table.columns[:len(metrics)] == metrics, table.columns
    params = table.columns[len(metrics):len(metrics) + len(tracking.KEY_PARAMS)]
    assert params == [f"params.`{p}`" for p in tracking.KEY_PARAMS], table.columns
    for name, (_, bits) in TRAINING.items():
        assert name in dom["experiment"]
        assert f">{bits}<" in dom["experiment"]  # its eval/bits_per_sample cell

    # The charts: "Compare models" first; the UI adds the other metrics' charts in sections
    # after it (eval/baseline_unigram_bits in "eval").
    charts = dom["charts"]
    assert "Compare models" in charts and "Parallel Coordinates" in charts
    assert ">eval<" in charts and charts.index("Compare models") < charts.index(">eval<")

    # A training run's page and MLflow's compare page show the key numbers.
    newest = sorted(TRAINING)[-1]
    assert newest in dom["run"]
    for key in ("eval/bits_per_sample", "val_bits_per_sample", "train_bits_per_sample"):
        assert key in dom["run"], key
        assert key in dom["compare"], key
    assert all(name in dom["compare"] for name in TRAINING)
