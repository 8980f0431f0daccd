#!/usr/bin/env bash
# `make e2e`: a kind cluster with wsgate and the quickstart, then tests/e2e/.
# Reuses the cluster named by WSGATE_KIND_CLUSTER (default: wsgate) if it exists.
set -euo pipefail
cd "$(dirname "$0")/../.."
CLUSTER="${WSGATE_KIND_CLUSTER:-wsgate}"

for tool in kind docker kubectl helm; do
  command -v "$tool" >/dev/null || { echo "make e2e needs $tool on PATH"; exit 2; }
done

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --config kind-config.yaml
kubectl config use-context "kind-$CLUSTER"
docker build -t wsgate:dev .
kind load docker-image wsgate:dev --name "$CLUSTER"
kubectl apply -f crds/
helm upgrade --install wsgate helm/wsgate --namespace wsgate-system --create-namespace \
  --set image.tag=dev --set service.type=NodePort --set service.nodePort=30080 --wait
kubectl apply -f examples/kind/
kubectl rollout status deployment/echo --timeout=120s
