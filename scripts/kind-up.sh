#!/usr/bin/env bash
# Create the kind cluster and its local registry, install cert-manager, Knative Serving + Kourier
# and KServe 0.20 (Knative mode) at pinned versions, then wait for every component.
# Every manifest applied by URL is downloaded first and its sha256 compared with the sum recorded
# in scripts/cluster-assets.sha256; a mismatch or a missing sum stops the script.
# Usage: scripts/kind-up.sh [--record]
#   --record  trust on first use: download every asset and write its sum into
#             scripts/cluster-assets.sha256 (review the diff and commit it), then continue.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

RECORD_ASSETS=false
case "${1:-}" in
  "") ;;
  --record) RECORD_ASSETS=true ;;
  *) die "usage: $(basename "$0") [--record]" ;;
esac
ASSET_DIR="$(mktemp -d)"
trap 'rm -rf "$ASSET_DIR"' EXIT

# Versions KServe 0.20 is tested with (kserve-deps.env): cert-manager v1.17.0, Knative 1.21.
CERT_MANAGER_VERSION=v1.17.0
KNATIVE_SERVING_VERSION=knative-v1.21.1
KNATIVE_KOURIER_VERSION=knative-v1.21.0
KSERVE_VERSION=v0.20.0
KOURIER_NODE_PORT=31080
WAIT=300s

need_docker
need_kind
need_kubectl
need curl "install curl (it downloads the release manifests)"
need sha256sum "install coreutils (sha256sum checks the release manifests)"

# kind's local registry (https://kind.sigs.k8s.io/docs/user/local-registry/): a registry
# container on the host's 127.0.0.1:5001, joined to the `kind` network, and a containerd hosts
# file on each node mapping localhost:5001 to it. kind v0.27+ node images already read
# /etc/containerd/certs.d (config_path), so kind-config.yaml needs no containerd patch.
if [[ "$(docker inspect -f '{{.State.Running}}' "$REGISTRY_NAME" 2>/dev/null || true)" != true ]]; then
  info "starting the local registry $REGISTRY_NAME on $REGISTRY"
  docker rm -f "$REGISTRY_NAME" >/dev/null 2>&1 || true
  docker run -d --restart=always -p "127.0.0.1:${REGISTRY#localhost:}:5000" --network bridge \
    --name "$REGISTRY_NAME" "$REGISTRY_IMAGE" >/dev/null
fi

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  info "kind cluster $CLUSTER_NAME exists; reusing it"
else
  info "creating kind cluster $CLUSTER_NAME"
  kind create cluster --name "$CLUSTER_NAME" --config "$ROOT/kind-config.yaml" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER_NAME" >/dev/null

registry_dir="/etc/containerd/certs.d/$REGISTRY"
for node in $(kind get nodes --name "$CLUSTER_NAME"); do
  docker exec "$node" mkdir -p "$registry_dir"
  printf '[host."http://%s:5000"]\n' "$REGISTRY_NAME" \
    | docker exec -i "$node" cp /dev/stdin "$registry_dir/hosts.toml"
done
if [[ "$(docker inspect -f '{{json .NetworkSettings.Networks.kind}}' "$REGISTRY_NAME")" == null ]]; then
  docker network connect kind "$REGISTRY_NAME"
fi
# KEP-1755: tells tools where the cluster's local registry is.
kubectl apply -f - <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-registry-hosting
  namespace: kube-public
data:
  localRegistryHosting.v1: |
    host: "$REGISTRY"
    help: "https://kind.sigs.k8s.io/docs/user/local-registry/"
EOF

info "cert-manager $CERT_MANAGER_VERSION"
apply_asset "https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml"
kubectl -n cert-manager wait --for=condition=Available deployment --all --timeout="$WAIT"

info "Knative Serving $KNATIVE_SERVING_VERSION"
apply_asset "https://github.com/knative/serving/releases/download/$KNATIVE_SERVING_VERSION/serving-crds.yaml"
kubectl wait --for=condition=Established crd/services.serving.knative.dev --timeout=60s
apply_asset "https://github.com/knative/serving/releases/download/$KNATIVE_SERVING_VERSION/serving-core.yaml"
kubectl -n knative-serving wait --for=condition=Available deployment --all --timeout="$WAIT"

info "Kourier $KNATIVE_KOURIER_VERSION"
apply_asset "https://github.com/knative-extensions/net-kourier/releases/download/$KNATIVE_KOURIER_VERSION/kourier.yaml"
kubectl -n kourier-system wait --for=condition=Available deployment --all --timeout="$WAIT"
kubectl -n knative-serving wait --for=condition=Available deployment/net-kourier-controller --timeout="$WAIT"
# Reachable from the host through kind-config.yaml's port mapping (127.0.0.1:8081).
kubectl -n kourier-system patch service kourier \
  -p "{\"spec\":{\"type\":\"NodePort\",\"ports\":[{\"port\":80,\"nodePort\":$KOURIER_NODE_PORT}]}}"

info "configuring Knative"
kubectl -n knative-serving patch configmap/config-network --type merge \
  -p '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
# External routes get <name>.<namespace>.example.com (sent as Host through 127.0.0.1:8081);
# the default svc.cluster.local domain is not exposed on the ingress.
kubectl -n knative-serving patch configmap/config-domain --type merge \
  -p '{"data":{"example.com":""}}'
# Tag-to-digest resolution stays on for every registry but the kind registry: deploy.sh already
# gives our images by digest (nothing to resolve), and localhost:5001 names the node, not the
# Knative controller's pod, which could not reach it. kind.local,ko.local,dev.local is Knative's
# default list (knative/serving knative-v1.21.1 config/core/configmaps/deployment.yaml).
kubectl -n knative-serving patch configmap/config-deployment --type merge \
  -p "{\"data\":{\"registries-skipping-tag-resolving\":\"kind.local,ko.local,dev.local,$REGISTRY\"}}"
# Knative 1.19+ exports queue-proxy's request metrics (kn_serving_invocation_duration_seconds,
# kn_serving_queue_depth) only when asked: request-metrics-protocol defaults to `none`
# (knative/pkg observability/metrics/config.go). `prometheus` serves them on queue-proxy's
# http-usermetric port 9091 (knative/serving pkg/queue/sharedmain/otel.go), where the
# monitoring component's PodMonitor scrapes them.
kubectl -n knative-serving patch configmap/config-observability --type merge \
  -p '{"data":{"request-metrics-protocol":"prometheus"}}'
# emptyDir for the predictor's writable /tmp (read-only root filesystem). Knative 1.21's key is
# kubernetes.podspec-volumes-emptydir (knative/serving knative-v1.21.1 config/core/configmaps/features.yaml).
# tag-header-based-routing: the front end's nginx pins each user to a canary arm with the
# Knative-Serving-Tag header (latest|prev); an unknown tag gets the default split.
kubectl -n knative-serving patch configmap/config-features --type merge \
  -p '{"data":{"kubernetes.podspec-volumes-emptydir":"enabled","tag-header-based-routing":"enabled"}}'

info "KServe $KSERVE_VERSION"
apply_asset "https://github.com/kserve/kserve/releases/download/$KSERVE_VERSION/kserve-crds.yaml" --server-side
kubectl wait --for=condition=Established crd/inferenceservices.serving.kserve.io --timeout=60s
kubectl create namespace kserve --dry-run=client -o yaml | kubectl apply -f -
apply_asset "https://github.com/kserve/kserve/releases/download/$KSERVE_VERSION/kserve.yaml" --server-side
# kserve.yaml 0.20 also ships the llmisvc controller, whose webhook (failurePolicy: Fail) validates
# the LLMInferenceServiceConfig objects in kserve-cluster-resources.yaml: wait for every deployment
# in the namespace, then retry the apply while the webhook's endpoints come up.
kubectl -n kserve wait --for=condition=Available deployment --all --timeout="$WAIT"
cluster_resources="$(fetch_asset "https://github.com/kserve/kserve/releases/download/$KSERVE_VERSION/kserve-cluster-resources.yaml")"
for attempt in 1 2 3 4 5 6; do
  if kubectl apply --server-side -f "$cluster_resources"; then
    break
  fi
  [ "$attempt" -lt 6 ] || die "kserve-cluster-resources.yaml did not apply: check 'kubectl -n kserve get pods' and the webhooks"
  sleep 10
done

# Kourier instead of Istio: no top-level Istio VirtualService; Knative mode by default.
need python3 "python3 is needed to edit KServe's JSON configuration"
kubectl -n kserve get configmap inferenceservice-config -o json | python3 -c '
import json, sys
cm = json.load(sys.stdin)
ingress = json.loads(cm["data"]["ingress"])
ingress.update({"disableIstioVirtualHost": True, "ingressDomain": "example.com"})
cm["data"]["ingress"] = json.dumps(ingress, indent=2)
deploy = json.loads(cm["data"].get("deploy", "{}"))
deploy["defaultDeploymentMode"] = "Knative"
cm["data"]["deploy"] = json.dumps(deploy, indent=2)
json.dump(cm, sys.stdout)' | kubectl apply -f -
kubectl -n kserve rollout restart deployment/kserve-controller-manager
kubectl -n kserve rollout status deployment/kserve-controller-manager --timeout="$WAIT"

# Which overlays this node can run a canary of (each Namespace declares its need).
read -r cpu_m mem_mib < <(node_allocatable)
for env in "${ENVIRONMENTS[@]}"; do
  rendered="$ASSET_DIR/$env.yaml"
  kubectl kustomize "$ROOT/kustomize/overlays/$env" >"$rendered"
  need_cpu="$(declared_requirement "$rendered" min-node-cpu)"
  need_gi="$(declared_requirement "$rendered" min-node-memory-gi)"
  if ((cpu_m < need_cpu * 1000 || mem_mib < need_gi * 1024)); then
    info "warning: overlay $env needs ${need_cpu} CPUs / ${need_gi} GiB allocatable during a canary; this node has $((cpu_m / 1000)) CPUs / $((mem_mib / 1024)) GiB, so deploy.sh $env will refuse (give Docker more CPUs/memory)"
  fi
done
info "cluster ready: scripts/images.sh && scripts/deploy.sh dev"
