"""Training in one process: schedule maths, input checks, MLflow contents, loss goes down."""

import json
import math
import os
import signal
import subprocess
import sys

import keras
import mlflow.keras
import numpy as np
import pytest
from conftest import write_shards
from mlflow import MlflowClient

from wavenet.cli import main
from wavenet.config import ExperimentConfig, preset
from wavenet.data.manifest import read_manifest
from wavenet.errors import ConfigError
from wavenet.local_workers import free_ports
from wavenet.model import load_model
from wavenet.train import worker_role
from wavenet.train.schedule import WarmupCosine, learning_rate_at
from wavenet.train.setup import make_optimizer, resolve_jit_compile, resolve_precision


def test_learning_rate_warms_up_then_decays_to_floor():
    t = preset("tiny").train  # lr 3e-3, warmup 5, 30 steps, floor 0.05
    lrs = [learning_rate_at(s, t) for s in range(t.steps)]
    assert lrs[0] == pytest.approx(t.learning_rate / t.warmup_steps)
    assert lrs[t.warmup_steps - 1] == pytest.approx(t.learning_rate)
    assert lrs[t.warmup_steps] == pytest.approx(t.learning_rate)
    assert all(a >= b for a, b in zip(lrs[t.warmup_steps:], lrs[t.warmup_steps + 1:]))
    assert learning_rate_at(t.steps, t) == pytest.approx(t.learning_rate * t.min_lr_ratio)
    # Half-way through the cosine: the mean of peak and floor.
    mid = t.warmup_steps + (t.steps - t.warmup_steps) / 2
    assert learning_rate_at(mid, t) == pytest.approx(t.learning_rate * (1 + t.min_lr_ratio) / 2)


@pytest.mark.subprocess
def test_launchers_never_import_tensorflow():
    """`wavenet train --workers N`, the train component and the TFJob launcher stay light."""
    code = ("import sys; import wavenet.train, wavenet.train.launch, wavenet.train.cluster; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_the_optimizers_schedule_is_the_formula_at_warm_up_peak_and_end():
    """The schedule that drives Adam, read back from the optimizer, against the closed form."""
    t = preset("tiny").train  # lr 3e-3, warmup 5, 30 steps, floor 0.05

    def formula(i):  # linear warm-up, then half a cosine from the peak down to the floor
        if i < t.warmup_steps:
            return t.learning_rate * (i + 1) / t.warmup_steps
        p = min(1.0, (i - t.warmup_steps) / (t.steps - t.warmup_steps))
        return t.learning_rate * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))

    opt = make_optimizer(t, "float32")
    for i in (0, t.warmup_steps - 1, t.warmup_steps, 17, t.steps - 1, t.steps, t.steps + 10):
        opt.iterations.assign(i)
        assert float(opt.learning_rate) == pytest.approx(formula(i), rel=1e-6), i
    assert float(opt.learning_rate) == pytest.approx(t.learning_rate * t.min_lr_ratio, rel=1e-6)
    # Registered with Keras: the schedule round-trips through its serialised form.
    schedule = WarmupCosine.from_train_config(t)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(again, WarmupCosine) and again.get_config() == schedule.get_config()


_DOUBLE_SUM_CHECK = """
import json, numpy as np, tensorflow as tf, keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from wavenet.train.setup import PreReducedAdam
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
g = np.array([0.5, -2.0], np.float32)

def first_moment(cls):
    with strategy.scope():
        v = keras.Variable(np.zeros(2, np.float32))
        opt = cls(learning_rate=0.1, beta_1=0.9)
        opt.build([v])
    # Both replicas hold the same, already all-reduced gradient, as in the training step.
    tf.function(lambda: strategy.run(lambda: opt.apply([tf.constant(g)], [v])))()
    (m,) = [w for w in opt.variables if "momentum" in w.path]
    return (np.asarray(m) / 0.1).tolist()  # m = (1 - beta_1) * applied gradient

print(json.dumps({"adam": first_moment(keras.optimizers.Adam), "pre": first_moment(PreReducedAdam)}))
"""


@pytest.mark.training
def test_pre_reduced_adam_does_not_sum_again():
    """Fails loudly when Keras changes the private method PreReducedAdam overrides.

    Two replicas apply one gradient in a replica context, as the training step
    does. Keras's Adam sums it over the replicas (doubling it); ours must apply
    it as it is. If Keras renames ``_all_reduce_sum_gradients``, ours doubles too;
    if Keras stops summing there, the override is no longer needed.
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", _DOUBLE_SUM_CHECK], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    g = [0.5, -2.0]
    assert got["adam"] == pytest.approx([2 * x for x in g]), \
        "Keras no longer sums gradients in Optimizer.apply: PreReducedAdam's override may go"
    assert got["pre"] == pytest.approx(g), \
        "PreReducedAdam sums pre-reduced gradients again: Keras changed _all_reduce_sum_gradients"


def test_precision_and_xla_resolve_by_device():
    t = preset("tiny").train
    assert resolve_precision(t, has_gpu=True) == "mixed_bfloat16"
    assert resolve_precision(t, has_gpu=False) == "float32"
    assert resolve_jit_compile(t)  # auto: XLA on GPU and on CPU alike
    assert not resolve_jit_compile(t.__class__(jit_compile="off"))
    # YAML reads unquoted on/off as booleans.
    assert preset("tiny").with_overrides({"train.jit_compile": True}).train.jit_compile == "on"


def test_worker_role_from_tf_config():
    assert worker_role(None) == (0, 1, True)
    two = {"cluster": {"worker": ["a:1", "b:2"]}}
    assert worker_role({**two, "task": {"type": "worker", "index": 1}}) == (1, 2, False)
    with_chief = {"cluster": {"chief": ["c:0"], "worker": ["a:1"]}}
    assert worker_role({**with_chief, "task": {"type": "chief", "index": 0}}) == (0, 2, True)
    assert worker_role({**with_chief, "task": {"type": "worker", "index": 0}}) == (1, 2, False)
    with pytest.raises(ConfigError, match="TF_CONFIG task type"):
        worker_role({**two, "task": {"type": "ps", "index": 0}})


def _one_line_error(capsys, argv, code=2):
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == code
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_unreachable_tracking_server_fails_before_training(tiny_shards, tmp_path, capsys, monkeypatch):
    (port,) = free_ports(1)  # free now, so nothing listens there
    out = tmp_path / "run"
    # An outage, not bad input: 138, the operator's "retry" (no retry budget here: at once).
    monkeypatch.setenv("WAVENET_SERVICE_RETRY_S", "0")
    line = _one_line_error(capsys, ["train", str(tiny_shards), "--out", str(out), "--preset", "tiny",
                                    "--tracking-uri", f"http://127.0.0.1:{port}"], code=138)
    assert f"cannot reach MLflow tracking server at http://127.0.0.1:{port}" in line
    assert not out.exists()  # nothing trained, nothing written


def test_fewer_shards_than_workers_is_one_line(tiny_shards, tmp_path, capsys):
    line = _one_line_error(capsys, ["train", str(tiny_shards), "--out", str(tmp_path / "run"),
                                    "--preset", "tiny", "--workers", "4",
                                    "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert "has 2 training shards but training uses 4 workers" in line


def test_global_batch_must_divide_among_workers(tiny_shards, tmp_path, capsys):
    line = _one_line_error(capsys, ["train", str(tiny_shards), "--out", str(tmp_path / "run"),
                                    "--preset", "tiny", "--workers", "2", "--set",
                                    "train.global_batch_size=5",
                                    "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert "train.global_batch_size must be divisible by the number of replicas (2)" in line


def test_training_lowers_loss_and_logs_everything_to_mlflow(tmp_path, mlflow_server, capsys):
    data = write_shards(tmp_path / "data", train_shards=2, examples_per_shard=4, seed=1)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)
    rc = main(["train", str(data), "--out", str(out), "--preset", "tiny", "--no-progress",
               "--tracking-uri", mlflow_server.uri, "--experiment", "test-train-single",
               "--set", "train.ema_decay=0.9"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0
    # The command's SIGTERM handler is gone with it: this process stops on SIGTERM as before.
    assert signal.getsignal(signal.SIGTERM) == before
    cfg = preset("tiny")
    assert summary["steps"] == cfg.train.steps and summary["workers"] == 1
    assert json.loads((out / "train_summary.json").read_text()) == summary
    assert (out / "mlflow_run_id").read_text().strip() == summary["run_id"]

    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("test-train-single")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [summary["run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED"
    flat = cfg.with_overrides({"train.ema_decay": 0.9}).flat()
    assert set(flat) <= set(run.data.params)
    assert run.data.params["model.layers_per_stack"] == "4"
    assert run.data.params["train.ema_decay"] == "0.9"
    assert run.data.tags["preset"] == "tiny" and run.data.tags["workers"] == "1"
    # Lineage: the data version (a digest of the shards' content) names the run, tags it and is
    # the digest of the MLflow dataset input; the experiment opens in MLflow's model-training view.
    version = read_manifest(str(data)).data_version
    assert run.data.tags["data.version"] == version == summary["data_version"]
    assert run.info.run_name.startswith(f"tiny-d{version[:8]}-")
    [dataset_input] = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == version and dataset_input.dataset.source_type == "local"
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"

    history = client.get_metric_history(run.info.run_id, "train_bits_per_sample")
    steps = [m.step for m in history]
    assert steps == list(range(cfg.train.log_every, cfg.train.steps + 1, cfg.train.log_every))
    bits = [m.value for m in history]
    # The summary's train figure is MLflow's last one: the mean over the same log window.
    assert summary["train_bits_per_sample"] == pytest.approx(bits[-1], rel=1e-6)
    # A uniform guess costs log2(256) = 8 bits; the periodic data is far more
    # predictable, and 30 steps must already have learnt some of that.
    assert bits[0] > 7.8 and bits[-1] < bits[0] - 0.1, bits
    val = client.get_metric_history(run.info.run_id, "val_bits_per_sample")
    assert [m.step for m in val] == [10, 20, 30]
    assert val[-1].value < 8.0 - 0.1
    lrs = client.get_metric_history(run.info.run_id, "learning_rate")
    assert lrs[-1].value == pytest.approx(learning_rate_at(cfg.train.steps - 1, cfg.train), rel=1e-6)
    for key in ("grad_norm", "samples_per_s", "step_time_s"):
        assert all(math.isfinite(m.value) and m.value > 0
                   for m in client.get_metric_history(run.info.run_id, key))

    local = load_model(str(out / "model.keras"))
    logged = mlflow.keras.load_model(summary["model_uri"])
    codes = np.random.default_rng(0).integers(0, 256, size=(2, 64)).astype("int32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logged(codes)),
                               keras.ops.convert_to_numpy(local(codes)), atol=1e-6)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "train_summary.json"} <= artifacts

    # Re-running the finished command trains and logs nothing more, and keeps one run.
    rc = main(["train", str(data), "--out", str(out), "--preset", "tiny", "--no-progress",
               "--tracking-uri", mlflow_server.uri, "--experiment", "test-train-single",
               "--set", "train.ema_decay=0.9"])
    again = json.loads(capsys.readouterr().out)
    assert rc == 0 and again == summary
    assert len(client.search_runs([exp.experiment_id])) == 1
    assert len(client.get_metric_history(run.info.run_id, "val_bits_per_sample")) == 3


@pytest.mark.training
def test_warm_start_begins_from_the_given_models_weights(tiny_shards, tmp_path, capsys, mlflow_db):
    db = mlflow_db
    common = ["--preset", "tiny", "--no-progress", "--tracking-uri", db]

    def run(out, *extra):
        rc = main(["train", str(tiny_shards), "--out", str(tmp_path / out), *common, *extra])
        assert rc == 0
        return json.loads(capsys.readouterr().out)

    def weights(out):
        return load_model(str(tmp_path / out / "model.keras")).get_weights()

    first = run("first", "--steps", "10")
    # A learning rate of ~0 keeps whatever the run starts from: the warm run must
    # end where the first one ended, a cold one where fresh weights are.
    frozen = ["--steps", "2", "--set", "train.learning_rate=1e-12", "--set", "train.warmup_steps=0"]
    run("warm", *frozen, "--init-model", first["model_uri"])
    run("cold", *frozen)
    trained, warm, cold = weights("first"), weights("warm"), weights("cold")
    assert max(np.max(np.abs(a - b)) for a, b in zip(trained, warm)) < 1e-6
    assert max(np.max(np.abs(a - b)) for a, b in zip(trained, cold)) > 1e-3
    # The MLflow model was resolved once into the run folder, and the run says where from.
    assert (tmp_path / "warm" / "init_model.keras").exists()
    warm_run = MlflowClient(db).get_run((tmp_path / "warm" / "mlflow_run_id").read_text().strip())
    assert warm_run.data.tags["warm_start"] == str(tmp_path / "warm" / "init_model.keras")

    # Another architecture cannot take these weights: one line, before training.
    rc = main(["train", str(tiny_shards), "--out", str(tmp_path / "wide"), *common, "--steps", "1",
               "--set", "model.residual_channels=16", "--init-model",
               str(tmp_path / "first" / "model.keras")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"error: cannot warm start from {tmp_path / 'first' / 'model.keras'}: "
                             "its model config differs")


def test_injected_noise_is_reproducible_and_changes_what_the_network_learns(
        tiny_shards, tmp_path, capsys, mlflow_db):
    """train.input_noise perturbs the codes the network reads, the same way for the same seed."""
    def weights(out, *extra):
        rc = main(["train", str(tiny_shards), "--out", str(tmp_path / out), "--preset", "tiny",
                   "--no-progress", "--tracking-uri", mlflow_db, "--steps", "3", *extra])
        assert rc == 0
        capsys.readouterr()
        return load_model(str(tmp_path / out / "model.keras")).get_weights()

    noisy = ["--set", "train.input_noise=2"]
    a, b, clean = weights("a", *noisy), weights("b", *noisy), weights("clean")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert max(np.max(np.abs(x - y)) for x, y in zip(a, clean)) > 1e-4


def test_workers_need_a_file_to_warm_start_from(tiny_shards, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    line = _one_line_error(capsys, ["train", str(tiny_shards), "--out", str(tmp_path / "run"),
                                    "--preset", "tiny", "--worker", "--init-model",
                                    "models:/wavenet@champion",
                                    "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert "--worker reads --init-model as a .keras path" in line
    assert "Received: init_model='models:/wavenet@champion'" in line


@pytest.mark.training
@pytest.mark.parametrize("labels, classes", [(("a", "b"), 2), (("solo",), 0)])
def test_num_classes_auto_is_resolved_from_the_datas_labels(tmp_path, capsys, labels, classes, mlflow_db):
    # `wavenet train` resolves model.num_classes "auto" as the pipeline's merge step does.
    data = write_shards(tmp_path / "data", labels=labels)
    out = tmp_path / "run"
    rc = main(["train", str(data), "--out", str(out), "--preset", "tiny", "--no-progress",
               "--tracking-uri", mlflow_db, "--set", "train.steps=2",
               "--set", "model.num_classes=auto"])
    capsys.readouterr()
    assert rc == 0
    saved = ExperimentConfig.from_yaml((out / "config.yaml").read_text())
    assert saved.model.num_classes == classes
    model = load_model(str(out / "model.keras"))
    assert model.config.num_classes == classes
    assert model.labels == (tuple(labels) if classes else None)
