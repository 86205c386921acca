{{- define "ferry.labels" -}}
app.kubernetes.io/part-of: ferry
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ferry.operatorName" -}}{{ .Release.Name }}-operator{{- end -}}
{{- define "ferry.routerName" -}}{{ .Release.Name }}-router{{- end -}}

{{- define "ferry.operatorSelector" -}}
app.kubernetes.io/name: ferry-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ferry.routerSelector" -}}
app.kubernetes.io/name: ferry-router
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ferry.image" -}}{{ .repository }}:{{ .tag }}{{- end -}}

{{- define "ferry.podEnv" -}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: FERRY_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- with .Values.watchNamespace }}
- name: FERRY_WATCH_NAMESPACE
  value: {{ . | quote }}
{{- end }}
{{- end -}}
