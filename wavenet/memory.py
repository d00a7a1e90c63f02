"""Memory estimated before a size from the config is allocated.

Each config field has an upper bound (:data:`wavenet.config.UPPER_BOUNDS`), but
fields within their bounds can multiply into terabytes (clips x seconds x
sample rate, or layers x channels x channels). Where such a product is about
to be allocated, the caller estimates its bytes and calls :func:`check_fits`,
which refuses with one line naming the fields and the estimate instead of
letting NumPy or TensorFlow fail deep inside with a traceback, or the kernel
kill the process (exit 137, which the Training Operator and our launcher
retry as if it were a transient fault).

Training and evaluation are estimated from the config alone, before
TensorFlow builds anything (:func:`check_training`, :func:`check_evaluation`):
the activations of a batch of crops through every residual block and the
output head, plus, for training, the weights with their gradients and Adam
state. How the activation formulas were checked against TensorFlow's real
peak is in docs/training.md (memory).
"""

from __future__ import annotations

import glob
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from wavenet.errors import ConfigError

if TYPE_CHECKING:  # wavenet.config does not import this module, but keep the edge thin
    from wavenet.config import ExperimentConfig, ModelConfig

__all__ = [
    "MEMORY_LIMIT_ENV",
    "available_bytes",
    "check_fits",
    "human_bytes",
    "peak_rss_bytes",
    "gpu_visible",
    "training_activation_bytes",
    "evaluation_activation_bytes",
    "check_training",
    "check_evaluation",
]

# Bytes this process may use, when the machine's own figure is not the one that
# counts: a GPU's memory, or a pod's limit passed through the Kubernetes downward
# API (resourceFieldRef limits.memory). Plain bytes, or with a Ki/Mi/Gi/Ti suffix.
MEMORY_LIMIT_ENV = "WAVENET_MEMORY_LIMIT"
_SUFFIX = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


def _parse_limit(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti)?\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"{MEMORY_LIMIT_ENV} must be a positive number of bytes, optionally with "
                          f"Ki, Mi, Gi or Ti. Received: {MEMORY_LIMIT_ENV}={text!r}")
    return int(float(m.group(1)) * _SUFFIX[m.group(2) or ""])


def _cgroup_limit_files() -> list[str]:
    """This process's cgroup memory limit files, its own cgroup's and each ancestor's.

    ``/proc/self/cgroup`` names the cgroup (cgroup v2: ``0::PATH``; v1:
    ``N:memory:PATH``); a limit may sit on any ancestor, and inside a container
    (cgroup namespace) the own cgroup is the root of ``/sys/fs/cgroup``. v2
    writes the limit to ``memory.max`` ("max" when unlimited), v1 to
    ``memory.limit_in_bytes``
    (https://docs.kernel.org/admin-guide/cgroup-v2.html#memory-interface-files).
    """
    files = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return files
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            root, name = "/sys/fs/cgroup", "memory.max"
        elif "memory" in controllers.split(","):
            root, name = "/sys/fs/cgroup/memory", "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        files += [os.path.join(root, *parts[:i], name) for i in range(len(parts), 0, -1)]
    return files


def available_bytes(environ: Mapping[str, str] | None = None) -> int:
    """Memory this process may use: ``$WAVENET_MEMORY_LIMIT`` when set, else the smallest of
    physical memory and the memory limits of its cgroup and the cgroup's ancestors."""
    environ = os.environ if environ is None else environ
    if environ.get(MEMORY_LIMIT_ENV):
        return _parse_limit(environ[MEMORY_LIMIT_ENV])
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _cgroup_limit_files():
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def peak_rss_bytes() -> int:
    """This process's own peak resident memory, in bytes.

    ``/proc/self/status``'s ``VmHWM`` (https://docs.kernel.org/filesystems/proc.html,
    "Contents of the status fields"). ``getrusage``'s ``ru_maxrss`` is only the
    fallback where there is no ``/proc``: on Linux it survives exec and also holds
    the high-water mark of the memory image exec replaced, which for a process
    started by Python's vfork-based ``subprocess`` is the parent's (a preprocess
    started from a 2 GB pytest read 2,006 MB).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # "VmHWM:  52000 kB"
    except OSError:
        pass
    import resource  # POSIX only; Linux reports KiB, macOS bytes

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def check_fits(estimate: float, what: str, fields: str, *, limit: float | None = None) -> None:
    """Refuse ``estimate`` bytes when they exceed the machine's memory.

    Args:
        estimate: bytes the allocation will need.
        what: what is allocated ("the generated clips").
        fields: the config fields that set the size ("generate.num_clips x generate.seconds").
        limit: bytes allowed (default: :func:`available_bytes`).

    Raises:
        ConfigError: one line with the fields, the estimate and the limit.
    """
    limit = available_bytes() if limit is None else limit
    if estimate > limit:
        raise ConfigError(f"{what} would need about {human_bytes(estimate)} of memory, more than "
                          f"the {human_bytes(limit)} this machine has ({MEMORY_LIMIT_ENV} overrides "
                          f"the figure); reduce {fields}")


# -- training and evaluation -------------------------------------------------------

# Bytes per activation of the residual stack: mixed precision computes in 16 bits;
# "auto" is bfloat16 on a GPU, float32 on CPU (wavenet.train.setup.resolve_precision).
_ACTIVATION_BYTES = {"float32": 4, "mixed_bfloat16": 2, "mixed_float16": 2}


def gpu_visible(environ: Mapping[str, str] | None = None) -> bool:
    """Whether TensorFlow will see an NVIDIA GPU here, found without loading it.

    The driver creates ``/dev/nvidia0``, ``/dev/nvidia1``, ... (also inside a
    container given GPUs); ``CUDA_VISIBLE_DEVICES`` empty or ``-1`` hides them.
    """
    environ = os.environ if environ is None else environ
    if environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def _activation_limit(environ: Mapping[str, str] | None) -> int | None:
    """Bytes the activations may take; None where they live in a GPU's memory nobody stated.

    On a GPU the activations are in device memory, not in the host memory a
    cgroup limits, and running out there is TensorFlow's own error, not the
    kernel's kill; ``WAVENET_MEMORY_LIMIT`` (e.g. the GPU's memory) turns the
    check on there too.
    """
    environ = os.environ if environ is None else environ
    if gpu_visible(environ) and not environ.get(MEMORY_LIMIT_ENV):
        return None
    return available_bytes(environ)


def training_activation_bytes(model: ModelConfig, batch: int, length: int,
                              precision: str = "float32") -> int:
    """Activations a training step keeps for its backward pass.

    Per position of each of ``batch`` crops of ``length`` codes, every
    residual block keeps its stacked taps (k x R), its gate pre-activation
    (2G), tanh, sigmoid and their product (3G), its skip (S) and its residual
    output (R); the head keeps ReLU, hidden and ReLU (3S) and, in float32
    whatever the precision, the logits, their log-softmax and its gradient
    (3Q).

    Args:
        model: the architecture.
        batch: crops held by one process (its share of ``train.global_batch_size``).
        length: codes per crop (``receptive_field + train.window``).
        precision: ``train.precision`` as resolved (``"auto"`` counts as float32).

    Returns:
        Bytes.
    """
    r, g, s, q, k = (model.residual_channels, model.gate_channels, model.skip_channels,
                     model.quantization_channels, model.kernel_size)
    per_layer = k * r + 5 * g + s + r
    per_position = _ACTIVATION_BYTES.get(precision, 4) * (model.num_layers * per_layer + 3 * s) + 4 * 3 * q
    return batch * length * per_position


def evaluation_activation_bytes(model: ModelConfig, batch: int, length: int) -> int:
    """Peak activations of a forward pass (no backward: one block's tensors live at a time).

    Per position: the running skip sum (S) beside the larger of one block's
    tensors (k x R taps, 5G gate, S skip, 2R residual) and the head's (3S),
    plus the float32 logits, their slice and log-softmax (3Q).
    """
    r, g, s, q, k = (model.residual_channels, model.gate_channels, model.skip_channels,
                     model.quantization_channels, model.kernel_size)
    per_position = 4 * (s + max(k * r + 5 * g + s + 2 * r, 3 * s)) + 4 * 3 * q
    return batch * length * per_position


def check_training(cfg: ExperimentConfig, workers: int = 1, *, share: bool = False,
                   environ: Mapping[str, str] | None = None) -> None:
    """Refuse, before TensorFlow allocates, a training batch that cannot fit in this machine's memory.

    Args:
        cfg: ``train.global_batch_size``, ``train.window``, ``train.precision``
            and the model.
        workers: worker processes of the run.
        share: this process is one worker of ``workers`` on its own machine (a
            TFJob pod): it holds ``global_batch_size / workers`` crops. Else all
            workers run here and hold the whole global batch between them.
        environ: where ``WAVENET_MEMORY_LIMIT`` is read (default: this process's).

    Raises:
        ConfigError: one line with the fields, the estimate and the memory available.
    """
    limit = _activation_limit(environ)
    if limit is None:
        return
    t, m = cfg.train, cfg.model
    batch = t.global_batch_size // workers if share else t.global_batch_size
    copies = 1 if share else workers  # each worker holds the weights, gradients and Adam state
    precision = t.precision if t.precision != "auto" else (
        "mixed_bfloat16" if gpu_visible(environ) else "float32")
    activations = training_activation_bytes(m, batch, cfg.crop_length, precision)
    estimate = activations + copies * m.num_params * 4 * 4
    check_fits(estimate, f"training {batch} crops of {cfg.crop_length} codes (model.receptive_field "
               f"{m.receptive_field} + train.window {t.window}) through {m.num_layers} layers "
               f"({human_bytes(activations)} of activations kept for the backward pass)",
               "train.global_batch_size or train.window, or the model's layers and channels "
               "(model.layers_per_stack, model.stacks, model.*_channels)", limit=limit)


def check_evaluation(models: Sequence[ModelConfig], cfg: ExperimentConfig,
                     batch_size: int | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Refuse, before scoring, evaluation batches that cannot fit in this machine's memory.

    Crops carry the widest receptive field of ``models`` in front of
    ``evaluate.window``; the models are scored one after the other.

    Raises:
        ConfigError: one line with the fields, the estimate and the memory available.
    """
    limit = _activation_limit(environ)
    if limit is None:
        return
    batch = batch_size or cfg.evaluate.batch_size
    length = max(m.receptive_field for m in models) + cfg.evaluate.window
    estimate = max(evaluation_activation_bytes(m, batch, length) for m in models)
    check_fits(estimate, f"evaluating {batch} crops of {length} codes (widest receptive field + "
               f"evaluate.window {cfg.evaluate.window})", "evaluate.batch_size or evaluate.window",
               limit=limit)
