"""Pipeline definitions and their entry points: compile, run locally, submit, schedule, validate k8s."""
