"""The distributed level: device/edge/cloud partitioning and split inference over gRPC."""
