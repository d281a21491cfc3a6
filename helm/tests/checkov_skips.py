#!/usr/bin/env python3
"""Run checkov on rendered manifests and prove the chart's `checkov.io/skipN` annotations honest.

1. checkov on the manifests as rendered: no failed check allowed.
2. checkov on a copy with every `checkov.io/skip*` annotation removed: every check that run 1
   skipped must fail here (no skip without a failing check behind it), and every failure here must
   be one that run 1 skipped (the annotations are the only reason run 1 passed).

Usage: checkov_skips.py CHECKOV RENDERED_DIR
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml


def run(checkov: str, directory: Path) -> dict:
    p = subprocess.run(
        [checkov, "-d", str(directory), "--framework", "kubernetes", "--skip-download",
         "-o", "json"],
        capture_output=True, text=True)
    if not p.stdout.strip():
        raise SystemExit(f"checkov produced no output (exit {p.returncode}): {p.stderr[-2000:]}")
    data = json.loads(p.stdout)
    if isinstance(data, list):  # one entry per framework
        data = next(d for d in data if d.get("check_type") == "kubernetes")
    return data


def key(c: dict) -> tuple[str, str, str]:
    return (Path(c["file_path"]).name, c["resource"], c["check_id"])


def strip(src: Path, dst: Path) -> None:
    for f in src.glob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(f.read_text()) if d]
        for d in docs:
            ann = d.get("metadata", {}).get("annotations")
            if ann:
                for k in [k for k in ann if k.startswith("checkov.io/skip")]:
                    del ann[k]
        (dst / f.name).write_text(yaml.safe_dump_all(docs, sort_keys=False))


def main() -> int:
    checkov, rendered = sys.argv[1], Path(sys.argv[2])
    first = run(checkov, rendered)
    res = first.get("results", {})
    failed = res.get("failed_checks", [])
    skipped = res.get("skipped_checks", [])
    summary = first.get("summary", {})
    print(f"checkov: {summary.get('passed', 0)} passed, {summary.get('failed', 0)} failed, "
          f"{summary.get('skipped', 0)} skipped (annotated), {summary.get('parsing_errors', 0)} parsing errors, "
          f"{summary.get('resource_count', 0)} resources")
    ok = True
    for c in failed:
        ok = False
        print(f"  FAIL {c['check_id']} {c['check_name']}: {c['resource']} ({Path(c['file_path']).name})")
    if summary.get("parsing_errors"):
        ok = False
        print(f"  FAIL parsing errors: {res.get('parsing_errors')}")
    reasons = {}
    for c in skipped:
        reasons.setdefault(c["check_id"], c.get("check_result", {}).get("suppress_comment", ""))
    for cid, why in sorted(reasons.items()):
        print(f"  skip {cid}: {why}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        strip(rendered, tmp)
        second = run(checkov, tmp)
    fails_without = {key(c) for c in second.get("results", {}).get("failed_checks", [])}
    skipped_keys = {key(c) for c in skipped}
    unneeded = skipped_keys - fails_without
    unannotated = fails_without - skipped_keys
    for k in sorted(unneeded):
        ok = False
        print(f"  FAIL skip annotation not needed: {k[2]} on {k[1]} ({k[0]}) passes without it")
    for k in sorted(unannotated):
        ok = False
        print(f"  FAIL {k[2]} fails on {k[1]} ({k[0]}) without a matching skip annotation")
    if ok:
        print(f"  ok   each of the {len(skipped_keys)} skips hides a check that fails without it, and nothing else fails")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
