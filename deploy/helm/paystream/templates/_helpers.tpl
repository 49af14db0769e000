{{/* Names and labels shared by every template. */}}
{{- define "paystream.fullname" -}}
{{- printf "%s-paystream" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "paystream.labels" -}}
app.kubernetes.io/name: paystream
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The selector of one service's pods: call with (dict "root" $ "name" "gateway"). */}}
{{- define "paystream.selector" -}}
app.kubernetes.io/name: paystream
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "paystream.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "paystream.fullname" .)) -}}
{{- end -}}

{{- define "paystream.postgresHost" -}}
{{- .Values.postgres.host | default (printf "%s-postgres-rw" .Release.Name) -}}
{{- end -}}

{{- define "paystream.natsUrl" -}}
{{- .Values.bus.url | default (printf "nats://%s-nats:4222" .Release.Name) -}}
{{- end -}}

{{- define "paystream.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end -}}

{{/* PAYSTREAM_* settings every process gets (src/paystream/platform/config.py). */}}
{{- define "paystream.env" -}}
- name: PAYSTREAM_NATS_URL
  value: {{ include "paystream.natsUrl" . | quote }}
- name: PAYSTREAM_STREAM_REPLICAS
  value: {{ .Values.bus.streamReplicas | quote }}
- name: PAYSTREAM_REDIS_URL
  value: {{ .Values.redis.url | quote }}
- name: PAYSTREAM_PARTITIONS
  value: {{ .Values.partitions | quote }}
- name: PAYSTREAM_HTTP_HOST
  value: "0.0.0.0"
- name: PAYSTREAM_HTTP_PORT
  value: {{ .Values.port | quote }}
- name: PAYSTREAM_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: PAYSTREAM_INTERNAL_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ include "paystream.secretName" . }}, key: internal-token}
{{- $urls := dict -}}
{{- range $name, $_ := .Values.services -}}
{{- $discard := set $urls $name (printf "http://%s-%s:%v" (include "paystream.fullname" $) $name $.Values.port) -}}
{{- end }}
- name: PAYSTREAM_SERVICE_URLS
  value: {{ $urls | toJson | quote }}
{{- end -}}

{{- define "paystream.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}
