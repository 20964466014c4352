#!/usr/bin/env bash
# Create the kind cluster and install cert-manager, Knative Serving + Kourier and KServe 0.20
# (Knative mode) at pinned versions, then wait for every component.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

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

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  info "kind cluster $CLUSTER_NAME exists; reusing it"
else
  info "creating kind cluster $CLUSTER_NAME"
  kind create cluster --name "$CLUSTER_NAME" --config "$ROOT/kind-config.yaml" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER_NAME" >/dev/null

info "cert-manager $CERT_MANAGER_VERSION"
kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml"
kubectl -n cert-manager wait --for=condition=Available deployment --all --timeout="$WAIT"

info "Knative Serving $KNATIVE_SERVING_VERSION"
kubectl apply -f "https://github.com/knative/serving/releases/download/$KNATIVE_SERVING_VERSION/serving-crds.yaml"
kubectl wait --for=condition=Established crd/services.serving.knative.dev --timeout=60s
kubectl apply -f "https://github.com/knative/serving/releases/download/$KNATIVE_SERVING_VERSION/serving-core.yaml"
kubectl -n knative-serving wait --for=condition=Available deployment --all --timeout="$WAIT"

info "Kourier $KNATIVE_KOURIER_VERSION"
kubectl apply -f "https://github.com/knative-extensions/net-kourier/releases/download/$KNATIVE_KOURIER_VERSION/kourier.yaml"
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
# Images loaded with `kind load` exist in no registry: Knative must not resolve their tags to
# digests. Ours are docker.io/movie-mlops/*; kind.local/ko.local/dev.local are the usual local names.
kubectl -n knative-serving patch configmap/config-deployment --type merge \
  -p '{"data":{"registries-skipping-tag-resolving":"kind.local,ko.local,dev.local,docker.io,index.docker.io"}}'
# emptyDir for the predictor's writable /tmp (read-only root filesystem). Knative 1.21's key is
# kubernetes.podspec-volumes-emptydir (knative/serving knative-v1.21.1 config/core/configmaps/features.yaml).
# tag-header-based-routing: the front end's nginx pins each user to a canary arm with the
# Knative-Serving-Tag header (latest|prev); an unknown tag gets the default split.
kubectl -n knative-serving patch configmap/config-features --type merge \
  -p '{"data":{"kubernetes.podspec-volumes-emptydir":"enabled","tag-header-based-routing":"enabled"}}'

info "KServe $KSERVE_VERSION"
kubectl apply --server-side -f "https://github.com/kserve/kserve/releases/download/$KSERVE_VERSION/kserve-crds.yaml"
kubectl wait --for=condition=Established crd/inferenceservices.serving.kserve.io --timeout=60s
kubectl create namespace kserve --dry-run=client -o yaml | kubectl apply -f -
kubectl apply --server-side -f "https://github.com/kserve/kserve/releases/download/$KSERVE_VERSION/kserve.yaml"
# kserve.yaml 0.20 also ships the llmisvc controller, whose webhook (failurePolicy: Fail) validates
# the LLMInferenceServiceConfig objects in kserve-cluster-resources.yaml: wait for every deployment
# in the namespace, then retry the apply while the webhook's endpoints come up.
kubectl -n kserve wait --for=condition=Available deployment --all --timeout="$WAIT"
for attempt in 1 2 3 4 5 6; do
  if kubectl apply --server-side -f "https://github.com/kserve/kserve/releases/download/$KSERVE_VERSION/kserve-cluster-resources.yaml"; then
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

info "cluster ready: scripts/images.sh && scripts/kind-load.sh && scripts/deploy.sh dev"
