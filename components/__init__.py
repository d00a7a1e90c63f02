"""Kubeflow Pipelines components: one thin component per stage (``components.stages``).

Each component is a lightweight ``@dsl.component`` whose body imports ``wavenet``
and calls one library function. On a cluster the body runs in this project's
image (``WAVENET_IMAGE``: the package installed from ``uv.lock``, so kfp,
``wavenet`` and ``components.runtime`` are all present); under
``kfp.local.SubprocessRunner`` it runs in the current Python. Training pods of a
TFJob use ``WAVENET_GPU_IMAGE``.

This ``__init__`` imports nothing from kfp: component bodies import
``components.runtime`` inside KFP's executor, where the full ``kfp.dsl`` is not loaded.
"""

from components.images import WAVENET_GPU_IMAGE, WAVENET_IMAGE

__all__ = ["WAVENET_IMAGE", "WAVENET_GPU_IMAGE"]
