"""The model repository (模型仓库): the MLflow registry seen through ownership and lineage."""
