{{/* Names and labels. */}}
{{- define "cachemesh.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cachemesh.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cachemesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cachemesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cachemesh.labels" -}}
{{ include "cachemesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "cachemesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cachemesh.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "cachemesh.secretName" -}}
{{- default (include "cachemesh.fullname" .) .Values.secret.existingSecret -}}
{{- end -}}

{{- define "cachemesh.priorityClassName" -}}
{{- if .Values.priorityClassName -}}
{{- .Values.priorityClassName -}}
{{- else if .Values.priorityClass.create -}}
{{- include "cachemesh.fullname" . -}}
{{- end -}}
{{- end -}}

{{- define "cachemesh.peersService" -}}
{{- printf "%s-peers" (include "cachemesh.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Where the status page listens, as the host part of CACHEMESH_STATUS_LISTEN. */}}
{{- define "cachemesh.statusHost" -}}
{{- if eq .Values.status.bind "hostIP" -}}$(HOST_IP){{- else -}}127.0.0.1{{- end -}}
{{- end -}}

{{/* diskBudget as the node reads it: a number in a values file reaches the templates as a float. */}}
{{- define "cachemesh.diskBudget" -}}
{{- $budget := .Values.diskBudget -}}
{{- if kindIs "string" $budget -}}{{- $budget -}}{{- else if not (kindIs "invalid" $budget) -}}{{- int64 $budget -}}{{- end -}}
{{- end -}}

{{/*
Refuses values a node would refuse (mesh/options.py, mesh/values.py), or that cannot work here,
at render time and with the fix. values.schema.json has checked each value's type already.
*/}}
{{- define "cachemesh.validate" -}}
{{- $v := .Values -}}
{{- if and (not $v.secret.existingSecret) (not $v.secret.value) -}}
{{- fail "no cluster secret: set secret.existingSecret to the name of a Secret that holds it (under secret.key), or secret.value (at least 16 bytes, e.g. `openssl rand -hex 32`); a node refuses to start without one" -}}
{{- end -}}
{{- if and $v.secret.existingSecret $v.secret.value -}}
{{- fail "set one of secret.existingSecret and secret.value, not both" -}}
{{- end -}}
{{- if and $v.secret.value (lt (len (trim $v.secret.value)) 16) -}}
{{- fail (printf "secret.value is %d bytes: the cluster secret must be at least 16 (e.g. `openssl rand -hex 32`)" (len (trim $v.secret.value))) -}}
{{- end -}}
{{- $ports := list (int $v.ports.peer) (int $v.ports.registry) (int $v.ports.status) -}}
{{- if ne (len (uniq $ports)) 3 -}}
{{- fail (printf "ports.peer (%d), ports.registry (%d) and ports.status (%d) must differ: the pod shares the host's network" (int $v.ports.peer) (int $v.ports.registry) (int $v.ports.status)) -}}
{{- end -}}
{{- $budget := include "cachemesh.diskBudget" . -}}
{{- if and $budget (not (regexMatch "^(off|none|[0-9]+(\\.[0-9]+)? ?([kKmMgGtT]?[bB]?|[kKmMgGtT][iI][bB]))$" $budget)) -}}
{{- fail (printf "diskBudget %q is not a size: a number with an optional unit, kB MB GB TB (powers of 1000) or KiB MiB GiB TiB (of 1024), e.g. 20GB or 500GiB; off for none" $budget) -}}
{{- end -}}
{{- range $name := list "diskHigh" "diskLow" -}}
{{- $mark := toString (index $v $name) -}}
{{- if and $mark (not (regexMatch "^([1-9][0-9]?(\\.[0-9]+)?%|0\\.[0-9]*[1-9][0-9]*)$" $mark)) -}}
{{- fail (printf "%s %q is not a percentage between 0%% and 100%%, e.g. 85%%" $name $mark) -}}
{{- end -}}
{{- end -}}
{{- if and $v.diskLow (not $v.diskHigh) -}}
{{- fail "diskLow needs diskHigh: eviction stops at diskLow once diskHigh started it" -}}
{{- end -}}
{{- if and $v.readyTimeout (not (regexMatch "^(off|[0-9]+(\\.[0-9]+)?|([0-9]+(\\.[0-9]+)?[smh])+)$" (toString $v.readyTimeout))) -}}
{{- fail (printf "readyTimeout %q is not a duration: e.g. 90s, 10m, 1h30m, or off" (toString $v.readyTimeout)) -}}
{{- end -}}
{{- if and (eq $v.engine "off") (not $v.registry.enabled) -}}
{{- fail "engine: off with registry.enabled: false leaves nothing to share: an engine-less node serves the registry endpoint alone" -}}
{{- end -}}
{{- if and $v.serviceMonitor.enabled (ne $v.status.bind "hostIP") -}}
{{- fail "serviceMonitor.enabled needs status.bind: hostIP: on localhost (the default) Prometheus cannot reach /metrics. hostIP puts the status page, which has no authentication, on the node's address: firewall the port to your scraper" -}}
{{- end -}}
{{- end -}}
