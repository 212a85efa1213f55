{{/* Names and labels shared by every template. */}}

{{- define "kvsched.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the release name when it already contains the chart name. */}}
{{- define "kvsched.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kvsched.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kvsched.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kvsched.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvsched.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kvsched.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kvsched.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The kube-scheduler container's own ServiceAccount (docs/deploy.md, "Two ServiceAccounts"). */}}
{{- define "kvsched.schedulerServiceAccountName" -}}
{{- default (printf "%s-scheduler" (include "kvsched.fullname" .) | trunc 63 | trimSuffix "-") .Values.scheduler.serviceAccountName -}}
{{- end -}}

{{/* The Secret holding the scheduler ServiceAccount's token (filled by kube-controller-manager). */}}
{{- define "kvsched.schedulerTokenSecretName" -}}
{{- printf "%s-scheduler-token" (include "kvsched.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kvsched.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace -}}
{{- end -}}

{{/* kvsched's image: the tag defaults to the chart's appVersion. */}}
{{- define "kvsched.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The kube-scheduler's image: the tag defaults to the cluster's own version, without a vendor suffix
     (v1.30.2-eks-1234 -> v1.30.2), since registry.k8s.io only has the plain tags. */}}
{{- define "kvsched.schedulerImage" -}}
{{- $tag := .Values.scheduler.image.tag -}}
{{- if not $tag -}}
{{- $tag = regexFind "^v[0-9]+\\.[0-9]+\\.[0-9]+" .Capabilities.KubeVersion.Version -}}
{{- if not $tag -}}
{{- /* `helm template --kube-version 1.30` gives "v1.30", no patch: take the release's first, which exists. */ -}}
{{- $tag = printf "%s.0" (regexFind "^v[0-9]+\\.[0-9]+" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- end -}}
{{- printf "%s:%s" .Values.scheduler.image.repository $tag -}}
{{- end -}}

{{- define "kvsched.schedulerConfigName" -}}
{{- printf "%s-scheduler-config" (include "kvsched.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* What kvsched writes to namespaced objects (and the Deployments it watches): rules of its ClusterRole, or with
     watchNamespace set of its Role in that namespace (rbac.yaml). */}}
{{- define "kvsched.namespacedRules" -}}
# Controller: the ModelServings annotated Deployments own (created, patched, deleted; the informers list them).
- apiGroups: [kvsched.io]
  resources: [modelservings]
  verbs: [{{ if not .Values.watchNamespace }}list, watch, {{ end }}create, patch, delete]
# Controller: the plan, a merge patch of the status subresource (the extender reads it from the watch).
- apiGroups: [kvsched.io]
  resources: [modelservings/status]
  verbs: [patch]
# Controller: annotated Deployments, whose pod template it patches (affinity, schedulerName, label, env).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, patch]
# Controller: owner references with blockOwnerDeletion (checked by the OwnerReferencesPermissionEnforcement
# admission plugin where it is on, when the controller creates a ModelServing owned by a Deployment).
- apiGroups: [apps]
  resources: [deployments/finalizers]
  verbs: [update]
# Extender and controller: the extender's bind annotates the pod, the controller annotates a pending one to wake it.
- apiGroups: [""]
  resources: [pods]
  verbs: [patch]
# Extender: the Binding after the annotation (the client posts to the namespace's bindings collection).
- apiGroups: [""]
  resources: [bindings]
  verbs: [create]
# Controller: migrations go through the Eviction API so PodDisruptionBudgets hold.
- apiGroups: [""]
  resources: [pods/eviction]
  verbs: [create]
# Controller: a PodDisruptionBudget per model (kvsched.controller.pdb): it watches them all (a user's that selects
# a model's pods means kvsched makes none), and creates, patches and deletes only its own.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, patch, delete]
# Controller: core/v1 events on the objects it acts on (each a new Event; never patched).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
