"""Fermi's spawners: the local process spawner (embedded default) and the KubeSpawner subclass.

The folder is ``spawner/``; the import name says whose spawner it is.
"""
