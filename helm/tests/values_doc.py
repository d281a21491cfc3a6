#!/usr/bin/env python3
"""The README's values table, generated from helm/statehouse/values.yaml.

Every key of values.yaml is documented by a `# -- description` comment right above it (a map
documented that way is one row; otherwise its keys are). `--check` fails if a key has no
description or if README.md's table (between the `values:start` / `values:end` markers) differs
from the generated one; `--write` rewrites the table.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent.parent / "statehouse"
START, END = "<!-- values:start -->", "<!-- values:end -->"
KEY = re.compile(r"^(\s*)([A-Za-z0-9_.-]+):(\s.*|)$")


def rows() -> tuple[list[tuple[str, str, str, str]], list[str]]:
    text = (CHART / "values.yaml").read_text()
    data = yaml.safe_load(text)
    out, missing = [], []
    stack: list[tuple[int, str]] = []
    desc: list[str] | None = None
    documented: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# -- "):
            desc = [stripped[5:].strip()]
            continue
        if stripped.startswith("#"):
            if desc is not None and stripped.startswith("# ") and not stripped.startswith("# -"):
                desc.append(stripped[2:].strip())
            continue
        if not stripped:
            desc = None
            continue
        m = KEY.match(line)
        if not m or stripped.startswith("- "):
            desc = None
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([p for _, p in stack] + [key])
        stack.append((indent, key))
        if any(path.startswith(d + ".") for d in documented):
            desc = None
            continue
        value = data
        for part in path.split("."):
            value = value[part]
        if desc is not None:
            documented.append(path)
            out.append((path, type_name(value), json.dumps(value, separators=(",", ":")), " ".join(desc)))
        elif not isinstance(value, dict) or not value:
            missing.append(path)
        desc = None
    return out, missing


def type_name(v) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object",
            type(None): "null"}[type(v)]


def table() -> str:
    lines = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for path, typ, default, desc in rows()[0]:
        default = default.replace("|", "\\|")
        desc = desc.replace("|", "\\|")
        lines.append(f"| `{path}` | {typ} | `{default}` | {desc} |")
    return "\n".join(lines)


def main() -> int:
    mode = sys.argv[1] if len(sys.argv) > 1 else "--check"
    _, missing = rows()
    readme = CHART / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"{readme}: no {START} … {END} markers")
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{table()}\n{END}{tail}"
    if mode == "--write":
        readme.write_text(new)
        print(f"wrote {readme}")
    if missing:
        print("values without a `# --` description: " + ", ".join(missing))
        return 1
    if mode == "--check" and new != text:
        print(f"{readme} is out of date: run python3 helm/tests/values_doc.py --write")
        return 1
    print(f"{len(rows()[0])} values documented")
    return 0


if __name__ == "__main__":
    sys.exit(main())
