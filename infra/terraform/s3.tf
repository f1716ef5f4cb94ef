# The data bucket: inputs/, runs/<run-id>/ (run directories) and checkpoints/. Versioned, SSE-KMS,
# private, TLS only, with server access logs going to a second bucket (access_logs.tf).

resource "aws_s3_bucket" "data" {
  bucket = var.bucket_name
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage cost; everything here is rebuildable from the inputs, so it is a per-deployment choice, not a default.
  #checkov:skip=CKV2_AWS_62:Nothing consumes bucket events; Prefect orchestrates the stages, so event notifications would have no subscriber.
}

resource "aws_s3_bucket_ownership_controls" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "data" {
  bucket                  = aws_s3_bucket.data.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "data" {
  bucket = aws_s3_bucket.data.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  bucket = aws_s3_bucket.data.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.data.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_logging" "data" {
  bucket        = aws_s3_bucket.data.id
  target_bucket = aws_s3_bucket.access_logs.id
  target_prefix = "${var.bucket_name}/"
}

# Lifecycle. S3 lifecycle filters match a key *prefix* (no wildcards), and intermediate data lives inside
# each run directory (runs/<run-id>/documents/, runs/<run-id>/dedup/signatures/), so a prefix cannot
# select it. It is selected by object tag instead: the pipeline's S3 storage layer tags what it writes
# there with gristmill-retention=intermediate (docs/deploy.md, "Bucket layout and retention").
resource "aws_s3_bucket_lifecycle_configuration" "data" {
  bucket = aws_s3_bucket.data.id

  rule {
    id     = "expire-intermediate-data"
    status = "Enabled"
    filter {
      tag {
        key   = "gristmill-retention"
        value = "intermediate"
      }
    }
    expiration {
      days = var.intermediate_expiration_days
    }
  }

  rule {
    # Every object: old versions (overwritten or deleted: re-runs, checkpoint rotation) expire, orphaned
    # delete markers are removed, and uploads interrupted mid-way (a crashed writer) are cleaned up.
    id     = "noncurrent-versions-and-incomplete-uploads"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }
    expiration {
      expired_object_delete_marker = true
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.data]
}

data "aws_iam_policy_document" "data_bucket" {
  statement {
    sid     = "DenyPlainHTTP"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.data.arn,
      "${aws_s3_bucket.data.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid     = "DenyTLSBelow12"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.data.arn,
      "${aws_s3_bucket.data.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "NumericLessThan"
      variable = "s3:TlsVersion"
      values   = ["1.2"]
    }
  }
}

resource "aws_s3_bucket_policy" "data" {
  bucket = aws_s3_bucket.data.id
  policy = data.aws_iam_policy_document.data_bucket.json
  # The public access block must exist first, or S3 may evaluate the policy against an open bucket.
  depends_on = [aws_s3_bucket_public_access_block.data]
}
