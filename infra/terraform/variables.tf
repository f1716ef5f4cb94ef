variable "region" {
  description = "AWS region of the bucket, key and roles."
  type        = string
  default     = "us-east-1"
}

variable "name" {
  description = "Prefix of every resource name (roles, key alias)."
  type        = string
  default     = "gristmill"
}

variable "bucket_name" {
  description = "Name of the data bucket (globally unique). Inputs, run directories and checkpoints live in it."
  type        = string
}

variable "intermediate_expiration_days" {
  description = "Days before intermediate objects (tagged gristmill-retention=intermediate) expire."
  type        = number
  default     = 14
}

variable "noncurrent_version_expiration_days" {
  description = "Days a replaced or deleted object version is kept before it expires."
  type        = number
  default     = 30
}

variable "access_log_expiration_days" {
  description = "Days S3 server access logs are kept."
  type        = number
  default     = 365
}

variable "oidc_provider_arn" {
  description = "ARN of the cluster's IAM OIDC provider (IRSA), e.g. arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/ABC."
  type        = string
}

variable "oidc_issuer" {
  description = "The cluster's OIDC issuer without https://, e.g. oidc.eks.us-east-1.amazonaws.com/id/ABC."
  type        = string
}

variable "kubernetes_namespace" {
  description = "Namespace of the gristmill pods (infra/k8s)."
  type        = string
  default     = "gristmill"
}

variable "worker_service_account" {
  description = "Kubernetes service account of the pipeline's flow-run pods; it may assume the worker role."
  type        = string
  default     = "gristmill-worker"
}

variable "trainer_service_account" {
  description = "Kubernetes service account of the training pods; it may assume the trainer role."
  type        = string
  default     = "gristmill-trainer"
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}
