{{/*
Names and labels. Resource names are <fullname>[-suffix], cut to the 63 characters a
label value or DNS label allows.
*/}}
{{- define "kubescribe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubescribe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubescribe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "kubescribe.labels" -}}
helm.sh/chart: {{ include "kubescribe.chart" . }}
{{ include "kubescribe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubescribe
{{- end }}

{{- define "kubescribe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubescribe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector of the operator pod and Service. */}}
{{- define "kubescribe.operatorSelectorLabels" -}}
{{ include "kubescribe.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kubescribe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubescribe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubescribe.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{/* The models the runners' volume holds: runner.modelCache.preload's names and gateway.models, as a JSON list. */}}
{{- define "kubescribe.preloadNames" -}}
{{- $names := list }}
{{- range .Values.runner.modelCache.preload }}{{ $names = append $names .name }}{{ end }}
{{- range .Values.gateway.models }}{{ if not (has . $names) }}{{ $names = append $names . }}{{ end }}{{ end }}
{{- toJson $names }}
{{- end }}

{{- define "kubescribe.runnerImage" -}}
{{- printf "%s:%s" .Values.runner.image.repository (default .Chart.AppVersion .Values.runner.image.tag) }}
{{- end }}

{{/* Namespace of pooled runner Jobs: set, else the watched namespace, else the release's. */}}
{{- define "kubescribe.poolNamespace" -}}
{{- default (default .Release.Namespace .Values.watchNamespace) .Values.operator.pool.namespace }}
{{- end }}

{{- define "kubescribe.redisFullname" -}}
{{- printf "%s-redis" (include "kubescribe.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The Redis URL the operator and runners use. The in-chart Redis is named by its
namespace-qualified Service name, because runner pods may run in other namespaces. With
redis.sentinel it names the sentinels and the service they monitor
(redis+sentinel://host1:26379,host2:26379/<serviceName>/<db>): clients ask them where the
primary is, and again after a failover (kubescribe.redisconn).
*/}}
{{- define "kubescribe.redisUrl" -}}
{{- $sentinel := .Values.redis.sentinel }}
{{- if and .Values.redis.internal.enabled $sentinel.enabled }}
{{- fail "redis.sentinel.enabled and redis.internal.enabled exclude each other: the in-chart Redis is one server without sentinels" }}
{{- else if .Values.redis.internal.enabled }}
{{- printf "redis://%s.%s.svc:6379/0" (include "kubescribe.redisFullname" .) .Release.Namespace }}
{{- else if $sentinel.enabled }}
{{- if not $sentinel.hosts }}
{{- fail "redis.sentinel.hosts: list the sentinels as host:port when redis.sentinel.enabled" }}
{{- end }}
{{- printf "%s://%s/%s/%d" (ternary "rediss+sentinel" "redis+sentinel" $sentinel.tls) (join "," $sentinel.hosts) $sentinel.serviceName ($sentinel.db | int) }}
{{- else }}
{{- .Values.redis.url }}
{{- end }}
{{- end }}

{{/*
The sentinels' own password (redis.sentinel.passwordSecret) for the operator and the
gateway; the operator passes the same Secret on to runner Jobs.
*/}}
{{- define "kubescribe.redisSentinelPasswordEnv" -}}
{{- $sentinel := .Values.redis.sentinel }}
{{- if and $sentinel.enabled $sentinel.passwordSecret.name }}
- name: KUBESCRIBE_REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $sentinel.passwordSecret.name }}
      key: {{ $sentinel.passwordSecret.key }}
{{- end }}
{{- end }}

{{/*
Secret and key holding the Redis password; empty name when there is none. The in-chart
Redis uses redis.existingSecret when given (GitOps tools that render with `helm template`
cannot keep a generated password), else a Secret the chart generates.
*/}}
{{- define "kubescribe.redisSecretName" -}}
{{- if and .Values.redis.internal.enabled (not .Values.redis.existingSecret) }}
{{- include "kubescribe.redisFullname" . }}
{{- else }}
{{- .Values.redis.existingSecret }}
{{- end }}
{{- end }}

{{- define "kubescribe.redisSecretKey" -}}
{{- if and .Values.redis.internal.enabled (not .Values.redis.existingSecret) }}
{{- print "redis-password" }}
{{- else }}
{{- .Values.redis.existingSecretPasswordKey }}
{{- end }}
{{- end }}

{{/*
A map of maps with every leaf as a string, as JSON: the operator reads
KUBESCRIBE_RUNNER_RESOURCES as dict[str, dict[str, str]], and `cpu: 1` in YAML is a number.
*/}}
{{- define "kubescribe.stringMapOfMaps" -}}
{{- $out := dict }}
{{- range $k, $v := . }}
{{- $inner := dict }}
{{- range $ik, $iv := $v }}
{{- $_ := set $inner $ik (toString $iv) }}
{{- end }}
{{- $_ := set $out $k $inner }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* A flat map with every value as a string, as JSON. */}}
{{- define "kubescribe.stringMap" -}}
{{- $out := dict }}
{{- range $k, $v := . }}
{{- $_ := set $out $k (toString $v) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
Labels of every monitoring object (ServiceMonitor, PodMonitor, PrometheusRule, dashboard
ConfigMap): the chart's own, then monitoring.labels (what a Prometheus' selectors need,
e.g. kube-prometheus-stack's `release`), then the object's own extra labels (the dict
passed as .extra).
*/}}
{{- define "kubescribe.monitoringLabels" -}}
{{- $labels := merge (dict) (.extra | default dict) (.root.Values.monitoring.labels | default dict) }}
{{ include "kubescribe.labels" .root }}
{{- range $k, $v := $labels }}
{{ $k }}: {{ $v | quote }}
{{- end }}
{{- end }}

{{/*
Relabelings shared by the ServiceMonitor and the PodMonitor (called with dict "root" $
"runner" bool), so operator and runner series of one install carry the same identity:
`job` is the release name (from the pods' app.kubernetes.io/instance label) and `namespace`
the release's namespace. A runner pod's own namespace, where its request lives, is kept as
`request_namespace`. The alerts and the dashboard group and scope by exactly job and
namespace.
*/}}
{{- define "kubescribe.monitorRelabelings" -}}
- action: replace
  sourceLabels: [__meta_kubernetes_pod_label_app_kubernetes_io_component]
  targetLabel: component
- action: replace
  sourceLabels: [__meta_kubernetes_pod_label_app_kubernetes_io_instance]
  targetLabel: job
{{- if .runner }}
- action: replace
  sourceLabels: [__meta_kubernetes_namespace]
  targetLabel: request_namespace
{{- end }}
- action: replace
  replacement: {{ .root.Release.Namespace }}
  targetLabel: namespace
{{- end }}

{{/* Namespaces where runner pods run, for their egress NetworkPolicy (a JSON list). */}}
{{- define "kubescribe.runnerNamespaces" -}}
{{- $list := .Values.networkPolicy.runnerNamespaces }}
{{- if not $list }}
{{- $list = list (default .Release.Namespace .Values.watchNamespace) }}
{{- if eq .Values.operator.mode "pool" }}
{{- $list = append $list (include "kubescribe.poolNamespace" .) }}
{{- end }}
{{- end }}
{{- $list | uniq | toJson }}
{{- end }}

{{/* Selector of the gateway pods and Service. */}}
{{- define "kubescribe.gatewaySelectorLabels" -}}
{{ include "kubescribe.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "kubescribe.gatewayServiceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (printf "%s-gateway" (include "kubescribe.fullname" .)) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The gateway runs from the operator image (its gateway extra) unless told otherwise. */}}
{{- define "kubescribe.gatewayImage" -}}
{{- $repo := default .Values.operator.image.repository .Values.gateway.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.operator.image.tag) .Values.gateway.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/*
The object store's environment (storage.s3), shared by the operator and the gateway (the
operator also gets KUBESCRIBE_S3_SECRET_NAME and the sweep period, in deployment.yaml): the
KUBESCRIBE_S3_* settings, the credentials from storage.s3.existingSecret (keys
access-key-id and secret-access-key) in the standard AWS variables, and the CA bundle's
path. Without a Secret the pods use their own cloud identity (IRSA, workload identity)
through the same AWS SDK chain. The operator passes the same settings and the Secret on to
runner Jobs (operator/jobs.py).
*/}}
{{- define "kubescribe.s3Env" -}}
{{- $s3 := .Values.storage.s3 }}
{{- if $s3.bucket }}
- name: KUBESCRIBE_S3_BUCKET
  value: {{ $s3.bucket | toJson }}
- name: KUBESCRIBE_S3_ENDPOINT
  value: {{ $s3.endpoint | toString | toJson }}
- name: KUBESCRIBE_S3_REGION
  value: {{ $s3.region | toJson }}
- name: KUBESCRIBE_S3_PREFIX
  value: {{ include "kubescribe.s3Prefix" . | toJson }}
- name: KUBESCRIBE_S3_PATH_STYLE
  value: {{ $s3.pathStyle | toString | toJson }}
{{- if $s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $s3.existingSecret }}
      key: access-key-id
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $s3.existingSecret }}
      key: secret-access-key
{{- end }}
{{- if $s3.caBundle.configMap }}
- name: KUBESCRIBE_S3_CA_FILE
  value: {{ printf "/etc/kubescribe/s3-ca/%s" $s3.caBundle.key | toJson }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Key prefix of the install in the bucket: storage.s3.prefix, else one per release
(kubescribe/<namespace>/<release>/), so two installs sharing a bucket never sweep each
other's references.
*/}}
{{- define "kubescribe.s3Prefix" -}}
{{- if .Values.storage.s3.prefix }}
{{- .Values.storage.s3.prefix }}
{{- else }}
{{- printf "kubescribe/%s/%s/" .Release.Namespace .Release.Name }}
{{- end }}
{{- end }}

{{- define "kubescribe.s3CaMount" -}}
{{- if and .Values.storage.s3.bucket .Values.storage.s3.caBundle.configMap }}
- name: s3-ca
  mountPath: /etc/kubescribe/s3-ca
  readOnly: true
{{- end }}
{{- end }}

{{- define "kubescribe.s3CaVolume" -}}
{{- if and .Values.storage.s3.bucket .Values.storage.s3.caBundle.configMap }}
- name: s3-ca
  configMap:
    name: {{ .Values.storage.s3.caBundle.configMap }}
{{- end }}
{{- end }}

{{/* NetworkPolicy egress rules shared by the runner and gateway policies. DNS: */}}
{{- define "kubescribe.netpolDnsEgress" -}}
- to:
    {{- with .Values.networkPolicy.dns }}
    - namespaceSelector:
        {{- toYaml .namespaceSelector | nindent 8 }}
      podSelector:
        {{- toYaml .podSelector | nindent 8 }}
    {{- end }}
    {{- range .Values.networkPolicy.dnsCidrs }}
    - ipBlock: {cidr: {{ . | quote }}}
    {{- end }}
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end }}

{{/* Redis: the in-chart pod, or networkPolicy.redisCidrs on the port(s) of redis.url or the sentinels. */}}
{{- define "kubescribe.netpolRedisEgress" -}}
{{- if .Values.redis.internal.enabled }}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ .Release.Namespace }}
      podSelector:
        matchLabels:
          {{- include "kubescribe.selectorLabels" . | nindent 10 }}
          app.kubernetes.io/component: redis
  ports:
    - {port: 6379, protocol: TCP}
{{- else if .Values.networkPolicy.redisCidrs }}
{{- $hostport := (urlParse .Values.redis.url).host }}
- to:
    {{- range .Values.networkPolicy.redisCidrs }}
    - ipBlock: {cidr: {{ . | quote }}}
    {{- end }}
  ports:
    {{- if .Values.redis.sentinel.enabled }}
    {{- /* The sentinels, and the Redis servers they point to. */}}
    {{- $ports := list (.Values.redis.sentinel.redisPort | int) }}
    {{- range .Values.redis.sentinel.hosts }}
    {{- $ports = append $ports (default "26379" (trimPrefix ":" (regexFind ":[0-9]+$" .)) | int) }}
    {{- end }}
    {{- range $ports | uniq }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
    {{- else }}
    - {port: {{ if contains ":" $hostport }}{{ regexReplaceAll "^.*:" $hostport "" }}{{ else }}6379{{ end }}, protocol: TCP}
    {{- end }}
{{- end }}
{{- end }}

{{/* The object store (storage.s3) at networkPolicy.s3Cidrs, on its endpoint's port. */}}
{{- define "kubescribe.netpolS3Egress" -}}
{{- if and .Values.storage.s3.bucket .Values.networkPolicy.s3Cidrs }}
{{- $s3 := urlParse (default "https://s3.amazonaws.com" .Values.storage.s3.endpoint) }}
# The object store (storage.s3): s3:// audio, transcripts, uploads.
- to:
    {{- range .Values.networkPolicy.s3Cidrs }}
    - ipBlock: {cidr: {{ . | quote }}}
    {{- end }}
  ports:
    - {port: {{ if contains ":" $s3.host }}{{ regexReplaceAll "^.*:" $s3.host "" }}{{ else if eq $s3.scheme "http" }}80{{ else }}443{{ end }}, protocol: TCP}
{{- end }}
{{- end }}

{{/* The API server: after the kubernetes Service's address is translated, its own
addresses (networkPolicy.apiServerCidrs; none listed: any address) on apiServerPorts. */}}
{{- define "kubescribe.netpolApiServerEgress" -}}
# The API server, as policies see it: its own addresses and ports, after the kubernetes
# Service's address is translated (networkPolicy.apiServerCidrs; none: any, on these ports).
- ports:
    {{- range .Values.networkPolicy.apiServerPorts }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
  {{- with .Values.networkPolicy.apiServerCidrs }}
  to:
    {{- range . }}
    - ipBlock: {cidr: {{ . | quote }}}
    {{- end }}
  {{- end }}
{{- end }}
