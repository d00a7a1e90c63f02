"""The edges: the only modules that talk to the services outside this process.

Named for the role, not for one service: each module is the one door to one outside system,
so the rest of the library stays plain Python over local values, and a test can see at a glance
where a network call may start (``tests/test_contracts.py`` checks that no module elsewhere
imports these clients).

* :mod:`~wavenet.edges.tracking`: MLflow runs (params, metrics, tags, artifacts, models);
* :mod:`~wavenet.edges.registry`: the MLflow model registry (model URIs, versions, the champion);
* :mod:`~wavenet.edges.storage`: local folders and ``gs://`` buckets (google-cloud-storage);
* :mod:`~wavenet.edges.tfjob`: Kubernetes, training as a Kubeflow TFJob.

Import the modules themselves; this package imports nothing (the clients load only when a
module that needs one is imported).
"""
