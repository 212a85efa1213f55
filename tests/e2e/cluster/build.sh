#!/usr/bin/env bash
# Build the e2e control plane (and Prometheus, for the dashboard's queries and `make cluster`) from the Go module
# proxy into a cache outside the repo, one component at a time:
#   kubernetes-<v>/bin/{kube-apiserver,kube-scheduler,kube-controller-manager}, etcd-<v>/bin/etcd,
#   kwok-<v>/bin/kwok, helm-<v>/bin/helm, prometheus-<v>/bin/prometheus
# under ${KVSCHED_E2E_CACHE:-$HOME/.cache/kvsched-e2e}.
# Called by `make e2e-tools` (and so by `make test`); a component whose directory holds a `.complete` marker is
# skipped, so a warm run costs nothing. Versions live in versions.env next to this script.
# Without Go: locally a warning and exit 0 (the e2e tests then skip with a reason); with CI=true a failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${KVSCHED_E2E_CACHE:-$HOME/.cache/kvsched-e2e}"
nice_cmd=(nice -n "${KVSCHED_E2E_NICE:-15}")
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

log() { printf '[e2e-build] %s\n' "$*" >&2; }

if ! command -v go >/dev/null 2>&1; then
    if [ "${CI:-}" = "true" ]; then log "go is not on PATH; CI needs it to build the e2e control plane"; exit 1; fi
    log "go is not on PATH; skipping the e2e control plane build (e2e tests will skip)"; exit 0
fi

# The harness makes its TLS material with the openssl CLI; install it where we can (Debian, as root).
if ! command -v openssl >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "openssl is missing; installing it with apt-get"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
    elif [ "${CI:-}" = "true" ]; then
        log "openssl is missing and cannot be installed here; the e2e harness needs it"; exit 1
    else
        log "openssl is missing; the e2e tests will skip until it is installed"
    fi
fi

scratch=()
trap 'rm -rf "${scratch[@]}"' EXIT

# build_component NAME VERSION BUILDER: run BUILDER OUTDIR in a scratch dir unless NAME-VERSION is complete.
build_component() {
    local name="$1" version="$2" builder="$3"
    local dest="$cache/$name-$version"
    if [ -f "$dest/.complete" ]; then log "$name $version: cached in $dest"; return 0; fi
    log "$name $version: building into $dest (this takes a while on a cold cache)"
    rm -rf "$dest" && mkdir -p "$dest/bin"
    local work start end
    work="$(mktemp -d)"
    scratch+=("$work")
    start=$(date +%s)
    ( cd "$work" && "$builder" "$version" "$dest/bin" )
    end=$(date +%s)
    rm -rf "$work"
    printf 'version=%s\ngo=%s\nbuild_seconds=%s\nbuilt_at=%s\n' "$version" "$(go env GOVERSION)" \
        "$((end - start))" "$(date -u +%FT%TZ)" > "$dest/.complete"
    log "$name $version: built in $((end - start))s"
}

# The kubernetes module replaces its staging modules (k8s.io/api, client-go, ...) with local paths and requires
# them at v0.0.0, so it cannot be built as a dependency as is. The wrapper module points each of those
# requirements at the published v0.X.Y of the same release, generated from the downloaded go.mod.
build_kubernetes() {
    local version="$1" out="$2" minor staging gomod
    minor="${version#v1.}"                       # 36.5
    gomod="$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')"
    staging="$(awk '/^require \(/{r=1; next} r && /^\)/{r=0} r && $1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$gomod")"
    [ -n "$staging" ] || { log "no k8s.io/* v0.0.0 requirements found in $gomod"; return 1; }
    {
        printf 'module kvsched.local/e2e/kubernetes\n\ngo %s\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' \
            "$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")" "$version"
        for m in $staging; do printf '\t%s v0.0.0 => %s v0.%s\n' "$m" "$m" "$minor"; done
        printf ')\n'
    } > go.mod
    local pkg=k8s.io/component-base/version cgo=k8s.io/client-go/pkg/version major="${version#v}"
    major="${major%%.*}"; local mnr="${minor%%.*}"
    local ld="-s -w"
    for p in $pkg $cgo; do
        ld+=" -X $p.gitVersion=$version -X $p.gitMajor=$major -X $p.gitMinor=$mnr"
        ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$(date -u +%FT%TZ)"
    done
    "${nice_cmd[@]}" go build -trimpath -ldflags "$ld" -o "$out/" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-scheduler \
        k8s.io/kubernetes/cmd/kube-controller-manager
    "$out/kube-apiserver" --version
}

# etcd's own main package lives in the go.etcd.io/etcd/v3 root module, which is not meant to be a dependency;
# the server module exposes the same entry point (etcdmain.Main), so a three-line main is enough.
build_etcd() {
    local version="$1" out="$2"
    printf 'module kvsched.local/e2e/etcd\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$version" > go.mod
    printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' > main.go
    "${nice_cmd[@]}" go build -trimpath -ldflags "-s -w" -o "$out/etcd" .
    "$out/etcd" --version
}

build_kwok() {
    local version="$1" out="$2"
    GOBIN="$out" "${nice_cmd[@]}" go install -trimpath \
        -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$version" "sigs.k8s.io/kwok/cmd/kwok@$version"
    "$out/kwok" --version
    # The kwok binary ships no Stages (kwokctl writes them into its config), so keep the published module's
    # default node and pod Stages next to the binary; the harness passes them to kwok with --config.
    local src
    src="$(go mod download -json "sigs.k8s.io/kwok@$version" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')/kustomize/stage"
    mkdir -p "$out/../stages"
    cp "$src/node/fast/node-initialize.yaml" "$src/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
        "$src/pod/fast/pod-ready.yaml" "$src/pod/fast/pod-complete.yaml" "$src/pod/fast/pod-delete.yaml" \
        "$out/../stages/"
}

build_helm() {
    local version="$1" out="$2"
    GOBIN="$out" "${nice_cmd[@]}" go install -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$version" "helm.sh/helm/v3/cmd/helm@$version"
    "$out/helm" version --short
}

# Prometheus 3.x is published as module versions v0.3MM.P (v0.316.0 is Prometheus 3.16.0). Its go.mod has no
# replace directives, so `go install` builds it directly. The tests and `make cluster` scrape static targets and
# use the HTTP API only, so the build leaves out every service discovery but file/http (`remove_all_sd`: no
# cloud SDKs, no client-go) and the web UI's assets (no `builtinassets`). Cold (empty GOCACHE and GOMODCACHE, load ~4 on 2 cores):
# 320 s wall / 268 s user CPU, against 516 s / 723 s with every service discovery.
build_prometheus() {
    local version="$1" out="$2" minor release
    minor="${version#v0.}"; minor="${minor%%.*}"
    release="3.$((minor - 300)).${version##*.}"               # v0.316.0 -> 3.16.0
    local pkg=github.com/prometheus/common/version
    GOBIN="$out" "${nice_cmd[@]}" go install -trimpath -tags remove_all_sd \
        -ldflags "-s -w -X $pkg.Version=$release -X $pkg.Branch=HEAD -X $pkg.Revision=$version" \
        "github.com/prometheus/prometheus/cmd/prometheus@$version"
    "$out/prometheus" --version
}

only="${1:-all}"
total_start=$(date +%s)
for c in kubernetes etcd kwok helm prometheus; do
    [ "$only" = all ] || [ "$only" = "$c" ] || continue
    case "$c" in
        kubernetes) build_component kubernetes "$K8S_VERSION" build_kubernetes ;;
        etcd) build_component etcd "$ETCD_VERSION" build_etcd ;;
        kwok) build_component kwok "$KWOK_VERSION" build_kwok ;;
        helm) build_component helm "$HELM_VERSION" build_helm ;;
        prometheus) build_component prometheus "$PROMETHEUS_VERSION" build_prometheus ;;
    esac
done
log "done in $(( $(date +%s) - total_start ))s; cache: $cache"
