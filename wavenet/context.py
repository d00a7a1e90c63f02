"""The settings of one tracked run, as one value: :class:`RunContext`.

Built once at an entry point (the ``wavenet`` command line, a pipeline component) and
passed whole through the library: the tracking URI is resolved there, once, and every
MLflow call of the run goes to that store (``MlflowClient(ctx.tracking_uri)``), never to
whatever a global ``mlflow.set_tracking_uri`` last pointed at.

A run that crosses a process boundary (local worker processes, the pods of a TFJob) takes
its context along in the form the worker's ``wavenet train`` reads back: the tracking URI
and the KFP run id in the environment (:meth:`RunContext.worker_env`; a URI may hold a
database password, and a command line is readable by every user of the machine), the rest
as flags (:meth:`RunContext.worker_args`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from wavenet.errors import redact

__all__ = ["RunContext", "POD_MLFLOW_ENV"]

# What KFP's MLflow integration and the user's tracking settings put in a step's environment,
# and MLflow's basic-auth credentials (issue 10, Found 2): what a TFJob pod gets of the
# caller's environment. The pods' template takes the credentials from a Secret by reference
# (wavenet.edges.tfjob.render_tfjob refuses them in clear).
POD_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID",
                  "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_INSECURE_TLS",
                  "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@dataclass(frozen=True)
class RunContext:
    """Where and how one run is tracked; one value from the entry point to the MLflow calls.

    Attributes:
        tracking_uri: the resolved MLflow URI (:meth:`create` resolves it: the argument, else
            ``MLFLOW_TRACKING_URI``, else ./mlflow.db; an http(s) URI with credentials is refused).
        experiment: MLflow experiment (None: the config's name).
        run_name: name of a new MLflow run (None: :func:`wavenet.edges.tracking.run_name`).
        kfp_run_id: the Kubeflow Pipelines run, tagged on the MLflow run (``kfp.run_id``).
        init_model: warm start: a ``.keras`` path or MLflow model URI whose weights start a new run.
        progress: the chief's progress display: True or ``"auto"``, ``"bar"``, ``"lines"``,
            False or ``"off"``.
        threads: TensorFlow intra/inter-op threads per process (0: the default).
        environ: the caller's environment: ``MLFLOW_*`` for the MLflow run (KFP's
            ``MLFLOW_RUN_ID`` becomes its parent) and what worker processes inherit
            (None: this process's, read when used). Left out of ``repr`` and comparisons.
    """

    tracking_uri: str
    experiment: str | None = None
    run_name: str | None = None
    kfp_run_id: str | None = None
    init_model: str | None = None
    progress: bool | str = True
    threads: int = 0
    environ: Mapping[str, str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def create(cls, tracking_uri: str | None = None, *, environ: Mapping[str, str] | None = None,
               **settings) -> RunContext:
        """The context of a run, its tracking URI resolved (once, here) against ``environ``.

        Args:
            tracking_uri: the MLflow URI (None or empty: ``MLFLOW_TRACKING_URI`` of
                ``environ``, else ./mlflow.db).
            environ: the caller's environment (None: this process's).
            **settings: the other fields (``experiment``, ``run_name``, ...); empty
                strings mean "not given" (a pipeline parameter left empty).

        Raises:
            TrackingError: an ``http(s)`` URI with credentials in it.
        """
        from wavenet.edges.tracking import resolve_tracking_uri  # mlflow: only when a run is made

        given = {k: (v if v != "" else None) for k, v in settings.items()}
        return cls(resolve_tracking_uri(tracking_uri or None, environ), environ=environ, **given)

    def replace(self, **changes) -> RunContext:
        """A copy with ``changes`` (e.g. the resolved ``init_model``)."""
        return dataclasses.replace(self, **changes)

    @property
    def env(self) -> Mapping[str, str]:
        """The caller's environment (``environ``, else this process's)."""
        return os.environ if self.environ is None else self.environ

    def worker_args(self) -> list[str]:
        """The ``wavenet train`` flags that carry this context to a worker (no tracking URI)."""
        argv: list[str] = []
        if self.threads:
            argv += ["--threads", str(self.threads)]
        if self.progress is False or self.progress == "off":
            argv.append("--no-progress")
        elif self.progress in ("bar", "lines"):
            argv += ["--progress", self.progress]
        for flag, value in (("--experiment", self.experiment), ("--run-name", self.run_name),
                            ("--init-model", self.init_model)):
            if value:
                argv += [flag, value]
        return argv

    def worker_env(self) -> dict[str, str]:
        """The environment that carries the rest of this context to a worker: the tracking URI
        (out of the command line: it may hold a database password) and the KFP run id."""
        env = {"MLFLOW_TRACKING_URI": self.tracking_uri}
        if self.kfp_run_id:
            env["KFP_RUN_ID"] = self.kfp_run_id
        return env

    def pod_env(self) -> dict[str, str]:
        """A TFJob pod's environment: :meth:`worker_env` and the MLflow variables
        (:data:`POD_MLFLOW_ENV`) of the caller's environment."""
        return {**{k: self.env[k] for k in POD_MLFLOW_ENV if self.env.get(k)}, **self.worker_env()}

    def __repr__(self) -> str:
        # A database URI may carry a password: never in a repr (logs, tracebacks).
        shown = ", ".join(f"{f.name}={redact(str(v)) if f.name == 'tracking_uri' else v!r}"
                          for f in dataclasses.fields(self) if f.repr
                          for v in [getattr(self, f.name)])
        return f"RunContext({shown})"
