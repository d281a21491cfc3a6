#!/usr/bin/env bash
# Proves the Helm chart helm/statehouse without a cluster or a container engine:
#   helm lint --strict · helm template · strict Kubernetes schema validation (2 minor versions) ·
#   checkov (every skip annotated and needed) · helm-unittest · README values table up to date ·
#   chart <-> binary agreement (the real statehouse binary accepts every rendered container's
#   args, env and config) · negative cases (unknown keys are refused by the schema or the binary) ·
#   the alerts (promtool check rules, promtool test rules) and the Grafana dashboard against the
#   metrics table docs/metrics.md (needs promtool: Debian package `prometheus`, or $PROMTOOL).
#
# Installs what it needs, once, under $STATEHOUSE_HELM_TOOLS (default
# ~/.cache/statehouse/helm-tools): helm and helm-unittest built from the Go module proxy, and a
# Python venv with kubernetes-validate, checkov and PyYAML from PyPI. Needs go, python3 (>= 3.11)
# and a built binary: target/debug/statehouse (cargo build -p statehouse-cli), or $STATEHOUSE_BIN.
#
# Last line: `helm-checks: N passed, M failed`; exit status 0 only if M = 0.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CHART="$HERE/statehouse"
TESTS="$HERE/tests"
TOOLS="${STATEHOUSE_HELM_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/statehouse/helm-tools}"

HELM_VERSION=v3.22.0
HELM_K8S_MINOR=37             # helm v3.22.0 is built against client-go v0.37 (its Makefile's default)
HELM_UNITTEST_VERSION=v1.1.2
HELM_UNITTEST_K8S_MINOR=36    # helm-unittest v1.1.2 uses client-go v0.36
PY_REQUIREMENTS="kubernetes-validate==1.37.0 checkov==3.3.30 PyYAML==6.0.4"
K8S_VERSIONS=(1.30 1.33)
RELEASE=sh
NAMESPACE=statehouse

export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

say() { printf '%s\n' "$*"; }
die() { printf 'helm/ci.sh: %s\n' "$*" >&2; exit 2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# ------------------------------------------------------------------------------------------------
# Tools (idempotent: each is checked and only built/installed when missing or at another version)
# ------------------------------------------------------------------------------------------------
install_helm() {
  local want="$HELM_VERSION+k8s1.$HELM_K8S_MINOR"
  if [[ -x "$TOOLS/bin/helm" && "$(cat "$TOOLS/bin/.helm" 2>/dev/null)" == "$want" ]]; then return; fi
  command -v go >/dev/null || die "go is needed to build helm (Go module helm.sh/helm/v3)"
  say "  installing helm $HELM_VERSION (go install; a few minutes the first time)"
  local pkg=helm.sh/helm/v3
  GOBIN="$TOOLS/bin" go install -ldflags "-X $pkg/internal/version.version=$HELM_VERSION \
    -X $pkg/pkg/lint/rules.k8sVersionMajor=1 -X $pkg/pkg/lint/rules.k8sVersionMinor=$HELM_K8S_MINOR \
    -X $pkg/pkg/chartutil.k8sVersionMajor=1 -X $pkg/pkg/chartutil.k8sVersionMinor=$HELM_K8S_MINOR" \
    "$pkg/cmd/helm@$HELM_VERSION"
  echo "$want" > "$TOOLS/bin/.helm"
}

install_helm_unittest() {
  if [[ -x "$TOOLS/bin/helm-unittest" && "$(cat "$TOOLS/bin/.helm-unittest" 2>/dev/null)" == "$HELM_UNITTEST_VERSION" ]]; then return; fi
  command -v go >/dev/null || die "go is needed to build helm-unittest"
  say "  installing helm-unittest $HELM_UNITTEST_VERSION (built from its Go module)"
  # The module has a replace directive, so `go install pkg@version` refuses it: build it as the
  # main module from a writable copy of the downloaded module.
  local dir src="$TOOLS/src/helm-unittest-$HELM_UNITTEST_VERSION"
  dir="$(cd /tmp && go mod download -json "github.com/helm-unittest/helm-unittest@$HELM_UNITTEST_VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -n "$dir" && -d "$dir" ]] || die "could not download github.com/helm-unittest/helm-unittest@$HELM_UNITTEST_VERSION"
  rm -rf "$src" && mkdir -p "$(dirname "$src")" && cp -r "$dir" "$src" && chmod -R u+w "$src"
  (cd "$src" && go build -ldflags "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
      -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$HELM_UNITTEST_K8S_MINOR" \
      -o "$TOOLS/bin/helm-unittest" ./cmd/helm-unittest)
  echo "$HELM_UNITTEST_VERSION" > "$TOOLS/bin/.helm-unittest"
}

install_venv() {
  local venv="$TOOLS/venv"
  if [[ -x "$venv/bin/python" && "$(cat "$venv/.requirements" 2>/dev/null)" == "$PY_REQUIREMENTS" ]]; then return; fi
  local py
  py="$(command -v python3)" || die "python3 (>= 3.11) is needed"
  "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || die "python3 >= 3.11 is needed (tomllib)"
  say "  creating the venv $venv ($PY_REQUIREMENTS)"
  [[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $PY_REQUIREMENTS
  echo "$PY_REQUIREMENTS" > "$venv/.requirements"
}

t0="$(now)"
say "helm/ci.sh: tools in $TOOLS"
mkdir -p "$TOOLS/bin"
install_helm
install_helm_unittest
install_venv
HELM="$TOOLS/bin/helm"
UNITTEST="$TOOLS/bin/helm-unittest"
PY="$TOOLS/venv/bin/python"
CHECKOV="$TOOLS/venv/bin/checkov"
say "  tools ready in $(elapsed "$t0"): $("$HELM" version --short), helm-unittest $HELM_UNITTEST_VERSION, $("$PY" -m pip list --disable-pip-version-check 2>/dev/null | awk '/^(checkov|kubernetes-validate) /{printf "%s %s  ", $1, $2}')"

BIN="${STATEHOUSE_BIN:-$ROOT/target/debug/statehouse}"
[[ -x "$BIN" ]] || die "no statehouse binary at $BIN: build it first (cargo build -p statehouse-cli) or set STATEHOUSE_BIN"
say "  binary: $BIN ($("$BIN" --version))"

# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/statehouse-helm-ci.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/rendered" "$WORK/logs"
passed=0
failed=0
failures=()

# check NAME COMMAND... : runs one check, prints its verdict and time; its output goes to a log
# shown in full on failure (and always with HELM_CI_VERBOSE=1).
check() {
  local name="$1"; shift
  local log="$WORK/logs/$(printf '%03d' $((passed + failed))).log" start
  start="$(now)"
  if "$@" >"$log" 2>&1; then
    passed=$((passed + 1))
    say "PASS  $name ($(elapsed "$start"))"
    [[ "${HELM_CI_VERBOSE:-0}" == 1 ]] && sed 's/^/      /' "$log"
  else
    failed=$((failed + 1))
    failures+=("$name")
    say "FAIL  $name ($(elapsed "$start"))"
    sed 's/^/      /' "$log"
  fi
  return 0
}

# Values sets: the chart defaults, then every ci/*-values.yaml.
names=(default)
files=("")
for f in "$CHART"/ci/*-values.yaml; do
  names+=("$(basename "$f" -values.yaml)")
  files+=("$f")
done

lint() { "$HELM" lint --strict "$CHART" ${1:+-f "$1"}; }
template() { "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" ${1:+-f "$1"} > "$2"; }

say ""
say "== lint and render"
for i in "${!names[@]}"; do
  check "helm lint --strict (${names[$i]})" lint "${files[$i]}"
done
for i in "${!names[@]}"; do
  check "helm template (${names[$i]})" template "${files[$i]}" "$WORK/rendered/${names[$i]}.yaml"
done

say ""
say "== Kubernetes schemas (strict) for ${K8S_VERSIONS[*]}"
kv_args=()
for v in "${K8S_VERSIONS[@]}"; do kv_args+=(-k "$v"); done
check "kubernetes-validate --strict ${K8S_VERSIONS[*]} (${names[*]})" \
  "$PY" "$TESTS/k8s_validate.py" "${kv_args[@]}" "$WORK/rendered/"*.yaml

say ""
say "== policy"
check "checkov (no failed check; every skip annotated and needed)" \
  "$PY" "$TESTS/checkov_skips.py" "$CHECKOV" "$WORK/rendered"

say ""
say "== unit tests and docs"
check "helm-unittest" "$UNITTEST" --strict "$CHART"
check "README.md values table matches values.yaml" "$PY" "$TESTS/values_doc.py" --check

say ""
say "== dashboard and alerts (rendered with ci/production-values.yaml)"
# promtool comes with Debian's `prometheus` package (.ci/run installs it); only the binary is
# used — no Prometheus server runs.
PROMTOOL="${PROMTOOL:-$(command -v promtool || true)}"
promtool_found() {
  [[ -n "$PROMTOOL" && -x "$PROMTOOL" ]] && "$PROMTOOL" --version && return 0
  echo "promtool not found: install it (Debian: apt-get install -y --no-install-recommends prometheus; or a release from https://prometheus.io/download/) or set PROMTOOL=/path/to/promtool"
  return 1
}
MON="$WORK/monitoring"
mkdir -p "$MON"
check "promtool found" promtool_found
check "PrometheusRule and dashboard ConfigMap rendered" \
  "$PY" "$TESTS/metrics_refs.py" extract "$WORK/rendered/production.yaml" "$MON"
cp "$TESTS/alerts_test.yaml" "$MON/alerts_test.yaml"
check "promtool check rules (the rendered PrometheusRule)" "${PROMTOOL:-promtool}" check rules "$MON/rules.yaml"
check "promtool test rules (helm/tests/alerts_test.yaml)" "${PROMTOOL:-promtool}" test rules "$MON/alerts_test.yaml"
check "dashboard JSON parses; every metric of the dashboard and the alerts is in docs/metrics.md; runbooks exist" \
  "$PY" "$TESTS/metrics_refs.py" check "$MON/statehouse.json" "$MON/rules.yaml"

say ""
say "== chart <-> binary agreement"
for i in "${!names[@]}"; do
  check "agreement (${names[$i]})" "$PY" "$TESTS/agreement.py" --helm "$HELM" --binary "$BIN" \
    --chart "$CHART" --release "$RELEASE" --namespace "$NAMESPACE" --label "${names[$i]}" \
    ${files[$i]:+--values "${files[$i]}"}
done
for f in "$TESTS"/negative/*.yaml; do
  key="$(sed -n 's/^# expect-key: *//p' "$f")"
  check "rejects $(basename "$f" .yaml) (names '$key')" "$PY" "$TESTS/agreement.py" --helm "$HELM" \
    --binary "$BIN" --chart "$CHART" --values "$f" --label "$(basename "$f" .yaml)" \
    --expect-reject --expect-key "$key"
done

say ""
say "helm/ci.sh: finished in $(elapsed "$t0")"
if ((failed)); then
  for f in "${failures[@]}"; do say "  failed: $f"; done
fi
say "helm-checks: $passed passed, $failed failed"
((failed == 0))
