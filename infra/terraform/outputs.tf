output "bucket" {
  description = "Name of the data bucket (s3://BUCKET/inputs, runs, checkpoints)."
  value       = aws_s3_bucket.data.bucket
}

output "bucket_arn" {
  description = "ARN of the data bucket."
  value       = aws_s3_bucket.data.arn
}

output "kms_key_arn" {
  description = "ARN of the KMS key that encrypts the data bucket."
  value       = aws_kms_key.data.arn
}

output "worker_role_arn" {
  description = "Role for the pipeline's flow-run pods: annotate the gristmill-worker service account with it."
  value       = aws_iam_role.this["worker"].arn
}

output "trainer_role_arn" {
  description = "Role for the training pods: annotate the gristmill-trainer service account with it."
  value       = aws_iam_role.this["trainer"].arn
}
