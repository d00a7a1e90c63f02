"""The Kubernetes edge: train on a cluster as a Kubeflow TFJob (kubeflow.org/v1).

The only core module that imports ``kubernetes``. Two halves:

- :func:`render_tfjob` is pure: template + settings -> the TFJob object (a dict).
  Every replica is a ``Worker``; the Training Operator writes ``TF_CONFIG``
  into each pod, and ``MultiWorkerMirroredStrategy`` treats worker 0 as chief.
- :func:`run_tfjob` creates the job, streams worker 0's log, waits for a
  ``Succeeded`` or ``Failed`` condition and deletes the job (its pods go with it).

``kubernetes`` is imported by :func:`run_tfjob` itself: rendering a job (every
launcher, the tests, ``make compile``) needs only this module.

The template lives in ``k8s/tfjob-template.yaml`` (validated by ``make k8s-validate``
against ``k8s/schemas/tfjob.schema.json``); the container image copies it to
``/opt/wavenet/k8s`` and names it in ``WAVENET_TFJOB_TEMPLATE``, which the caller
(the train component) reads and passes in.
"""

from __future__ import annotations

import copy
import hashlib
import re
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from wavenet.errors import ConfigError, Interrupted, WavenetError, has_userinfo, redact

__all__ = [
    "GROUP",
    "VERSION",
    "PLURAL",
    "CONTAINER",
    "TFJobError",
    "default_template_path",
    "load_template",
    "job_name",
    "stable_job_name",
    "resume_action",
    "Pods",
    "JobPolicy",
    "render_tfjob",
    "tfjob_outcome",
    "run_tfjob",
]

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "tfjobs"
# The Training Operator finds the TensorFlow container by this name (it sets TF_CONFIG
# and the default port on it).
CONTAINER = "tensorflow"
GPU_RESOURCE = "nvidia.com/gpu"
# GKE's node label for the accelerator type; other clusters use e.g.
# NVIDIA GPU feature discovery's ``nvidia.com/gpu.product``.
DEFAULT_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"

# How long a retried step waits for the failed job it replaces to be gone: its pods' grace
# period for a final checkpoint (the template's 120 s) several times over.
REPLACE_WAIT_S = 900

_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Environment variables that carry credentials (MLFLOW_TRACKING_PASSWORD, ..._TOKEN): only ever
# by reference to a Secret in a TFJob.
_SECRET_ENV = re.compile(r"PASSWORD|TOKEN|SECRET|CREDENTIAL", re.IGNORECASE)


class TFJobError(WavenetError):
    """The TFJob could not be created, failed, or timed out."""


def default_template_path() -> Path:
    """``k8s/tfjob-template.yaml`` beside the ``wavenet`` package in a source checkout (two
    folders up from this file, ``wavenet/edges/tfjob.py``)."""
    return Path(__file__).resolve().parents[2] / "k8s" / "tfjob-template.yaml"


def load_template(path: str | Path | None = None) -> dict[str, Any]:
    """Read the TFJob template (YAML).

    Args:
        path: template file; None means :func:`default_template_path`.

    Returns:
        The template as a dict.
    """
    p = Path(path) if path else default_template_path()
    try:
        d = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read TFJob template {p}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"TFJob template {p} is not valid YAML: {e}") from None
    if not isinstance(d, dict) or d.get("kind") != "TFJob":
        raise ConfigError(f"TFJob template {p} must hold one object of kind TFJob")
    return d


def job_name(prefix: str, suffix: str) -> str:
    """A DNS-1035 name of at most 45 characters (room for ``-worker-NN`` pod names)."""
    raw = re.sub(r"[^a-z0-9-]+", "-", f"{prefix}-{suffix}".lower()).strip("-")
    raw = raw[:45].rstrip("-")
    if not raw or not raw[0].isalpha():
        raw = ("j-" + raw)[:45].rstrip("-")
    return raw


def stable_job_name(prefix: str, *identity: str) -> str:
    """The same DNS-1035 name (at most 45 characters) for the same ``identity``, on every attempt.

    A retried pipeline step must find the TFJob (and run folder) of its first attempt, so
    the name derives from the KFP run and task, never from a clock. A name that would be
    too long keeps a readable head and ends in 12 hex digits of the SHA-256 of the whole
    identity, so two runs whose long names share a head still differ.

    Args:
        prefix: a fixed lead, e.g. ``"wavenet"``.
        identity: what makes an attempt the same job, e.g. (KFP run id, task name).

    Returns:
        ``<prefix>-<identity...>`` lower-cased and slugged, or ``<head>-<hash12>`` when longer
        than 45 characters.
    """
    full = job_name(prefix, "-".join(identity))
    raw = re.sub(r"[^a-z0-9-]+", "-", "-".join((prefix, *identity)).lower()).strip("-")
    if full == raw:
        return full
    digest = hashlib.sha256("\0".join((prefix, *identity)).encode()).hexdigest()[:12]
    return f"{full[:32].rstrip('-')}-{digest}"


@dataclass(frozen=True)
class Pods:
    """What every Worker pod of a TFJob runs, and on what.

    Attributes:
        image: container image (the GPU image for GPU workers).
        command: container command, e.g. ``["wavenet", "train"]``.
        args: container arguments.
        workers: Worker replicas (one TensorFlow process each; worker 0 is chief).
        gpus_per_worker: ``nvidia.com/gpu`` limit per pod; 0 trains on CPU and drops the
            GPU node selector and tolerations.
        accelerator: accelerator type for the node selector (e.g. ``nvidia-l4``);
            empty: any GPU node.
        accelerator_label: node label that carries the accelerator type.
        env: extra container environment (MLflow URI and KFP's MLflow run, ...). A
            variable the template takes from a Secret (``valueFrom``) keeps the template's
            reference; a credential (``*PASSWORD*``, ``*TOKEN*``, ...) without one is refused.
    """

    image: str
    command: Sequence[str]
    args: Sequence[str] = ()
    workers: int = 1
    gpus_per_worker: int = 0
    accelerator: str = ""
    accelerator_label: str = DEFAULT_ACCELERATOR_LABEL
    env: Mapping[str, str] | None = None


@dataclass(frozen=True)
class JobPolicy:
    """How the operator runs, retries and cleans up the job; None keeps the template's.

    Attributes:
        backoff_limit: ``runPolicy.backoffLimit``.
        ttl_seconds_after_finished: ``runPolicy.ttlSecondsAfterFinished``.
        clean_pod_policy: ``runPolicy.cleanPodPolicy`` (None, Running, All).
        restart_policy: Worker ``restartPolicy`` (OnFailure, ExitCode, Never, Always).
        service_account: pod service account.
        termination_grace_s: the pods' ``terminationGracePeriodSeconds``, the time a
            worker has from SIGTERM to its final checkpoint (:mod:`wavenet.train.stopping`).
    """

    backoff_limit: int | None = None
    ttl_seconds_after_finished: int | None = None
    clean_pod_policy: str | None = None
    restart_policy: str | None = None
    service_account: str | None = None
    termination_grace_s: int | None = None


def render_tfjob(name: str, namespace: str, pods: Pods, *, policy: JobPolicy = JobPolicy(),
                 labels: Mapping[str, str] | None = None,
                 template: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Render the TFJob the launcher creates. Pure: no cluster, no environment.

    Args:
        name: job name (DNS-1035 label, at most 45 characters).
        namespace: namespace the job runs in.
        pods: what the Worker pods run, how many, on which GPUs, with which environment.
        policy: run policy, restart policy, service account, grace period.
        labels: extra labels on the job and its pods.
        template: the TFJob template; None loads ``k8s/tfjob-template.yaml``.

    Returns:
        The TFJob object, ready for ``create_namespaced_custom_object``.
    """
    _check_settings(name, pods, policy)
    job = copy.deepcopy(dict(template if template is not None else load_template()))
    meta = job.setdefault("metadata", {})
    meta["name"] = name
    meta["namespace"] = namespace
    meta.setdefault("labels", {}).update(dict(labels or {}))
    spec = job.setdefault("spec", {})
    run_policy = spec.setdefault("runPolicy", {})
    for key, value in (("backoffLimit", policy.backoff_limit),
                       ("ttlSecondsAfterFinished", policy.ttl_seconds_after_finished)):
        if value is not None:
            run_policy[key] = int(value)
    if policy.clean_pod_policy is not None:
        run_policy["cleanPodPolicy"] = policy.clean_pod_policy
    worker = _worker_spec(spec, pods.workers, policy.restart_policy)
    pod = worker.setdefault("template", {})
    pod.setdefault("metadata", {}).setdefault("labels", {}).update(
        {**meta["labels"], "wavenet/job": name})
    pod_spec = pod.setdefault("spec", {})
    if policy.service_account is not None:
        pod_spec["serviceAccountName"] = policy.service_account
    if policy.termination_grace_s is not None:
        pod_spec["terminationGracePeriodSeconds"] = policy.termination_grace_s
    c = _container(pod_spec)
    c["image"] = pods.image
    c["command"] = list(pods.command)
    c["args"] = [str(a) for a in pods.args]
    if pods.env:
        c["env"] = _merged_env(c.get("env", []), pods.env, name)
    _place_on_gpus(pod_spec, c, pods.gpus_per_worker, pods.accelerator, pods.accelerator_label)
    return job


def _merged_env(template_env: list[dict[str, Any]], env: Mapping[str, str], name: str) -> list[dict[str, Any]]:
    """The template's env with ``env``'s values, a Secret reference of the template kept as it is.

    A variable the template takes from a Secret (valueFrom) keeps that reference: its value
    never lands in the TFJob, which whoever may read TFJobs reads in clear.
    """
    bound = {e.get("name") for e in template_env if "valueFrom" in e}
    clear = sorted(k for k in env if k not in bound and _SECRET_ENV.search(k))
    if clear:
        raise ConfigError(f"{', '.join(clear)} would be written into TFJob {name} in clear: the "
                          "TFJob template must take it from a Secret (env valueFrom.secretKeyRef, "
                          "as k8s/tfjob-template.yaml does)")
    # A URI with user-info (http://alice:secret@host, postgresql://u:p@db/x) is a credential too.
    in_uri = sorted(k for k, v in env.items() if k not in bound and has_userinfo(str(v)))
    if in_uri:
        raise ConfigError(f"{', '.join(f'{k}={redact(str(env[k]))}' for k in in_uri)} would write a "
                          f"credential into TFJob {name} in clear: give the URI without it and the "
                          "credentials through MLFLOW_TRACKING_USERNAME/PASSWORD or "
                          "MLFLOW_TRACKING_TOKEN from a Secret")
    literal = {k: v for k, v in env.items() if k not in bound}
    existing = [e for e in template_env if e.get("name") not in literal]
    return existing + [{"name": k, "value": str(v)} for k, v in sorted(literal.items())]


def _check_settings(name: str, pods: Pods, policy: JobPolicy) -> None:
    if not isinstance(name, str) or len(name) > 45 or not _NAME_RE.match(name):
        raise ConfigError(f"TFJob name must be a DNS-1035 label of at most 45 characters. "
                          f"Received: name={name!r}")
    workers, gpus_per_worker = pods.workers, pods.gpus_per_worker
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1. Received: workers={workers!r}")
    if not isinstance(gpus_per_worker, int) or isinstance(gpus_per_worker, bool) or gpus_per_worker < 0:
        raise ConfigError(f"gpus_per_worker must be an integer >= 0. Received: "
                          f"gpus_per_worker={gpus_per_worker!r}")
    if not pods.command:
        raise ConfigError("TFJob command must not be empty")
    if policy.clean_pod_policy is not None and policy.clean_pod_policy not in ("None", "Running", "All"):
        raise ConfigError(f"clean_pod_policy must be one of None, Running, All. "
                          f"Received: {policy.clean_pod_policy!r}")
    if policy.restart_policy is not None and policy.restart_policy not in (
            "OnFailure", "ExitCode", "Never", "Always"):
        raise ConfigError(f"restart_policy must be one of OnFailure, ExitCode, Never, Always. "
                          f"Received: {policy.restart_policy!r}")
    grace = policy.termination_grace_s
    if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool) or grace < 0):
        raise ConfigError(f"termination_grace_s must be an integer >= 0. "
                          f"Received: termination_grace_s={grace!r}")


def _worker_spec(spec: dict[str, Any], workers: int, restart_policy: str | None) -> dict[str, Any]:
    replicas = spec.setdefault("tfReplicaSpecs", {})
    worker = replicas.get("Worker")
    if worker is None:
        raise ConfigError("TFJob template must define spec.tfReplicaSpecs.Worker")
    # MultiWorkerMirroredStrategy: peers only; a Chief or PS replica would change TF_CONFIG.
    for role in [r for r in replicas if r != "Worker"]:
        del replicas[role]
    worker["replicas"] = workers
    if restart_policy is not None:
        worker["restartPolicy"] = restart_policy
    return worker


def _container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    matching = [c for c in pod_spec.get("containers") or [] if c.get("name") == CONTAINER]
    if not matching:
        raise ConfigError(f"TFJob template's Worker must have a container named {CONTAINER!r}")
    return matching[0]


def _place_on_gpus(pod_spec: dict[str, Any], c: dict[str, Any], gpus_per_worker: int,
                   accelerator: str, accelerator_label: str) -> None:
    """GPU limits, node selector and tolerations for GPU pods; none of them for CPU pods."""
    resources = c.setdefault("resources", {})
    limits = resources.setdefault("limits", {})
    requests = resources.setdefault("requests", {})
    requests.pop(GPU_RESOURCE, None)  # extended resources are limits only (Kubernetes copies them)
    selector = pod_spec.setdefault("nodeSelector", {})
    if gpus_per_worker > 0:
        limits[GPU_RESOURCE] = gpus_per_worker
        if accelerator:
            selector[accelerator_label] = accelerator
        else:
            selector.pop(accelerator_label, None)
    else:
        limits.pop(GPU_RESOURCE, None)
        selector.pop(accelerator_label, None)
        pod_spec["tolerations"] = [t for t in pod_spec.get("tolerations", [])
                                   if t.get("key") != GPU_RESOURCE]
        if not pod_spec["tolerations"]:
            del pod_spec["tolerations"]
    if not selector:
        del pod_spec["nodeSelector"]


def tfjob_outcome(obj: Mapping[str, Any]) -> str | None:
    """``"Succeeded"`` or ``"Failed"`` once the job has that condition, else None.

    The Training Operator appends conditions (Created, Running, Restarting,
    Succeeded, Failed); a terminal one with status "True" decides.
    """
    for cond in reversed((obj.get("status") or {}).get("conditions") or []):
        if cond.get("status") == "True" and cond.get("type") in ("Succeeded", "Failed"):
            return cond["type"]
    return None


def _condition_message(obj: Mapping[str, Any]) -> str:
    for cond in reversed((obj.get("status") or {}).get("conditions") or []):
        if cond.get("type") == "Failed":
            return cond.get("message") or cond.get("reason") or ""
    return ""


def _follow_log(core, namespace: str, pod: str, stop: threading.Event,
                log: Callable[[str], None]) -> None:
    """Stream one pod's container log until it ends or ``stop`` is set."""
    from kubernetes.client.rest import ApiException

    while not stop.is_set():
        try:
            p = core.read_namespaced_pod(pod, namespace)
            if p.status.phase not in ("Running", "Succeeded", "Failed"):
                stop.wait(3)
                continue
            resp = core.read_namespaced_pod_log(pod, namespace, container=CONTAINER, follow=True,
                                                _preload_content=False)
            pending = ""
            # The stream yields chunks of bytes, not lines: split and keep the tail.
            for chunk in resp.stream():
                pending += chunk.decode("utf-8", "replace")
                *lines, pending = pending.split("\n")
                for line in lines:
                    log(line)
                if stop.is_set():
                    break
            if pending:
                log(pending)
            return
        except ApiException as e:
            if e.status != 404:
                log(f"[log] cannot read {pod}: {e.reason}")
                return
            stop.wait(3)
        except Exception as e:  # noqa: BLE001 - a broken log stream must not stop the wait
            log(f"[log] stream of {pod} ended: {e}")
            return


def resume_action(observed: Mapping[str, Any] | None) -> str:
    """What a (retried) launcher does about the TFJob of its name, from what the API returned.

    Pure: the decision of :func:`run_tfjob`, tested without a cluster.

    Args:
        observed: the TFJob read from the API, or None when it does not exist (404).

    Returns:
        ``"create"``: no such job; create it (its run folder holds the checkpoints of any
        earlier attempt, so training resumes from them). ``"adopt"``: the job is still running
        (an earlier launcher was killed before it could delete it) or has succeeded: watch it
        instead of starting a second one. ``"replace"``: it failed, or is being deleted: wait
        until it is gone, then create it again with the same name and run folder.
    """
    if observed is None:
        return "create"
    if (observed.get("metadata") or {}).get("deletionTimestamp"):
        return "replace"
    # Failed: the operator has given up (backoffLimit) and killed the pods (cleanPodPolicy);
    # the step's retry is a deliberate new try, from the last checkpoint. A job that is still
    # running but lost a pod is the operator's to mend (restartPolicy ExitCode), not ours.
    return "replace" if tfjob_outcome(observed) == "Failed" else "adopt"


def run_tfjob(job: Mapping[str, Any], *, poll_seconds: float = 10.0, timeout_s: float | None = None,
              delete: bool = True, log: Callable[[str], None] = print,
              api_client: Any = None) -> dict[str, Any]:
    """Create (or adopt) the TFJob, stream worker 0's log, wait for the outcome, clean up.

    A job of the same name that already exists is handled by :func:`resume_action`: a running
    or succeeded one is adopted (watched, not created again); a failed or terminating one is
    waited away and created again. Creation answered 409 AlreadyExists (a twin launcher won
    the race) adopts too.

    SIGTERM to this process (the step's pod deleted, the run terminated) deletes the job with
    foreground propagation, whatever ``delete`` says, and raises
    :class:`~wavenet.errors.Interrupted` (exit code 143): its GPUs are freed now, not at the
    TTL. The workers get their own SIGTERM and grace period for a final checkpoint
    (:mod:`wavenet.train.stopping`), so a retried step resumes from it. Handing the job over
    instead would leave GPUs busy for a run nobody may come back to.

    Args:
        job: a rendered TFJob (:func:`render_tfjob`).
        poll_seconds: seconds between status reads.
        timeout_s: give up (and delete the job) after this long; None waits forever.
        delete: delete the job when done (pods are garbage-collected with it).
        log: where log lines and progress go.
        api_client: a ``kubernetes.client.ApiClient``; None loads the in-cluster
            service-account config, else ``~/.kube/config``.

    Returns:
        The job's last observed object (status included).

    Raises:
        TFJobError: creation refused, the job failed, or the timeout passed.
        Interrupted: SIGTERM arrived (the job was deleted).
    """
    custom, core = _apis(api_client)
    name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
    stop = threading.Event()
    follower = threading.Thread(target=_follow_log,
                                args=(core, namespace, f"{name}-worker-0", stop, log), daemon=True)
    owned = terminated = False
    with _SigtermRaises(f"SIGTERM: stopped waiting for TFJob {namespace}/{name}") as sigterm:
        try:
            _create_or_adopt(custom, job, poll_seconds, log)
            owned = True
            follower.start()
            return _wait(custom, name, namespace, poll_seconds, timeout_s, log)
        except Interrupted:
            terminated = True
            raise
        finally:
            sigterm.ignore()  # the clean-up below must finish
            stop.set()
            if follower.is_alive():
                follower.join(timeout=5)
            if terminated or (owned and delete):
                _delete(custom, name, namespace, log)


class _SigtermRaises:
    """Within the block, SIGTERM raises :class:`Interrupted` (143) in the main thread, once;
    a second SIGTERM is ignored, so the clean-up the first one started can finish."""

    def __init__(self, message: str) -> None:
        self.message, self.installed, self.previous = message, False, None

    def _handle(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(self.message, 128 + signal.SIGTERM)

    def ignore(self) -> None:
        """From now on SIGTERM is ignored (until the block ends)."""
        if self.installed:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def __enter__(self) -> _SigtermRaises:
        # Signal handlers can only be set from the main thread; elsewhere SIGTERM keeps its
        # default (the process ends, the TTL cleans up).
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)
            self.installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            signal.signal(signal.SIGTERM, self.previous if self.previous is not None else signal.SIG_DFL)


def _create_or_adopt(custom: Any, job: Mapping[str, Any], poll_seconds: float,
                     log: Callable[[str], None]) -> None:
    """Create the job unless :func:`resume_action` says adopt; replace a failed one."""
    from kubernetes.client.rest import ApiException

    name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
    action = resume_action(_read(custom, name, namespace))
    if action == "adopt":
        log(f"adopted TFJob {namespace}/{name} (an earlier attempt created it)")
        return
    if action == "replace":
        log(f"TFJob {namespace}/{name} failed or is being deleted: replacing it (training resumes "
            "from its run folder's checkpoint)")
        _delete(custom, name, namespace, log)
        deadline = time.monotonic() + REPLACE_WAIT_S
        while _read(custom, name, namespace) is not None:
            if time.monotonic() > deadline:
                raise TFJobError(f"TFJob {namespace}/{name} was still being deleted after "
                                 f"{REPLACE_WAIT_S} s (a finalizer that never finishes?): delete it "
                                 "by hand, then retry the step")
            time.sleep(poll_seconds)
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, dict(job))
    except ApiException as e:
        if e.status == 409:  # AlreadyExists: a twin attempt created it meanwhile
            log(f"adopted TFJob {namespace}/{name} (created meanwhile by another attempt)")
            return
        raise TFJobError(f"cannot create TFJob {namespace}/{name}: {e.status} {e.reason}") from None
    log(f"created TFJob {namespace}/{name}")


def _read(custom: Any, name: str, namespace: str) -> dict[str, Any] | None:
    """The job as the API has it, or None when there is none (404)."""
    from kubernetes.client.rest import ApiException

    try:
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise TFJobError(f"cannot read TFJob {namespace}/{name}: {e.status} {e.reason}") from None


def _delete(custom: Any, name: str, namespace: str, log: Callable[[str], None]) -> None:
    """Delete the job, its pods first (foreground propagation); a job already gone is fine."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        custom.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name,
            body=client.V1DeleteOptions(propagation_policy="Foreground"))
        log(f"deleted TFJob {namespace}/{name}")
    except ApiException as e:
        if e.status != 404:
            log(f"could not delete TFJob {namespace}/{name}: {e.status} {e.reason}")


def _apis(api_client: Any) -> tuple[Any, Any]:
    """The custom-objects and core APIs (in-cluster config, else ~/.kube/config)."""
    from kubernetes import client, config

    if api_client is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            try:
                config.load_kube_config()
            except (config.ConfigException, OSError) as e:
                raise TFJobError(f"no Kubernetes configuration (in-cluster or kubeconfig): {e}") from None
        api_client = client.ApiClient()
    return client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)


def _wait(custom: Any, name: str, namespace: str, poll_seconds: float, timeout_s: float | None,
          log: Callable[[str], None]) -> dict[str, Any]:
    """Poll the job until it has Succeeded (returned) or Failed or timed out (TFJobError)."""
    from kubernetes.client.rest import ApiException

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as e:
            raise TFJobError(f"cannot read TFJob {namespace}/{name}: {e.status} {e.reason}") from None
        outcome = tfjob_outcome(obj)
        if outcome == "Succeeded":
            log(f"TFJob {namespace}/{name} succeeded")
            return obj
        if outcome == "Failed":
            raise TFJobError(f"TFJob {namespace}/{name} failed: {_condition_message(obj)}")
        if deadline is not None and time.monotonic() > deadline:
            raise TFJobError(f"TFJob {namespace}/{name} did not finish within {timeout_s:.0f} s")
        time.sleep(poll_seconds)
