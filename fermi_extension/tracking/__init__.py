"""Experiment tracking and the model registry, on MLflow run by the platform."""
