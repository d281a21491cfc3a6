#!/usr/bin/env python3
"""Strict schema validation of rendered manifests against several Kubernetes versions.

Built-in kinds use the OpenAPI-derived JSON schemas shipped by the PyPI package
kubernetes-validate (strict mode: unknown fields are errors). The custom resources the chart
can render (KEDA ScaledObject, Prometheus Operator ServiceMonitor and PrometheusRule) have no
schema there; they are checked against the strict subset schemas in helm/tests/crd-schemas/. Any
other kind is an error.

Usage: k8s_validate.py -k 1.30 -k 1.33 FILE...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jsonschema
import yaml
from kubernetes_validate import utils as kv

CRDS = Path(__file__).with_name("crd-schemas")
CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", "--kubernetes-version", action="append", required=True)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    failures = checked = 0
    for f in a.files:
        docs = [d for d in yaml.safe_load_all(Path(f).read_text()) if d]
        for doc in docs:
            name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            custom = CUSTOM.get((doc.get("apiVersion"), doc.get("kind")))
            if custom:
                schema = json.loads((CRDS / custom).read_text())
                errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
                checked += 1
                for e in errors:
                    failures += 1
                    print(f"ERROR {f}: {name} (custom resource schema): {'.'.join(map(str, e.path))}: {e.message}")
                continue
            for version in a.kubernetes_version:
                checked += 1
                try:
                    kv.validate(doc, version, strict=True)
                except kv.ValidationError as e:
                    failures += 1
                    path = ".".join(str(p) for p in e.path)
                    print(f"ERROR {f}: {name} against Kubernetes {e.version}: {path}: {e.message}")
                except kv.SchemaNotFoundError as e:
                    failures += 1
                    print(f"ERROR {f}: {name}: no schema for {doc.get('apiVersion')} {doc.get('kind')} in Kubernetes {version}: {e.message}")
    print(f"k8s-validate: {checked} resource/version pairs checked against {', '.join(a.kubernetes_version)} (strict), {failures} errors")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
