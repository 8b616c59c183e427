"""Refinery: train language models on Kubernetes."""
