{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "podsight.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or just <release> when it already contains the chart name. */}}
{{- define "podsight.fullname" -}}
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

{{- define "podsight.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{- define "podsight.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable for the life of a release (DaemonSet selectors are immutable). */}}
{{- define "podsight.selectorLabels" -}}
app.kubernetes.io/name: {{ include "podsight.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels for the pod template: no helm.sh/chart, so a chart-only bump does not roll every node. */}}
{{- define "podsight.podLabels" -}}
{{ include "podsight.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: agent
app.kubernetes.io/part-of: podsight
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels for every other object. */}}
{{- define "podsight.labels" -}}
helm.sh/chart: {{ include "podsight.chart" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{ include "podsight.podLabels" . }}
{{- end }}

{{- define "podsight.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "podsight.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "podsight.image" -}}
{{- $repo := .Values.image.repository }}
{{- if .Values.image.registry }}
{{- $repo = printf "%s/%s" .Values.image.registry .Values.image.repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Directory the rule files are mounted at; config.security.rules_files points here. */}}
{{- define "podsight.rulesDir" -}}/etc/podsight/rules{{- end }}

{{- define "podsight.securityEnabled" -}}
{{- $sec := .Values.config.security | default dict }}
{{- if $sec.enabled }}true{{- end }}
{{- end }}

{{/* The tls probe is on unless config.probes.tls.enabled is false (the agent's default). */}}
{{- define "podsight.tlsEnabled" -}}
{{- $tls := (.Values.config.probes | default dict).tls | default dict }}
{{- if or (not (hasKey $tls "enabled")) $tls.enabled }}true{{- end }}
{{- end }}

{{/* The tcp probe is on unless config.probes.tcp.enabled is false (the agent's default). */}}
{{- define "podsight.tcpEnabled" -}}
{{- $tcp := (.Values.config.probes | default dict).tcp | default dict }}
{{- if or (not (hasKey $tcp "enabled")) $tcp.enabled }}true{{- end }}
{{- end }}

{{/* Flows (who talks to whom) run when config.flows.enabled (the agent's
default) and the tcp probe, their only source, are on: the agent starts them
only then. With Kubernetes they watch all pods, services and nodes. */}}
{{- define "podsight.flowsEnabled" -}}
{{- $flows := .Values.config.flows | default dict }}
{{- if and (include "podsight.tcpEnabled" .) (or (not (hasKey $flows "enabled")) $flows.enabled) }}true{{- end }}
{{- end }}

{{/* Running flows read the node's conntrack table (Service backends) over
netlink unless config.flows.conntrack is false. Needs the host network
namespace (hostNetwork) and CAP_NET_ADMIN there. */}}
{{- define "podsight.conntrackEnabled" -}}
{{- $flows := .Values.config.flows | default dict }}
{{- if and (include "podsight.flowsEnabled" .) (or (not (hasKey $flows "conntrack")) $flows.conntrack) }}true{{- end }}
{{- end }}

{{/* The pod's hostNetwork: "true" or "". `hostNetwork: true` always, `auto`
when conntrack needs it; `false` never, and then conntrack is refused (its
dumps would read the pod's own, empty, conntrack table: no backend, silently). */}}
{{- define "podsight.hostNetwork" -}}
{{- $h := toString .Values.hostNetwork }}
{{- if eq $h "true" }}true
{{- else if eq $h "false" }}
{{- if include "podsight.conntrackEnabled" . }}
{{- fail "hostNetwork is false but config.flows.conntrack is on (the default): the conntrack NAT tuples that name the backend of a Service connection are in the node's network namespace, which the agent reaches only with hostNetwork. Set config.flows.conntrack=false (Service connections are then attributed to the Service without a backend), or hostNetwork=auto." }}
{{- end }}
{{- else if eq $h "auto" }}
{{- include "podsight.conntrackEnabled" . }}
{{- else }}
{{- fail (printf "hostNetwork %v: expected auto, true or false" .Values.hostNetwork) }}
{{- end }}
{{- end }}

{{/* Features that read other processes' /proc entries (maps, root, exe, cwd):
they need the host's /proc and ptrace read access (CAP_SYS_PTRACE). */}}
{{- define "podsight.readsProcesses" -}}
{{- if or (include "podsight.securityEnabled" .) (include "podsight.tlsEnabled" .) }}true{{- end }}
{{- end }}

{{/* "true" on Kubernetes >= 1.30: securityContext.appArmorProfile and
volumeMounts[].recursiveReadOnly exist (the API of 1.25-1.29 has neither). */}}
{{- define "podsight.kube130" -}}
{{- if semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version }}true{{- end }}
{{- end }}

{{/* The AppArmor annotation value of 1.25-1.29 for .Values.appArmorProfile. */}}
{{- define "podsight.appArmorAnnotation" -}}
{{- $p := .Values.appArmorProfile }}
{{- if eq $p.type "Unconfined" }}unconfined
{{- else if eq $p.type "RuntimeDefault" }}runtime/default
{{- else if eq $p.type "Localhost" }}localhost/{{ $p.localhostProfile }}
{{- else }}{{ fail (printf "appArmorProfile.type %v: expected Unconfined, RuntimeDefault or Localhost" $p.type) }}
{{- end }}
{{- end }}

{{/* readOnly (and recursiveReadOnly, where the API has it) of a host mount. */}}
{{- define "podsight.hostMountReadOnly" -}}
readOnly: true
{{- if and .Values.hostMounts.recursiveReadOnly (include "podsight.kube130" .) }}
recursiveReadOnly: {{ .Values.hostMounts.recursiveReadOnly }}
{{- end }}
{{- end }}

{{- define "podsight.mountProc" -}}
{{- $p := .Values.hostMounts.proc }}
{{- if or (eq (toString $p) "true") (and (eq (toString $p) "auto") (include "podsight.readsProcesses" .)) }}true{{- end }}
{{- end }}

{{/*
The agent's config file: the user's `config` map plus what the chart owns
(listen address from the Service port; the mounted rule files). node_name is
passed as --node-name from the downward API instead.
*/}}
{{- define "podsight.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- if hasKey $cfg "listen" }}
{{- fail "config.listen is set by the chart from listenHost and service.port; set those instead" }}
{{- end }}
{{- if hasKey $cfg "node_name" }}
{{- fail "config.node_name comes from the downward API (spec.nodeName); remove it from config" }}
{{- end }}
{{- $_ := set $cfg "listen" (printf "%s:%d" .Values.listenHost (int .Values.service.port)) }}
{{- if include "podsight.securityEnabled" . }}
{{- $sec := deepCopy $cfg.security }}
{{- $files := list }}
{{- range $f := ($sec.rules_files | default list) }}
{{- $files = append $files $f }}
{{- end }}
{{- range $name := keys .Values.securityRules | sortAlpha }}
{{- $files = append $files (printf "%s/%s" (include "podsight.rulesDir" $) $name) }}
{{- end }}
{{- $_ := set $sec "rules_files" $files }}
{{- $_ := set $cfg "security" $sec }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/*
Relabelings shared by the ServiceMonitor and the PodMonitor. The agent's series
carry their own namespace/pod/container (of the observed workload, "" for host
cgroups); the operator would add the agent pod's as target labels, and with an
empty scraped value Prometheus keeps the target's, misattributing host traffic.
So: honorLabels, drop those target labels, keep the node.
*/}}
{{- define "podsight.scrapeRelabelings" -}}
- sourceLabels: [__meta_kubernetes_pod_node_name]
  targetLabel: node
  action: replace
- regex: namespace|pod|container
  action: labeldrop
{{- end }}

{{/*
Monitor spec fields shared by the ServiceMonitor and the PodMonitor: scrape
limits and attachMetadata (0 / empty: left out, Prometheus's own defaults).
*/}}
{{- define "podsight.monitorSpecExtras" -}}
{{- range $k := list "sampleLimit" "labelLimit" "targetLimit" }}
{{- with index $ $k }}
{{ $k }}: {{ int64 . }}
{{- end }}
{{- end }}
{{- with .attachMetadata }}
attachMetadata:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Endpoint fields shared by both monitors: scheme, TLS and one kind of auth.
Arguments: dict "m" (the monitor's values) "name" (its values key).
*/}}
{{- define "podsight.endpointExtras" -}}
{{- $m := .m }}
{{- $auth := list }}
{{- range $k := list "basicAuth" "authorization" "bearerTokenSecret" }}
{{- if index $m $k }}{{ $auth = append $auth $k }}{{ end }}
{{- end }}
{{- if gt (len $auth) 1 }}
{{- fail (printf "%s: set one of basicAuth, authorization and bearerTokenSecret, not %s" .name (join " and " $auth)) }}
{{- end }}
{{- with $m.scheme }}
scheme: {{ . }}
{{- end }}
{{- range $k := list "tlsConfig" "basicAuth" "authorization" "bearerTokenSecret" }}
{{- with index $m $k }}
{{ $k }}:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Both scrape objects at once would scrape (and store) every series twice. */}}
{{- define "podsight.oneMonitor" -}}
{{- if and .Values.serviceMonitor.enabled .Values.podMonitor.enabled }}
{{- fail "serviceMonitor.enabled and podMonitor.enabled are both true: Prometheus would scrape every agent twice and store every series twice. Enable one of them (podMonitor needs no Service)." }}
{{- end }}
{{- end }}
