"""Kubeflow Pipelines components: one thin component per stage of the pipeline.

Each component is a lightweight ``@dsl.component`` whose body imports ``wavenet``
and calls one library function. On a cluster the body runs in this project's
image (``WAVENET_IMAGE``: the package installed with ``pip install .``, so kfp,
``wavenet`` and these helpers are all present); under ``kfp.local.SubprocessRunner``
it runs in the current Python. Training pods of a TFJob use ``WAVENET_GPU_IMAGE``.
"""

from components.images import WAVENET_GPU_IMAGE, WAVENET_IMAGE
from components.stages import (
    evaluate_model,
    generate_samples,
    list_partitions,
    merge_shards,
    preprocess_partition,
    train_model,
)

__all__ = [
    "WAVENET_IMAGE",
    "WAVENET_GPU_IMAGE",
    "list_partitions",
    "preprocess_partition",
    "merge_shards",
    "train_model",
    "evaluate_model",
    "generate_samples",
]
