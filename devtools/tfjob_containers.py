"""A rendered TFJob, run as containers on one machine: the Training Operator's part, minus Kubernetes.

:func:`run_tfjob_in_containers` takes the object :func:`wavenet.edges.tfjob.render_tfjob` returns
(whatever its command, args, env and volumes are) and starts one container per ``Worker``
replica from the pod template's ``tensorflow`` container, the way the operator and the
kubelet would:

* image, ``command`` (the entrypoint) and ``args`` as rendered; ``env`` entries as rendered
  (``secretKeyRef`` ones from the ``secrets`` given; a missing optional one stays unset);
* ``TF_CONFIG`` written as the operator writes it (:func:`operator_tf_config`), with worker
  addresses on 127.0.0.1 (host networking) instead of the job's headless Services;
* volumes: ``emptyDir`` -> a fresh folder per pod (``medium: Memory`` -> a tmpfs),
  ``hostPath`` -> a bind mount, ``configMap``/``secret`` -> files from the mappings given
  (nothing secret is read from anywhere else); a PVC or another source is refused;
* the security context's user and group, capabilities and privilege escalation; the root
  filesystem is read-only whatever the spec says (the images must run that way);
* GPUs are refused: this runs the CPU rendering (``gpus_per_worker=0``) of the same job.

``extra_env`` stands in for what the cluster gives every pod without the job naming it
(bucket credentials through Workload Identity; here the GCS emulator's address).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from devtools.containers import ContainerError, owner_label
from wavenet.edges.tfjob import CONTAINER, GPU_RESOURCE
from wavenet.local_workers import free_ports

__all__ = ["OPERATOR_PORT", "operator_tf_config", "cluster_addresses", "pod_run_args",
           "run_tfjob_in_containers"]

# The operator's default TensorFlow port (container port `tfjob-port`).
OPERATOR_PORT = 2222


def cluster_addresses(job: Mapping[str, Any], port: int = OPERATOR_PORT) -> list[str]:
    """The worker addresses the operator puts in TF_CONFIG on a cluster.

    ``<job>-worker-<i>.<namespace>.svc:<port>``: one headless Service per replica
    (kubeflow/training-operator, ``pkg/controller.v1/tensorflow/tensorflow.go``, ``genClusterSpec``).
    """
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    n = int(job["spec"]["tfReplicaSpecs"]["Worker"]["replicas"])
    return [f"{name}-worker-{i}.{ns}.svc:{port}" for i in range(n)]


def operator_tf_config(addresses: list[str], index: int) -> str:
    """``TF_CONFIG`` of Worker ``index``, byte for byte as the Training Operator writes it.

    The operator marshals a Go struct ``TFConfig{Cluster, Task, Environment}`` with
    ``json.Marshal`` (fields in that order, no spaces), replica type lower-cased and
    ``environment`` set to ``"cloud"`` (kubeflow/training-operator,
    ``pkg/controller.v1/tensorflow/tensorflow.go``, ``genTFConfigJSONStr``); this job has only
    ``Worker`` replicas, so the cluster has one key.
    """
    return json.dumps({"cluster": {"worker": list(addresses)},
                       "task": {"type": "worker", "index": index},
                       "environment": "cloud"}, separators=(",", ":"))


def _container(job: Mapping[str, Any]) -> tuple[dict, dict]:
    try:
        pod = job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    except (KeyError, TypeError):
        raise ContainerError("TFJob has no spec.tfReplicaSpecs.Worker.template.spec") from None
    matching = [c for c in pod.get("containers", []) if c.get("name") == CONTAINER]
    if not matching:
        raise ContainerError(f"TFJob's Worker has no container named {CONTAINER!r}")
    return pod, matching[0]


def _user(pod: Mapping[str, Any], c: Mapping[str, Any]) -> str | None:
    ctx = {**(pod.get("securityContext") or {}), **(c.get("securityContext") or {})}
    if "runAsUser" not in ctx:
        return None
    return f"{ctx['runAsUser']}:{ctx.get('runAsGroup', ctx['runAsUser'])}"


def _write_files(folder: Path, files: Mapping[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, text in files.items():
        (folder / key).write_text(text)
        (folder / key).chmod(0o444)
    folder.chmod(0o555)


def _pod_env(c: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str]] | None
             ) -> dict[str, str]:
    """The container's ``env`` with plain values and ``secretKeyRef`` resolved from ``secrets``."""
    env: dict[str, str] = {}
    for e in c.get("env") or []:
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref is not None:
            # As the kubelet: the key of ``secrets[name]``; a missing optional one leaves the
            # variable unset, a missing required one keeps the pod from starting.
            value = (secrets or {}).get(ref.get("name"), {}).get(ref.get("key"))
            if value is not None:
                env[e["name"]] = value
            elif not ref.get("optional"):
                raise ContainerError(f"env {e.get('name')!r} takes key {ref.get('key')!r} of secret "
                                     f"{ref.get('name')!r}: pass it in secrets")
            continue
        if "value" not in e:
            raise ContainerError(f"env {e.get('name')!r} comes from {sorted(set(e) - {'name'})}: "
                                 "pass its value in extra_env")
        env[e["name"]] = str(e["value"])
    return env


def _mount(v: Mapping[str, Any], path: str, ro: bool, pod_dir: Path, volumes: dict, tmpfs: dict,
           sources: Mapping[str, Mapping[str, Mapping[str, str]] | None]) -> None:
    """Add volume ``v`` mounted at ``path`` to ``volumes`` (binds) or ``tmpfs``.

    ``sources`` maps ``"configMap"`` and ``"secret"`` to their ``{name: {key: text}}``.
    """
    if "emptyDir" in v:
        spec = v["emptyDir"] or {}
        if spec.get("medium") == "Memory":
            size = str(spec.get("sizeLimit", "1Gi")).replace("Gi", "g").replace("Mi", "m")
            tmpfs[path] = f"size={size},mode=1777"
        else:
            folder = pod_dir / "emptyDir" / v["name"]
            folder.mkdir(parents=True, mode=0o777)
            folder.chmod(0o1777)  # an emptyDir is writable by the pod's user
            volumes[str(folder)] = {"bind": path, "mode": "ro" if ro else "rw"}
    elif "hostPath" in v:
        volumes[v["hostPath"]["path"]] = {"bind": path, "mode": "ro" if ro else "rw"}
    elif "configMap" in v or "secret" in v:
        kind = "configMap" if "configMap" in v else "secret"
        source = sources[kind]
        ref = v[kind].get("name") or v[kind].get("secretName")
        if not source or ref not in source:
            raise ContainerError(f"volume {v['name']!r} mounts {kind} {ref!r}: pass its files")
        folder = pod_dir / kind / v["name"]
        _write_files(folder, source[ref])
        volumes[str(folder)] = {"bind": path, "mode": "ro"}
    else:
        raise ContainerError(f"volume {v['name']!r}: only emptyDir, hostPath, configMap and "
                             f"secret volumes run here. Received: {sorted(set(v) - {'name'})}")


def _pod_volumes(pod: Mapping[str, Any], c: Mapping[str, Any], pod_dir: Path,
                 sources: Mapping[str, Mapping[str, Mapping[str, str]] | None]
                 ) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """The container's ``volumeMounts`` as ``(binds, tmpfs)``; /tmp and /var/tmp read-only."""
    volumes: dict[str, dict[str, str]] = {}
    tmpfs: dict[str, str] = {"/tmp": "ro,size=64k", "/var/tmp": "ro,size=64k"}
    by_name = {v["name"]: v for v in pod.get("volumes") or []}
    for m in c.get("volumeMounts") or []:
        v = by_name.get(m["name"])
        if v is None:
            raise ContainerError(f"volumeMount {m['name']!r} names no volume of the pod")
        _mount(v, m["mountPath"], bool(m.get("readOnly")), pod_dir, volumes, tmpfs, sources)
    return volumes, tmpfs


def _security_args(pod: Mapping[str, Any], c: Mapping[str, Any]) -> dict[str, Any]:
    """The pod's and container's securityContext as ``containers.run`` arguments."""
    args: dict[str, Any] = {}
    user = _user(pod, c)
    if user:
        args["user"] = user
    ctx = {**(pod.get("securityContext") or {}), **(c.get("securityContext") or {})}
    drop = ((ctx.get("capabilities") or {}).get("drop")) or []
    if drop:
        args["cap_drop"] = list(drop)
    if ctx.get("allowPrivilegeEscalation") is False:
        args["security_opt"] = ["no-new-privileges"]
    return args


def pod_run_args(job: Mapping[str, Any], index: int, addresses: list[str], pod_dir: Path, *,
                 extra_env: Mapping[str, str] | None = None,
                 config_maps: Mapping[str, Mapping[str, str]] | None = None,
                 secrets: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, Any]:
    """``containers.run`` arguments for Worker ``index`` of ``job`` (see the module docstring).

    Args:
        job: the rendered TFJob.
        index: the replica.
        addresses: every worker's ``host:port`` (TF_CONFIG).
        pod_dir: a folder of this pod's own (emptyDir volumes live under it).
        extra_env: what the cluster would give the pod (bucket access).
        config_maps: ``{name: {key: text}}`` for ``configMap`` volumes.
        secrets: ``{name: {key: text}}`` for ``secret`` volumes and ``secretKeyRef`` env.
    """
    pod, c = _container(job)
    limits = (c.get("resources") or {}).get("limits") or {}
    if int(limits.get(GPU_RESOURCE, 0) or 0) > 0:
        raise ContainerError(f"the TFJob asks for {GPU_RESOURCE}; render it with gpus_per_worker=0 "
                             "to run it here")
    env = _pod_env(c, secrets)
    env.update(extra_env or {})
    env["TF_CONFIG"] = operator_tf_config(addresses, index)
    volumes, tmpfs = _pod_volumes(pod, c, pod_dir, {"configMap": config_maps, "secret": secrets})
    args: dict[str, Any] = {
        "image": c["image"],
        "entrypoint": list(c.get("command") or []) or None,
        "command": [str(a) for a in c.get("args") or []],
        "environment": env,
        "volumes": volumes,
        "tmpfs": tmpfs,
        # Stricter than a spec without readOnlyRootFilesystem: our images must run read-only.
        "read_only": True,
        "network_mode": "host",
        "name": f"{job['metadata']['name']}-worker-{index}",
        "detach": True,
        "labels": owner_label(),
    }
    if c.get("workingDir"):
        args["working_dir"] = c["workingDir"]
    args.update(_security_args(pod, c))
    return args


def _exit_codes(started: list[Any], codes: list[int | None]) -> None:
    """Fill in ``codes`` for the containers of ``started`` that have exited since."""
    for i, ctr in enumerate(started):
        if codes[i] is None:
            ctr.reload()
            if ctr.status == "exited":
                codes[i] = int(ctr.attrs["State"]["ExitCode"])


def _failure(name: str, started: list[Any], codes: list[int | None],
             log: Callable[[str], None]) -> ContainerError:
    """The error naming every failed worker (exit status, last error line); the tails of
    workers other than 0 (whose log was streamed) go to ``log``."""
    failures = []
    for j in [k for k, c in enumerate(codes) if c not in (None, 0)]:
        tail = started[j].logs(tail=30).decode("utf-8", "replace").strip().splitlines()
        errors = [ln for ln in tail if ln.startswith("error: ")]
        failures.append(f"worker {j} exited with status {codes[j]}: "
                        f"{(errors or tail or ['(no output)'])[-1]}")
        if j != 0:
            for ln in tail[-15:]:
                log(f"worker {j}| {ln}")
    return ContainerError(f"TFJob {name}: " + "; ".join(failures))


def _wait_for_workers(name: str, started: list[Any], timeout_s: float, poll_s: float,
                      log: Callable[[str], None]) -> list[int | None]:
    """Every worker's exit status, once all exited 0; raises at the first failure or the timeout."""
    deadline = time.monotonic() + timeout_s
    codes: list[int | None] = [None] * len(started)
    while any(c is None for c in codes):
        _exit_codes(started, codes)
        if any(c not in (None, 0) for c in codes):
            time.sleep(2)  # let a peer that fails with it exit too: name every failure
            _exit_codes(started, codes)
            raise _failure(name, started, codes, log)
        if time.monotonic() > deadline:
            raise ContainerError(f"TFJob {name} did not finish within {timeout_s:.0f} s")
        time.sleep(poll_s)
    return codes


def run_tfjob_in_containers(job: Mapping[str, Any], docker_client, *,
                            extra_env: Mapping[str, str] | None = None,
                            config_maps: Mapping[str, Mapping[str, str]] | None = None,
                            secrets: Mapping[str, Mapping[str, str]] | None = None,
                            timeout_s: float = 1800.0, poll_s: float = 1.0,
                            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every Worker replica of ``job`` as a container; wait until all exit.

    Worker 0's log streams to ``log`` (as the launcher streams pod 0's). When a worker
    fails, the others are stopped (as ``cleanPodPolicy: Running`` does once the job fails).

    Returns:
        ``{"workers": N, "exit_codes": [...], "addresses": [...], "tf_configs": [...]}``.

    Raises:
        ContainerError: a worker failed (its exit status and last output line), or the timeout.
    """
    n = int(job["spec"]["tfReplicaSpecs"]["Worker"]["replicas"])
    addresses = [f"127.0.0.1:{p}" for p in free_ports(n)]
    work = Path(tempfile.mkdtemp(prefix=f"tfjob-{job['metadata']['name']}-"))
    work.chmod(0o755)
    started: list[Any] = []
    tf_configs: list[str] = []
    try:
        for i in range(n):
            args = pod_run_args(job, i, addresses, work / f"worker-{i}", extra_env=extra_env,
                                config_maps=config_maps, secrets=secrets)
            tf_configs.append(args["environment"]["TF_CONFIG"])
            image = args.pop("image")
            started.append(docker_client.containers.run(image, **args))
        follower = threading.Thread(target=_follow, args=(started[0], log), daemon=True)
        follower.start()
        codes = _wait_for_workers(job["metadata"]["name"], started, timeout_s, poll_s, log)
        follower.join(timeout=10)
        return {"workers": n, "exit_codes": codes, "addresses": addresses, "tf_configs": tf_configs}
    finally:
        for ctr in started:
            try:
                ctr.remove(force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        shutil.rmtree(work, ignore_errors=True)


def _follow(container, log: Callable[[str], None]) -> None:
    pending = ""
    try:
        for chunk in container.logs(stream=True, follow=True):
            pending += chunk.decode("utf-8", "replace")
            *lines, pending = pending.split("\n")
            for line in lines:
                log(line)
    except Exception:  # noqa: BLE001 - the container went away: the wait reports why
        pass
    if pending:
        log(pending)
