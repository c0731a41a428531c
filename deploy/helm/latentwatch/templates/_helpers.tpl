{{- define "latentwatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "latentwatch.fullname" -}}
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

{{- define "latentwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "latentwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "latentwatch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "latentwatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "latentwatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "latentwatch.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "latentwatch.secretName" -}}
{{- if .Values.secret.create -}}
{{- printf "%s-kafka" (include "latentwatch.fullname" .) -}}
{{- else -}}
{{- .Values.secret.name -}}
{{- end -}}
{{- end -}}

{{/* Whether any Kafka secret is in use (SASL password, TLS files, key password). */}}
{{- define "latentwatch.usesSecret" -}}
{{- $r := .Values.schemaRegistry -}}
{{- if or .Values.kafka.saslMechanism .Values.kafka.tls.ca .Values.kafka.tls.clientCert .Values.kafka.tls.keyPassword $r.basicAuth $r.bearerToken $r.tls.ca -}}
true
{{- end -}}
{{- end -}}

{{- define "latentwatch.tlsDir" -}}/etc/latentwatch/kafka{{- end -}}
{{- define "latentwatch.modelPath" -}}/models/model{{- end -}}

{{/*
The pipeline.yaml the pods read: the shipped config/pipeline.yaml (files/), the Kafka
connection from .Values.kafka, the user's .Values.config, then what the chart must set itself.
Secrets never land here: they come from the Secret as environment variables and files.
*/}}
{{- define "latentwatch.config" -}}
{{- $base := .Files.Get "files/pipeline.yaml" | fromYaml -}}
{{- $k := .Values.kafka -}}
{{- $kafka := dict "bootstrap_servers" (required "kafka.bootstrapServers is required" $k.bootstrapServers) "security_protocol" $k.securityProtocol -}}
{{- if $k.saslMechanism -}}
{{- $_ := set $kafka "sasl_mechanism" $k.saslMechanism -}}
{{- $_ := set $kafka "sasl_username" (required "kafka.saslUsername is required with kafka.saslMechanism" $k.saslUsername) -}}
{{- end -}}
{{- if $k.tls.ca -}}
{{- $_ := set $kafka "ssl_ca_location" (printf "%s/ca.crt" (include "latentwatch.tlsDir" .)) -}}
{{- end -}}
{{- if $k.tls.clientCert -}}
{{- $_ := set $kafka "ssl_certificate_location" (printf "%s/tls.crt" (include "latentwatch.tlsDir" .)) -}}
{{- $_ := set $kafka "ssl_key_location" (printf "%s/tls.key" (include "latentwatch.tlsDir" .)) -}}
{{- end -}}
{{- $model := dict "path" (include "latentwatch.modelPath" .) -}}
{{- if gt (int .Values.gpu) 0 -}}
{{- $_ := set $model "device" "cuda" -}}
{{- end -}}
{{- $forced := dict "model" $model "metrics" (dict "host" "0.0.0.0") -}}
{{- $registry := dict -}}
{{- $r := .Values.schemaRegistry -}}
{{- if $r.url -}}
{{- $_ := set $registry "url" $r.url -}}
{{- end -}}
{{- if $r.tls.ca -}}
{{- $_ := set $registry "ssl_ca_location" (printf "%s/registry-ca.crt" (include "latentwatch.tlsDir" .)) -}}
{{- end -}}
{{- $cfg := mergeOverwrite $base (dict "kafka" $kafka "schema_registry" $registry) (deepCopy (.Values.config | default dict)) $forced -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* termination grace: > shutdown_timeout_s (see values.yaml) */}}
{{- define "latentwatch.terminationGrace" -}}
{{- $cfg := include "latentwatch.config" . | fromYaml -}}
{{- $shutdown := int (ceil (float64 (default 30 $cfg.shutdown_timeout_s))) -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add (mul 2 $shutdown) 15 -}}
{{- else if le (int .Values.terminationGracePeriodSeconds) $shutdown -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be longer than shutdown_timeout_s (%v)" .Values.terminationGracePeriodSeconds $shutdown) -}}
{{- else -}}
{{- int .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}
