"""Inference services: the router in front of every deployment and the model server of a replica."""
