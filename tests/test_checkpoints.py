"""Checkpoints in a gs:// run directory go through wavenet.edges.storage (a real GCS emulator)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from wavenet.checkpoints import STATE_FILE, CheckpointStore, MirroringManager, latest_in_state
from wavenet.edges import storage

BUCKET = "wavenet-ckpt"


def _names(prefix):
    return sorted(u.rsplit("/", 1)[-1] for u in storage.list_files(prefix))


def _manager(directory, keep=2):
    import tensorflow as tf

    v = tf.Variable(0.0)
    store = CheckpointStore(directory)
    latest = store.fetch_latest()
    ckpt = tf.train.Checkpoint(v=v)
    if latest:
        ckpt.restore(latest).assert_existing_objects_matched()
    mgr = MirroringManager(tf.train.CheckpointManager(ckpt, store.local_dir, max_to_keep=keep), store,
                           publish=True)
    return v, store, latest, mgr


def test_state_file_names_the_latest_checkpoint():
    text = 'model_checkpoint_path: "ckpt-30"\nall_model_checkpoint_paths: "ckpt-20"\n' \
           'all_model_checkpoint_paths: "ckpt-30"\n'
    assert latest_in_state(text) == "ckpt-30"
    assert latest_in_state("") is None


def test_bucket_checkpoints_mirror_keep_and_restore(gcs):
    directory = f"{gcs}/run-a/checkpoints"
    v, store, latest, mgr = _manager(directory)
    assert latest is None and store.local_dir != directory and os.path.isdir(store.local_dir)
    for step in (1, 2, 3):
        v.assign(float(step * 10))
        mgr.save(checkpoint_number=step)
    names = _names(directory)
    # max_to_keep=2: ckpt-1 is gone from the bucket too; the state file names ckpt-3.
    assert {n.split(".")[0] for n in names} == {"ckpt-2", "ckpt-3", STATE_FILE}, names
    assert latest_in_state(storage.read_text(f"{directory}/{STATE_FILE}")) == "ckpt-3"

    # A new process (fresh local folder) restores ckpt-3 from the bucket alone.
    v2, store2, latest2, mgr2 = _manager(directory)
    assert store2.local_dir != store.local_dir
    assert latest2 == os.path.join(store2.local_dir, "ckpt-3") and float(v2.numpy()) == 30.0
    v2.assign(40.0)
    mgr2.save(checkpoint_number=4)
    assert {n.split(".")[0] for n in _names(directory)} == {"ckpt-3", "ckpt-4", STATE_FILE}


def test_a_state_file_naming_a_missing_checkpoint_restores_nothing(gcs, tmp_path):
    directory = f"{gcs}/run-b/checkpoints"
    storage.write_text_atomic(f"{directory}/{STATE_FILE}", 'model_checkpoint_path: "ckpt-9"\n')
    assert CheckpointStore(directory).fetch_latest() is None
    local = tmp_path / "checkpoints"
    local.mkdir()
    (local / STATE_FILE).write_text('model_checkpoint_path: "ckpt-9"\n')
    assert CheckpointStore(str(local)).fetch_latest() is None


def test_a_local_directory_is_used_as_it_is(tmp_path):
    directory = str(tmp_path / "checkpoints")
    v, store, latest, mgr = _manager(directory)
    assert store.local_dir == directory and latest is None
    v.assign(7.0)
    mgr.save(checkpoint_number=5)
    assert CheckpointStore(directory).fetch_latest() == os.path.join(directory, "ckpt-5")


def _bucket_step(uri):
    state = f"{uri}/checkpoints/{STATE_FILE}"
    if not storage.exists(state):
        return 0
    return int(latest_in_state(storage.read_text(state)).rsplit("-", 1)[1])


@pytest.mark.slow
def test_killed_training_resumes_from_the_bucket(gcs, tiny_shards, tmp_path):
    """`wavenet train --out gs://...`: checkpoints land in the bucket; SIGKILL; the re-run resumes."""
    out = f"{gcs}/runs/killed"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for key in ("TF_CONFIG", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(key, None)
    argv = [sys.executable, "-m", "wavenet.cli", "train", str(tiny_shards), "--out", out, "--preset",
            "tiny", "--steps", "400", "--no-progress", "--tracking-uri",
            f"sqlite:///{tmp_path}/m.db", "--set", "train.checkpoint_every=10"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while _bucket_step(out) < 20 and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint reached the bucket"
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = _bucket_step(out)
    assert killed_at >= 20 and not storage.exists(f"{out}/model.keras")

    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["start_step"] >= killed_at and summary["steps"] == 400
    assert summary["model_path"] == f"{out}/model.keras" and storage.exists(summary["model_path"])
    assert _bucket_step(out) == 400
    # Nothing went through a local folder named after the bucket (TensorFlow's GCS file
    # system is not used; a gs:// path mistaken for a local one would land here).
    assert not os.path.exists("gs:")
