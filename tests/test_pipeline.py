"""The wavenet-train pipeline: compiled IR, submission helpers, images, and a full kfp.local run."""

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from components.images import image_name
from pipelines import kfp_client, run_local, schedule
from pipelines.wavenet_train import MLFLOW_CLIENT_SECRET, PREPROCESS_PARALLELISM, SCRATCH
from wavenet.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "pipelines" / "wavenet-train.yaml"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The pipeline compiled with the default image names, as committed (in a fresh process:
    IMAGE_REGISTRY/IMAGE_TAG are read when components.images is imported)."""
    import subprocess
    import sys

    path = tmp_path_factory.mktemp("ir") / "wavenet-train.yaml"
    env = {k: v for k, v in os.environ.items() if k not in ("IMAGE_REGISTRY", "IMAGE_TAG")}
    subprocess.run([sys.executable, "-m", "pipelines.wavenet_train", str(path)], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def ir(compiled):
    docs = list(yaml.safe_load_all(compiled.read_text()))
    return {"spec": docs[0], "platform": docs[1] if len(docs) > 1 else {}}


def _root_tasks(ir):
    return ir["spec"]["root"]["dag"]["tasks"]


def _component_tasks(ir, name):
    return ir["spec"]["components"][name]["dag"]["tasks"]


def _without_sdk_version(text):
    # A kfp patch release changes only this line.
    return re.sub(r"^sdkVersion: .*$", "", text, flags=re.MULTILINE)


def test_committed_ir_is_what_the_code_compiles_to(compiled):
    assert _without_sdk_version(COMMITTED.read_text()) == _without_sdk_version(compiled.read_text()), \
        "run `make compile` and commit the result"


def test_pipeline_parameters_cover_data_training_cluster_and_mlflow(ir):
    params = ir["spec"]["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {"source_uri", "demo_seconds", "preset", "overrides_yaml", "partitions",
                           "shards_uri", "num_workers", "train_on_cluster",
                           "namespace", "train_image", "gpus_per_worker", "accelerator",
                           "cluster_run_root", "warm_start", "mlflow_tracking_uri",
                           "mlflow_experiment", "generate_if_rejected", "force_train"}
    assert params["train_image"]["defaultValue"] == image_name("gpu", {})
    assert params["train_on_cluster"]["defaultValue"] is False


def test_preprocessing_fans_out_over_partitions_and_merge_collects_them(ir):
    tasks = _root_tasks(ir)
    (loop_name,) = [n for n, t in tasks.items() if "parameterIterator" in t]
    loop = tasks[loop_name]
    items = loop["parameterIterator"]["items"]["inputParameter"]
    assert "list-partitions-Output" in items
    assert loop["iteratorPolicy"]["parallelismLimit"] == PREPROCESS_PARALLELISM
    inner = _component_tasks(ir, loop["componentRef"]["name"])
    assert inner["preprocess-partition"]["componentRef"]["name"] == "comp-preprocess-partition"
    merge_in = tasks["merge-shards"]["inputs"]["artifacts"]["partials"]
    assert merge_in["taskOutputArtifact"]["producerTask"] == loop_name
    assert ir["spec"]["components"]["comp-merge-shards"]["inputDefinitions"]["artifacts"][
        "partials"]["isArtifactList"] is True


def test_samples_are_generated_only_when_promoted_or_asked_for(ir):
    tasks = _root_tasks(ir)
    (branches,) = [t for n, t in tasks.items() if n.startswith("condition-branches")]
    comp = _component_tasks(ir, branches["componentRef"]["name"])
    conditions = sorted(t["triggerPolicy"]["condition"] for t in comp.values())
    assert len(conditions) == 2
    promoted = "inputs.parameter_values['pipelinechannel--evaluate-model-promoted'] == true"
    assert conditions[1] == promoted
    assert conditions[0].startswith(f"!({promoted})") and "generate_if_rejected" in conditions[0]
    for t in comp.values():
        (gen,) = _component_tasks(ir, t["componentRef"]["name"]).values()
        assert gen["componentRef"]["name"].startswith("comp-generate-samples")
        assert gen["inputs"]["artifacts"]["model"]["componentInputArtifact"] == "pipelinechannel--train-model-model"
        # The report shows the gate's decision and scores: the evaluation goes to the samples.
        assert gen["inputs"]["artifacts"]["evaluation"]["componentInputArtifact"] == \
            "pipelinechannel--evaluate-model-evaluation"


def test_training_settings_are_pipeline_parameters_passed_through(ir):
    train = _root_tasks(ir)["train-model"]
    wired = {k: v.get("componentInputParameter") for k, v in train["inputs"]["parameters"].items()}
    assert wired == {**wired, "workers": "num_workers", "gpus_per_worker": "gpus_per_worker",
                     "accelerator": "accelerator", "on_cluster": "train_on_cluster",
                     "namespace": "namespace", "image": "train_image",
                     "cluster_run_root": "cluster_run_root", "tracking_uri": "mlflow_tracking_uri",
                     "experiment": "mlflow_experiment", "force_train": "force_train"}
    assert train["inputs"]["parameters"]["data_version"]["taskOutputParameter"]["producerTask"] == "merge-shards"
    assert train["inputs"]["parameters"]["kfp_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    # The TFJob's name and run folder: the same run and task on every retry of the step.
    assert train["inputs"]["parameters"]["kfp_task"]["runtimeValue"]["constant"] == "{{$.pipeline_task_name}}"


def test_every_step_runs_on_the_project_image_without_installing_kfp(ir):
    executors = ir["spec"]["deploymentSpec"]["executors"]
    # generate-samples appears once per branch of the condition.
    assert set(executors) == {"exec-list-partitions", "exec-preprocess-partition", "exec-merge-shards",
                              "exec-train-model", "exec-evaluate-model", "exec-generate-samples",
                              "exec-generate-samples-2"}
    for name, ex in executors.items():
        c = ex["container"]
        assert c["image"] == image_name("cpu", {}), name
        assert "pip install" not in " ".join(c.get("command", [])), name


def test_caching_is_off_where_inputs_do_not_capture_the_world(ir):
    tasks = _root_tasks(ir)
    for name in ("list-partitions", "train-model", "evaluate-model"):
        assert not tasks[name]["cachingOptions"].get("enableCache"), name
    loop = next(t for t in tasks.values() if "parameterIterator" in t)
    pre = _component_tasks(ir, loop["componentRef"]["name"])["preprocess-partition"]
    assert pre["cachingOptions"]["enableCache"] is True


def test_logging_steps_get_mlflow_credentials_from_an_optional_secret(ir):
    executors = ir["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    with_secret = {n for n, e in executors.items()
                   if any(s["secretName"] == MLFLOW_CLIENT_SECRET and s["optional"]
                          for s in e.get("secretAsEnv", []))}
    assert {"exec-train-model", "exec-evaluate-model", "exec-generate-samples"} <= with_secret
    for e in executors.values():
        for s in e.get("secretAsEnv", []):
            assert {kv["envVar"] for kv in s["keyToEnv"]} == {"MLFLOW_TRACKING_USERNAME",
                                                              "MLFLOW_TRACKING_PASSWORD"}


# -- submission helpers (no KFP server here: the calls stop at kfp.Client) ------------------

def test_arguments_file_is_checked_against_pipeline_parameters(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("source_uri: gs://bucket/music\ntrain_on_cluster: true\noverrides_yaml:\n  train: {steps: 5000}\n")
    args = kfp_client.load_arguments(str(f))
    assert args["train_on_cluster"] is True
    assert yaml.safe_load(args["overrides_yaml"]) == {"train": {"steps": 5000}}
    # A file written before the parameter's rename: one line that says what to rename.
    f.write_text("config_yaml:\n  train: {steps: 5000}\n")
    with pytest.raises(ConfigError, match=r"run.yaml: config_yaml is now called overrides_yaml"):
        kfp_client.load_arguments(str(f))
    f.write_text("source_url: gs://typo\n")
    with pytest.raises(ConfigError, match=r"run.yaml: unknown pipeline parameter 'source_url'"):
        kfp_client.load_arguments(str(f))
    with pytest.raises(ConfigError, match="cannot read arguments file"):
        kfp_client.load_arguments(str(tmp_path / "missing.yaml"))


def test_token_comes_from_the_environment_then_the_service_account(tmp_path):
    sa = tmp_path / "token"
    assert kfp_client.resolve_token({}, str(sa)) is None
    sa.write_text("pod-token\n")
    assert kfp_client.resolve_token({}, str(sa)) == "pod-token"
    assert kfp_client.resolve_token({"KFP_TOKEN": "user-token"}, str(sa)) == "user-token"
    with pytest.raises(ConfigError, match="KFP host is not set"):
        kfp_client.make_client("", "kubeflow", {})


@pytest.mark.parametrize("expr, expected", [
    ("0 3 * * 1", "0 0 3 * * 1"),
    ("30 0 3 * * 1", "30 0 3 * * 1"),
])
def test_cron_expressions_become_kfp_six_field_form(expr, expected):
    assert schedule.normalize_cron(expr) == expected


def test_bad_cron_is_a_one_line_error():
    with pytest.raises(ConfigError, match="5 or 6 fields"):
        schedule.normalize_cron("daily")


def test_submit_without_a_host_fails_in_one_line(capsys, monkeypatch):
    from pipelines import submit

    monkeypatch.delenv("KFP_HOST", raising=False)
    assert submit.main([]) == 2
    assert capsys.readouterr().err.startswith("error: KFP host is not set")


def _closed_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_submit_and_schedule_report_an_unreachable_kfp_in_one_line(capsys, tmp_path):
    from pipelines import submit

    host = f"http://127.0.0.1:{_closed_port()}"
    assert submit.main(["--host", host]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: Kubeflow Pipelines at {host}: ")
    assert schedule.main(["--host", host, "--cron", "0 3 * * *"]) == 1
    assert "Connection refused" in capsys.readouterr().err


def test_run_local_turns_set_flags_into_the_pipelines_yaml_overrides():
    text = run_local.overrides_yaml(["train.steps=12", "model.stacks=2"])
    assert yaml.safe_load(text) == {"train.steps": 12, "model.stacks": 2}
    assert run_local.overrides_yaml([]) == ""


def test_run_local_rejects_a_missing_data_folder_in_one_line(capsys, tmp_path):
    assert run_local.main(["--data", str(tmp_path / "nope"), "--root", str(tmp_path / "r")]) == 2
    assert "--data must be a folder" in capsys.readouterr().err


def test_every_step_pod_mounts_a_scratch_empty_dir(ir):
    """The images run read-only: HOME, TMPDIR and caches live on /scratch (docker/Dockerfile)."""
    executors = ir["platform"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(ir["spec"]["deploymentSpec"]["executors"])
    for name, e in executors.items():
        assert e.get("emptyDirMounts") == [{"mountPath": SCRATCH, "volumeName": "scratch"}], name


def test_k8s_and_the_makefile_name_the_images_of_one_setting():
    docs = list(yaml.safe_load_all((ROOT / "k8s" / "mlflow.yaml").read_text()))
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == image_name("mlflow", {})
    tfjob = yaml.safe_load((ROOT / "k8s" / "tfjob-template.yaml").read_text())
    pod = tfjob["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    assert pod["containers"][0]["image"] == image_name("gpu", {})
    make = (ROOT / "Makefile").read_text()
    for target, repo in (("cpu", "wavenet"), ("gpu", "wavenet-gpu"), ("mlflow", "mlflow")):
        assert f"IMAGE_{target} := $(IMAGE_REGISTRY)/{repo}:$(IMAGE_TAG)" in make


# What a successful run must not print: libraries' start-up and shut-down lines (TensorFlow's
# C++ log lines, MLflow's uv and pip notices), which the steps avoid or the terminal filters.
_NOISE = re.compile(r"^\s*(\[[\w-]+\] )?[IWE]0000 |oneDNN|mlflow\.utils\.(uv_utils|environment)|"
                    r"StartAbort|tasks have crashed|pip version")


def quiet_run_noise(out: str) -> list[str]:
    """The lines of a run's terminal output that are library noise (none, in a quiet run)."""
    return [line for line in out.splitlines() if _NOISE.search(line)]


def test_the_noise_check_finds_what_make_run_printed_before_it_was_quiet():
    before = ["  [train-model] I0000 00:00:1796577375.062438    9660 port.cc:153] oneDNN custom "
              "operations are on.",
              "  [train-model] 2026/12/06 17:22:18 INFO mlflow.utils.uv_utils: Detected uv project",
              "  [train-model] 2026/12/06 17:22:20 WARNING mlflow.utils.environment: Failed to "
              "resolve installed pip version.",
              "    E0000 00:00:1796573503.553585    4995 base_collective_executor.cc:252] "
              "BaseCollectiveExecutor::StartAbort UNAVAILABLE: Error reported from /job:worker/task:1",
              "  [train-model] train step 30/300 (10%) bits 7.817 samples/s 21,707",
              "17:23:00.939 - INFO - Task 'train-model' finished with status SUCCESS"]
    assert quiet_run_noise("\n".join(before)) == before[:4]


# -- the whole pipeline, locally ------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_full_pipeline_runs_locally_then_an_identical_run_reuses_the_registered_model(
        tmp_path, monkeypatch, capsys):
    """`make run` twice on one store: the first trains, gates and generates (and prints
    under 80 lines); the second, identical, reuses the registered model instead of training.
    (--force-train reaching the pipeline is covered by the IR and argument tests; forcing
    training in the library by tests/test_reuse.py.)"""
    import mlflow

    # Every step runs in this folder: MLflow's local artifact store lands here too.
    monkeypatch.chdir(tmp_path)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)

    def run():
        rc = run_local.main(["--preset", "tiny", "--demo-seconds", "4", "--workers", "2",
                             "--root", str(tmp_path / "runs"), "--tracking-uri", uri,
                             "--experiment", "pipeline-test", "--set", "model.num_classes=auto"])
        out = capsys.readouterr().out
        assert rc == 0, out[-3000:]
        return out, run_local.summarize(Path(re.search(r"Outputs under (\S+):", out).group(1)))

    out, summary = run()
    assert len(out.splitlines()) < 60, out
    assert not quiet_run_noise(out), quiet_run_noise(out)
    assert "Got executor_input" not in out and "Downloading artifacts" not in out and re.search(r"full log  \S+run-\d{8}T\d{6}Z\.log", out)
    assert summary["model"] and os.path.getsize(summary["model"]) > 0
    assert summary["promoted"] is True  # the first model of a fresh registry is the champion
    assert re.search(r"gate      promoted: [0-9.]+ bits/sample, no champion yet; now wavenet "
                     r"version 1, the champion", out), out
    assert summary["wavs"], "no WAV files generated"
    assert all(os.path.getsize(w) > 44 for w in summary["wavs"])
    assert summary["report"] and "make ui" in out
    # Conditioned on the demo corpus's three genres (resolved by the merge step): one clip each,
    # and the summary says which genre each clip was asked for.
    assert set(re.findall(r"asked for (\w+), \d+/\d+ calibrated checks passed", out)) == {
        "drums", "organ", "strings"}, out
    manifest = json.loads((Path(summary["shards"]) / "manifest.json").read_text())
    assert manifest["summary"]["processed"] == 3

    exp = client.get_experiment_by_name("pipeline-test")
    # The printed link opens the experiment's comparison view in the UI's model-training view.
    assert (f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?viewStateShareKey="
            "wavenet-compare&workflowType=machine_learning" in out), out
    runs = client.search_runs([exp.experiment_id])
    train_runs = [r for r in runs if re.fullmatch(r"tiny-d[0-9a-f]{8}-\d{4}T\d{6}", r.info.run_name)]
    assert len(train_runs) == 1, [r.info.run_name for r in runs]
    train = train_runs[0]
    assert train.info.run_id == summary["train_run_id"]
    assert train.data.params["train.steps"] == "30" and train.data.params["model.num_classes"] == "3"
    assert "val_bits_per_sample" in train.data.metrics
    assert train.data.tags.get("kfp.run_id")  # the pipeline run it came from
    names = {r.info.run_name for r in runs}
    stamp = train.info.run_name.rsplit("-", 1)[1]
    assert {f"evaluate-{stamp}", f"generate-{stamp}"} <= names, names
    champion = client.get_model_version_by_alias("wavenet", "champion")
    assert champion.run_id in {r.info.run_id for r in runs}

    # The same data, config and seed again: the registered model is reused, not retrained.
    out2, second = run()
    trains = [r for r in client.search_runs([exp.experiment_id])
              if r.data.tags.get("wavenet.stage") == "train"]
    assert len(trains) == 1, "the identical second run trained"
    assert second["train"]["reused"] is True and second["train_run_id"] == summary["train_run_id"]
    # One row per model in the UI: the reused model's evaluation nests under its training run
    # and logs its numbers there, not on a second row.
    evaluations = [r for r in client.search_runs([exp.experiment_id])
                   if r.data.tags.get("wavenet.stage") == "evaluate"]
    assert len(evaluations) == 2
    for e in evaluations:
        assert e.data.tags["mlflow.parentRunId"] == train.info.run_id, e.info.run_name
        assert not [k for k in e.data.metrics if k.startswith("eval/")], e.info.run_name
    assert "train: skipped, wavenet version 1 (run tiny-d" in out2 and "FORCE=1" in out2
    assert "gate      kept: this model is already wavenet version 1, the champion" in out2
    report = Path(second["report"]).read_text()
    assert "· wavenet version 1 (champion)</title>" in report and "class='gate kept'" in report
    assert "reference</b>" in report and "bigram baseline" in report


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_full_pipeline_runs_in_containers_of_the_images(engine, cpu_image, mlflow_image, tmp_path, capsys):
    """`make run-containers`: every step a container of the CPU image (uid 1000, read-only root,
    only the pipeline root and /scratch writable), logging to an MLflow server in the MLflow image
    and writing the shards to a bucket on the GCS emulator, both on 127.0.0.1."""
    import mlflow

    from devtools import run_containers

    root = tmp_path / "runs"
    rc = run_containers.main(["--preset", "tiny", "--demo-seconds", "4", "--workers", "2",
                              "--root", str(root), "--experiment", "containers-test"])
    out = capsys.readouterr().out
    assert rc == 0, out[-5000:]
    assert len(out.splitlines()) < 60 and not quiet_run_noise(out), out
    run_dir = Path(re.search(r"Outputs under (\S+):", out).group(1))
    summary = run_local.summarize(run_dir)
    assert summary["model"] and summary["promoted"] is True and summary["wavs"] and summary["report"]
    assert f"make ui MLFLOW_STORE={root / 'mlflow'}" in out
    # Every file the steps wrote belongs to uid 1000, the images' user (we run as root).
    owners = {p.stat().st_uid for p in run_dir.rglob("*")}
    assert owners == {1000}, owners
    # The shards went to the bucket; the artifact keeps the manifest and points there.
    manifest = json.loads((Path(summary["shards"]) / "manifest.json").read_text())
    assert manifest["summary"]["processed"] == 3
    assert all(s["path"].endswith(".tfrecord") for s in manifest["shards"])
    assert (root / "gcs").is_dir() and any((root / "gcs").rglob("*.tfrecord"))

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("containers-test").experiment_id])
    train = [r for r in runs if r.info.run_id == summary["train_run_id"]][0]
    assert train.data.tags["workers"] == "2" and "val_bits_per_sample" in train.data.metrics
    names = {r.info.run_name for r in runs}
    stamp = train.info.run_name.rsplit("-", 1)[1]
    assert {f"evaluate-{stamp}", f"generate-{stamp}"} <= names
    assert train.info.artifact_uri.startswith("mlflow-artifacts:")
    assert any((root / "mlflow" / "mlartifacts").rglob("model.keras")) or \
        any((root / "mlflow" / "mlartifacts").rglob("*.keras"))
