"""The ``wavenet-train`` pipeline: audio -> shards -> training -> gate -> samples.

::

    list_partitions ──ParallelFor──> preprocess_partition ──Collected──> merge_shards
        ──> train_model (local workers | TFJob | the registered model of an identical run)
        ──> evaluate_model (gate)
        ──If(promoted) / Elif(generate_if_rejected)──> generate_samples

The same definition runs under ``kfp.local`` (``pipelines.run_local``) and on
Kubeflow Pipelines (compiled by ``make compile``); only parameters differ.
Compile: ``python -m pipelines.wavenet_train [OUT.yaml]``.
"""

import sys

from kfp import compiler, dsl, kubernetes

from components.images import WAVENET_GPU_IMAGE
from components.stages import (
    evaluate_model,
    generate_samples,
    list_partitions,
    merge_shards,
    preprocess_partition,
    train_model,
)

PIPELINE_NAME = "wavenet-train"
# Preprocessing tasks running at once (a compile-time constant in KFP).
PREPROCESS_PARALLELISM = 8
# Optional Secret with MLflow basic-auth credentials for the steps that log (docs/mlflow.md).
MLFLOW_CLIENT_SECRET = "mlflow-client"


# The images run with a read-only root filesystem: HOME, TMPDIR and the caches are under
# /scratch (docker/Dockerfile), a fresh emptyDir in every step's pod.
SCRATCH_VOLUME, SCRATCH = "scratch", "/scratch"
# The images' user (docker/Dockerfile `USER 1000:1000`, the manifests' runAsUser).
STEP_UID = STEP_GID = 1000


def _step_pod(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Every step's pod: the /scratch emptyDir, and non-root as uid/gid 1000.

    kfp-kubernetes 2.17 sets runAsUser, runAsGroup and runAsNonRoot (``set_security_context``);
    its docstring says the KFP backend itself enforces the rest of Pod Security "restricted"
    (allowPrivilegeEscalation false, drop ALL capabilities, seccompProfile RuntimeDefault), and
    offers no readOnlyRootFilesystem: the namespace's Pod Security Admission label
    (k8s/namespace.yaml) refuses a step pod without the former; the latter is not settable from
    the SDK (docs/cluster.md, "Kubernetes hardening").
    """
    kubernetes.empty_dir_mount(task, volume_name=SCRATCH_VOLUME, mount_path=SCRATCH)
    return kubernetes.set_security_context(task, run_as_user=STEP_UID, run_as_group=STEP_GID,
                                           run_as_non_root=True)


def _mlflow_credentials(task: dsl.PipelineTask) -> dsl.PipelineTask:
    # optional=True: a server without authentication needs no Secret.
    return kubernetes.use_secret_as_env(
        task, secret_name=MLFLOW_CLIENT_SECRET,
        secret_key_to_env={"username": "MLFLOW_TRACKING_USERNAME",
                           "password": "MLFLOW_TRACKING_PASSWORD"},
        optional=True)


# The run's UUID and the train task's name (kfp/dsl/__init__.py, kfp 2.17: "maps to the pipeline
# run UUID", "maps to the component name") are the same on every retry of the step, so they name
# its TFJob and run folder (wavenet.edges.tfjob.stable_job_name). Not PIPELINE_TASK_ID_PLACEHOLDER: it
# maps to the component's MLMD execution ID (same file), which nothing promises to keep across a
# retry. (Inside a ParallelFor the task name would repeat; the train step is not in one.)
_SAME_ON_EVERY_RETRY = {"kfp_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                        "kfp_task": dsl.PIPELINE_TASK_NAME_PLACEHOLDER}


# These three run while wavenet_train is traced (kfp.dsl builds the graph when @dsl.pipeline is
# applied, so they are defined first): every component call in them adds a task to that graph.

def _list(source_uri, preset, overrides_yaml, partitions, demo_seconds):
    """List the audio into ``partitions`` (and resolve the config, once, for every later step)."""
    listed = list_partitions(source_uri=source_uri, preset=preset, overrides_yaml=overrides_yaml,
                             partitions=partitions, demo_seconds=demo_seconds)
    # The source may change under the same URI: always list it again.
    listed.set_caching_options(False).set_display_name("list audio")
    _step_pod(listed)
    return listed


def _preprocess_and_merge(listed, shards_uri):
    """Preprocess each listed partition in parallel, then merge the partials into shards."""
    config = listed.outputs["config"]
    with dsl.ParallelFor(listed.outputs["Output"], parallelism=PREPROCESS_PARALLELISM,
                         name="partitions") as part:
        pre = preprocess_partition(audio=listed.outputs["audio"], partition=part, config=config,
                                   shards_uri=shards_uri)
        pre.set_display_name("preprocess partition").set_cpu_request("2").set_memory_limit("8G")
        _step_pod(pre)

    merged = merge_shards(partials=dsl.Collected(pre.outputs["partial"]), config=config,
                          shards_uri=shards_uri)
    merged.set_display_name("merge into shards").set_memory_limit("8G")
    _step_pod(merged)
    return merged


def _gate_and_generate(trained, merged, config, tracking_uri, experiment, generate_if_rejected):
    """Evaluate and gate the trained model; generate samples when it is promoted (or anyway)."""
    gate = evaluate_model(model=trained.outputs["model"], shards=merged.outputs["shards"],
                          config=config, tracking_uri=tracking_uri, experiment=experiment)
    gate.set_display_name("evaluate and gate").set_caching_options(False)
    _mlflow_credentials(gate)
    _step_pod(gate)

    def _generate(display: str) -> None:
        gen = generate_samples(model=trained.outputs["model"], shards=merged.outputs["shards"],
                               config=config, tracking_uri=tracking_uri, experiment=experiment,
                               evaluation=gate.outputs["evaluation"])
        gen.set_display_name(display).set_caching_options(False)
        _mlflow_credentials(gen)
        _step_pod(gen)

    with dsl.If(gate.outputs["promoted"] == True, name="promoted"):  # noqa: E712 - KFP condition
        _generate("generate samples (champion)")
    with dsl.Elif(generate_if_rejected == True, name="report-anyway"):  # noqa: E712
        _generate("generate samples (rejected)")


@dsl.pipeline(name=PIPELINE_NAME,
              description="Train a WaveNet music generator: preprocess in parallel, shard, train "
                          "(local workers or a TFJob), gate against the champion, generate samples.")
# The pipeline's run parameters, as the KFP UI lists them (kfp.dsl reads the signature).
# params: run parameters (above).
def wavenet_train(
    source_uri: str = "",
    demo_seconds: float = 0.0,
    preset: str = "demo",
    overrides_yaml: str = "",
    partitions: int = 2,
    shards_uri: str = "",
    num_workers: int = 2,
    train_on_cluster: bool = False,
    namespace: str = "wavenet",
    train_image: str = WAVENET_GPU_IMAGE,
    gpus_per_worker: int = 1,
    accelerator: str = "nvidia-l4",
    cluster_run_root: str = "",
    warm_start: bool = False,
    mlflow_tracking_uri: str = "",
    mlflow_experiment: str = "wavenet",
    generate_if_rejected: bool = False,
    force_train: bool = False,
):
    """Args:
    source_uri: folder or gs:// prefix of audio; empty: the synthesised demo corpus.
    demo_seconds: seconds per genre of the demo corpus (0: its default).
    preset: config preset (tiny, demo, bench, large).
    overrides_yaml: YAML overrides of the preset, e.g. ``train: {steps: 500}``; resolved once,
        by the first step, which hands the whole config to every later step.
    partitions: parallel preprocessing tasks.
    shards_uri: persistent prefix for incremental preprocessing (partials and shards
        are reused when files and settings are unchanged); empty: none.
    num_workers: training workers (local processes or TFJob Worker replicas).
    train_on_cluster: train as a Kubeflow TFJob instead of local processes.
    namespace: namespace of the TFJob.
    train_image: image of the TFJob's pods.
    gpus_per_worker: GPUs per TFJob worker (0: CPU pods).
    accelerator: GPU type for the node selector (empty: any GPU node).
    cluster_run_root: gs:// prefix where TFJob pods write models and checkpoints.
    warm_start: initialise from the registered champion.
    mlflow_tracking_uri: MLflow tracking URI (empty: the step's $MLFLOW_TRACKING_URI).
    mlflow_experiment: MLflow experiment shared by every run.
    generate_if_rejected: also generate samples when the gate rejects the model.
    force_train: train even when a registered model already came from the same data, config
        and seed (otherwise that model is reused: wavenet.reuse).
    """
    merged = _preprocess_and_merge(_list(source_uri, preset, overrides_yaml, partitions, demo_seconds),
                                   shards_uri)
    # From here on, the config as the data resolved it (model.num_classes and score_channels: auto -> the labels, the scores).
    config = merged.outputs["data_config"]

    trained = train_model(
        shards=merged.outputs["shards"], data_version=merged.outputs["Output"], config=config,
        workers=num_workers, on_cluster=train_on_cluster, namespace=namespace, image=train_image,
        gpus_per_worker=gpus_per_worker, accelerator=accelerator,
        cluster_run_root=cluster_run_root, warm_start=warm_start,
        tracking_uri=mlflow_tracking_uri, experiment=mlflow_experiment,
        force_train=force_train, **_SAME_ON_EVERY_RETRY)
    trained.set_display_name("train").set_caching_options(False)
    _mlflow_credentials(trained)
    _step_pod(trained)
    _gate_and_generate(trained, merged, config, mlflow_tracking_uri, mlflow_experiment,
                       generate_if_rejected)


def compile_pipeline(path: str) -> str:
    """Compile ``wavenet-train`` to KFP IR YAML at ``path``."""
    compiler.Compiler().compile(wavenet_train, package_path=path)
    return path


if __name__ == "__main__":
    print(compile_pipeline(sys.argv[1] if len(sys.argv) > 1 else "pipelines/wavenet-train.yaml"))
