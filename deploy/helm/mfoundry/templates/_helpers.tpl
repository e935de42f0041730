{{/* The chart's name. */}}
{{- define "mfoundry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Object names: the release name, or release-chart when the release does not carry it; at
most 52 characters, so the suffixes (-admin, -pods, -config, -test-readyz) stay within 63. */}}
{{- define "mfoundry.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the gateway's pods. */}}
{{- define "mfoundry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mfoundry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{/* Labels of every object. */}}
{{- define "mfoundry.labels" -}}
{{ include "mfoundry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest is set. */}}
{{- define "mfoundry.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* DRAIN_TIMEOUT in whole seconds, rounded up (one number and one unit: 30s, 2m, 1500ms, 1h). */}}
{{- define "mfoundry.drainSeconds" -}}
{{- $drain := toString (default "30s" .Values.env.DRAIN_TIMEOUT) -}}
{{- if regexMatch "^[0-9]+ms$" $drain -}}
{{- div (add (trimSuffix "ms" $drain | atoi) 999) 1000 -}}
{{- else if regexMatch "^[0-9]+s$" $drain -}}
{{- trimSuffix "s" $drain | atoi -}}
{{- else if regexMatch "^[0-9]+m$" $drain -}}
{{- mul (trimSuffix "m" $drain | atoi) 60 -}}
{{- else if regexMatch "^[0-9]+h$" $drain -}}
{{- mul (trimSuffix "h" $drain | atoi) 3600 -}}
{{- else -}}
{{- fail (printf "env.DRAIN_TIMEOUT=%q: write one number above zero and one unit (30s, 2m, 1500ms, 1h) so the chart can compute the grace period" $drain) -}}
{{- end -}}
{{- end -}}

{{/* preStop pause + drain + margin: the kubelet never kills a drain within its deadline. */}}
{{- define "mfoundry.gracePeriod" -}}
{{- add .Values.preStopSeconds (include "mfoundry.drainSeconds" . | atoi) .Values.terminationGraceMarginSeconds -}}
{{- end -}}

{{/* OTEL_RESOURCE_ATTRIBUTES: the pod and namespace first, then the values' attributes. */}}
{{- define "mfoundry.resourceAttributes" -}}
{{- $attributes := list "service.namespace=$(POD_NAMESPACE)" "service.instance.id=$(POD_NAME)" "k8s.pod.name=$(POD_NAME)" "k8s.namespace.name=$(POD_NAMESPACE)" -}}
{{- range $key, $value := .Values.opentelemetry.resourceAttributes -}}
{{- $text := ternary (toString (int64 $value)) (toString $value) (kindIs "float64" $value) -}}
{{- $attributes = append $attributes (printf "%s=%s" $key $text) -}}
{{- end -}}
{{- join "," $attributes -}}
{{- end -}}
