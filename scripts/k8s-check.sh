#!/usr/bin/env bash
# Validates the Kubernetes manifests without a cluster: builds each overlay of
# deploy/kubernetes as `kustomize build` does, decodes every object strictly against
# the official Kubernetes API types (a KEDA ScaledObject against KEDA's own CRD schema),
# and checks what the platform needs of its Deployments (deploy/kubernetes/validate).
# The validator's own tests prove it catches broken manifests.
set -Eeuo pipefail
cd "$(dirname "$0")/../deploy/kubernetes"
log() { echo "k8s-check: $*" >&2; }
command -v go >/dev/null || { log "needs Go (https://go.dev/doc/install) to build the validator"; exit 1; }

# The ScaledObject schema of this KEDA release, from the Go module proxy.
KEDA_VERSION=v2.19.0
keda_dir=$(cd validate && go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
export KEDA_CRD="$keda_dir/config/crd/bases/keda.sh_scaledobjects.yaml"
[[ -f "$KEDA_CRD" ]] || { log "KEDA $KEDA_VERSION's ScaledObject CRD not found at $KEDA_CRD"; exit 1; }

cd validate
log "the validator catches broken manifests (go test)"
go test -count=1 ./...
log "the shipped overlays"
go run . --keda-crd "$KEDA_CRD" ../overlays/example ../overlays/example-keda
