"""Digests of pushed images (``make push``): record them, and pin the kustomize base to them.

``record``: after ``<engine> push`` of one image, its manifest digest (the ``--digestfile``
podman and buildah write, or the ``RepoDigests`` docker keeps) goes into the record
(``images.lock.json``: ``{"<registry>/<repo>:<tag>": "sha256:..."}``), which ``make compile``
and ``make submit-pipeline`` read (:func:`components.images.image_ref`).

``overlay``: a kustomization over ``k8s/`` whose ``images:`` entries (kustomize's image
transformer: ``newName`` and ``digest``) point the base's images at the recorded digests, for
``kubectl apply -k build/k8s``. An image of the base with no recorded digest keeps its tag,
with a warning.

Usage: ``python -m pipelines.image_digests record REF --lock FILE (--digest-file F | --engine docker)``
and ``python -m pipelines.image_digests overlay --lock FILE --out DIR [--base k8s]``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from components.images import DEFAULT_REGISTRY, DIGEST_RE, REPOSITORIES, image_name, read_digests


def record(reference: str, digest: str, lock: str | Path) -> dict[str, str]:
    """Add ``reference -> digest`` to the record at ``lock``; returns the whole record.

    Read-modify-write under an exclusive ``flock`` (``make -j push`` pushes targets at once),
    written atomically (a temporary file renamed over the old one).
    """
    if not DIGEST_RE.match(digest):
        raise ValueError(f"digest of {reference} must be sha256:<64 hex>. Received: {digest!r}")
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{lock}.lock", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        digests = {**read_digests(str(lock)), reference: digest}
        fd, tmp = tempfile.mkstemp(dir=lock.parent, prefix=f".{lock.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(dict(sorted(digests.items())), f, indent=2)
            f.write("\n")
        os.replace(tmp, lock)
    return digests


def docker_digest(reference: str) -> str:
    """The digest docker recorded for ``reference``'s repository when it pushed it."""
    out = subprocess.run(["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", reference],
                         capture_output=True, text=True, check=True).stdout
    repo = reference.rsplit(":", 1)[0]
    found = [d.split("@", 1)[1] for d in json.loads(out) or [] if d.startswith(repo + "@")]
    if not found:
        raise ValueError(f"docker has no pushed digest for {reference}")
    return found[0]


def overlay(lock: str | Path, out: str | Path, base: str | Path = "k8s",
            environ: dict[str, str] | None = None) -> list[dict[str, str]]:
    """Write ``out/kustomization.yaml``: ``base`` with every recorded image pinned by digest.

    The base names images by their default names (``ghcr.io/wavenet-pipelines/...``); each
    entry maps one of those to ``IMAGE_REGISTRY``'s name at the digest recorded for
    ``IMAGE_TAG``. Returns the ``images:`` entries.
    """
    digests = read_digests(str(lock))
    images = []
    for target, repo in REPOSITORIES.items():
        name = image_name(target, environ if environ is not None else os.environ)
        if name in digests:
            images.append({"name": f"{DEFAULT_REGISTRY}/{repo}", "newName": name.rsplit(":", 1)[0],
                           "digest": digests[name]})
        elif target == "mlflow":  # the one image the base itself runs
            print(f"warning: no digest recorded for {name} in {lock}: {out} keeps the tag",
                  file=sys.stderr)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kust = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [os.path.relpath(Path(base).resolve(), out.resolve())], "images": images}
    (out / "kustomization.yaml").write_text(
        "# Written by `make push` (pipelines/image_digests.py): k8s/ with the pushed images by digest.\n"
        + yaml.safe_dump(kust, sort_keys=False))
    return images


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.image_digests")
    sub = p.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("record")
    r.add_argument("reference")
    r.add_argument("--lock", required=True)
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--digest-file")
    src.add_argument("--engine", choices=["docker"])
    o = sub.add_parser("overlay")
    o.add_argument("--lock", required=True)
    o.add_argument("--out", required=True)
    o.add_argument("--base", default="k8s")
    args = p.parse_args(argv)
    try:
        if args.verb == "record":
            digest = (Path(args.digest_file).read_text().strip() if args.digest_file
                      else docker_digest(args.reference))
            record(args.reference, digest, args.lock)
            print(f"recorded {args.reference} = {digest} in {args.lock}")
        else:
            images = overlay(args.lock, args.out, args.base)
            print(f"wrote {Path(args.out) / 'kustomization.yaml'} ({len(images)} image(s) by digest)")
    except (OSError, ValueError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
