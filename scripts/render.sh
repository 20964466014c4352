#!/usr/bin/env bash
# Print the manifests scripts/deploy.sh applies for ENV: the overlay, with
#  - every project image set to the digest scripts/images.sh pushed (never a tag),
#  - the rollout ServiceAccount's API server egress (NetworkPolicy rollout-to-api-server) set to
#    the cluster's API server addresses instead of the placeholder $API_SERVER_PLACEHOLDER,
#  - the Prometheus operator objects (PodMonitor, ServiceMonitor) left out when the cluster has
#    no monitoring.coreos.com CRDs (kube-prometheus-stack not installed).
# It wraps the overlay in a generated kustomization (images: digest, patches), so kustomize does
# the rewriting. Values not given as options are read from the current kube context.
# Usage: scripts/render.sh ENV [--digests FILE] [--api-server-ips IP[,IP...]]
#                              [--api-server-ports PORT[,PORT...]] [--monitoring-crds yes|no]
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

env="${1:-}"
check_env "$env"
shift
digests="$IMAGE_DIGESTS"
api_ips=""
api_ports=""
monitoring_crds=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --digests) digests="${2:?--digests needs a file}"; shift 2 ;;
    --api-server-ips) api_ips="${2:?--api-server-ips needs addresses}"; shift 2 ;;
    --api-server-ports) api_ports="${2:?--api-server-ports needs ports}"; shift 2 ;;
    --monitoring-crds) monitoring_crds="${2:?--monitoring-crds needs yes or no}"; shift 2 ;;
    *) die "unknown option $1 (see the usage at the top of $0)" ;;
  esac
done
need_kubectl

# Images: one digest per project image, as pushed.
[[ -s "$digests" ]] || die "no pushed image digests in $digests: run scripts/images.sh (it builds, pushes to $REGISTRY and records them)"
image_entries=""
for image in "${IMAGES[@]}"; do
  line="$(grep -m1 "^$IMAGE_PREFIX/$image@sha256:[0-9a-f]\{64\}$" "$digests" || true)"
  [[ -n "$line" ]] || die "$image has no pushed digest in $digests: run scripts/images.sh $image"
  image_entries+="  - name: $IMAGE_PREFIX/$image
    digest: ${line#*@}
"
done

# The API server, as pods reach it: the `kubernetes` Service's ClusterIP (port 443) and, because
# most CNIs evaluate policy after the Service's DNAT, its endpoints (kind: the node, 6443).
if [[ -z "$api_ips" || -z "$api_ports" ]]; then
  cluster_ip="$(kubectl -n default get service kubernetes -o jsonpath='{.spec.clusterIP}')"
  endpoint_ips="$(kubectl -n default get endpoints kubernetes \
    -o jsonpath='{range .subsets[*].addresses[*]}{.ip}{","}{end}' 2>/dev/null)"
  endpoint_ports="$(kubectl -n default get endpoints kubernetes \
    -o jsonpath='{range .subsets[*].ports[*]}{.port}{","}{end}' 2>/dev/null)"
  [[ -n "$cluster_ip" && -n "$endpoint_ips" && -n "$endpoint_ports" ]] \
    || die "cannot read the API server's addresses (kubectl -n default get endpoints kubernetes): check the kube context"
  api_ips="${api_ips:-$cluster_ip,${endpoint_ips%,}}"
  api_ports="${api_ports:-443,${endpoint_ports%,}}"
fi
ip_blocks=""
IFS=, read -r -a ips <<<"$api_ips"
for ip in "${ips[@]}"; do
  [[ "$ip" =~ ^[0-9a-fA-F:.]+$ ]] || die "not an IP address: '$ip'"
  if [[ "$ip" == *:* ]]; then cidr="$ip/128"; else cidr="$ip/32"; fi
  [[ "$cidr" != "$API_SERVER_PLACEHOLDER" ]] || die "$ip is the placeholder, not an API server"
  ip_blocks+="            - ipBlock: {cidr: \"$cidr\"}
"
done
port_list=""
IFS=, read -r -a ports <<<"$api_ports"
for port in "${ports[@]}"; do
  [[ "$port" =~ ^[0-9]+$ ]] || die "not a port: '$port'"
  port_list+="            - {protocol: TCP, port: $port}
"
done

if [[ -z "$monitoring_crds" ]]; then
  if kubectl get crd podmonitors.monitoring.coreos.com servicemonitors.monitoring.coreos.com >/dev/null 2>&1; then
    monitoring_crds=yes
  else
    monitoring_crds=no
  fi
fi
drop_monitors=""
case "$monitoring_crds" in
  yes) ;;
  no)
    info "no Prometheus operator CRDs in the cluster: PodMonitor/ServiceMonitor left out (docs/cluster.md, 'Monitoring')"
    for kind in PodMonitor ServiceMonitor; do
      drop_monitors+="  - target: {group: monitoring.coreos.com, kind: $kind}
    patch: |-
      \$patch: delete
      apiVersion: monitoring.coreos.com/v1
      kind: $kind
      metadata: {name: any}
"
    done
    ;;
  *) die "--monitoring-crds is yes or no, not '$monitoring_crds'" ;;
esac

mkdir -p "$ROOT/.local"
work="$(mktemp -d "$ROOT/.local/render.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# kustomize takes the overlay only by a relative path: the wrapper lives two levels below ROOT.
cat >"$work/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../kustomize/overlays/$env
images:
$image_entries
patches:
  - target: {kind: NetworkPolicy, name: rollout-to-api-server}
    patch: |-
      - op: replace
        path: /spec/egress/0
        value:
          to:
$ip_blocks          ports:
$port_list$drop_monitors
EOF
rendered="$(kubectl kustomize "$work")"
if grep -q "$API_SERVER_PLACEHOLDER" <<<"$rendered"; then
  die "the API server placeholder $API_SERVER_PLACEHOLDER survived rendering: check the rollout-to-api-server NetworkPolicy"
fi
if grep -E "image: *$IMAGE_PREFIX/" <<<"$rendered" | grep -qv "@sha256:"; then
  die "a project image is still deployed by tag: check the overlay's images: names"
fi
printf '%s\n' "$rendered"
