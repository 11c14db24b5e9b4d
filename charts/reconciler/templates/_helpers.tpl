{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "reconciler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name; used as the name of every object of the release.
*/}}
{{- define "reconciler.fullname" -}}
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

{{- define "reconciler.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels.
*/}}
{{- define "reconciler.labels" -}}
helm.sh/chart: {{ include "reconciler.chart" . }}
{{ include "reconciler.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: reconciler
{{- end }}

{{/*
Selector labels: must never change between upgrades.
*/}}
{{- define "reconciler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "reconciler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "reconciler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "reconciler.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "reconciler.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "reconciler.publicImage" -}}
{{- printf "%s:%s" .Values.publicServer.image.repository .Values.publicServer.image.tag }}
{{- end }}

{{/* Fixed paths inside the containers. */}}
{{- define "reconciler.rootPath" -}}/var/lib/reconciler{{- end }}
{{- define "reconciler.sharedPath" -}}/var/lib/reconciler-shared{{- end }}
{{/* The published trees: under the root, or on the shared claim. */}}
{{- define "reconciler.publicPath" -}}
{{- if .Values.storage.shared.enabled }}{{ include "reconciler.sharedPath" . }}/public{{ else }}/var/lib/reconciler/public{{ end }}
{{- end }}
{{- define "reconciler.poolPath" -}}{{ include "reconciler.sharedPath" . }}/pool{{- end }}
{{- define "reconciler.statePasswordPath" -}}/etc/reconciler/state{{- end }}
{{- define "reconciler.specsPath" -}}/etc/reconciler/specs{{- end }}
{{- define "reconciler.gitCredentialsPath" -}}/etc/reconciler/git{{- end }}
{{- define "reconciler.trustedKeysPath" -}}/etc/reconciler/trusted-keys{{- end }}
{{- define "reconciler.tokenPath" -}}/etc/reconciler/api-token{{- end }}
{{- define "reconciler.gnupgHome" -}}/home/reconciler/.gnupg{{- end }}

{{/* Names of the objects the chart may create or refer to. */}}
{{- define "reconciler.specsConfigMapName" -}}
{{- default (printf "%s-specs" (include "reconciler.fullname" .)) .Values.source.configMap.existingConfigMap }}
{{- end }}

{{- define "reconciler.gitSecretName" -}}
{{- default (printf "%s-git" (include "reconciler.fullname" .)) .Values.source.git.auth.existingSecret }}
{{- end }}

{{- define "reconciler.trustedKeysConfigMapName" -}}
{{- default (printf "%s-trusted-keys" (include "reconciler.fullname" .)) .Values.source.git.verifyCommits.existingConfigMap }}
{{- end }}

{{- define "reconciler.signingSecretName" -}}
{{- default (printf "%s-signing" (include "reconciler.fullname" .)) .Values.signing.existingSecret }}
{{- end }}

{{- define "reconciler.tokenSecretName" -}}
{{- default (printf "%s-api-token" (include "reconciler.fullname" .)) .Values.apiToken.existingSecret }}
{{- end }}

{{- define "reconciler.claimName" -}}
{{- default (include "reconciler.fullname" .) .Values.persistence.existingClaim }}
{{- end }}

{{- define "reconciler.sharedClaimName" -}}
{{- default (printf "%s-shared" (include "reconciler.fullname" .)) .Values.storage.shared.existingClaim }}
{{- end }}

{{- define "reconciler.statePasswordSecretName" -}}
{{- default (printf "%s-state" (include "reconciler.fullname" .)) .Values.state.postgres.password.existingSecret }}
{{- end }}

{{/* Which optional pieces are on. */}}
{{- define "reconciler.gitSource" -}}
{{- if eq .Values.source.type "git" }}true{{ end }}
{{- end }}

{{- define "reconciler.gitAuth" -}}
{{- if and (include "reconciler.gitSource" .) (ne .Values.source.git.auth.type "none") }}true{{ end }}
{{- end }}

{{- define "reconciler.verifyCommits" -}}
{{- if and (include "reconciler.gitSource" .) .Values.source.git.verifyCommits.enabled }}true{{ end }}
{{- end }}

{{/* Several pods: one leader on a PostgreSQL state, the rest standing by. */}}
{{- define "reconciler.scaledOut" -}}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- end }}

{{/* A password file is mounted: the URL is built from values and a password is given. */}}
{{- define "reconciler.statePasswordFile" -}}
{{- $pg := .Values.state.postgres }}
{{- if and $pg.enabled (not $pg.urlSecret.name) (or $pg.password.existingSecret $pg.password.value) }}true{{ end }}
{{- end }}

{{/*
The state URL built from values (never with a password): url, or host/port/database/user,
and sslmode.
*/}}
{{- define "reconciler.stateURL" -}}
{{- $pg := .Values.state.postgres }}
{{- $url := $pg.url }}
{{- if not $url }}
{{- $host := $pg.host }}
{{- if contains ":" $host }}{{ $host = printf "[%s]" $host }}{{ end }}
{{- $url = printf "postgresql://%s@%s:%d/%s" $pg.user $host (int $pg.port) $pg.database }}
{{- end }}
{{- if $pg.sslmode }}
{{- $url = printf "%s%ssslmode=%s" $url (ternary "&" "?" (contains "?" $url)) $pg.sslmode }}
{{- end }}
{{- $url }}
{{- end }}

{{- define "reconciler.signingEnabled" -}}
{{- if or .Values.signing.existingSecret .Values.signing.keys }}true{{ end }}
{{- end }}

{{/*
Checks the schema cannot express: they depend on several values at once.
*/}}
{{- define "reconciler.validate" -}}
{{- $src := .Values.source }}
{{- if eq $src.type "git" }}
  {{- if not $src.git.url }}
    {{- fail "source.git.url is required when source.type is git" }}
  {{- end }}
  {{- $auth := $src.git.auth }}
  {{- if not $auth.existingSecret }}
    {{- if and (eq $auth.type "basic") (not (and $auth.username $auth.password)) }}
      {{- fail "source.git.auth.type basic needs source.git.auth.existingSecret, or both username and password" }}
    {{- end }}
    {{- if and (eq $auth.type "token") (not $auth.token) }}
      {{- fail "source.git.auth.type token needs source.git.auth.existingSecret or source.git.auth.token" }}
    {{- end }}
    {{- if and (eq $auth.type "ssh") (not (and $auth.sshPrivateKey $auth.knownHosts)) }}
      {{- fail "source.git.auth.type ssh needs source.git.auth.existingSecret, or both sshPrivateKey and knownHosts" }}
    {{- end }}
  {{- end }}
  {{- $v := $src.git.verifyCommits }}
  {{- if and $v.enabled (not $v.existingConfigMap) (not $v.trustedKeys) }}
    {{- fail "source.git.verifyCommits.enabled needs source.git.verifyCommits.existingConfigMap or trustedKeys" }}
  {{- end }}
  {{- if and $v.existingConfigMap $v.trustedKeys }}
    {{- fail "set only one of source.git.verifyCommits.existingConfigMap and trustedKeys" }}
  {{- end }}
{{- else }}
  {{- if and $src.configMap.existingConfigMap $src.configMap.specs }}
    {{- fail "set only one of source.configMap.existingConfigMap and source.configMap.specs" }}
  {{- end }}
{{- end }}
{{- if and .Values.signing.existingSecret .Values.signing.keys }}
  {{- fail "set only one of signing.existingSecret and signing.keys" }}
{{- end }}
{{- if .Values.apiToken.enabled }}
  {{- if and (not .Values.apiToken.existingSecret) (not .Values.apiToken.value) }}
    {{- fail "apiToken.enabled needs apiToken.existingSecret or apiToken.value" }}
  {{- end }}
  {{- if and .Values.apiToken.existingSecret .Values.apiToken.value }}
    {{- fail "set only one of apiToken.existingSecret and apiToken.value" }}
  {{- end }}
{{- end }}
{{- include "reconciler.validateScaleOut" . }}
{{- if and .Values.publicServer.enabled (eq (int .Values.publicServer.port) (int .Values.serve.port)) }}
  {{- fail "publicServer.port must differ from serve.port: both containers share the pod's network" }}
{{- end }}
{{- end }}

{{/*
State, shared storage and replicas. The schema refuses replicaCount > 1 without them too;
these messages say why, and hold when the schema is skipped.
*/}}
{{- define "reconciler.validateScaleOut" -}}
{{- $pg := .Values.state.postgres }}
{{- $shared := .Values.storage.shared }}
{{- if include "reconciler.scaledOut" . }}
  {{- if not $pg.enabled }}
    {{- fail (printf "replicaCount %d needs state.postgres.enabled: SQLite state (state.db on the root volume) serves one pod only; set replicaCount: 1, or move the state to PostgreSQL (reconciler state copy --to postgresql://...)" (int .Values.replicaCount)) }}
  {{- end }}
  {{- if not (and $shared.enabled (has "ReadWriteMany" $shared.accessModes)) }}
    {{- fail (printf "replicaCount %d needs storage.shared.enabled with ReadWriteMany in storage.shared.accessModes: every pod reads and writes the same pool and published trees; give a ReadWriteMany claim (storage.shared.existingClaim) or a storageClass that provides one, or set replicaCount: 1" (int .Values.replicaCount)) }}
  {{- end }}
{{- end }}
{{- if and $shared.enabled (not $pg.enabled) }}
  {{- fail "storage.shared.enabled needs state.postgres.enabled: with storage.shared the root is an emptyDir of the pod, and state.db on it would be lost with the pod" }}
{{- end }}
{{- if and $shared.enabled .Values.persistence.existingClaim }}
  {{- fail "set only one of storage.shared and persistence.existingClaim: with storage.shared the pool and the published trees are on the shared claim and the root is an emptyDir" }}
{{- end }}
{{- if $pg.enabled }}
  {{- if $pg.urlSecret.name }}
    {{- if or $pg.url $pg.host $pg.password.existingSecret $pg.password.value }}
      {{- fail "state.postgres.urlSecret holds the whole state URL: leave state.postgres.url, host and password empty" }}
    {{- end }}
  {{- else }}
    {{- if and (not $pg.url) (not $pg.host) }}
      {{- fail "state.postgres.enabled needs state.postgres.urlSecret.name, url or host" }}
    {{- end }}
    {{- if and $pg.url $pg.host }}
      {{- fail "set only one of state.postgres.url and state.postgres.host" }}
    {{- end }}
    {{- if or (regexMatch "^[a-z]+://[^/@]*:[^/@]*@" $pg.url) (contains "password=" $pg.url) }}
      {{- fail "state.postgres.url holds a password: it would be readable in the pod spec; put it in state.postgres.password (or the whole URL in a Secret: state.postgres.urlSecret)" }}
    {{- end }}
    {{- if and $pg.sslmode (contains "sslmode=" $pg.url) }}
      {{- fail "state.postgres.url sets sslmode and so does state.postgres.sslmode: set sslmode: \"\" or drop it from the URL" }}
    {{- end }}
    {{- if and $pg.password.existingSecret $pg.password.value }}
      {{- fail "set only one of state.postgres.password.existingSecret and state.postgres.password.value" }}
    {{- end }}
  {{- end }}
{{- end }}
{{- end }}

{{/*
Arguments of the reconciler container.
*/}}
{{- define "reconciler.args" -}}
- --root
- {{ include "reconciler.rootPath" . }}
- serve
{{- if include "reconciler.gitSource" . }}
{{- $git := .Values.source.git }}
- --git
- {{ $git.url | quote }}
- --ref
- {{ $git.ref | quote }}
- --path
- {{ $git.path | quote }}
{{- if eq $git.auth.type "basic" }}
- --git-username-file
- {{ include "reconciler.gitCredentialsPath" . }}/username
- --git-password-file
- {{ include "reconciler.gitCredentialsPath" . }}/password
{{- else if eq $git.auth.type "token" }}
- --git-token-file
- {{ include "reconciler.gitCredentialsPath" . }}/token
{{- else if eq $git.auth.type "ssh" }}
- --git-ssh-key-file
- {{ include "reconciler.gitCredentialsPath" . }}/ssh-privatekey
{{- end }}
{{- if $git.verifyCommits.enabled }}
- --verify-commits
- --trusted-keys-file
- {{ include "reconciler.trustedKeysPath" . }}/trusted-keys.asc
{{- end }}
{{- else }}
- --specs
- {{ include "reconciler.specsPath" . }}
{{- end }}
- --listen
- {{ printf "%s:%d" (include "reconciler.listenHost" .) (int .Values.serve.port) | quote }}
- --interval
- {{ include "reconciler.interval" . | quote }}
{{- if .Values.apiToken.enabled }}
- --token-file
- {{ include "reconciler.tokenPath" . }}/token
{{- end }}
{{- if .Values.serve.servePublic }}
- --serve-public
{{- end }}
{{- range .Values.serve.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* An IPv6 listen address goes in brackets. */}}
{{- define "reconciler.listenHost" -}}
{{- if contains ":" .Values.serve.listenAddress }}
{{- printf "[%s]" .Values.serve.listenAddress }}
{{- else }}
{{- .Values.serve.listenAddress }}
{{- end }}
{{- end }}

{{/* source.git.interval overrides serve.interval for a git source. */}}
{{- define "reconciler.interval" -}}
{{- if and (include "reconciler.gitSource" .) .Values.source.git.interval }}
{{- .Values.source.git.interval }}
{{- else }}
{{- .Values.serve.interval }}
{{- end }}
{{- end }}

{{/*
Checksum of everything the chart renders into ConfigMaps and Secrets the pod uses,
so that `helm upgrade` with changed specs, keys or credentials restarts the pod.
*/}}
{{- define "reconciler.configChecksum" -}}
{{- $parts := list }}
{{- range $t := list "configmap-specs.yaml" "configmap-trusted-keys.yaml" "configmap-nginx.yaml" "secret-git.yaml" "secret-signing.yaml" "secret-api-token.yaml" "secret-state.yaml" }}
{{- $parts = append $parts (include (print $.Template.BasePath "/" $t) $) }}
{{- end }}
{{- $parts | join "\n---\n" | sha256sum }}
{{- end }}
