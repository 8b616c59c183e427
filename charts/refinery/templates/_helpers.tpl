{{/* Chart name, truncated to 63 (a DNS label). */}}
{{- define "refinery.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated to 63. When the release name already contains the chart
name it is used as is (`helm install refinery ./charts/refinery` gives `refinery`).
*/}}
{{- define "refinery.fullname" -}}
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

{{- define "refinery.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object of the chart. */}}
{{- define "refinery.labels" -}}
helm.sh/chart: {{ include "refinery.chart" . }}
{{ include "refinery.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels of the operator pod. `component: operator` keeps them apart from the stage pods
the operator creates, which carry `app.kubernetes.io/name: refinery` and `component: stage`.
*/}}
{{- define "refinery.selectorLabels" -}}
app.kubernetes.io/name: {{ include "refinery.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "refinery.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "refinery.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "refinery.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The metrics Service: also the `job` label Prometheus gives the operator's series. */}}
{{- define "refinery.metricsServiceName" -}}
{{- printf "%s-metrics" (include "refinery.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The namespaces the operator watches, as a JSON list: watchNamespaces plus the older single
watchNamespace (kept so existing values files work), without duplicates. Empty: all namespaces.
*/}}
{{- define "refinery.watchNamespaces" -}}
{{- $all := .Values.watchNamespaces | default list }}
{{- if .Values.watchNamespace }}{{ $all = append $all .Values.watchNamespace }}{{ end }}
{{- $all | uniq | toJson }}
{{- end }}
