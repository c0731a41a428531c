"""Kafka plumbing: client configuration, producing with delivery tracking, topics and cluster checks."""
