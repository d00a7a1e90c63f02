"""The `wavenet` command line: one subcommand per verb, each a thin call into the library.

Errors meant for the user (:class:`wavenet.errors.WavenetError`) print as one
line, ``error: ...`` (passwords in URIs masked), and exit with status 2; a service
that stayed unavailable past its retries (:class:`wavenet.errors.ServiceUnavailable`)
or a data folder another run holds (:class:`wavenet.errors.Busy`) exits 138, which the
Training Operator retries and which succeeds when run again later.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable

from wavenet.context import RunContext
from wavenet.errors import ConfigError, Interrupted, WavenetError, one_line, redact


def _quiet_tensorflow() -> None:
    # Read at the edge: TensorFlow's C++ start-up chatter hides our own output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default=None, help="named preset: tiny, demo, bench, large (default demo)")
    g.add_argument("--config", default=None, metavar="FILE", help="YAML config file")
    g.add_argument("--config-yaml", default=None, metavar="TEXT",
                   help="the whole config as YAML text, as `wavenet config` prints it (how "
                   "training workers and TFJob pods receive it)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set model.stacks=3 (repeatable)")


# Flags that are shorthands for one config field each (`train --steps`, `generate --seconds`, ...).
# They are applied after every --set, so a flag wins over a --set of the same field.
FLAG_FIELDS = {"steps": "train.steps", "seconds": "generate.seconds",
               "temperature": "generate.temperature", "sustain": "generate.sustain",
               "clips": "generate.num_clips",
               "seed": "generate.seed", "weights": "generate.weights", "score": "generate.score"}


def _config(args: argparse.Namespace):
    from wavenet.config import ExperimentConfig, resolve_config

    overrides = list(args.overrides)
    for flag, field in FLAG_FIELDS.items():
        value = getattr(args, flag, None)
        if value is not None:  # the config validates the value and names the field
            overrides.append(f"{field}={value}")
    if args.config_yaml is not None:
        return resolve_config(base=ExperimentConfig.from_yaml(args.config_yaml), overrides=overrides)
    return resolve_config(args.preset, args.config, overrides)


def _read_json(path: str, what: str) -> dict:
    from wavenet.edges import storage

    try:
        obj = json.loads(storage.read_text(path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{what}: cannot read {path} as JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{what}: {path} is not a JSON object. Received: {type(obj).__name__}")
    return obj


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


# -- config -------------------------------------------------------------------

def _add_config(sub) -> None:
    p = sub.add_parser("config", help="print the resolved config as YAML")
    _add_config_args(p)
    p.set_defaults(func=_cmd_config)


def _cmd_config(args) -> int:
    cfg = _config(args)
    print(cfg.to_yaml(), end="")
    print(f"# receptive_field: {cfg.model.receptive_field}")
    return 0


# -- demo-data ----------------------------------------------------------------

def _add_demo_data(sub) -> None:
    p = sub.add_parser("demo-data", help="synthesise a small deterministic music corpus")
    p.add_argument("dst", help="output folder (one sub-folder per genre)")
    p.add_argument("--seconds", type=float, default=None,
                   help="seconds of audio per genre (default: the corpus's own)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo_data)


def _cmd_demo_data(args) -> int:
    from wavenet.data.demo import make_demo_corpus

    kwargs = {"seed": args.seed}
    if args.seconds is not None:
        kwargs["seconds_per_genre"] = args.seconds
    paths = make_demo_corpus(args.dst, **kwargs)
    print(f"wrote {len(paths)} tracks to {args.dst}")
    return 0


# -- preprocess ---------------------------------------------------------------

def _add_preprocess(sub) -> None:
    p = sub.add_parser("preprocess", help="audio files -> TFRecord shards + manifest.json")
    p.add_argument("src", help="folder or gs://bucket/prefix, searched recursively")
    p.add_argument("dst", help="output folder or gs:// prefix for shards and manifest")
    p.add_argument("--processes", type=int, default=None, help="worker processes (default: cores)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                   help="how long to wait while another run writes DST (default: an hour; then exit 138)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_preprocess)


def _cmd_preprocess(args) -> int:
    from wavenet.data.preprocess import preprocess
    from wavenet.data.shards import LOCK_WAIT_S

    manifest = preprocess(args.src, args.dst, _config(args), processes=args.processes,
                          progress=not args.no_progress,
                          wait_s=LOCK_WAIT_S if args.wait is None else args.wait)
    s = manifest.summary
    print(f"{s.processed} processed, {s.unchanged} unchanged, {s.skipped} skipped -> {args.dst} "
          f"({s.tracks} tracks, {s.scored_tracks} with a score, {s.labels} labels; "
          f"this version: {manifest.uri})")
    return 0


# -- train --------------------------------------------------------------------

def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a WaveNet on preprocessed shards")
    p.add_argument("data", help="folder or gs:// prefix with manifest.json and shards, or one of its "
                   "manifests/<version>.json (exactly the data one preprocess run wrote)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="checkpoints and the final model")
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes (MultiWorkerMirroredStrategy on 127.0.0.1)")
    p.add_argument("--steps", type=int, default=None, help="shorthand for --set train.steps=N")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default $MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: config name)")
    p.add_argument("--run-name", default=None)
    p.add_argument("--progress", default="auto", choices=("auto", "bar", "lines", "off"),
                   help="auto (default): a bar on a terminal, else a line every N steps "
                   "(step/total, bits, samples/s, ETA)")
    p.add_argument("--no-progress", action="store_true", help="same as --progress off")
    p.add_argument("--worker", action="store_true",
                   help="run as one worker of the cluster in $TF_CONFIG (TFJob pods; "
                   "--workers is then ignored)")
    p.add_argument("--init-model", default=None, metavar="MODEL",
                   help="warm start a new run from this model's weights: a .keras file or an "
                   "MLflow URI such as models:/wavenet@champion (same architecture)")
    p.add_argument("--threads", type=int, default=0,
                   help="TensorFlow threads per worker (default: TensorFlow's own in one process, "
                   "cores / workers for local workers)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_train)


# How long a finished worker waits for the others to finish too (_leave_with_the_cluster).
EXIT_BARRIER_TIMEOUT_S = 300


def _cmd_train(args) -> int:
    if args.worker:
        # A worker of a cluster stops only with the others, at a step they agree on
        # (wavenet.train.stopping): until its handlers are in (wavenet.train.stopping.StopSignals),
        # SIGTERM and SIGINT stay pending, neither acted on alone nor lost to TensorFlow's
        # handler. First thing, before the imports below: threads they start inherit the mask.
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT))
    from wavenet.edges.tracking import FAST_FAIL_HTTP_ENV
    from wavenet.train import train
    from wavenet.train.checks import parse_tf_config

    # The edge: MLflow's HTTP client reads these at each request; training
    # retries through its own metrics buffer, so requests must fail fast.
    for key, value in FAST_FAIL_HTTP_ENV.items():
        os.environ.setdefault(key, value)
    cfg = _config(args)
    tf_config = parse_tf_config(os.environ.get("TF_CONFIG")) if args.worker else None
    # Outside the training steps (set-up, export; a launcher's whole run) SIGTERM ends the
    # command through its clean-up; during the steps wavenet.train.stopping saves first.
    # The handler is put back when the command returns: a program that runs the command
    # in-process (a test, a notebook) keeps its own SIGTERM behaviour afterwards.
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        result = train(args.data, args.out, cfg, _train_context(args), workers=args.workers,
                       tf_config=tf_config)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if result.run_id is not None:  # the chief (or the only process) reports
        _print_json(result.summary)
    if args.worker:
        from wavenet.train.checks import worker_role

        _leave_with_the_cluster(worker_role(tf_config).workers)
    return 0


def _train_context(args) -> RunContext:
    """The run's settings, from the flags and this process's environment (the one entry point
    of a `wavenet train` process: a launcher's workers and a TFJob's pods get the same flags
    and variables back, wavenet.context.RunContext.worker_args/worker_env)."""
    return RunContext.create(args.tracking_uri, environ=os.environ, experiment=args.experiment,
                             run_name=args.run_name, kfp_run_id=os.environ.get("KFP_RUN_ID"),
                             init_model=args.init_model, threads=args.threads,
                             progress="off" if args.no_progress else args.progress)


def _leave_with_the_cluster(workers: int) -> None:
    """End a ``--worker`` process together with the cluster's others, without the interpreter's
    teardown.

    By then the model is written and logged and the MLflow run ended. Left to itself, each
    worker then spent 5 to 40 s (on a loaded 2-core machine) releasing TensorFlow's objects,
    first its training's, then in Python's finalization ("Garbage-collecting", seen with
    faulthandler), a different time in each; the first to exit stopped answering the
    coordination service, and the other, still releasing (the chief's release even waits for
    its peers), logged ``BaseCollectiveExecutor::StartAbort UNAVAILABLE ... The tasks have
    crashed`` after a successful run, 10 s later (the service's heartbeat timeout), and the
    step waited for both. Here every worker, its training's objects released, meets the others
    at a barrier of the coordination service, and all leave at once with ``os._exit``, which
    runs no atexit handler: the streams and logging are flushed here.

    Args:
        workers: the cluster's number of workers (one: nobody to wait for).
    """
    import logging

    from tensorflow.python.eager import context  # tensorflow/python/eager/context.py wait_at_barrier

    if workers > 1:  # a one-worker cluster has no coordination service
        try:
            context.context().wait_at_barrier("wavenet/exit", EXIT_BARRIER_TIMEOUT_S * 1000)
        except Exception as e:  # a peer gone already: the work is done either way
            print(f"warning: leaving without the other workers ({one_line(e)})", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0)


def _stage_context(args) -> RunContext:
    """The settings of an evaluate or generate run (this command is its entry point): the
    tracking URI resolved once against this process's environment, the experiment."""
    return RunContext.create(args.tracking_uri, environ=os.environ, experiment=args.experiment)


# -- evaluate -----------------------------------------------------------------

def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="held-out bits/sample vs baselines; optionally gate")
    p.add_argument("model", help=".keras file, MLflow model URI, or models:/NAME@champion")
    p.add_argument("data", help="folder or gs:// prefix with manifest.json and shards, or one of its "
                   "manifests/<version>.json (exactly the data one preprocess run wrote)")
    p.add_argument("--out", default=None, metavar="DIR", help="where metrics.json goes")
    p.add_argument("--gate", action="store_true",
                   help="compare with the @champion model and promote when better")
    p.add_argument("--split", default="validation", choices=["validation", "all"],
                   help="score the validation split (default), or every example of DATA (a test "
                   "folder preprocessed on its own; baselines are then counted on it too)")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--experiment", default=None)
    _add_config_args(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    from wavenet.evaluate import evaluate

    result = evaluate(args.model, args.data, _config(args), _stage_context(args), out_dir=args.out,
                      gate=args.gate, split=args.split)
    _print_json(result)
    return 0


# -- generate -----------------------------------------------------------------

def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="sample clips: WAVs, spectrograms, HTML listening report")
    p.add_argument("model", help=".keras file, MLflow model URI, or models:/NAME@champion")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--data", default=None, help="shards folder: validation audio for priming, and "
                   "training audio of each label that calibrates the sanity checks")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--experiment", default=None)
    p.add_argument("--evaluation", default=None, metavar="METRICS_JSON",
                   help="metrics.json of `wavenet evaluate --gate --out DIR`: the report shows "
                   "its bits/sample, baselines, champion and gate decision")
    p.add_argument("--no-progress", action="store_true")
    _add_config_args(p)
    everyday = p.add_argument_group(
        "everyday options", "shorthands for generate.* fields; each wins over a --set of the same field")
    everyday.add_argument("--seconds", default=None, help="seconds per clip (generate.seconds)")
    everyday.add_argument("--temperature", default=None,
                          help="softmax temperature, > 0 (generate.temperature)")
    everyday.add_argument("--sustain", default=None,
                          help="delay line for a score's lone pitched notes, in [0, 1) (generate.sustain)")
    everyday.add_argument("--clips", default=None, help="number of clips (generate.num_clips)")
    everyday.add_argument("--seed", default=None, help="sampling seed, >= 0 (generate.seed)")
    everyday.add_argument("--weights", default=None, choices=["float32", "bfloat16", "int8"],
                          help="generator weight precision (generate.weights)")
    everyday.add_argument("--score", default=None, metavar="FILE.mid",
                          help="a MIDI file every clip plays, for a model that plays a score "
                          "(generate.score; default: validation tracks' scores, with --data)")
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args) -> int:
    from wavenet.generation.verb import generate_samples

    evaluation = None
    if args.evaluation:
        evaluation = _read_json(args.evaluation, "--evaluation")
    result = generate_samples(args.model, args.out, _config(args), _stage_context(args),
                              data_dir=args.data, progress=not args.no_progress,
                              evaluation=evaluation)
    _print_json(result)
    return 0


# -- bench --------------------------------------------------------------------

def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks; print one JSON object")
    p.add_argument("what", choices=["generate", "preprocess", "train", "serve", "quality"])
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    p.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    p.add_argument("--model", default=None,
                   help="generate: a trained model (.keras or MLflow URI) instead of random weights; "
                        "serve: the MLflow model URI to serve (e.g. models:/wavenet@champion)")
    p.add_argument("--data", default=None,
                   help="generate, with --model: its shards; adds each weight precision's agreement. "
                   "quality: the shards to train on (default: the demo corpus)")
    p.add_argument("--budgets", default=None, metavar="N,N,...",
                   help="quality only: training budgets in predicted samples (steps x batch x window)")
    p.add_argument("--workers", type=int, default=1, help="quality only: training workers per run")
    _add_config_args(p)
    p.set_defaults(func=_cmd_bench)


# Benchmarks measure one core: BLAS/OpenMP and Numba read these when they load.
BENCH_THREADS_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                     "NUMBA_NUM_THREADS": "1"}


def _cmd_bench(args) -> int:
    import importlib

    if args.what in ("generate", "train"):
        os.environ.update(BENCH_THREADS_ENV)  # the edge: before the benchmark's imports
    module = importlib.import_module(f"wavenet.bench.{args.what}")
    if args.preset is None and args.config is None and args.config_yaml is None:
        args.preset = "demo" if args.what == "quality" else "bench"
    cfg = _config(args)
    if args.what == "quality":
        result = module.run(cfg, quick=args.quick, data=args.data, budgets=_budgets(args.budgets),
                            workers=args.workers)
    elif args.what == "generate":
        if args.data and not args.model:
            raise ConfigError("bench generate --data needs --model (the trained model to compare). "
                              f"Received: --data {args.data}")
        result = module.run(cfg, quick=args.quick, model=args.model, data=args.data)
    elif args.what == "serve" and not args.data:
        result = module.run(cfg, quick=args.quick, model=args.model)
    elif args.model or args.data:
        raise ConfigError(f"--model and --data apply to `bench generate` only. Received: bench {args.what}")
    else:
        result = module.run(cfg, quick=args.quick)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        _print_json(result)
    return 0


def _budgets(text: str | None) -> tuple[int, ...] | None:
    """``--budgets 1228800,2457600`` -> budgets in samples (None: the benchmark's default)."""
    if text is None:
        return None
    try:
        budgets = tuple(int(float(b)) for b in text.split(","))
    except ValueError:
        budgets = ()
    if not budgets or min(budgets) < 1:
        raise ConfigError(f"--budgets must be positive sample counts separated by commas. Received: {text!r}")
    return budgets


_COMMANDS: list[Callable] = [_add_config, _add_demo_data, _add_preprocess, _add_train,
                             _add_evaluate, _add_generate, _add_bench]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wavenet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_tensorflow()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except WavenetError as e:
        from wavenet.train.exit_codes import exit_code

        if getattr(args, "worker", False):
            return _worker_exit(e)
        # 2 (bad input), or 138 when a service stayed unavailable (errors.ServiceUnavailable).
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return exit_code(e)
    except Interrupted as e:  # stopped by a signal after saving what it could
        if getattr(args, "worker", False):
            return _worker_exit(e)
        print(str(e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if getattr(args, "worker", False):  # a TFJob pod: the operator reads the exit code
            return _worker_exit(e)
        raise


def _stop_on_sigterm(signum, frame) -> None:
    """SIGTERM (pod eviction, `kill`) outside the steps: unwind through clean-up, exit 143."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second one must not cut the clean-up
    raise Interrupted("stopped by SIGTERM; the same command resumes from the last checkpoint",
                      128 + signum)


def _worker_exit(e: BaseException) -> int:
    """One line and the exit code of the one policy (``wavenet.train.exit_codes``)."""
    from wavenet.train.exit_codes import exit_code, is_retryable

    code = exit_code(e)
    kind = "retryable" if is_retryable(code) else "permanent"
    # "error: " first, as the local launcher expects of a worker's one-line error.
    print(f"error: {one_line(e, with_type=not isinstance(e, (Interrupted, WavenetError)))} "
          f"(exit {code}, {kind})",
          file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
