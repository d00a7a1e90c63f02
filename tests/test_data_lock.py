"""One writer per data folder: two real runs at once, pinned manifest versions, a full disk.

The concurrency tests start two real `wavenet preprocess` processes on one data
folder (local, and a bucket on fake-gcs-server, which enforces GCS's generation
preconditions). Each process passes a rendezvous just before it writes shards:
it goes on once the other run has reached the same point, or has said it is
waiting for the folder's lock. So the two merges overlap on every machine,
whatever its speed, and a run that waits is seen waiting.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from wavenet.config import preset
from wavenet.data.manifest import KEEP_VERSIONS, read_manifest, version_files
from wavenet.data.preprocess import check_dataset, merge_manifests, process_partition
from wavenet.data.shards import dataset_from_codes, update_dataset
from wavenet.edges import storage
from wavenet.errors import DataError, StorageError

CFG = preset("tiny")  # crop_length 272 samples at 16 kHz
FILES = 12  # per run


def corpus(root, label: str, base_hz: float, n: int = FILES, seconds: float = 1.0) -> str:
    """``n`` distinct tones under ``root/label/`` (one label per run)."""
    t = np.arange(int(seconds * 16000)) / 16000
    for i in range(n):
        path = os.path.join(root, label, f"{label}-{i:02d}.wav")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sf.write(path, 0.5 * np.sin(2 * np.pi * (base_hz + 17 * i) * t), 16000)
    return str(root)


# Runs the real CLI after installing the rendezvous in front of the shard writer.
RACE = textwrap.dedent("""
    import os, sys, time
    from wavenet.data import shards
    sync, me, other = sys.argv[1:4]
    real, first = shards._write_shards, [True]

    def other_arrived():
        if os.path.exists(os.path.join(sync, other + ".ready")):
            return True
        with open(os.path.join(sync, other + ".err")) as f:
            return "waiting up to" in f.read()  # blocked on the folder's lock

    def rendezvous(*args, **kwargs):
        if first[0]:
            first[0] = False
            open(os.path.join(sync, me + ".ready"), "w").close()
            deadline = time.monotonic() + 300  # only if the other run died
            while not other_arrived() and time.monotonic() < deadline:
                time.sleep(0.05)
        return real(*args, **kwargs)

    shards._write_shards = rendezvous
    from wavenet.cli import main
    sys.exit(main(sys.argv[4:]))
""")


def run_two_at_once(tmp_path, dst: str) -> tuple[dict, dict]:
    """Preprocess two corpora (labels alpha, beta) into ``dst`` at once; {name: (rc, out, err)}."""
    sync = tmp_path / "sync"
    sync.mkdir()
    srcs = {"a": corpus(tmp_path / "src-a", "alpha", 200.0), "b": corpus(tmp_path / "src-b", "beta", 900.0)}
    procs = {}
    for me, other in (("a", "b"), ("b", "a")):
        err = open(sync / f"{me}.err", "w")
        procs[me] = (subprocess.Popen(
            [sys.executable, "-c", RACE, str(sync), me, other, "preprocess", srcs[me], dst,
             "--preset", "tiny", "--processes", "1", "--no-progress"],
            stdout=subprocess.PIPE, stderr=err, text=True), err)
    results = {}
    for me, (proc, err) in procs.items():
        out, _ = proc.communicate(timeout=600)
        err.close()
        results[me] = (proc.returncode, out, (sync / f"{me}.err").read_text())
    return results, srcs


def check_both_kept(results: dict, dst: str, cache_dir: str) -> None:
    from wavenet.data.dataset import train_dataset

    for me, (rc, out, err) in results.items():
        assert rc == 0, f"run {me} exited {rc}: {err[-2000:]}"
        assert f"{FILES} processed" in out, out
    final = read_manifest(dst)
    assert set(final.labels) == {"alpha", "beta"} and len(final.files) == 2 * FILES
    assert check_dataset(dst) == []  # every shard and track it names is there, checksums match
    # Each run's own version is still there, complete, and names its own label.
    for me, (_, out, _) in results.items():
        uri = out.strip().rsplit("this version: ", 1)[1].rstrip(")")
        pinned = read_manifest(uri)
        assert ("alpha" if me == "a" else "beta") in pinned.labels
        assert all(storage.exists(storage.join(dst, s.path)) for s in pinned.shards)
    crops, labels, _ = next(iter(train_dataset(dst, CFG, batch_size=4, cache_dir=cache_dir)))
    assert crops.shape == (4, CFG.crop_length)


def test_two_runs_at_once_on_one_folder_keep_both(tmp_path):
    dst = str(tmp_path / "data")
    results, _ = run_two_at_once(tmp_path, dst)
    check_both_kept(results, dst, str(tmp_path / "cache"))
    # One run held the folder's lock; the other said so, waited, and merged on top of it.
    assert sum("waiting up to" in err for _, _, err in results.values()) == 1, results
    assert os.path.exists(os.path.join(dst, ".wavenet.lock"))


def test_two_runs_at_once_on_one_bucket_keep_both(tmp_path, gcs_cas):
    dst = f"{gcs_cas}/data"
    results, _ = run_two_at_once(tmp_path, dst)
    check_both_kept(results, dst, str(tmp_path / "cache"))
    # No lock on a bucket: both built at once, one lost the compare-and-swap and built again.
    assert sum("building again" in err for _, _, err in results.values()) == 1, results


# -- the lock's refusal, versions, garbage collection -------------------------------------

@pytest.mark.subprocess
def test_a_writer_that_waits_too_long_gives_up_in_one_line_with_exit_138(tmp_path):
    import fcntl

    src, dst = corpus(tmp_path / "src", "alpha", 300.0, n=2), tmp_path / "data"
    dst.mkdir()
    with open(dst / ".wavenet.lock", "w") as held:  # another writer, as the kernel sees it
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 4242 on elsewhere\n")
        held.flush()
        proc = subprocess.run([sys.executable, "-m", "wavenet.cli", "preprocess", src, str(dst),
                               "--preset", "tiny", "--processes", "1", "--no-progress", "--wait", "0.5"],
                              capture_output=True, text=True, timeout=300)
    assert proc.returncode == 138, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "pid 4242 on elsewhere" in lines[0] and str(dst) in lines[0]
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(dst / "manifest.json")


def test_a_pinned_version_outlives_later_runs_until_it_is_dropped(tmp_path):
    dst = str(tmp_path / "data")
    tone = (np.arange(4000) % 256).astype(np.uint8)
    first = dataset_from_codes(dst, CFG, [(tone, "x", "train"), (tone[::-1].copy(), "x", "validation")])
    assert first.uri.startswith(os.path.join(dst, "manifests") + "/")
    for i in range(KEEP_VERSIONS - 1):
        dataset_from_codes(dst, CFG, [(np.roll(tone, i + 1), "x", "train"), (tone, "x", "validation")])
    # Nine later runs committed: the first run still reads its own data, not the live one.
    pinned = read_manifest(first.uri)
    assert pinned == first and read_manifest(dst) != first
    assert check_dataset(dst) == [] and all(os.path.exists(os.path.join(dst, s.path)) for s in pinned.shards)
    dataset_from_codes(dst, CFG, [(np.roll(tone, 99), "x", "train"), (tone, "x", "validation")])
    assert len(version_files(dst)) == KEEP_VERSIONS
    with pytest.raises(DataError, match="manifest version was removed"):
        read_manifest(first.uri)
    named = {s.path for v in version_files(dst) for s in read_manifest(v).shards}
    on_disk = {f"{sp}/{n}" for sp in ("train", "validation") for n in os.listdir(os.path.join(dst, sp))}
    assert on_disk == named  # what no kept version names is gone


def test_a_new_version_sorts_after_one_whose_clock_ran_ahead(tmp_path):
    # Another machine, its clock a year ahead, committed the newest version: ours must
    # still sort after it, or garbage collection would count ours as the oldest.
    dst = str(tmp_path / "data")
    tone = (np.arange(4000) % 256).astype(np.uint8)
    dataset_from_codes(dst, CFG, [(tone, "x", "train"), (tone, "x", "validation")])
    ahead = os.path.join(dst, "manifests", "20991231T235959999999999Z-0123456789ab.json")
    shutil.copy(version_files(dst)[-1], ahead)
    ours = dataset_from_codes(dst, CFG, [(np.roll(tone, 1), "x", "train"), (tone, "x", "validation")])
    assert version_files(dst)[-2:] == [ahead, ours.uri]


def test_bucket_gc_drops_old_versions_files_but_never_an_upload_no_version_names_yet(gcs_cas):
    dst = f"{gcs_cas}/data"
    tone = (np.arange(4000) % 256).astype(np.uint8)
    first = dataset_from_codes(dst, CFG, [(tone, "x", "train"), (tone[::-1].copy(), "x", "validation")])
    in_flight = f"{dst}/train/shard-00000-of-00001-0123456789ab.tfrecord"  # another run's, uncommitted
    storage.write_bytes_atomic(in_flight, b"being written")
    for i in range(KEEP_VERSIONS):
        dataset_from_codes(dst, CFG, [(np.roll(tone, i + 1), "x", "train"), (tone, "x", "validation")])
    assert len(version_files(dst)) == KEEP_VERSIONS and first.uri not in version_files(dst)
    later = {s.path for v in version_files(dst) for s in read_manifest(v).shards}
    assert not any(storage.exists(storage.join(dst, s.path)) for s in first.shards if s.path not in later)
    assert storage.exists(in_flight) and check_dataset(dst) == []


# -- merge checks partial manifests ------------------------------------------------------

@pytest.mark.parametrize("field,value", [("codes", "../../outside.npy"), ("codes", "/etc/passwd"),
                                         ("sha256", "../x")])
def test_merge_refuses_a_partial_that_points_outside_its_folder(tmp_path, field, value):
    src = corpus(tmp_path / "src", "alpha", 300.0, n=1)
    partial = process_partition([os.path.join(src, "alpha", "alpha-00.wav")], str(tmp_path / "work"), CFG,
                                src=src)
    doc = json.load(open(partial))
    doc["records"][0][field] = value
    json.dump(doc, open(partial, "w"))
    with pytest.raises(DataError) as e:
        merge_manifests([partial], str(tmp_path / "data"), CFG)
    assert partial in str(e.value) and f"records[0].{field}" in str(e.value) and "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "data" / "manifest.json")


# -- a full disk ---------------------------------------------------------------------------

@pytest.fixture
def tiny_fs(tmp_path):
    """A real 1 MB file system (tmpfs), mounted for the test and unmounted after it."""
    mnt = tmp_path / "tiny-fs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def files_under(root) -> dict[str, bytes]:
    """Every file's bytes, but the lock file's (it names its last holder)."""
    return {os.path.relpath(os.path.join(d, n), root): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(root) for n in names if n != ".wavenet.lock"}


@pytest.mark.subprocess
def test_preprocessing_onto_a_full_disk_is_one_line_and_changes_nothing(tmp_path, tiny_fs):
    dst = str(tiny_fs / "data")
    small = corpus(tmp_path / "small", "alpha", 300.0, n=2)
    assert subprocess.run([sys.executable, "-m", "wavenet.cli", "preprocess", small, dst, "--preset", "tiny",
                           "--processes", "1", "--no-progress"], capture_output=True).returncode == 0
    before = files_under(dst)
    big = corpus(tmp_path / "big", "beta", 500.0, n=8, seconds=8.0)  # ~1 MB of codes: twice that to write
    proc = subprocess.run([sys.executable, "-m", "wavenet.cli", "preprocess", big, dst, "--preset", "tiny",
                           "--processes", "1", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no space left") and dst in lines[0], proc.stderr
    assert " MB there" in lines[0] and " MB is free" in lines[0]
    print(lines[0])
    assert files_under(dst) == before  # no partial file; the old manifest intact and live
    assert check_dataset(dst) == []


def test_a_disk_that_fills_up_while_writing_leaves_the_old_dataset(tmp_path, tiny_fs):
    dst = str(tiny_fs / "data")
    tone = (np.arange(4000) % 256).astype(np.uint8)
    dataset_from_codes(dst, CFG, [(tone, "x", "train"), (tone, "x", "validation")])
    before = files_under(dst)

    def build(old, writes):  # writes more than the disk holds, after an estimate that fitted
        path = os.path.join(dst, "train", "shard-00000-of-00001-big.tfrecord")
        writes.paths.append(path)
        storage.write_bytes_atomic(path, b"\0" * 2_000_000)
        raise AssertionError("unreachable: the disk is full")

    with pytest.raises(StorageError) as e:
        update_dataset(dst, build)
    assert str(e.value).startswith("no space left") and dst in str(e.value) and "\n" not in str(e.value)
    assert files_under(dst) == before


# -- the shard cache ------------------------------------------------------------------------

def test_the_default_shard_cache_is_private_to_the_user(tmp_path, monkeypatch):
    from wavenet.data.dataset import _private_dir, default_cache_dir

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    path = default_cache_dir()
    assert path.startswith(str(tmp_path)) and str(os.getuid()) in os.path.basename(path)
    assert _private_dir(path, default=True) == path and os.stat(path).st_mode & 0o777 == 0o700
    # A folder others can write (made first by someone else) is never used.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    fresh = _private_dir(str(shared), default=True)
    assert fresh != str(shared) and os.stat(fresh).st_mode & 0o777 == 0o700
    with pytest.raises(StorageError, match="others cannot write"):
        _private_dir(str(shared), default=False)


def test_a_planted_cache_entry_is_not_trusted(tmp_path, gcs_cas):
    from wavenet.data.dataset import local_shard_paths

    dst, cache = f"{gcs_cas}/data", tmp_path / "cache"
    tone = (np.arange(4000) % 256).astype(np.uint8)
    m = dataset_from_codes(dst, CFG, [(tone, "x", "train"), (tone, "x", "validation")])
    cache.mkdir(mode=0o700)
    shard = m.shards_of("train")[0]
    target = tmp_path / "real-shard"
    storage.download_file(storage.join(dst, shard.path), str(target))
    # A link named like the entry, to a file with the right bytes: not followed, replaced.
    os.symlink(target, cache / f"{shard.sha256}.tfrecord")
    [local] = local_shard_paths(dst, "train", cache_dir=str(cache), manifest=m)
    assert not os.path.islink(local) and open(local, "rb").read() == target.read_bytes()
    shutil.rmtree(cache)


# -- later steps read the version their run wrote -----------------------------------------

@pytest.mark.training
def test_train_evaluate_and_generate_read_the_pinned_version_not_the_live_one(tmp_path, monkeypatch, mlflow_db):
    from conftest import tiny_config, write_shard_dataset

    from wavenet.context import RunContext
    from wavenet.evaluate import evaluate
    from wavenet.generation.verb import generate_samples
    from wavenet.train import train

    monkeypatch.chdir(tmp_path)  # a SQLite store keeps artifacts in ./mlruns
    data = str(tmp_path / "data")
    write_shard_dataset(data, tiny_config())
    [mine] = version_files(data)
    # Another run commits three labels to the same folder: the live manifest no longer fits the model.
    write_shard_dataset(data, tiny_config(), labels=["a", "b", "c"])
    assert len(read_manifest(data).labels) == 3 and len(read_manifest(mine).labels) == 2
    cfg, db = tiny_config().with_overrides({"train.steps": 4}), mlflow_db
    result = train(mine, str(tmp_path / "run"), cfg, RunContext(db, progress=False))
    model = os.path.join(result.out_dir, "model.keras")
    scored = evaluate(model, mine, cfg, ctx=RunContext.create(db))
    assert scored["data"] == mine and scored["metrics"]["eval/bits_per_sample"] > 0
    clips = generate_samples(model, str(tmp_path / "samples"), cfg.with_overrides(
        {"generate.num_clips": 2, "generate.seconds": 0.05}), data_dir=mine,
        ctx=RunContext.create(db), progress=False)
    assert [c["label"] for c in clips["clips"]] == ["low", "high"]
    with pytest.raises(DataError, match="labels"):  # the live folder is another dataset now
        train(data, str(tmp_path / "live"), cfg, RunContext(db, progress=False))
