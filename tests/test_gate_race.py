"""One champion at a time (issue 10, Found 3): two `wavenet evaluate --gate` processes racing
against one real `mlflow server` never leave the worse model as champion."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import tiny_config
from mlflow import MlflowClient

from wavenet.evaluate import TEST_PAUSE_ENV

# Each round names which racer waits between its decision and its promotion (the window
# in which the other one promotes), or none. Pausing the worse model makes it write last:
# without the lock and the re-check it ends as champion.
ROUNDS = ["worse", "better", None]
PAUSE_S = 6

RACER = textwrap.dedent("""
    import contextlib, io, json, os, sys, time
    from pathlib import Path

    import wavenet.evaluate  # noqa: F401 - the heavy imports happen before the barrier
    from wavenet.cli import main

    role, model, data, uri, config, folder, rounds, pause_env, pause = sys.argv[1:10]
    folder = Path(folder)
    other = "better" if role == "worse" else "worse"
    for i, paused in enumerate(json.loads(rounds)):
        # A barrier: both racers are ready before either starts the round.
        (folder / f"ready-{role}-{i}").touch()
        while not (folder / f"ready-{other}-{i}").exists():
            time.sleep(0.005)
        os.environ[pause_env] = pause if paused == role else "0"  # the edge: a test hook
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = main(["evaluate", model, data, "--gate", "--tracking-uri", uri,
                           "--experiment", "race", "--config", config,
                           "--set", f"evaluate.registered_model_name=race-{i}"])
        (folder / f"{role}-{i}.json").write_text(json.dumps({"status": status,
                                                             "result": json.loads(out.getvalue())}))
""")


@pytest.mark.slow
def test_concurrent_gates_never_leave_the_worse_model_as_champion(
        mlflow_server, eval_data, trained_model_path, untrained_model_path, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(tiny_config().with_overrides({"evaluate.promotion_margin_bits": 0.05}).to_yaml())
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    models = {"better": trained_model_path, "worse": untrained_model_path}
    procs = {role: subprocess.Popen(
        [sys.executable, str(script), role, path, str(eval_data), mlflow_server.uri, str(config),
         str(tmp_path), json.dumps(ROUNDS), TEST_PAUSE_ENV, str(PAUSE_S)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ})
        for role, path in models.items()}
    for role, proc in procs.items():
        out, _ = proc.communicate(timeout=1500)
        assert proc.returncode == 0, f"{role} racer failed:\n{out[-3000:]}"

    client = MlflowClient(mlflow_server.uri)
    for i, paused in enumerate(ROUNDS):
        results = {role: json.loads((tmp_path / f"{role}-{i}.json").read_text()) for role in models}
        assert all(r["status"] == 0 for r in results.values())
        better, worse = results["better"]["result"], results["worse"]["result"]
        assert better["bits_per_sample"] < worse["bits_per_sample"] - 0.05
        champion = client.get_model_version_by_alias(f"race-{i}", "champion")
        # The better model is the champion, every round, whoever wrote first.
        assert better["gate"]["promoted"] is True, (paused, better["gate"])
        assert str(champion.version) == better["gate"]["new_version"], (paused, results)
        assert float(champion.tags["eval/bits_per_sample"]) == pytest.approx(
            better["bits_per_sample"], abs=1e-5)
        if paused == "worse":
            # It decided against no champion, then found the better one under the lock.
            assert worse["gate"]["promoted"] is False
            assert worse["gate"]["champion_version"] == better["gate"]["new_version"]
        # The lock is released: no lock model is left in the registry.
        names = [m.name for m in client.search_registered_models()]
        assert f"race-{i}.gate-lock" not in names
