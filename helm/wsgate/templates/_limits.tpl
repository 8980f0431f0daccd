{{/* Shared connection limits (limits.redis): helpers for the proxy Deployment and redis.yaml. */}}

{{/* "true" when the proxies count connection limits in a Redis. */}}
{{- define "wsgate.limits.enabled" -}}
{{- with .Values.limits.redis }}{{ if or .url .existingSecret .deploy }}true{{ end }}{{ end -}}
{{- end -}}

{{- define "wsgate.limits.redisName" -}}
{{ include "wsgate.fullname" . }}-redis
{{- end -}}

{{/* The Secret holding the Redis password (key `password`), if any. */}}
{{- define "wsgate.limits.passwordSecret" -}}
{{- if .Values.limits.redis.passwordSecret -}}
{{ .Values.limits.redis.passwordSecret }}
{{- else if .Values.limits.redis.deploy -}}
{{ include "wsgate.limits.redisName" . }}
{{- end -}}
{{- end -}}

{{/* The proxy's arguments. */}}
{{- define "wsgate.limits.args" -}}
{{- $redis := .Values.limits.redis -}}
{{- if include "wsgate.limits.enabled" . -}}
{{- if and $redis.deploy (or $redis.url $redis.existingSecret) -}}
{{- fail "limits.redis.deploy runs its own Redis: leave limits.redis.url and limits.redis.existingSecret empty" -}}
{{- end -}}
{{- if gt (mulf 2 $redis.renewSeconds) (float64 $redis.leaseSeconds) -}}
{{- fail "limits.redis.renewSeconds must be at most half of limits.redis.leaseSeconds" -}}
{{- end -}}
{{- if $redis.deploy }}
- --limits-redis-url=redis://{{ include "wsgate.limits.redisName" . }}:6379/0
{{- else if not $redis.existingSecret }}
- --limits-redis-url={{ $redis.url }}
{{- end }}
{{- if include "wsgate.limits.passwordSecret" . }}
- --limits-redis-password-file=/var/run/wsgate/limits-redis/password
{{- end }}
- --limits-redis-failure={{ $redis.failure }}
- --limits-lease-seconds={{ $redis.leaseSeconds }}
- --limits-renew-seconds={{ $redis.renewSeconds }}
- --limits-redis-timeout={{ $redis.timeoutSeconds }}
{{- end -}}
{{- end -}}

{{/* The proxy's environment: the URL from limits.redis.existingSecret. */}}
{{- define "wsgate.limits.env" -}}
{{- if and (include "wsgate.limits.enabled" .) .Values.limits.redis.existingSecret (not .Values.limits.redis.deploy) -}}
- name: WSGATE_LIMITS_REDIS_URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.limits.redis.existingSecret }}, key: url}
{{- end -}}
{{- end -}}

{{- define "wsgate.limits.volumeMounts" -}}
{{- if and (include "wsgate.limits.enabled" .) (include "wsgate.limits.passwordSecret" .) -}}
- {name: limits-redis, mountPath: /var/run/wsgate/limits-redis, readOnly: true}
{{- end -}}
{{- end -}}

{{- define "wsgate.limits.volumes" -}}
{{- if and (include "wsgate.limits.enabled" .) (include "wsgate.limits.passwordSecret" .) -}}
- name: limits-redis
  secret:
    secretName: {{ include "wsgate.limits.passwordSecret" . }}
    items: [{key: password, path: password}]
{{- end -}}
{{- end -}}
