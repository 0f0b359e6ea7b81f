{{/* Names, labels and the pieces the gateway, worker and migrations pods share. */}}

{{- define "aetherium.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aetherium.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "aetherium.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aetherium.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "aetherium.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "aetherium.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aetherium
{{- end -}}

{{- define "aetherium.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "aetherium.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* image: repository[:tag][@digest] from a dict {root, override} (override: worker.image or empty). */}}
{{- define "aetherium.image" -}}
{{- $root := .root -}}
{{- $o := .override | default dict -}}
{{- $repo := $o.repository | default $root.Values.image.repository -}}
{{- $tag := $o.tag | default $root.Values.image.tag | default $root.Chart.AppVersion -}}
{{- $digest := $o.digest | default $root.Values.image.digest -}}
{{- if $digest -}}
{{- printf "%s@%s" $repo $digest -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end -}}

{{/* secretEnv: one env entry from a secretKeyRef; dict {root, env, ref, optional}. */}}
{{- define "aetherium.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .ref.name | default .root.Values.secrets.existingSecret | default (include "aetherium.fullname" .root) | quote }}
      key: {{ .ref.key | quote }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end -}}

{{/* The secrets every role needs (database, Redis, cluster token, secrets key) and the optional ones. */}}
{{- define "aetherium.secretEnvs" -}}
{{- $root := . -}}
{{- $s := .Values.secrets -}}
{{- include "aetherium.secretEnv" (dict "root" $root "env" "AETHERIUM_DATABASE_URL" "ref" $s.databaseURL) }}
{{ include "aetherium.secretEnv" (dict "root" $root "env" "AETHERIUM_REDIS_URL" "ref" $s.redisURL) }}
{{ include "aetherium.secretEnv" (dict "root" $root "env" "AETHERIUM_CLUSTER_TOKEN" "ref" $s.clusterToken) }}
{{ include "aetherium.secretEnv" (dict "root" $root "env" "AETHERIUM_SECRETS_KEY" "ref" $s.secretsKey) }}
{{ include "aetherium.secretEnv" (dict "root" $root "env" "AETHERIUM_SECRETS_OLD_KEYS" "ref" $s.secretsOldKeys "optional" true) }}
{{ include "aetherium.secretEnv" (dict "root" $root "env" "AETHERIUM_GITHUB_WEBHOOK_SECRET" "ref" $s.githubWebhookSecret "optional" true) }}
{{ include "aetherium.secretEnv" (dict "root" $root "env" "AETHERIUM_SLACK_SIGNING_SECRET" "ref" $s.slackSigningSecret "optional" true) }}
{{ include "aetherium.secretEnv" (dict "root" $root "env" "AETHERIUM_SLACK_BOT_TOKEN" "ref" $s.slackBotToken "optional" true) }}
{{ include "aetherium.secretEnv" (dict "root" $root "env" "AETHERIUM_LOKI_PASSWORD" "ref" $s.lokiPassword "optional" true) }}
{{ include "aetherium.secretEnv" (dict "root" $root "env" "AETHERIUM_LOKI_BEARER_TOKEN" "ref" $s.lokiBearerToken "optional" true) }}
{{ include "aetherium.secretEnv" (dict "root" $root "env" "AETHERIUM_OTLP_HEADERS" "ref" $s.otlpHeaders "optional" true) }}
{{- if and .Values.metrics.enabled .Values.metrics.token.enabled }}
{{ include "aetherium.secretEnv" (dict "root" $root "env" "AETHERIUM_METRICS_TOKEN" "ref" .Values.metrics.token) }}
{{- end }}
{{- end -}}

{{/* configEnv: AETHERIUM_<KEY> entries of config merged with a role's config; dict {root, role}. Keys sorted. */}}
{{- define "aetherium.configEnv" -}}
{{- $merged := merge (deepCopy (.role | default dict)) (deepCopy (.root.Values.config | default dict)) -}}
{{- range $k := keys $merged | sortAlpha }}
- name: {{ printf "AETHERIUM_%s" (upper $k) }}
  {{- $v := index $merged $k }}
  value: {{ if kindIs "float64" $v }}{{ $v | int64 | toString | quote }}{{ else }}{{ $v | toString | quote }}{{ end }}
{{- end }}
{{- end -}}

{{- define "aetherium.metricsListen" -}}
{{- if .Values.metrics.enabled -}}
{{- printf ":%d" (int .Values.metrics.port) -}}
{{- else -}}
off
{{- end -}}
{{- end -}}

{{/* The container security context of gateways and the migrations Job: non-root, nothing added, read-only root. */}}
{{- define "aetherium.restrictedSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.gateway.runAsUser }}
runAsGroup: {{ .Values.gateway.runAsUser }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
