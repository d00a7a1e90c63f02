"""The recipe search's tool (docs/benchmarks.md): train one `demo` variant, then evaluate and
listen to it under several generation settings without retraining.

    .venv/bin/python -m devtools.recipe_sweep --work DIR --name NAME \
        --set audio.sample_rate=8000 --set model.layers_per_stack=10 \
        [--budget SAMPLES] [--gen generate.temperature=0.9 ...] [--gen-only]

Shards are made once per sample rate under DIR/shards-<sr> (the demo corpus, 60 s per genre,
as `wavenet bench quality` makes it); the model under DIR/<NAME>. Each --gen is one
comma-separated list of generate.* overrides ("base" for none). One JSON line per row goes to
stdout and DIR/results.jsonl. Budget in predicted samples (steps x batch x window), the
schedule sized to the steps as the bench does (wavenet/bench/quality.py).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import yaml

from wavenet.config import preset


def _parse(items: list[str]) -> dict:
    out = {}
    for item in items:
        for kv in item.split(","):
            if kv and kv != "base":
                k, v = kv.split("=", 1)
                out[k] = yaml.safe_load(v)
    return out


def _shards(work: str, cfg) -> str:
    from wavenet.bench.quality import _demo_shards
    d = os.path.join(work, f"shards-{cfg.audio.sample_rate}")
    if not os.path.isdir(d):
        tmp = os.path.join(work, f"tmp-{cfg.audio.sample_rate}")
        made = _demo_shards(tmp, cfg, 60.0)
        os.rename(made, d)
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--budget", type=int, default=4_915_200)
    ap.add_argument("--gen", action="append", default=[])
    ap.add_argument("--gen-only", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    from wavenet.context import RunContext
    from wavenet.evaluate import evaluate
    from wavenet.generation.verb import generate_samples
    from wavenet.train import train

    os.makedirs(a.work, exist_ok=True)
    cfg = preset("demo").with_overrides(_parse(a.set))
    per_step = cfg.train.samples_per_step
    steps = max(1, round(a.budget / per_step))
    cfg = cfg.with_overrides({
        "train.steps": steps, "train.warmup_steps": min(cfg.train.warmup_steps, steps // 10),
        "train.checkpoint_every": steps, "train.validate_every": 0,
        "train.log_every": max(1, min(cfg.train.log_every, steps))})
    data = _shards(a.work, cfg)
    uri = f"sqlite:///{os.path.join(a.work, 'mlflow.db')}"
    out = os.path.join(a.work, a.name)
    model = os.path.join(out, "model.keras")
    train_s = None
    load_train = None
    if not a.gen_only:
        t0 = time.perf_counter()
        train(data, out, cfg, RunContext.create(uri, progress="off"), workers=a.workers)
        train_s = round(time.perf_counter() - t0, 1)
        load_train = os.getloadavg()
    scores = evaluate(model, data, cfg, RunContext.create(uri))
    for gi, g in enumerate(a.gen or ["base"]):
        gcfg = cfg.with_overrides(_parse([g]))
        t0 = time.perf_counter()
        clips = generate_samples(model, os.path.join(out, f"samples-{gi}-{int(time.time())}"), gcfg,
                                 RunContext.create(uri), data_dir=data, progress=False)
        passed = clips["checks_passed"]
        row = {"name": a.name, "set": a.set, "gen": g, "steps": steps, "budget": steps * per_step,
               "train_s": train_s, "load_after_train": load_train, "gen_s": round(time.perf_counter() - t0, 1),
               "load": os.getloadavg(), "bits": round(scores["bits_per_sample"], 3),
               "bigram": round(scores["baselines"]["bigram"], 3),
               "checks": passed.get("samples/checks_passed_fraction"),
               "per_label": {k.rsplit("/", 1)[1]: round(v, 3) for k, v in passed.items()
                             if k.startswith("samples/checks_passed_fraction/")},
               "failed": {c["label"] or "all": [k["name"] for k in c["checks"] if not k["passed"]]
                          for c in clips["clips"]},
               "values": {c["label"] or "all": {k["name"]: [round(k["value"], 3), k["low"] and round(k["low"], 3), round(k["high"], 3)] for k in c["checks"]}
                          for c in clips["clips"]}}
        line = json.dumps(row, default=str)
        print(line, flush=True)
        with open(os.path.join(a.work, "results.jsonl"), "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
