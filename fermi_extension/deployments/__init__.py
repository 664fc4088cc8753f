"""Inference services (推理服务): deployments of registered model versions. Independent of the backend."""
