"""Copy this project's installed files out of a venv into a staging tree (build stage only).

The images take the locked dependencies and the package as two layers: the dependencies
change with uv.lock alone, the package with every commit. This script collects what the
package installed (the files its wheel's RECORD lists, with whole top-level package folders so
that their compiled bytecode comes along) under ``DEST`` at their absolute paths, so that
``COPY --from=... DEST/ /`` lays them over the dependencies' venv.

Usage: python stage_package.py DIST_NAME DEST
"""

import csv
import shutil
import sys
import sysconfig
from importlib import metadata
from pathlib import Path


def main(dist_name: str, dest: str) -> None:
    dist = metadata.distribution(dist_name)
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    record = Path(dist._path) / "RECORD"  # the dist-info folder
    tops = set()
    with record.open(newline="") as f:
        for row in csv.reader(f):
            path = (site / row[0]).resolve()
            rel = path.relative_to(site) if path.is_relative_to(site) else None
            # A file of a top-level folder (wavenet/, the dist-info): take the whole folder.
            tops.add(site / rel.parts[0] if rel is not None and len(rel.parts) > 1 else path)
    for src in sorted(tops):
        target = Path(dest) / src.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, symlinks=True)
        elif src.exists():
            shutil.copy2(src, target, follow_symlinks=False)
        print(src)


if __name__ == "__main__":
    main(*sys.argv[1:])
