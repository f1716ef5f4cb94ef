terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # Written against the 5.x resource schemas; 6.x keeps every argument used here.
      version = ">= 5.70, < 7.0"
    }
  }

  # State stays local by default. For a team, add a backend (e.g. an S3 bucket with locking) here or in a
  # backend.tf that is not committed; see docs/deploy.md.
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ project = "gristmill", managed-by = "terraform" }, var.tags)
  }
}
