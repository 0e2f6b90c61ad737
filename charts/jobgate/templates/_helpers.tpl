{{/* Chart name (or nameOverride), shortened to the 63 characters a label
value may have. */}}
{{- define "jobgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's name for its objects: fullnameOverride when set; else the
release name alone when it already contains the name ("jobgate"), else
"<release>-jobgate". */}}
{{- define "jobgate.fullname" -}}
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

{{- define "jobgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jobgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "jobgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "jobgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "jobgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "jobgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "jobgate.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{- define "jobgate.leaseName" -}}
{{- default (printf "%s-controller" (include "jobgate.fullname" .)) .Values.leaderElection.leaseName }}
{{- end }}

{{/* Without leader election a second replica would act too: run one. */}}
{{- define "jobgate.replicas" -}}
{{- if .Values.leaderElection.enabled }}
{{- .Values.replicaCount }}
{{- else }}
{{- 1 }}
{{- end }}
{{- end }}

{{- define "jobgate.webhookServiceName" -}}
{{- printf "%s-webhook" (include "jobgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Two names for the two modes' Secrets: switching modes in an upgrade
deletes the one Helm no longer renders, which must not be the one
cert-manager has just filled. */}}
{{- define "jobgate.webhookSecretName" -}}
{{- if .Values.webhook.certManager.enabled }}
{{- printf "%s-webhook-cert" (include "jobgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-webhook-tls" (include "jobgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The host of webhook.url, for the controller's own certificate: the
API server checks the certificate against it. urlParse's host keeps the
port and an IPv6 address's brackets, which a certificate name has neither
of. */}}
{{- define "jobgate.webhookUrlHost" -}}
{{- $host := (urlParse .Values.webhook.url).host }}
{{- $host = regexReplaceAll ":[0-9]*$" $host "" }}
{{- $host = $host | trimPrefix "[" | trimSuffix "]" }}
{{- required (printf "webhook.url %q has no host" .Values.webhook.url) $host }}
{{- end }}

{{/* Where the cert-manager Secret is mounted (--webhook-cert-dir). */}}
{{- define "jobgate.webhookCertDir" -}}
/etc/jobgate/webhook
{{- end }}

{{/* The address to listen on: the pod's IP on the host network, where
0.0.0.0 would also take the port on every other address of the host. */}}
{{- define "jobgate.listenAddress" -}}
{{- if .Values.hostNetwork }}
{{- "$(POD_IP)" }}
{{- else }}
{{- "0.0.0.0" }}
{{- end }}
{{- end }}

{{/* topologySpreadConstraints with the controller's own pods as each one's
labelSelector, unless it names one. */}}
{{- define "jobgate.topologySpreadConstraints" -}}
{{- $selector := dict "matchLabels" (include "jobgate.selectorLabels" . | fromYaml) }}
{{- range .Values.topologySpreadConstraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" $selector }}
{{- end }}
- {{ toYaml $c | nindent 2 | trim }}
{{- end }}
{{- end }}

{{/* Whether Secrets are read in every namespace, in the listed ones, or not
at all (credentialsSecrets.access), with the list required for the second. */}}
{{- define "jobgate.secretNamespaces" -}}
{{- if eq .Values.credentialsSecrets.access "namespaces" }}
{{- if not .Values.credentialsSecrets.namespaces }}
{{- fail "credentialsSecrets.access=namespaces needs credentialsSecrets.namespaces: the namespaces whose Secrets groups may name" }}
{{- end }}
{{- toYaml .Values.credentialsSecrets.namespaces }}
{{- end }}
{{- end }}

{{/* Where the S3 CA bundle is mounted, when s3.caBundle names one. */}}
{{- define "jobgate.s3CaDir" -}}
/etc/jobgate/s3-ca
{{- end }}

{{- define "jobgate.s3CaBundle" -}}
{{- $ca := .Values.s3.caBundle }}
{{- if or $ca.configMap $ca.secret }}true{{ end }}
{{- end }}

{{/*
The kinds gated besides Jobs, as a JSON list of {name, group, plural}:
name is what --workload-kinds takes for a built-in kind, empty for one
described in workloads.custom.
*/}}
{{- define "jobgate.workloadKinds" -}}
{{- $kinds := list -}}
{{- if .Values.workloads.jobSet -}}
{{- $kinds = append $kinds (dict "name" "jobset" "group" "jobset.x-k8s.io" "plural" "jobsets") -}}
{{- end -}}
{{- if .Values.workloads.argoWorkflow -}}
{{- $kinds = append $kinds (dict "name" "workflow" "group" "argoproj.io" "plural" "workflows") -}}
{{- end -}}
{{- if .Values.workloads.rayJob -}}
{{- $kinds = append $kinds (dict "name" "rayjob" "group" "ray.io" "plural" "rayjobs") -}}
{{- end -}}
{{- if .Values.workloads.pods -}}
{{- $kinds = append $kinds (dict "name" "pod" "group" "" "plural" "pods") -}}
{{- end -}}
{{- range .Values.workloads.custom -}}
{{- $kinds = append $kinds (dict "name" "" "group" .group "plural" .plural) -}}
{{- end -}}
{{- toJson $kinds -}}
{{- end -}}

{{/* Where the custom kinds' descriptions are mounted. */}}
{{- define "jobgate.kindsFile" -}}
/etc/jobgate/kinds/kinds.yaml
{{- end -}}
