# Two roles, each assumable only by one Kubernetes service account through the cluster's OIDC provider
# (IRSA), each limited to the prefixes its stage touches:
#
#   worker   (pipeline flow-run pods)  read inputs/* and runs/*; write runs/*
#   trainer  (torchrun pods)           read runs/*/tokens/* and runs/*/tokenizer/*; read/write checkpoints/*
#
# The Prefect worker Deployment itself never touches the bucket and gets no AWS role at all.

locals {
  bucket = aws_s3_bucket.data.arn
  roles = {
    worker  = var.worker_service_account
    trainer = var.trainer_service_account
  }
  # What each role may read, write (put, delete, multipart) and list (s3:prefix patterns).
  access = {
    worker = {
      read  = ["inputs/*", "runs/*"]
      write = ["runs/*"]
      list  = ["inputs/*", "runs/*"]
    }
    trainer = {
      read  = ["runs/*/tokens/*", "runs/*/tokenizer/*", "checkpoints/*"]
      write = ["checkpoints/*"]
      list  = ["runs/*/tokens/*", "runs/*/tokenizer/*", "checkpoints/*"]
    }
  }
}

data "aws_iam_policy_document" "assume" {
  for_each = local.roles

  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.kubernetes_namespace}:${each.value}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "this" {
  for_each = local.roles

  name                 = "${var.name}-${each.key}"
  description          = "gristmill ${each.key}: assumed by ${var.kubernetes_namespace}/${each.value} via IRSA"
  assume_role_policy   = data.aws_iam_policy_document.assume[each.key].json
  max_session_duration = 43200 # 12 h: long training runs refresh web-identity credentials themselves
}

data "aws_iam_policy_document" "access" {
  for_each = local.access

  statement {
    sid       = "List"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = each.value.list
    }
  }

  statement {
    sid       = "Read"
    actions   = ["s3:GetObject", "s3:GetObjectTagging"]
    resources = [for p in each.value.read : "${local.bucket}/${p}"]
  }

  statement {
    sid = "Write"
    actions = [
      "s3:PutObject",
      "s3:PutObjectTagging",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [for p in each.value.write : "${local.bucket}/${p}"]
  }

  statement {
    # SSE-KMS: reading needs Decrypt, writing needs GenerateDataKey (and Decrypt for multipart uploads).
    sid       = "UseBucketKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.data.arn]
  }
}

resource "aws_iam_role_policy" "access" {
  for_each = local.access

  name   = "${var.name}-${each.key}-data"
  role   = aws_iam_role.this[each.key].id
  policy = data.aws_iam_policy_document.access[each.key].json
}
