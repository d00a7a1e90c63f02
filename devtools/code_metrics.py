"""Counts what makes code hard to enter: long functions, long parameter lists, nested classes.

Usage: ``python -m devtools.code_metrics [--max-lines 60] [--max-params 8] [folders...]``
(default folders: wavenet components pipelines devtools). Prints one line per offender and a
summary line; exits 1 when any offender has no reason written beside it. A reason is a comment
``# params: <why>`` or ``# length: <why>`` on the ``def`` line or the line above it.
Only the standard library: it reads the files as text through :mod:`ast`, runs nothing.
"""
from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_FOLDERS = ("wavenet", "components", "pipelines", "devtools")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    name: str
    kind: str  # "length", "params" or "nested-class"
    value: int
    excused: bool

    def __str__(self) -> str:
        note = " (reason given)" if self.excused else ""
        return f"{self.path}:{self.line}: {self.name}: {self.kind} {self.value}{note}"


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [*a.posonlyargs, *a.args, *a.kwonlyargs]
    n = len(names) + (a.vararg is not None) + (a.kwarg is not None)
    return n - (1 if names and names[0].arg in ("self", "cls") else 0)


def _excused(lines: list[str], fn: ast.AST, kind: str) -> bool:
    start = fn.lineno - 1
    nearby = lines[max(0, start - 1):start + 1]
    return any(f"# {kind}:" in text for text in nearby)


def scan_file(path: Path, max_lines: int, max_params: int) -> list[Finding]:
    """Every function longer than ``max_lines`` (its ``def`` to its last line, decorators and
    docstring included) or taking more than ``max_params`` parameters, and every class defined
    inside a function, in one file."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text, filename=str(path))
    found: list[Finding] = []

    def visit(node: ast.AST, qual: str, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{qual}{child.name}"
                length = child.end_lineno - child.lineno + 1
                if length > max_lines:
                    found.append(Finding(str(path), child.lineno, name, "length", length,
                                         _excused(lines, child, "length")))
                params = _params(child)
                if params > max_params:
                    found.append(Finding(str(path), child.lineno, name, "params", params,
                                         _excused(lines, child, "params")))
                visit(child, f"{name}.", True)
            elif isinstance(child, ast.ClassDef):
                if in_function:
                    found.append(Finding(str(path), child.lineno, f"{qual}{child.name}",
                                         "nested-class", 1, False))
                visit(child, f"{qual}{child.name}.", in_function)
            else:
                visit(child, qual, in_function)

    visit(tree, "", False)
    return found


def scan(folders: list[str], max_lines: int, max_params: int) -> list[Finding]:
    """:func:`scan_file` over every ``.py`` file below ``folders``, in path order."""
    files = sorted(p for f in folders for p in Path(f).rglob("*.py") if ".venv" not in p.parts)
    return [x for p in files for x in scan_file(p, max_lines, max_params)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", default=list(DEFAULT_FOLDERS))
    parser.add_argument("--max-lines", type=int, default=60)
    parser.add_argument("--max-params", type=int, default=8)
    args = parser.parse_args(argv)
    findings = scan(args.folders, args.max_lines, args.max_params)
    for f in findings:
        print(f)
    count = {k: sum(f.kind == k for f in findings) for k in ("length", "params", "nested-class")}
    unexcused = sum(not f.excused for f in findings)
    print(f"functions over {args.max_lines} lines: {count['length']}; over {args.max_params} "
          f"parameters: {count['params']}; classes inside functions: {count['nested-class']}; "
          f"without a reason: {unexcused}")
    return 1 if unexcused else 0


if __name__ == "__main__":
    sys.exit(main())
