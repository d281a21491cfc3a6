{{/* ------------------------------------------------------------------------------------------
Names and labels
------------------------------------------------------------------------------------------- */}}

{{- define "statehouse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "statehouse.fullname" -}}
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

{{/* A resource name: "<fullname>-<suffix>", at most 63 characters. Args: (list $root suffix). */}}
{{- define "statehouse.componentName" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- $full := include "statehouse.fullname" $root -}}
{{- $max := sub 62 (len $suffix) | int -}}
{{- if lt $max 1 -}}
{{- fail (printf "the name suffix %q is too long for a Kubernetes name" $suffix) -}}
{{- end -}}
{{- printf "%s-%s" ($full | trunc $max | trimSuffix "-") $suffix -}}
{{- end -}}

{{- define "statehouse.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels. Args: (list $root component). */}}
{{- define "statehouse.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "statehouse.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Common labels. Args: (list $root component). */}}
{{- define "statehouse.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "statehouse.chart" $root }}
{{ include "statehouse.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: statehouse
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* metadata.annotations body for every resource (may be empty). */}}
{{- define "statehouse.commonAnnotations" -}}
{{- with .Values.commonAnnotations }}
{{- toYaml . }}
{{- end }}
{{- end -}}

{{- define "statehouse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "statehouse.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "statehouse.hookServiceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- include "statehouse.componentName" (list . "hooks") -}}
{{- else -}}
{{- include "statehouse.serviceAccountName" . -}}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------
Images
------------------------------------------------------------------------------------------- */}}

{{/* An image reference from {registry, repository, tag, digest}. Args: (list imageDict defaultTag). */}}
{{- define "statehouse.imageRef" -}}
{{- $img := index . 0 -}}
{{- $tag := default (index . 1) $img.tag | toString -}}
{{- $repo := $img.repository -}}
{{- if $img.registry -}}
{{- $repo = printf "%s/%s" $img.registry $img.repository -}}
{{- end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else if $tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- else -}}
{{- fail (printf "image %s needs a tag or a digest" $repo) -}}
{{- end -}}
{{- end -}}

{{- define "statehouse.image" -}}
{{- include "statehouse.imageRef" (list .Values.image .Chart.AppVersion) -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------
Services: the entries of .Values.services merged over .Values.serviceDefaults, with the
processor settings resolved against .Values.config.processor, and each entry's `projector` merged
over .Values.projector (its settings resolved against .Values.config.projector).
Returns {"items": [...]} as JSON.
------------------------------------------------------------------------------------------- */}}

{{/* Deep merge: keys of the second map win; maps merge key by key; null never overrides.
Args: (list base override). Returns JSON. */}}
{{- define "statehouse.merge" -}}
{{- $out := deepCopy (index . 0 | default dict) -}}
{{- range $k, $v := (index . 1 | default dict) -}}
{{- $cur := index $out $k -}}
{{- if and (kindIs "map" $v) (kindIs "map" $cur) -}}
{{- $_ := set $out $k (include "statehouse.merge" (list $cur $v) | fromJson) -}}
{{- else if not (kindIs "invalid" $v) -}}
{{- $_ := set $out $k $v -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{- define "statehouse.services" -}}
{{- $root := . -}}
{{- $items := list -}}
{{- $seenNames := dict -}}
{{- $seenResources := dict -}}
{{- $processorKeys := list "partitions" "passivationTimeoutMs" "strictProtocolVersion" "backupIntervalMs" "maxActiveEntities" "maxCommandsPerEntity" "crdtHeartbeatIntervalMs" "crdtHeartbeatTimeoutMs" "crdtWriteTimeoutMs" "crdtPruneAfterMs" -}}
{{- $projectorKeys := list "batchSize" "batchLingerMs" "pollIntervalMs" -}}
{{- range $i, $entry := .Values.services -}}
{{- $svc := include "statehouse.merge" (list $root.Values.serviceDefaults $entry) | fromJson -}}
{{- $name := required (printf "services[%d].name is required" $i) $svc.name | toString -}}
{{- if hasKey $seenNames $name -}}
{{- fail (printf "services: the service name %q appears twice" $name) -}}
{{- end -}}
{{- $_ := set $seenNames $name true -}}
{{- $resourceName := $svc.resourceName | default ($name | lower | replace "." "-" | replace "_" "-" | trimAll "-") -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $resourceName) -}}
{{- fail (printf "services[%d]: %q cannot be a Kubernetes name; set services[%d].resourceName" $i $resourceName $i) -}}
{{- end -}}
{{- if hasKey $seenResources $resourceName -}}
{{- fail (printf "services: two services map to the Kubernetes name %q; set resourceName on one of them" $resourceName) -}}
{{- end -}}
{{- $_ := set $seenResources $resourceName true -}}
{{- $_ := set $svc "resourceName" $resourceName -}}
{{- $_ := set $svc "fullName" (include "statehouse.componentName" (list $root $resourceName)) -}}
{{- /* processor settings: the entry's own, else config.processor */ -}}
{{- $settings := dict -}}
{{- range $key := $processorKeys -}}
{{- $v := index $root.Values.config.processor $key -}}
{{- if and (hasKey $svc.processor $key) (not (kindIs "invalid" (index $svc.processor $key))) -}}
{{- $v = index $svc.processor $key -}}
{{- end -}}
{{- $_ := set $settings $key $v -}}
{{- end -}}
{{- $_ := set $svc "settings" $settings -}}
{{- if not (and $svc.userFunction $svc.userFunction.image $svc.userFunction.image.repository) -}}
{{- fail (printf "services[%d] (%s): userFunction.image.repository is required" $i $name) -}}
{{- end -}}
{{- if and $svc.autoscaling.enabled $svc.keda.enabled -}}
{{- fail (printf "services[%d] (%s): enable either autoscaling (HPA) or keda, not both (KEDA creates its own HPA)" $i $name) -}}
{{- end -}}
{{- if $svc.keda.enabled -}}
{{- if not (or $svc.keda.requestRate.enabled $svc.keda.kafkaLag.enabled) -}}
{{- fail (printf "services[%d] (%s): keda.enabled needs keda.requestRate.enabled or keda.kafkaLag.enabled" $i $name) -}}
{{- end -}}
{{- if and $svc.keda.requestRate.enabled (not $svc.keda.requestRate.serverAddress) -}}
{{- fail (printf "services[%d] (%s): keda.requestRate.serverAddress (the Prometheus URL) is required" $i $name) -}}
{{- end -}}
{{- if and $svc.keda.kafkaLag.enabled (not (and $svc.keda.kafkaLag.consumerGroup $svc.keda.kafkaLag.topic)) -}}
{{- fail (printf "services[%d] (%s): keda.kafkaLag.consumerGroup and keda.kafkaLag.topic are required" $i $name) -}}
{{- end -}}
{{- end -}}
{{- /* projector: the entry's own keys over the global projector values (ports stay global),
its [projector] settings the entry's own, else config.projector */ -}}
{{- $projector := include "statehouse.merge" (list (omit $root.Values.projector "ports") ($entry.projector | default dict)) | fromJson -}}
{{- $projectorSettings := dict -}}
{{- range $key := $projectorKeys -}}
{{- $v := index $root.Values.config.projector $key -}}
{{- if and (hasKey $projector $key) (not (kindIs "invalid" (index $projector $key))) -}}
{{- $v = index $projector $key -}}
{{- end -}}
{{- $_ := set $projectorSettings $key $v -}}
{{- end -}}
{{- $_ := set $projector "settings" $projectorSettings -}}
{{- if $projector.enabled -}}
{{- $_ := set $projector "fullName" (include "statehouse.componentName" (list $root (printf "%s-projector" $resourceName))) -}}
{{- $ports := $root.Values.projector.ports -}}
{{- if eq (int $ports.query) (int $ports.metrics) -}}
{{- fail (printf "projector.ports.query and projector.ports.metrics must differ (both %d)" (int $ports.query)) -}}
{{- end -}}
{{- if has (int $svc.userFunction.port) (list (int $ports.query) (int $ports.metrics)) -}}
{{- fail (printf "services[%d] (%s): userFunction.port %d is also a projector port (projector.ports); the user function runs in the projector's pod" $i $name (int $svc.userFunction.port)) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $svc "projector" $projector -}}
{{- $items = append $items $svc -}}
{{- end -}}
{{- /* A projector Deployment is named <resourceName>-projector: no service may be named so. */ -}}
{{- range $svc := $items -}}
{{- if and $svc.projector.enabled (hasKey $seenResources (printf "%s-projector" $svc.resourceName)) -}}
{{- fail (printf "services: the projector of %q and the service %q would share the Kubernetes name %q; set resourceName on one of them" $svc.name (printf "%s-projector" $svc.resourceName) (printf "%s-projector" $svc.resourceName)) -}}
{{- end -}}
{{- end -}}
{{- toJson (dict "items" $items) -}}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------
statehouse.toml
------------------------------------------------------------------------------------------- */}}

{{/* librdkafka properties: the ones derived from kafka.tls / kafka.sasl, then the passthrough map.
Returns JSON {key: value}. */}}
{{- define "statehouse.librdkafka" -}}
{{- $k := .Values.config.kafka -}}
{{- $props := dict -}}
{{- if and $k.tls.enabled $k.sasl.enabled -}}
{{- $_ := set $props "security.protocol" "SASL_SSL" -}}
{{- else if $k.tls.enabled -}}
{{- $_ := set $props "security.protocol" "SSL" -}}
{{- else if $k.sasl.enabled -}}
{{- $_ := set $props "security.protocol" "SASL_PLAINTEXT" -}}
{{- end -}}
{{- if $k.tls.enabled -}}
{{- if and (or $k.tls.caKey $k.tls.certKey $k.tls.keyKey) (not $k.tls.existingSecret) -}}
{{- fail "config.kafka.tls.existingSecret is required when caKey, certKey or keyKey is set" -}}
{{- end -}}
{{- if ne (empty $k.tls.certKey) (empty $k.tls.keyKey) -}}
{{- fail "config.kafka.tls.certKey and config.kafka.tls.keyKey go together (mutual TLS)" -}}
{{- end -}}
{{- if $k.tls.caKey -}}
{{- $_ := set $props "ssl.ca.location" (printf "%s/%s" (include "statehouse.kafkaTlsPath" .) $k.tls.caKey) -}}
{{- end -}}
{{- if $k.tls.certKey -}}
{{- $_ := set $props "ssl.certificate.location" (printf "%s/%s" (include "statehouse.kafkaTlsPath" .) $k.tls.certKey) -}}
{{- $_ := set $props "ssl.key.location" (printf "%s/%s" (include "statehouse.kafkaTlsPath" .) $k.tls.keyKey) -}}
{{- end -}}
{{- $_ := set $props "ssl.endpoint.identification.algorithm" (ternary "https" "none" $k.tls.verifyHostname) -}}
{{- end -}}
{{- if $k.sasl.enabled -}}
{{- if not $k.sasl.existingSecret -}}
{{- fail "config.kafka.sasl.existingSecret is required when config.kafka.sasl.enabled" -}}
{{- end -}}
{{- $_ := set $props "sasl.mechanism" $k.sasl.mechanism -}}
{{- end -}}
{{- range $key, $value := $k.librdkafka -}}
{{- if hasKey $props $key -}}
{{- fail (printf "config.kafka.librdkafka.%s is set by the chart from config.kafka.tls/sasl; set it there" $key) -}}
{{- end -}}
{{- $_ := set $props $key ($value | toString) -}}
{{- end -}}
{{- toJson $props -}}
{{- end -}}

{{- define "statehouse.kafkaTlsPath" -}}/etc/statehouse/kafka-tls{{- end -}}
{{- define "statehouse.cassandraTlsPath" -}}/etc/statehouse/cassandra-tls{{- end -}}
{{/* The config volume and the Kafka TLS secret are mounted side by side (never nested). */}}
{{- define "statehouse.configPath" -}}/etc/statehouse/config{{- end -}}
{{- define "statehouse.configFile" -}}/etc/statehouse/config/statehouse.toml{{- end -}}

{{/* A TOML value: strings quoted (JSON string syntax is valid TOML), integers as integers,
booleans as booleans. */}}
{{- define "statehouse.tomlInt" -}}{{ int64 . }}{{- end -}}
{{- define "statehouse.tomlStr" -}}{{ toString . | toJson }}{{- end -}}

{{/* The sections every role shares: [kafka], [cassandra], [telemetry]. */}}
{{- define "statehouse.toml.common" -}}
{{- $k := .Values.config.kafka -}}
{{- $c := .Values.config.cassandra -}}
{{- $t := .Values.config.telemetry -}}
[kafka]
bootstrap-servers = {{ include "statehouse.tomlStr" $k.bootstrapServers }}
topic-prefix = {{ include "statehouse.tomlStr" $k.topicPrefix }}
replication-factor = {{ include "statehouse.tomlInt" $k.replicationFactor }}
{{- if not (kindIs "invalid" $k.minInsyncReplicas) }}
min-insync-replicas = {{ include "statehouse.tomlInt" $k.minInsyncReplicas }}
{{- end }}
crdt-retention-ms = {{ include "statehouse.tomlInt" $k.crdtRetentionMs }}
transaction-timeout-ms = {{ include "statehouse.tomlInt" $k.transactionTimeoutMs }}
session-timeout-ms = {{ include "statehouse.tomlInt" $k.sessionTimeoutMs }}
request-timeout-ms = {{ include "statehouse.tomlInt" $k.requestTimeoutMs }}
max-record-bytes = {{ include "statehouse.tomlInt" $k.maxRecordBytes }}

[kafka.writer]
linger-ms = {{ include "statehouse.tomlInt" $k.writer.lingerMs }}
busy-linger-ms = {{ include "statehouse.tomlInt" $k.writer.busyLingerMs }}
max-records = {{ include "statehouse.tomlInt" $k.writer.maxRecords }}
max-bytes = {{ include "statehouse.tomlInt" $k.writer.maxBytes }}
queue-capacity = {{ include "statehouse.tomlInt" $k.writer.queueCapacity }}

[kafka.librdkafka]
{{- range $key, $value := (include "statehouse.librdkafka" . | fromJson) }}
{{ include "statehouse.tomlStr" $key }} = {{ include "statehouse.tomlStr" $value }}
{{- end }}

[cassandra]
contact-points = [{{ range $i, $cp := $c.contactPoints }}{{ if $i }}, {{ end }}{{ include "statehouse.tomlStr" $cp }}{{ end }}]
keyspace = {{ include "statehouse.tomlStr" $c.keyspace }}
replication-factor = {{ include "statehouse.tomlInt" $c.replicationFactor }}
datacenters = { {{- range $i, $dc := keys $c.datacenters | sortAlpha }}{{ if $i }},{{ end }} {{ include "statehouse.tomlStr" $dc }} = {{ include "statehouse.tomlInt" (index $c.datacenters $dc) }}{{ end }} }
{{- if $c.localDatacenter }}
local-datacenter = {{ include "statehouse.tomlStr" $c.localDatacenter }}
{{- end }}
{{- if $c.username }}
username = {{ include "statehouse.tomlStr" $c.username }}
{{- end }}
request-timeout-ms = {{ include "statehouse.tomlInt" $c.requestTimeoutMs }}
connect-timeout-ms = {{ include "statehouse.tomlInt" $c.connectTimeoutMs }}
{{- if $c.tls.enabled }}

[cassandra.tls]
enabled = true
{{- if and (or $c.tls.caKey $c.tls.certKey $c.tls.keyKey) (not $c.tls.existingSecret) }}
{{- fail "config.cassandra.tls.existingSecret is required when caKey, certKey or keyKey is set" }}
{{- end }}
{{- if ne (empty $c.tls.certKey) (empty $c.tls.keyKey) }}
{{- fail "config.cassandra.tls.certKey and config.cassandra.tls.keyKey go together (client certificates)" }}
{{- end }}
{{- if $c.tls.caKey }}
ca-file = {{ include "statehouse.tomlStr" (printf "%s/%s" (include "statehouse.cassandraTlsPath" .) $c.tls.caKey) }}
{{- end }}
{{- if $c.tls.certKey }}
cert-file = {{ include "statehouse.tomlStr" (printf "%s/%s" (include "statehouse.cassandraTlsPath" .) $c.tls.certKey) }}
key-file = {{ include "statehouse.tomlStr" (printf "%s/%s" (include "statehouse.cassandraTlsPath" .) $c.tls.keyKey) }}
{{- end }}
{{- end }}

[telemetry]
log-format = {{ include "statehouse.tomlStr" $t.logFormat }}
log-filter = {{ include "statehouse.tomlStr" $t.logFilter }}
{{- if $t.otlpEndpoint }}
otlp-endpoint = {{ include "statehouse.tomlStr" $t.otlpEndpoint }}
sampling-ratio = {{ printf "%.6f" (float64 $t.samplingRatio) }}
{{- end }}

[runtime]
worker-threads = {{ include "statehouse.tomlInt" .Values.config.runtime.workerThreads }}
{{- end -}}

{{- define "statehouse.listen" -}}
{{- $root := index . 0 -}}
{{- printf "%s:%d" $root.Values.listenHost (index . 1 | int) | toJson -}}
{{- end -}}

{{/* statehouse.toml of the gateway and the admin hook. */}}
{{- define "statehouse.toml.shared" -}}
# statehouse.toml rendered by the Helm chart {{ include "statehouse.chart" . }} (release {{ .Release.Name }}).
# Secrets are not here: they arrive as STATEHOUSE__* environment variables.
{{ include "statehouse.toml.common" . }}

[gateway]
listen = {{ include "statehouse.listen" (list . .Values.gateway.ports.client) }}
metrics-listen = {{ include "statehouse.listen" (list . .Values.gateway.ports.metrics) }}
default-timeout-ms = {{ include "statehouse.tomlInt" .Values.config.gateway.defaultTimeoutMs }}
max-timeout-ms = {{ include "statehouse.tomlInt" .Values.config.gateway.maxTimeoutMs }}
max-request-bytes = {{ include "statehouse.tomlInt" .Values.config.gateway.maxRequestBytes }}
max-response-bytes = {{ include "statehouse.tomlInt" .Values.config.gateway.maxResponseBytes }}
max-entity-id-bytes = {{ include "statehouse.tomlInt" .Values.config.gateway.maxEntityIdBytes }}
max-metadata-entries = {{ include "statehouse.tomlInt" .Values.config.gateway.maxMetadataEntries }}
max-metadata-bytes = {{ include "statehouse.tomlInt" .Values.config.gateway.maxMetadataBytes }}
max-concurrent-streams = {{ include "statehouse.tomlInt" .Values.config.gateway.maxConcurrentStreams }}

[gateway.admission]
{{ include "statehouse.toml.admission" .Values.config.gateway.admission }}

[gateway.console]
enabled = {{ .Values.config.gateway.console.enabled }}
{{- if .Values.config.gateway.console.adminTokenSecret }}
admin-token-file = {{ include "statehouse.tomlStr" (printf "%s/%s" (include "statehouse.consoleTokenPath" .) .Values.config.gateway.console.adminTokenKey) }}
{{- end }}
{{ include "statehouse.toml.gatewayAuth" . }}
{{- $gt := .Values.config.gateway.tls }}
{{- if $gt.existingSecret }}

[gateway.tls]
cert-file = {{ include "statehouse.tomlStr" (printf "%s/%s" (include "statehouse.gatewayTlsPath" .) $gt.certKey) }}
key-file = {{ include "statehouse.tomlStr" (printf "%s/%s" (include "statehouse.gatewayTlsPath" .) $gt.keyKey) }}
{{- if $gt.clientCaSecret }}
client-ca-file = {{ include "statehouse.tomlStr" (printf "%s/%s" (include "statehouse.gatewayClientCaPath" .) $gt.clientCaKey) }}
{{- end }}
require-client-cert = {{ $gt.requireClientCert }}
reload-interval-ms = {{ include "statehouse.tomlInt" $gt.reloadIntervalMs }}
{{- end }}
{{- with (include "statehouse.toml.internalTls" . | trim) }}

{{ . }}
{{- end }}
{{ end -}}

{{/* TLS (docs/tls.md): where the Secrets are mounted, and [internal-tls] of the gateway, the
hook and processors. */}}
{{- define "statehouse.gatewayTlsPath" -}}/etc/statehouse/gateway-tls{{- end -}}
{{- define "statehouse.gatewayClientCaPath" -}}/etc/statehouse/gateway-client-ca{{- end -}}
{{- define "statehouse.internalTlsPath" -}}/etc/statehouse/internal-tls{{- end -}}
{{- define "statehouse.toml.internalTls" -}}
{{- $it := .Values.config.internalTls -}}
{{- if $it.enabled }}
[internal-tls]
enabled = true
ca-file = {{ include "statehouse.tomlStr" (printf "%s/%s" (include "statehouse.internalTlsPath" .) $it.caKey) }}
cert-file = {{ include "statehouse.tomlStr" (printf "%s/%s" (include "statehouse.internalTlsPath" .) $it.certKey) }}
key-file = {{ include "statehouse.tomlStr" (printf "%s/%s" (include "statehouse.internalTlsPath" .) $it.keyKey) }}
require-client-cert = {{ $it.requireClientCert }}
allowed-peer-names = [{{ range $i, $n := $it.allowedPeerNames }}{{ if $i }}, {{ end }}{{ include "statehouse.tomlStr" $n }}{{ end }}]
{{- if $it.serverName }}
server-name = {{ include "statehouse.tomlStr" $it.serverName }}
{{- end }}
reload-interval-ms = {{ include "statehouse.tomlInt" $it.reloadIntervalMs }}
{{- end }}
{{- end -}}

{{/* The TLS Secrets' volumes. Args: (list $root $withGateway). */}}
{{- define "statehouse.volumes.tls" -}}
{{- $root := index . 0 -}}
{{- $gt := $root.Values.config.gateway.tls -}}
{{- $it := $root.Values.config.internalTls -}}
{{- if and (index . 1) $gt.existingSecret }}
- name: gateway-tls
  secret:
    secretName: {{ $gt.existingSecret }}
    defaultMode: 0440
{{- if $gt.clientCaSecret }}
- name: gateway-client-ca
  secret:
    secretName: {{ $gt.clientCaSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}
{{- if $it.enabled }}
- name: internal-tls
  secret:
    secretName: {{ required "config.internalTls.existingSecret is required when config.internalTls.enabled" $it.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "statehouse.volumeMounts.tls" -}}
{{- $root := index . 0 -}}
{{- $gt := $root.Values.config.gateway.tls -}}
{{- if and (index . 1) $gt.existingSecret }}
- name: gateway-tls
  mountPath: {{ include "statehouse.gatewayTlsPath" $root }}
  readOnly: true
{{- if $gt.clientCaSecret }}
- name: gateway-client-ca
  mountPath: {{ include "statehouse.gatewayClientCaPath" $root }}
  readOnly: true
{{- end }}
{{- end }}
{{- if $root.Values.config.internalTls.enabled }}
- name: internal-tls
  mountPath: {{ include "statehouse.internalTlsPath" $root }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* [gateway.auth] (docs/security.md): rendered in full only when enabled. */}}
{{- define "statehouse.toml.gatewayAuth" -}}
{{- $a := .Values.config.gateway.auth -}}
[gateway.auth]
enabled = {{ $a.enabled }}
{{- if $a.enabled }}
{{- if or $a.jwks.configMap $a.jwks.secret }}
jwks-file = {{ include "statehouse.tomlStr" (printf "%s/%s" (include "statehouse.jwksPath" .) $a.jwks.key) }}
{{- else if $a.jwks.url }}
jwks-url = {{ include "statehouse.tomlStr" $a.jwks.url }}
{{- end }}
jwks-refresh-s = {{ include "statehouse.tomlInt" $a.jwks.refreshSeconds }}
jwks-min-refresh-s = {{ include "statehouse.tomlInt" $a.jwks.minRefreshSeconds }}
{{- if $a.jwks.caFile }}
ca-file = {{ include "statehouse.tomlStr" $a.jwks.caFile }}
{{- end }}
issuers = [{{ range $i, $v := $a.issuers }}{{ if $i }}, {{ end }}{{ include "statehouse.tomlStr" $v }}{{ end }}]
audiences = [{{ range $i, $v := $a.audiences }}{{ if $i }}, {{ end }}{{ include "statehouse.tomlStr" $v }}{{ end }}]
clock-skew-s = {{ include "statehouse.tomlInt" $a.clockSkewSeconds }}
max-token-bytes = {{ include "statehouse.tomlInt" $a.maxTokenBytes }}
forward-authorization = {{ $a.forwardAuthorization }}
default-access = {{ include "statehouse.tomlStr" $a.defaultAccess }}
{{- range $rule := $a.rules }}

[[gateway.auth.rules]]
method = {{ include "statehouse.tomlStr" $rule.method }}
access = {{ include "statehouse.tomlStr" $rule.access }}
{{- if $rule.claim }}
claim = {{ include "statehouse.tomlStr" $rule.claim }}
{{- end }}
{{- if $rule.anyOf }}
any-of = [{{ range $i, $v := $rule.anyOf }}{{ if $i }}, {{ end }}{{ include "statehouse.tomlStr" $v }}{{ end }}]
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Where the JWKS ConfigMap or Secret is mounted in the gateway. */}}
{{- define "statehouse.jwksPath" -}}/etc/statehouse/jwks{{- end -}}

{{/* Where the console's admin token Secret is mounted in the gateway. */}}
{{- define "statehouse.consoleTokenPath" -}}/etc/statehouse/console{{- end -}}

{{/* statehouse.toml of one service's processors. Args: (list $root $svc). */}}
{{- define "statehouse.toml.processor" -}}
{{- $root := index . 0 -}}
{{- $svc := index . 1 -}}
{{- $s := $svc.settings -}}
# statehouse.toml of the processors of service {{ $svc.name | quote }}, rendered by the Helm chart {{ include "statehouse.chart" $root }} (release {{ $root.Release.Name }}).
# Secrets are not here: they arrive as STATEHOUSE__* environment variables. The advertise address
# (the pod IP) arrives as STATEHOUSE__PROCESSOR__ADVERTISE_ADDRESS.
{{ include "statehouse.toml.common" $root }}

[processor]
service = {{ include "statehouse.tomlStr" $svc.name }}
listen = {{ include "statehouse.listen" (list $root $root.Values.processorPorts.internal) }}
metrics-listen = {{ include "statehouse.listen" (list $root $root.Values.processorPorts.metrics) }}
user-function-host = "127.0.0.1"
user-function-port = {{ include "statehouse.tomlInt" $svc.userFunction.port }}
partitions = {{ include "statehouse.tomlInt" $s.partitions }}
passivation-timeout-ms = {{ include "statehouse.tomlInt" $s.passivationTimeoutMs }}
strict-protocol-version = {{ $s.strictProtocolVersion }}
backup-interval-ms = {{ include "statehouse.tomlInt" $s.backupIntervalMs }}
max-active-entities = {{ include "statehouse.tomlInt" $s.maxActiveEntities }}
max-commands-per-entity = {{ include "statehouse.tomlInt" $s.maxCommandsPerEntity }}
crdt-heartbeat-interval-ms = {{ include "statehouse.tomlInt" $s.crdtHeartbeatIntervalMs }}
crdt-heartbeat-timeout-ms = {{ include "statehouse.tomlInt" $s.crdtHeartbeatTimeoutMs }}
crdt-write-timeout-ms = {{ include "statehouse.tomlInt" $s.crdtWriteTimeoutMs }}
crdt-prune-after-ms = {{ include "statehouse.tomlInt" $s.crdtPruneAfterMs }}

[processor.admission]
{{ include "statehouse.toml.admission" $root.Values.config.processor.admission }}
{{- with (include "statehouse.toml.internalTls" $root | trim) }}

{{ . }}
{{- end }}
{{ end -}}

{{/* The keys of an [*.admission] section. Arg: its values. */}}
{{- define "statehouse.toml.admission" -}}
enabled = {{ .enabled }}
initial-limit = {{ include "statehouse.tomlInt" .initialLimit }}
min-limit = {{ include "statehouse.tomlInt" .minLimit }}
max-limit = {{ include "statehouse.tomlInt" .maxLimit }}
tolerance = {{ printf "%.6f" (float64 .tolerance) }}
window = {{ include "statehouse.tomlInt" .window }}
retry-after-ms = {{ include "statehouse.tomlInt" .retryAfterMs }}
{{- end -}}

{{/* statehouse.toml of one service's projectors. Args: (list $root $svc). */}}
{{- define "statehouse.toml.projector" -}}
{{- $root := index . 0 -}}
{{- $svc := index . 1 -}}
{{- $s := $svc.projector.settings -}}
# statehouse.toml of the projectors of service {{ $svc.name | quote }}, rendered by the Helm chart {{ include "statehouse.chart" $root }} (release {{ $root.Release.Name }}).
# Secrets are not here: they arrive as STATEHOUSE__* environment variables.
{{ include "statehouse.toml.common" $root }}

[projector]
service = {{ include "statehouse.tomlStr" $svc.name }}
handler-host = "127.0.0.1"
handler-port = {{ include "statehouse.tomlInt" $svc.userFunction.port }}
listen = {{ include "statehouse.listen" (list $root $root.Values.projector.ports.query) }}
metrics-listen = {{ include "statehouse.listen" (list $root $root.Values.projector.ports.metrics) }}
batch-size = {{ include "statehouse.tomlInt" $s.batchSize }}
batch-linger-ms = {{ include "statehouse.tomlInt" $s.batchLingerMs }}
poll-interval-ms = {{ include "statehouse.tomlInt" $s.pollIntervalMs }}
{{ end -}}

{{/* ------------------------------------------------------------------------------------------
Secrets as environment variables, TLS volumes
------------------------------------------------------------------------------------------- */}}

{{/* Env of every role that talks to Kafka. */}}
{{- define "statehouse.env.kafka" -}}
{{- $k := .Values.config.kafka -}}
{{- if $k.sasl.enabled }}
- name: STATEHOUSE__KAFKA__LIBRDKAFKA__SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $k.sasl.existingSecret }}
      key: {{ $k.sasl.usernameKey }}
- name: STATEHOUSE__KAFKA__LIBRDKAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $k.sasl.existingSecret }}
      key: {{ $k.sasl.passwordKey }}
{{- end }}
{{- if and $k.tls.enabled $k.tls.keyPasswordKey }}
- name: STATEHOUSE__KAFKA__LIBRDKAFKA__SSL_KEY_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "config.kafka.tls.existingSecret is required with keyPasswordKey" $k.tls.existingSecret }}
      key: {{ $k.tls.keyPasswordKey }}
{{- end }}
{{- end -}}

{{/* Env of every role that talks to Cassandra. */}}
{{- define "statehouse.env.cassandra" -}}
{{- $a := .Values.config.cassandra.auth -}}
{{- if $a.existingSecret }}
{{- if $a.usernameKey }}
- name: STATEHOUSE__CASSANDRA__USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $a.existingSecret }}
      key: {{ $a.usernameKey }}
{{- else if not .Values.config.cassandra.username }}
{{- fail "config.cassandra.auth: set usernameKey or config.cassandra.username (the binary needs both a username and a password)" }}
{{- end }}
- name: STATEHOUSE__CASSANDRA__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $a.existingSecret }}
      key: {{ required "config.cassandra.auth.passwordKey is required with existingSecret" $a.passwordKey }}
{{- end }}
{{- end -}}

{{/* Volumes every statehouse pod has: the TLS secret (if any) and /tmp. */}}
{{- define "statehouse.volumes.common" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if and .Values.config.kafka.tls.enabled .Values.config.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.config.kafka.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- if and .Values.config.cassandra.tls.enabled .Values.config.cassandra.tls.existingSecret }}
- name: cassandra-tls
  secret:
    secretName: {{ .Values.config.cassandra.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "statehouse.volumeMounts.common" -}}
- name: config
  mountPath: {{ include "statehouse.configPath" . }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if and .Values.config.kafka.tls.enabled .Values.config.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: {{ include "statehouse.kafkaTlsPath" . }}
  readOnly: true
{{- end }}
{{- if and .Values.config.cassandra.tls.enabled .Values.config.cassandra.tls.existingSecret }}
- name: cassandra-tls
  mountPath: {{ include "statehouse.cassandraTlsPath" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* ------------------------------------------------------------------------------------------
Pod pieces
------------------------------------------------------------------------------------------- */}}

{{/* Probes of a statehouse container. Startup and liveness: HTTP /healthz on the metrics port
(the process is alive; never restarted for a long recovery). Readiness: HTTP /readyz on the
metrics port, or with probes.mode=grpc the gRPC health service on the gRPC port. Both turn ready
only after discovery and recovery. Args: (list $root metricsPort grpcPort-or-0); a TLS port is
passed as 0 (the kubelet's gRPC probe speaks plaintext only), so its readiness stays on HTTP. */}}
{{- define "statehouse.probes" -}}
{{- $root := index . 0 -}}
{{- $metrics := index . 1 | int -}}
{{- $grpc := index . 2 | int -}}
{{- $p := $root.Values.probes -}}
{{- $useGrpc := and (eq $p.mode "grpc") (gt $grpc 0) -}}
startupProbe:
  httpGet:
    path: /healthz
    port: {{ $metrics }}
  periodSeconds: {{ $p.startup.periodSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ $metrics }}
  initialDelaySeconds: {{ $p.liveness.initialDelaySeconds }}
  periodSeconds: {{ $p.liveness.periodSeconds }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
readinessProbe:
  {{- if $useGrpc }}
  grpc:
    port: {{ $grpc }}
  {{- else }}
  httpGet:
    path: /readyz
    port: {{ $metrics }}
  {{- end }}
  initialDelaySeconds: {{ $p.readiness.initialDelaySeconds }}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
{{- end -}}

{{/* The user function container of a service, the same in its processor pods and its projector
pods: image, command, args, env, port, probes, resources, security context, mounts.
Args: (list $root $svc). */}}
{{- define "statehouse.userFunctionContainer" -}}
{{- $root := index . 0 -}}
{{- $uf := (index . 1).userFunction -}}
- name: user-function
  image: {{ include "statehouse.imageRef" (list $uf.image "") }}
  imagePullPolicy: {{ $uf.image.pullPolicy | default "IfNotPresent" }}
  {{- with $uf.command }}
  command:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $uf.args }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $uf.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $uf.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: user-function
      containerPort: {{ $uf.port }}
      protocol: TCP
  livenessProbe:
    {{- if $uf.livenessProbe }}
    {{- toYaml $uf.livenessProbe | nindent 4 }}
    {{- else }}
    tcpSocket:
      port: {{ $uf.port }}
    initialDelaySeconds: 10
    periodSeconds: 10
    failureThreshold: 6
    {{- end }}
  readinessProbe:
    {{- if $uf.readinessProbe }}
    {{- toYaml $uf.readinessProbe | nindent 4 }}
    {{- else }}
    tcpSocket:
      port: {{ $uf.port }}
    periodSeconds: 5
    {{- end }}
  # Stays up while the statehouse container next to it drains (which still calls the user function).
  {{- include "statehouse.preStop" $uf.preStopSleepSeconds | nindent 2 }}
  resources:
    {{- toYaml $uf.resources | nindent 4 }}
  securityContext:
    {{- toYaml ($uf.securityContext | default $root.Values.securityContext) | nindent 4 }}
  {{- if or $uf.tmpVolume $uf.volumeMounts }}
  volumeMounts:
    {{- if $uf.tmpVolume }}
    - name: user-function-tmp
      mountPath: /tmp
    {{- end }}
    {{- with $uf.volumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
{{- end -}}

{{/* The pod volumes of a service's user function: its /tmp and the service's `volumes`. Args: $svc. */}}
{{- define "statehouse.userFunctionVolumes" -}}
{{- if .userFunction.tmpVolume }}
- name: user-function-tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end }}
{{- with .volumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* preStop pause (kubelet `sleep` action: no shell needed in the image). Args: seconds. */}}
{{- define "statehouse.preStop" -}}
{{- if gt (int .) 0 }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ int . }}
{{- end }}
{{- end -}}

{{/* Default topology spread (nodes, then zones; best effort). Args: (list $root component extraSelector). */}}
{{- define "statehouse.topologySpread" -}}
{{- $root := index . 0 -}}
{{- $selector := include "statehouse.selectorLabels" (list $root (index . 1)) | fromYaml -}}
{{- $selector = merge $selector (index . 2) -}}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- toYaml $selector | nindent 6 }}
  matchLabelKeys:
    - pod-template-hash
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- toYaml $selector | nindent 6 }}
  matchLabelKeys:
    - pod-template-hash
{{- end -}}

{{/* Pod-level scheduling and security fields shared by the Deployments. Args: (list $root podValues component extraSelector). */}}
{{- define "statehouse.podCommon" -}}
{{- $root := index . 0 -}}
{{- $v := index . 1 -}}
serviceAccountName: {{ include "statehouse.serviceAccountName" $root }}
automountServiceAccountToken: {{ $root.Values.automountServiceAccountToken }}
enableServiceLinks: false
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml $v.topologySpreadConstraints | nindent 2 }}
{{- else if $v.topologySpread }}
topologySpreadConstraints:
  {{- include "statehouse.topologySpread" (list $root (index . 2) (index . 3)) | nindent 2 }}
{{- end }}
{{- end -}}

{{/* checkov skips of a workload, each with its reason, emitted only where the check would fail
(README.md "Policy checks"). Args: (list $root usesCassandra userFunctionImages). */}}
{{- define "statehouse.checkovSkips" -}}
{{- $root := index . 0 -}}
{{- $v := $root.Values -}}
{{- $images := prepend (index . 2) $v.image -}}
{{- $skips := list -}}
{{- $undigested := false -}}
{{- $notAlways := false -}}
{{- range $images -}}
{{- if not .digest }}{{ $undigested = true }}{{ end -}}
{{- if ne (.pullPolicy | default "IfNotPresent") "Always" }}{{ $notAlways = true }}{{ end -}}
{{- end -}}
{{- if $undigested -}}
{{- $skips = append $skips "CKV_K8S_43=Images are pinned by version tag by default (the chart's appVersion); set image.digest / userFunction.image.digest to pin by digest" -}}
{{- end -}}
{{- if $notAlways -}}
{{- $skips = append $skips "CKV_K8S_15=IfNotPresent by default: images are pinned by version tag or digest, and a pod restart (which moves Kafka partitions) should not depend on the registry; set pullPolicy Always if you reuse tags" -}}
{{- end -}}
{{- if or $v.config.kafka.sasl.enabled (and $v.config.kafka.tls.enabled $v.config.kafka.tls.keyPasswordKey) (and (index . 1) $v.config.cassandra.auth.existingSecret) -}}
{{- $skips = append $skips "CKV_K8S_35=The statehouse binary reads the Kafka SASL/TLS-key and Cassandra passwords only from its config or STATEHOUSE__* environment variables (no password-file option yet); they come from existing Secrets via secretKeyRef and are never rendered" -}}
{{- end -}}
{{- range $i, $s := $skips }}
checkov.io/skip{{ add1 $i }}: {{ $s | quote }}
{{- end }}
{{- end -}}

{{/* The body of an HPA spec after scaleTargetRef. Args: the autoscaling values. */}}
{{- define "statehouse.hpaSpec" -}}
minReplicas: {{ .minReplicas }}
maxReplicas: {{ .maxReplicas }}
metrics:
  - type: Resource
    resource:
      name: cpu
      target:
        type: Utilization
        averageUtilization: {{ .targetCPUUtilizationPercentage }}
  {{- if not (kindIs "invalid" .targetMemoryUtilizationPercentage) }}
  - type: Resource
    resource:
      name: memory
      target:
        type: Utilization
        averageUtilization: {{ .targetMemoryUtilizationPercentage }}
  {{- end }}
{{- with .behavior }}
behavior:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* NetworkPolicy egress rules. Args: (list $root needsCassandra). */}}
{{- define "statehouse.egress.backends" -}}
{{- $np := (index . 0).Values.networkPolicy -}}
# Kafka
- ports:
    {{- range $np.kafka.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.kafka.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- if index . 1 }}
# Cassandra / ScyllaDB
- ports:
    {{- range $np.cassandra.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.cassandra.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- if $np.dns.enabled }}
# DNS
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
  {{- with $np.dns.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- with $np.extraEgress }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Ingress rule of a metrics port. Args: (list $root port). */}}
{{- define "statehouse.ingress.metrics" -}}
{{- $np := (index . 0).Values.networkPolicy -}}
- ports:
    - port: {{ index . 1 }}
      protocol: TCP
  {{- with $np.metricsFrom }}
  from:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* The env list of a statehouse container, trimmed; empty when there is none.
Args: (list $root withCassandra extraEnv). */}}
{{- define "statehouse.env" -}}
{{- $root := index . 0 -}}
{{- $out := include "statehouse.env.kafka" $root -}}
{{- if index . 1 -}}
{{- $out = printf "%s\n%s" $out (include "statehouse.env.cassandra" $root) -}}
{{- end -}}
{{- with index . 2 -}}
{{- $out = printf "%s\n%s" $out (toYaml .) -}}
{{- end -}}
{{- $lines := list -}}
{{- range splitList "\n" $out -}}
{{- if trim . -}}
{{- $lines = append $lines . -}}
{{- end -}}
{{- end -}}
{{- join "\n" $lines -}}
{{- end -}}
