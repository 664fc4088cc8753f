"""The control plane: the hub service ``fermi`` (catalogue, jobs, models, deployments, usage, audit)."""
