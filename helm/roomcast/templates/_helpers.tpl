{{/* The release's full name, at most 63 characters. */}}
{{- define "roomcast.fullname" -}}
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

{{/* A component's object name: the full name cut so that "-SUFFIX" still fits in 63. */}}
{{- define "roomcast.name" -}}
{{- $suffix := .suffix -}}
{{- $base := include "roomcast.fullname" .root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" -}}
{{- printf "%s-%s" $base $suffix -}}
{{- end -}}

{{- define "roomcast.selectorLabels" -}}
app.kubernetes.io/name: {{ default .root.Chart.Name .root.Values.nameOverride | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "roomcast.labels" -}}
{{ include "roomcast.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: roomcast
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 }}
{{- end -}}

{{/* image: {root, image: (the component's image values)} */}}
{{- define "roomcast.image" -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if .root.Values.image.registry -}}
{{ printf "%s/%s:%s" (trimSuffix "/" .root.Values.image.registry) .image.repository $tag }}
{{- else -}}
{{ printf "%s:%s" .image.repository $tag }}
{{- end -}}
{{- end -}}

{{- define "roomcast.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "roomcast.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* One option as an environment value: strings as they are, numbers without exponents. */}}
{{- define "roomcast.envValue" -}}
{{- if kindIs "string" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{/* The options of a component as ROOMCAST_<COMPONENT>_<OPTION> entries of a ConfigMap:
     {prefix, options (camelCase -> value; null skipped)} */}}
{{- define "roomcast.optionsData" -}}
{{- $prefix := .prefix -}}
{{- range $name, $value := .options }}
{{- if not (kindIs "invalid" $value) }}
{{ printf "%s_%s" $prefix ($name | snakecase | upper) }}: {{ include "roomcast.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The NATS URL: from a Secret when nats.urlSecret.name is set, else the value; the NATS
     password and token from their Secrets. {root, var} */}}
{{- define "roomcast.natsEnv" -}}
{{- $n := .root.Values.nats }}
{{- if $n.urlSecret.name }}
- name: {{ .var }}
  valueFrom:
    secretKeyRef:
      name: {{ $n.urlSecret.name }}
      key: {{ $n.urlSecret.key }}
{{- end }}
{{- if $n.passwordSecret.name }}
- name: {{ .var }}_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $n.passwordSecret.name }}
      key: {{ $n.passwordSecret.key }}
{{- end }}
{{- if $n.tokenSecret.name }}
- name: {{ .var }}_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $n.tokenSecret.name }}
      key: {{ $n.tokenSecret.key }}
{{- end }}
{{- end -}}

{{/* The NATS settings that are not secrets, as ConfigMap entries. {root, prefix} */}}
{{- define "roomcast.natsData" -}}
{{- $n := .root.Values.nats }}
{{- if $n.user }}
{{ .prefix }}_NATS_USER: {{ $n.user | quote }}
{{- end }}
{{- if $n.credsFile }}
{{ .prefix }}_NATS_CREDS: {{ $n.credsFile | quote }}
{{- end }}
{{- if $n.nkeySeedFile }}
{{ .prefix }}_NATS_NKEY_SEED: {{ $n.nkeySeedFile | quote }}
{{- end }}
{{- if $n.tlsCaFile }}
{{ .prefix }}_NATS_TLS_CA: {{ $n.tlsCaFile | quote }}
{{- end }}
{{- end -}}
