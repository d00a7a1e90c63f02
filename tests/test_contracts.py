"""Contracts: audio settings, label ids, shard integrity, the gs:// cache, manifest paths, and
which way the code's imports point (the layers)."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import shutil
import sqlite3

import pytest
from conftest import ROOT, copy_tree, run_gcs_emulator, write_shards

from wavenet.cli import main
from wavenet.config import preset
from wavenet.data.dataset import local_shard_paths
from wavenet.data.demo import make_demo_corpus
from wavenet.data.manifest import MANIFEST, Manifest, read_manifest
from wavenet.data.preprocess import preprocess
from wavenet.edges import storage
from wavenet.errors import DataError

BUCKET = "contracts-test"


def _one_line_error(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _train_argv(data, tmp_path, *sets):
    argv = ["train", str(data), "--out", str(tmp_path / "run"), "--preset", "tiny",
            "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    for s in sets:
        argv += ["--set", s]
    return argv


def _runs_in(db) -> int:
    if not os.path.exists(db):
        return 0
    with sqlite3.connect(db) as c:
        return c.execute("select count(*) from runs").fetchone()[0]


# -- audio settings ---------------------------------------------------------------------------

def test_training_refuses_another_sample_rate_naming_both(tiny_shards, tmp_path, capsys):
    line = _one_line_error(capsys, _train_argv(tiny_shards, tmp_path, "audio.sample_rate=22050"))
    made = read_manifest(str(tiny_shards)).audio.sample_rate
    assert "audio.sample_rate=22050" in line and f"audio.sample_rate={made}" in line
    assert str(tiny_shards / MANIFEST) in line
    assert not (tmp_path / "run").exists()


def test_256_level_shards_with_a_16_level_model_is_one_line(tiny_shards, tmp_path, capsys):
    line = _one_line_error(capsys, _train_argv(tiny_shards, tmp_path, "audio.quantization_channels=16",
                                               "model.quantization_channels=16"))
    assert "audio.quantization_channels=16" in line and "audio.quantization_channels=256" in line


def test_evaluation_refuses_a_model_made_for_other_audio(trained_model_path, tmp_path, capsys):
    # The same codes, recorded as made at 22050 Hz: the 16 kHz model must not score them.
    data = write_shards(tmp_path / "data")
    m = json.loads((data / MANIFEST).read_text())
    m["audio"]["sample_rate"] = 22050
    (data / MANIFEST).write_text(json.dumps(m))
    line = _one_line_error(capsys, ["evaluate", trained_model_path, str(data), "--preset", "tiny",
                                    "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert "audio.sample_rate=16000" in line and "audio.sample_rate=22050" in line
    assert _runs_in(tmp_path / "m.db") == 0


# -- labels keep their ids ------------------------------------------------------------------------

def test_adding_a_genre_keeps_the_old_label_ids(tmp_path):
    src, dst = tmp_path / "src", str(tmp_path / "dst")
    cfg = preset("tiny")
    make_demo_corpus(str(src), seconds_per_genre=2.0)
    first = preprocess(str(src), dst, cfg, processes=1, progress=False)
    assert first.labels == ("drums", "organ", "strings")
    shutil.copytree(src / "organ", src / "extra")  # a new genre, sorting between the old ones
    for f in (src / "extra").iterdir():
        f.write_bytes(f.read_bytes() + b"\0")  # other content, so other tracks
    second = preprocess(str(src), dst, cfg, processes=1, progress=False)
    assert second.labels == ("drums", "organ", "strings", "extra")
    ids = {t.relpath: t.label_id for t in second.files}
    assert {r: i for r, i in ids.items() if not r.startswith("extra/")} == \
        {t.relpath: t.label_id for t in first.files}


# -- shard integrity ------------------------------------------------------------------------------

def test_flipped_bytes_in_a_shard_are_named_before_training(tiny_shards, tmp_path, capsys):
    data = copy_tree(tiny_shards, tmp_path / "data")
    shard = data / read_manifest(str(data)).shards_of("train")[0].path
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    line = _one_line_error(capsys, _train_argv(data, tmp_path))
    assert f"{shard}: sha256 mismatch (manifest says" in line
    assert f"file has {hashlib.sha256(bytes(raw)).hexdigest()}" in line
    assert _runs_in(tmp_path / "m.db") == 0


def test_a_missing_shard_leaves_no_mlflow_run(tiny_shards, tmp_path, capsys):
    data = copy_tree(tiny_shards, tmp_path / "data")
    shard = data / read_manifest(str(data)).shards_of("train")[1].path
    shard.unlink()
    line = _one_line_error(capsys, _train_argv(data, tmp_path))
    assert f"{shard}: shard missing" in line
    assert _runs_in(tmp_path / "m.db") == 0


def test_a_valid_shard_of_other_data_is_caught_by_evaluation(trained_model_path, eval_data, tmp_path,
                                                              capsys):
    data = copy_tree(eval_data, tmp_path / "data")
    other = write_shards(tmp_path / "other", seed=7)
    mine = data / read_manifest(str(data)).shards_of("validation")[0].path
    shutil.copyfile(other / read_manifest(str(other)).shards_of("validation")[0].path, mine)
    line = _one_line_error(capsys, ["evaluate", trained_model_path, str(data), "--preset", "tiny",
                                    "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert f"{mine}: sha256 mismatch" in line
    assert _runs_in(tmp_path / "m.db") == 0


# -- manifest paths and the gs:// cache -------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("shards[0].path", "/etc/passwd"),
    ("shards[0].path", "../outside/shard.tfrecord"),
    ("shards[0].path", "gs://other-bucket/shard.tfrecord"),
    ("shards[0].sha256", "../../../../outside/pwn"),
    ("files[0].codes", "tracks/../../x.npy"),
])
def test_manifest_paths_stay_inside_data(tiny_shards, field, value):
    d = json.loads((tiny_shards / MANIFEST).read_text())
    key, _, attr = field.partition(".")
    name, index = key.rstrip("]").split("[")
    d[name][int(index)][attr] = value
    with pytest.raises(DataError, match=r"^manifest: " + field.replace("[", r"\[").replace("]", r"\]")):
        Manifest.from_dict(d)


@pytest.fixture
def bucket_data(tiny_shards, monkeypatch):
    with run_gcs_emulator(BUCKET) as url:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
        dst = f"gs://{BUCKET}/data"
        for f in sorted(tiny_shards.rglob("*")):
            if f.is_file():
                storage.write_bytes_atomic(f"{dst}/{f.relative_to(tiny_shards)}", f.read_bytes())
        yield dst


def test_a_hostile_digest_writes_nothing_outside_the_cache(bucket_data, tmp_path):
    m = read_manifest(bucket_data)
    bad = dataclasses.replace(m.shards_of("train")[0], sha256="../../../../outside/pwn")
    cache = tmp_path / "a" / "b" / "c" / "cache"
    with pytest.raises(DataError, match="must be a sha256 hex digest"):
        local_shard_paths(bucket_data, "train", str(cache), dataclasses.replace(m, shards=(bad,)))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert not (tmp_path / "outside").exists()


def test_a_planted_cache_entry_is_rehashed_and_replaced(bucket_data, tmp_path):
    m = read_manifest(bucket_data)
    shard = m.shards_of("train")[0]
    cache = tmp_path / "cache"
    cache.mkdir()
    planted = cache / f"{shard.sha256}.tfrecord"
    planted.write_bytes(b"planted by someone else")
    (path,) = local_shard_paths(bucket_data, "train", str(cache),
                                dataclasses.replace(m, shards=(shard,)))
    assert path == str(planted)
    assert hashlib.sha256(planted.read_bytes()).hexdigest() == shard.sha256
    assert [p.name for p in cache.iterdir()] == [planted.name]  # no temp file left


# -- the layers: imports point one way (docs/contributing.md, "The code's layers") ------------

# Top-level packages each floor must never import. devtools/ is the top floor: tooling that may
# import everything below it, and nothing ships it (the images copy wavenet, components and
# pipelines only), so a pipeline, component or library module importing it would break there.
FORBIDDEN_IMPORTS = {
    "wavenet": {"kfp", "components", "pipelines", "devtools"},
    "components": {"pipelines", "devtools"},
    "pipelines": {"devtools"},
}


def imports_breaking_the_layers(root) -> list[str]:
    """``path:line: module`` for every import (top-level or inside a function) of a package the
    floor's folder must not import; relative imports stay inside their own package."""
    found = []
    for floor, forbidden in FORBIDDEN_IMPORTS.items():
        for path in sorted((root / floor).rglob("*.py")):
            found += [f"{path.relative_to(root)}:{line}: {n}" for line, n in absolute_imports(path)
                      if n.split(".")[0] in forbidden]
    return found


def absolute_imports(path):
    """``(line, module)`` of every absolute import in the file at ``path``, inside functions too."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def test_imports_point_down_the_floors():
    assert imports_breaking_the_layers(ROOT) == []


def test_the_layer_check_sees_an_import_inside_a_function(tmp_path):
    for floor in FORBIDDEN_IMPORTS:
        (tmp_path / floor).mkdir()
    (tmp_path / "pipelines" / "run.py").write_text("def f():\n    from devtools import containers\n")
    (tmp_path / "wavenet" / "x.py").write_text("import kfp.dsl\nfrom . import y\n")
    assert imports_breaking_the_layers(tmp_path) == ["wavenet/x.py:1: kfp.dsl",
                                                     "pipelines/run.py:2: devtools"]


# -- the edges: one module per outside service (wavenet/edges/__init__.py) --------------------

# The client of each outside service, and the only modules of wavenet/ that may import it.
EDGE_IMPORTS = {
    "mlflow": {"wavenet/edges/tracking.py", "wavenet/edges/registry.py"},
    "google.cloud": {"wavenet/edges/storage.py"},
    "kubernetes": {"wavenet/edges/tfjob.py"},
}


def imports_past_the_edges(root) -> list[str]:
    """``path:line: module`` for every import (top-level or inside a function) of a service's
    client by a module of ``wavenet/`` that is not that service's edge."""
    found = []
    for path in sorted((root / "wavenet").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        found += [f"{rel}:{line}: {n}" for line, n in absolute_imports(path)
                  for client, edges in EDGE_IMPORTS.items()
                  if (n == client or n.startswith(client + ".")) and rel not in edges]
    return found


def test_only_the_edges_import_the_services_clients():
    assert imports_past_the_edges(ROOT) == []


def test_the_edge_check_sees_a_client_imported_elsewhere(tmp_path):
    (tmp_path / "wavenet" / "edges").mkdir(parents=True)
    (tmp_path / "wavenet" / "edges" / "storage.py").write_text("from google.cloud import storage\n")
    (tmp_path / "wavenet" / "model.py").write_text("def f():\n    import mlflow.keras\n")
    (tmp_path / "wavenet" / "edges" / "tracking.py").write_text("import kubernetes.client\n")
    assert imports_past_the_edges(tmp_path) == ["wavenet/edges/tracking.py:1: kubernetes.client",
                                                "wavenet/model.py:2: mlflow.keras"]
