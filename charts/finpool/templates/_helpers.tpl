{{/* The chart's name. */}}
{{- define "finpool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name, under 63 characters with room for suffixes. */}}
{{- define "finpool.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "finpool.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "finpool.labels" -}}
helm.sh/chart: {{ include "finpool.chart" . }}
app.kubernetes.io/name: {{ include "finpool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: finpool
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "api"). */}}
{{- define "finpool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "finpool.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of one component's objects. */}}
{{- define "finpool.componentLabels" -}}
{{ include "finpool.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Name of one component's objects (Deployment, ServiceAccount, roles). */}}
{{- define "finpool.componentName" -}}
{{- printf "%s-%s" (include "finpool.fullname" .ctx) .component -}}
{{- end -}}

{{- define "finpool.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret and key holding the PostgreSQL URL. */}}
{{- define "finpool.databaseSecretName" -}}
{{- if .Values.postgresql.url -}}
{{- printf "%s-database" (include "finpool.fullname" .) -}}
{{- else if .Values.postgresql.existingSecret -}}
{{- .Values.postgresql.existingSecret -}}
{{- else -}}
{{- fail "set postgresql.url, or postgresql.existingSecret to a Secret holding the PostgreSQL URL" -}}
{{- end -}}
{{- end -}}

{{- define "finpool.databaseSecretKey" -}}
{{- if .Values.postgresql.url -}}url{{- else -}}{{- .Values.postgresql.existingSecretKey -}}{{- end -}}
{{- end -}}

{{/* The Secret and key holding the JWT signing key. */}}
{{- define "finpool.authSecretName" -}}
{{- if .Values.auth.signingKeyPkcs8Base64 -}}
{{- printf "%s-jwt-signing-key" (include "finpool.fullname" .) -}}
{{- else if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else -}}
{{- fail "set auth.signingKeyPkcs8Base64, or auth.existingSecret to a Secret holding the JWT signing key (all API replicas must share it)" -}}
{{- end -}}
{{- end -}}

{{- define "finpool.authSecretKey" -}}
{{- if .Values.auth.signingKeyPkcs8Base64 -}}jwt-signing-key.pk8{{- else -}}{{- .Values.auth.existingSecretKey -}}{{- end -}}
{{- end -}}

{{/* The key of the audit log's signing key, in the same Secret. */}}
{{- define "finpool.auditSecretKey" -}}
{{- if .Values.auth.signingKeyPkcs8Base64 -}}
{{- if not .Values.auth.auditKeyPkcs8Base64 -}}
{{- fail "auth.signingKeyPkcs8Base64 needs auth.auditKeyPkcs8Base64 too (the audit log's Ed25519 key, PKCS#8 DER, base64)" -}}
{{- end -}}
audit-signing-key.pk8
{{- else -}}
{{- .Values.auth.existingSecretAuditKey -}}
{{- end -}}
{{- end -}}

{{/* True (non-empty) when a JWKS is configured. */}}
{{- define "finpool.jwksEnabled" -}}
{{- if .Values.auth.jwks -}}
{{- if not .Values.auth.jwksIssuer -}}
{{- fail "auth.jwks needs auth.jwksIssuer (the iss of tokens signed with those keys)" -}}
{{- end -}}
{{- $jwks := fromJson .Values.auth.jwks -}}
{{- if or (hasKey $jwks "Error") (not (kindIs "slice" $jwks.keys)) -}}
{{- fail "auth.jwks must be a JSON Web Key Set: a JSON object with a \"keys\" array" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/* The env var every component reads the store's URL from. */}}
{{- define "finpool.databaseEnv" -}}
- name: FINPOOL_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "finpool.databaseSecretName" . }}
      key: {{ include "finpool.databaseSecretKey" . }}
{{- end -}}

{{/*
Pod-level settings shared by the components:
(dict "ctx" $ "component" "api" "values" .Values.api).
*/}}
{{- define "finpool.podAnnotations" -}}
{{- $annotations := merge (deepCopy (default dict .values.podAnnotations)) (deepCopy (default dict .ctx.Values.podAnnotations)) -}}
{{- if .ctx.Values.postgresql.url }}
{{- $_ := set $annotations "checksum/database" (.ctx.Values.postgresql.url | sha256sum) -}}
{{- end -}}
{{- if $annotations }}
{{- toYaml $annotations }}
{{- end -}}
{{- end -}}

{{- define "finpool.podScheduling" -}}
{{- with .values.nodeSelector -}}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Every component serves /metrics, /healthz and /readyz here. */}}
{{- define "finpool.metricsAddr" -}}0.0.0.0:9090{{- end -}}

{{/*
The ClusterIP Service of one component's `metrics` port (9090), which its
ServiceMonitor scrapes: (dict "ctx" $ "component" "api"). Apart from any
other Service of the component, so that a public Service never exposes it;
the label finpool.io/metrics tells it from them.
*/}}
{{- define "finpool.metricsService" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "finpool.componentName" . }}-metrics
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "finpool.componentLabels" . | nindent 4 }}
    finpool.io/metrics: "true"
spec:
  type: ClusterIP
  selector:
    {{- include "finpool.selectorLabels" . | nindent 4 }}
  ports:
    - name: metrics
      port: 9090
      targetPort: metrics
      protocol: TCP
{{- end -}}

{{/*
A probe from values. Helm merges a probe given in values into the default
(httpGet on the metrics port), so a tcpSocket, exec or grpc probe given
there would come with the default's httpGet too, which Kubernetes refuses
(one handler per probe): another handler replaces httpGet.
*/}}
{{- define "finpool.probe" -}}
{{- $probe := deepCopy . -}}
{{- if and (hasKey $probe "httpGet") (or (hasKey $probe "tcpSocket") (hasKey $probe "exec") (hasKey $probe "grpc")) -}}
{{- $_ := unset $probe "httpGet" -}}
{{- end -}}
{{- toYaml $probe -}}
{{- end -}}
