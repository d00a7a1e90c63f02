"""The components. Bodies import inside (KFP ships each body on its own) and stay thin.

The first step resolves the pipeline's ``preset`` and ``overrides_yaml``
once and writes the whole config (``cfg.to_yaml()``) to its ``config`` artifact;
every later step reads it from there. (An artifact, not a string parameter:
kfp.local 2.17 hands a ParallelFor body the producer's "Output" for any of its
parameters.)

Artifacts between stages:
``list_partitions`` -> audio (Dataset) + partitions (JSON lists of file names) + config ->
``preprocess_partition`` (one per partition, in a ParallelFor) -> partial (Dataset) ->
``merge_shards`` (Collected partials) -> shards (Dataset) + data version + the config
resolved against the data (``model.num_classes``/``score_channels: auto``) ->
``train_model`` (or the registered model of an identical earlier run) -> model (Model) +
metrics -> ``evaluate_model`` -> promoted (bool) + metrics + evaluation ->
``generate_samples`` (model, evaluation) -> samples (Artifact) + report (HTML).
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.images import WAVENET_IMAGE

# The image already has kfp (a dependency of the package): no pip install at start-up.
_COMMON = {"base_image": WAVENET_IMAGE, "install_kfp_package": False}


@dsl.component(**_COMMON)
def list_partitions(source_uri: str, preset: str, overrides_yaml: str, partitions: int,
                    demo_seconds: float, audio: Output[Dataset],
                    config: Output[Artifact]) -> list[str]:
    """Resolve the config, list the input audio and split it into partitions.

    Args:
        source_uri: folder or gs:// prefix with audio; empty: synthesise the demo corpus
            into ``audio``.
        preset: config preset.
        overrides_yaml: YAML overrides of the preset (nested or dotted keys).
        partitions: how many preprocessing tasks to fan out to (at most one per file).
        demo_seconds: seconds of demo audio per genre (0: the corpus default).
        audio: the audio root (the demo corpus itself, or a pointer to ``source_uri``).
        config: the resolved config as a YAML file (``cfg.to_yaml()``), for every later step.

    Returns:
        One JSON list of file names (relative to the audio root) per partition (the
        "Output" a ParallelFor iterates: kfp.local iterates only over that name).
    """
    import json
    import os

    from components import runtime
    from wavenet.config import overrides_from_yaml, resolve_config
    from wavenet.data.preprocess import list_audio, partition
    from wavenet.errors import DataError

    cfg = resolve_config(preset, overrides=overrides_from_yaml(overrides_yaml))
    os.makedirs(audio.path, exist_ok=True)
    if source_uri:
        root = source_uri
        # The artifact records where the audio is; the audio stays where it is.
        with open(os.path.join(audio.path, "source.json"), "w") as f:
            json.dump({"source_uri": source_uri}, f)
        audio.metadata["source_uri"] = source_uri
    else:
        from wavenet.data.demo import make_demo_corpus

        kwargs = {"seconds_per_genre": demo_seconds} if demo_seconds > 0 else {}
        make_demo_corpus(audio.path, seed=cfg.train.seed, **kwargs)
        root = audio.path
        audio.metadata["source_uri"] = ""
    names = runtime.relative_names(root, list_audio(root))
    if not names:
        raise DataError(f"no audio files found under {root}")
    audio.metadata["files"] = len(names)
    parts = [p for p in partition(names, max(1, min(partitions, len(names)))) if p]
    os.makedirs(os.path.dirname(config.path), exist_ok=True)
    with open(config.path, "w") as f:
        f.write(cfg.to_yaml())
    return [json.dumps(p) for p in parts]


@dsl.component(**_COMMON)
def preprocess_partition(audio: Input[Dataset], partition: str, config: Input[Artifact],
                         shards_uri: str, partial: Output[Dataset]):
    """Decode, resample and mu-law encode one partition's files into a partial manifest.

    With ``shards_uri`` (a persistent shards location from earlier runs), files whose
    content is already there are reported unchanged instead of being decoded again.
    """
    import json
    import os

    from components import runtime
    from wavenet.data.preprocess import process_partition

    names = json.loads(partition)
    root = audio.metadata.get("source_uri") or audio.path
    files = [runtime.join_root(root, n) for n in names]
    os.makedirs(partial.path, exist_ok=True)
    manifest = process_partition(files, partial.path, runtime.load_config(config.path), src=root,
                                 dst=shards_uri or None)
    # Relative: a later step sees this artifact at its own local path.
    partial.metadata.update({"manifest": os.path.relpath(manifest, partial.path),
                             "files": len(files)})


@dsl.component(**_COMMON)
def merge_shards(partials: Input[list[Dataset]], config: Input[Artifact], shards_uri: str,
                 shards: Output[Dataset], data_config: Output[Artifact]) -> str:
    """Merge the partial manifests into TFRecord shards + manifest.json.

    With ``shards_uri`` the shards are (re)written there, old tracks included, and the
    artifact keeps a copy of the manifest with ``data_dir`` pointing at the manifest
    version this run committed (``SHARDS_URI/manifests/<version>.json``): later steps
    read exactly this run's data, whatever another run commits to ``shards_uri`` meanwhile.
    ``data_config`` is the config resolved against the data (``model.num_classes: auto``
    becomes the number of labels, ``model.score_channels: auto`` a width when the tracks
    have scores: this is the first step that knows them), for every later step.

    Returns:
        The data version: a digest of the shards' sha256s.
    """
    import json
    import os

    from components import runtime
    from wavenet.config import resolve_auto
    from wavenet.data.preprocess import merge_manifests
    from wavenet.edges import storage

    paths = sorted(os.path.join(p.path, p.metadata["manifest"]) for p in partials)
    os.makedirs(shards.path, exist_ok=True)
    cfg = runtime.load_config(config.path)
    manifest = merge_manifests(paths, shards_uri or shards.path, cfg)
    os.makedirs(os.path.dirname(data_config.path), exist_ok=True)
    storage.write_text_atomic(data_config.path, resolve_auto(cfg, manifest.labels, manifest.scored).to_yaml())
    if shards_uri:
        # A copy of the manifest keeps lineage in the artifact store.
        storage.write_text_atomic(os.path.join(shards.path, "manifest.json"),
                                  json.dumps(manifest.to_dict()))
        shards.metadata["data_dir"] = manifest.uri
    version = manifest.data_version
    shards.metadata.update({"data_version": version, "shards": len(manifest.shards),
                            **runtime.numeric_metrics(manifest.to_dict()["summary"], "summary.")})
    return version


@dsl.component(**_COMMON)
# The user's pipeline parameters and KFP's artifacts, as the KFP UI shows them (kfp.dsl reads the
# signature); the body makes one RunContext and one ClusterSettings of them at once
# (runtime.train_context, runtime.cluster_settings). # params: pipeline parameters (see above).
def train_model(shards: Input[Dataset], data_version: str, config: Input[Artifact], workers: int,
                on_cluster: bool, namespace: str, image: str, gpus_per_worker: int,
                accelerator: str, cluster_run_root: str, warm_start: bool, tracking_uri: str,
                experiment: str, kfp_run_id: str, model: Output[Model],
                metrics: Output[Metrics], force_train: bool = False, kfp_task: str = "") -> str:
    """Train with MultiWorkerMirroredStrategy (local worker processes, or a TFJob), or reuse.

    When a registered model version was trained on the same data, config and seed
    (its ``wavenet.train_key``, :mod:`wavenet.reuse`), that model is handed on
    instead, unless ``force_train``.

    Args:
        workers: worker processes (local) or Worker replicas (TFJob).
        on_cluster: run as a Kubeflow TFJob in ``namespace`` (GPU pods from ``image``).
        gpus_per_worker: ``nvidia.com/gpu`` per Worker pod (0: CPU pods).
        accelerator: node selector value for the accelerator type (empty: any GPU node).
        cluster_run_root: gs:// prefix where TFJob pods write the run (model, checkpoints).
        warm_start: start a new run from the registered champion's weights (when a
            champion exists and has this run's architecture; otherwise from scratch).
        tracking_uri: MLflow tracking URI (empty: $MLFLOW_TRACKING_URI, else ./mlflow.db).
        experiment: MLflow experiment.
        kfp_run_id: the pipeline run's id, tagged on the MLflow run (``kfp.run_id``).
        force_train: train even when a registered version has this run's train key.
        kfp_task: this task's name in the run (``dsl.PIPELINE_TASK_NAME_PLACEHOLDER``): with
            ``kfp_run_id`` it names the TFJob and its run folder, the same on every retry of
            this step, which adopts the job or resumes from its checkpoint.

    Returns:
        The MLflow run id of the training run (of the reused model's run when reused).
    """
    import sys

    from components import runtime

    runtime.quiet_logs()  # before the library loads TensorFlow
    from wavenet.errors import Interrupted
    from wavenet.reuse import train_or_reuse

    cfg = runtime.load_config(config.path)
    ctx, warm_line = runtime.train_context(cfg, shards, data_version, tracking_uri, experiment,
                                           kfp_run_id, warm_start=warm_start)
    cluster = runtime.cluster_settings(namespace, image, workers, gpus_per_worker, accelerator,
                                       cluster_run_root) if on_cluster else None
    data, train_fn = runtime.training(cfg, ctx, shards, model.path, workers=workers, cluster=cluster,
                                      labels={"wavenet/data-version": data_version[:63]},
                                      job_key=(kfp_run_id, kfp_task) if kfp_run_id else ())
    try:
        result = train_or_reuse(train_fn, data, model.path, cfg, force=force_train,
                                tracking_uri=ctx.tracking_uri, init_model=ctx.init_model)
    except Interrupted as e:  # SIGTERM while a TFJob ran (and was deleted): one line, exit 143
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    model.metadata.update(runtime.model_metadata(result, ctx, cfg, data_version, warm_line,
                                                 on_cluster=on_cluster))
    for k, v in runtime.numeric_metrics(result.summary).items():
        metrics.log_metric(k, v)
    return result.run_id or ""


@dsl.component(**_COMMON)
def evaluate_model(model: Input[Model], shards: Input[Dataset], config: Input[Artifact], tracking_uri: str,
                   experiment: str, metrics: Output[Metrics],
                   evaluation: Output[Artifact]) -> NamedTuple("Gate", [("promoted", bool)]):
    """Held-out bits/sample against baselines and the champion; promote when better.

    Returns:
        promoted: the model became the registered champion.
    """
    import os
    from collections import namedtuple

    from components import runtime

    runtime.quiet_logs()  # before the library loads TensorFlow
    from wavenet.evaluate import evaluate

    os.makedirs(evaluation.path, exist_ok=True)
    # The MLflow model of the training run when it was logged (the registry then links
    # the version to that run), else the .keras file of the artifact.
    model_uri = model.metadata.get("model_uri") or os.path.join(model.path, "model.keras")
    result = evaluate(model_uri, runtime.data_location(shards.path, shards.uri, shards.metadata),
                      runtime.load_config(config.path),
                      runtime.stage_context("evaluate", tracking_uri, experiment, model.metadata),
                      out_dir=evaluation.path, gate=True)
    # The names MLflow shows (eval/bits_per_sample, eval/baseline_*), and the gate's; the
    # candidate's gate/new_bits is eval/bits_per_sample under another name: left out.
    gate_numbers = runtime.numeric_metrics(result["gate"], "gate/")
    gate_numbers.pop("gate/new_bits", None)
    for k, v in {**result["metrics"], **gate_numbers}.items():
        metrics.log_metric(k, v)
    promoted = bool(result.get("promoted", False))
    evaluation.metadata["promoted"] = promoted
    return namedtuple("Gate", ["promoted"])(promoted)


@dsl.component(**_COMMON)
def generate_samples(model: Input[Model], shards: Input[Dataset], config: Input[Artifact], tracking_uri: str,
                     experiment: str, samples: Output[Artifact], report: Output[HTML],
                     evaluation: Input[Artifact] = None):
    """Sample clips from the model: WAVs, spectrograms and an HTML listening report.

    Args:
        evaluation: ``evaluate_model``'s output (``metrics.json``): the report then shows
            the bits/sample against the baselines and the champion, and the gate's decision.
    """
    import os
    import shutil

    from components import runtime

    runtime.quiet_logs()  # before the library loads TensorFlow
    from wavenet.generation.verb import generate_samples as _generate

    os.makedirs(samples.path, exist_ok=True)
    # As in evaluate_model: the training run's MLflow model when logged (the samples run
    # then joins that run's experiment), else the .keras file.
    model_uri = model.metadata.get("model_uri") or os.path.join(model.path, "model.keras")
    gate = runtime.read_json(os.path.join(evaluation.path, "metrics.json")) if evaluation else None
    result = _generate(model_uri, samples.path, runtime.load_config(config.path),
                       runtime.stage_context("generate", tracking_uri, experiment, model.metadata),
                       data_dir=runtime.data_location(shards.path, shards.uri, shards.metadata),
                       progress=False, evaluation=gate)
    if result.get("report") and os.path.exists(result["report"]):
        shutil.copyfile(result["report"], report.path)
    samples.metadata.update({"clips": len(result.get("clips", [])), "run_id": result.get("run_id") or "",
                             "samples_per_second": result.get("samples_per_second") or 0.0})
