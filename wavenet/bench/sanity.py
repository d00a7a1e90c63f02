"""Measure the sanity checks: their verdict on real music, on a model's clips, on failure cases.

Not a speed benchmark: it prints the table README's "Sanity checks" section
reports, through the same code path ``wavenet generate`` uses (shards ->
training examples per label -> :func:`wavenet.samples.calibrate_labels` ->
:func:`wavenet.quality.analyze`)::

    python -m wavenet.bench.sanity [--samples RUN/generate-samples/samples]
                                   [--music /usr/share/scummvm/drascula/audio]

* **Real audio, demo corpus:** the demo corpus (3 genres x 3 tracks) is
  preprocessed with the ``demo`` preset; the checks are calibrated on each
  label's training split and every clip-long window (non-overlapping) of the
  validation tracks is checked: music the calibration never saw.
* **Real audio, ``--music DIR``:** the same for any folder (e.g. Debian's
  ``drascula-music``; never committed).
* **A model's clips, ``--samples DIR``:** the verdict recorded in
  ``samples.json`` by ``wavenet generate`` (e.g. ``make run``'s).
* **Failure cases:** white, pink and brown noise (0.3 RMS), silence and a
  stuck value (code 160, +0.035), each checked against every label's ranges.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

import numpy as np

CLIP_SECONDS = 2.0  # the demo preset's generate.seconds


def failure_cases(n: int, sample_rate: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic failures, ``n`` samples each, as mu-law codes would carry them."""
    from wavenet.audio import mu_law_decode, mu_law_encode

    rng = np.random.default_rng(seed)
    f = np.fft.rfftfreq(n, 1.0 / sample_rate)
    f[0] = f[1]
    spectrum = np.fft.rfft(rng.normal(size=n))

    def coloured(exponent: float) -> np.ndarray:
        x = np.fft.irfft(spectrum / f ** (exponent / 2.0), n)
        return np.clip(0.3 * x / x.std(), -1.0, 1.0)

    cases = {"white noise": coloured(0.0), "pink noise": coloured(1.0), "brown noise": coloured(2.0),
             "silence": np.zeros(n), "stuck value": mu_law_decode(np.full(n, 160))}
    return {k: mu_law_decode(mu_law_encode(v)) for k, v in cases.items()}


def _failed(result: dict[str, Any]) -> list[str]:
    """Names of the failed checks: calibrated ones and those that need no data."""
    names = [c["name"] for c in result["checks"] if not c["passed"]]
    return names + [w.split(":")[0] for w in result["warnings"] if w.split(":")[0] not in names]


def _range(check: dict[str, Any]) -> str:
    low = "" if check["low"] is None else f"{check['low']:.3g}"
    return f"{low}..{check['high']:.3g}"


def real_audio(src: str, work: str, name: str) -> tuple[dict[str, Any], dict]:
    """Preprocess ``src`` (demo preset), calibrate on train, check every validation window."""
    from wavenet.audio import mu_law_decode
    from wavenet.config import preset
    from wavenet.data import track_parts
    from wavenet.preprocess import preprocess
    from wavenet.quality import analyze
    from wavenet.samples import calibrate_labels, read_examples

    cfg = preset("demo")
    sr, q = cfg.audio.sample_rate, cfg.audio.quantization_channels
    dst = os.path.join(work, name)
    manifest = preprocess(src, dst, cfg, progress=False)
    n = int(CLIP_SECONDS * sr)
    reference = int(cfg.generate.reference_seconds * sr)
    names = manifest["labels"]
    calibrations = calibrate_labels(read_examples(dst, "train", 8 * max(reference, n)), sr, q, window=n,
                                    max_windows=max(8, round(reference / n)), names=names)
    rows = {}
    for f in manifest["files"]:
        codes = np.load(os.path.join(dst, f["codes"]))
        for split, a, b in track_parts(f):
            if split != "validation":
                continue
            row = rows.setdefault(f["label"], {"windows": 0, "passed": 0, "failed": {}, "tracks": 0,
                                               "holdout": set()})
            row["tracks"] += 1
            row["holdout"].add("tail" if f["split"] == "tail" else "tracks")
            cal = calibrations[f["label_id"]]
            for i in range(a, b - n + 1, n):
                r = analyze(mu_law_decode(codes[i:i + n], q), sr, codes=codes[i:i + n], calibration=cal)
                row["windows"] += 1
                failed = _failed(r)
                row["passed"] += not failed
                for k in failed:
                    row["failed"][k] = row["failed"].get(k, 0) + 1
    for row in rows.values():
        row["holdout"] = "+".join(sorted(row["holdout"], reverse=True))
    return rows, calibrations


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wavenet.bench.sanity", description=__doc__.splitlines()[0])
    p.add_argument("--samples", help="a `wavenet generate` output folder (samples.json)")
    p.add_argument("--music", help="a folder of real music (one label per sub-folder)")
    p.add_argument("--json", help="also write every number to this file")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from wavenet.demo import make_demo_corpus
    from wavenet.quality import analyze

    out: dict[str, Any] = {}
    lines = ["| audio | label | windows (2 s) | pass every check | failed checks (windows) |",
             "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="wavenet-sanity-") as work:
        make_demo_corpus(os.path.join(work, "demo-src"))
        sources = [("demo corpus", os.path.join(work, "demo-src"))]
        if args.music:
            sources.append((f"music: {args.music}", args.music))
        all_cals = {}
        for title, src in sources:
            rows, cals = real_audio(src, work, "demo" if title == "demo corpus" else "music")
            all_cals[title] = cals
            out[title] = rows
            for label, r in sorted(rows.items()):
                failed = ", ".join(f"{k} ({v})" for k, v in sorted(r["failed"].items())) or "-"
                lines.append(f"| {title}, {r['tracks']} held-out {'tail' if r['holdout'] == 'tail' else 'track'}"
                             f"(s) | {label} | {r['windows']} | {r['passed']} ({r['passed'] / r['windows']:.0%}) "
                             f"| {failed} |")
        if args.samples:
            summary = json.load(open(os.path.join(args.samples, "samples.json")))
            out["samples"] = []
            lines += ["", "| model clip | label | failed checks (value; accepted range) |", "|---|---|---|"]
            for clip in summary["clips"]:
                failed = [f"{c['name']} {c['value']:.3g} ({_range(c)})" for c in clip["checks"] if not c["passed"]]
                failed += [w.split(":")[0] for w in clip["warnings"]
                           if w.split(":")[0] in ("silence", "white noise", "stuck value", "clipping")]
                out["samples"].append({"clip": clip["name"], "label": clip["label"], "failed": failed})
                lines.append(f"| {clip['name']} | {clip['label']} | {'; '.join(failed) or 'none: passes'} |")
        lines += ["", "| failure case | " + " | ".join(f"{t}: {lab}" for t, cals in all_cals.items()
                                                  for lab in [c["label"] for k, c in cals.items() if k is not None])
                  + " |"]
        lines.append("|---|" + "---|" * sum(len(c) - 1 for c in all_cals.values()))
        sr = 16000
        out["failures"] = {}
        for case, audio in failure_cases(int(CLIP_SECONDS * sr), sr).items():
            cells = []
            for title, cals in all_cals.items():
                for key, cal in cals.items():
                    if key is None:
                        continue
                    failed = _failed(analyze(audio, sr, calibration=cal))
                    out["failures"].setdefault(case, {})[f"{title}: {cal['label']}"] = failed
                    cells.append(", ".join(failed) if failed else "**passes**")
            lines.append(f"| {case} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
