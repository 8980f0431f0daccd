#!/usr/bin/env bash
# `make e2e`: a kind cluster with wsgate and the quickstart, then tests/e2e/.
# Reuses the cluster named by WSGATE_KIND_CLUSTER (default: wsgate) if it exists.
# Without kind, Docker (and its engine), kubectl or Helm it stops before doing anything,
# naming what is missing, with exit status 2.
set -euo pipefail
case "${BASH_SOURCE[0]}" in */*) cd "${BASH_SOURCE[0]%/*}/../.." ;; *) cd ../.. ;; esac
CLUSTER="${WSGATE_KIND_CLUSTER:-wsgate}"
# Sessions on a replaced proxy drain this long (the chart's default is 30 s): the
# proxy-replacement scenario waits for their 1001 close, not for the drain.
DRAIN_SECONDS="${WSGATE_E2E_DRAIN_SECONDS:-2}"

missing=()
for tool in kind docker kubectl helm; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "make e2e needs kind, docker, kubectl and helm on PATH; missing: ${missing[*]}." >&2
  echo "Install them (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)," \
       "or run \`make test\`, which skips tests/e2e." >&2
  exit 2
fi
if ! docker info >/dev/null 2>&1; then
  echo "make e2e needs a Docker engine: docker is installed, but \`docker info\` cannot" \
       "reach one (start it, or set DOCKER_HOST)." >&2
  exit 2
fi

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --config kind-config.yaml
kubectl config use-context "kind-$CLUSTER"

# Each build gets a tag of its own (from the image ID): `helm upgrade` then rolls the
# operator and the proxies whenever the image changed, and only then. The same image is
# also wsgate:dev, which examples/kind/ names.
docker build -t wsgate:dev .
TAG="dev-$(docker image inspect -f '{{.Id}}' wsgate:dev | sed 's/^sha256://' | cut -c1-12)"
docker tag wsgate:dev "wsgate:$TAG"
kind load docker-image "wsgate:$TAG" wsgate:dev --name "$CLUSTER"

kubectl apply -f crds/
helm upgrade --install wsgate helm/wsgate --namespace wsgate-system --create-namespace \
  --set image.tag="$TAG" --set service.type=NodePort --set service.nodePort=30080 \
  --set proxy.drainSeconds="$DRAIN_SECONDS" --wait --timeout 5m
kubectl apply -f examples/kind/
# The echo Deployment names wsgate:dev, whose content may have changed under the tag.
kubectl rollout restart deployment/echo
kubectl rollout status deployment/echo --timeout=120s
