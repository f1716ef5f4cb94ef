# One customer-managed key encrypts the data bucket (SSE-KMS with S3 Bucket Keys, so S3 asks KMS once
# per bucket key rather than once per object).

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

data "aws_iam_policy_document" "kms" {
  # The standard "let IAM decide" key policy: the account administers the key, and the IAM policies of
  # the worker and trainer roles (iam.tf) grant them use of it.
  #checkov:skip=CKV_AWS_109:A key policy's Resource "*" means this key only; administration is granted to the account root, which delegates to IAM policies.
  #checkov:skip=CKV_AWS_111:A key policy's Resource "*" means this key only; write access is constrained to principals of this account.
  #checkov:skip=CKV_AWS_356:A key policy's Resource "*" means this key only (key policies cannot name the key itself).
  statement {
    sid       = "AccountAdministersKeyThroughIAM"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}

resource "aws_kms_key" "data" {
  description             = "${var.name}: encrypts the data bucket ${var.bucket_name}"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "data" {
  name          = "alias/${var.name}-data"
  target_key_id = aws_kms_key.data.key_id
}
