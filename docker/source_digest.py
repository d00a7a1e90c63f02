"""Print the digest of what docker/Dockerfile copies into an image (stdlib only).

`make image` labels every image with it (``org.wavenet-pipelines.source``), and the
tests' image fixtures compare the label with this checkout's digest, so a suite never
runs an image built from other sources without saying so ("stale image: make image").
"""

from __future__ import annotations

import hashlib
import os
import sys

# The paths the Dockerfile's COPY lines name (keep in step with docker/Dockerfile).
SOURCES = ("pyproject.toml", "setup.py", "uv.lock", "README.md", "docker/Dockerfile",
           "docker/stage_package.py", "k8s/tfjob-template.yaml", "wavenet", "components", "pipelines")
# What .dockerignore keeps out of the build context, among those.
SKIPPED_DIRS = {"__pycache__"}
SKIPPED_SUFFIXES = (".so", ".pyc")


def _files(root: str) -> list[str]:
    out = []
    for path in SOURCES:
        full = os.path.join(root, path)
        if os.path.isfile(full):
            out.append(path)
            continue
        for d, dirs, names in os.walk(full):
            dirs[:] = sorted(x for x in dirs if x not in SKIPPED_DIRS and not x.endswith(".egg-info"))
            out += [os.path.relpath(os.path.join(d, n), root) for n in sorted(names)
                    if not n.endswith(SKIPPED_SUFFIXES)]
    return out


def source_digest(root: str = ".") -> str:
    """sha256 (16 hex digits) over the paths and bytes of the image's sources under ``root``."""
    h = hashlib.sha256()
    for rel in _files(root):
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]


if __name__ == "__main__":
    print(source_digest(sys.argv[1] if len(sys.argv) > 1 else "."))
