"""Fermi (费米集群): a Jupyter-native AI platform.

This package is the platform's Python side: the control plane (``service``), the domain logic
(``catalog``, ``jobs``), the backends, the ``fermi`` command, and the dev-server extension whose
entry points are below.
"""

__version__ = "0.1.0"


def _jupyter_server_extension_points():
    return [{"module": "fermi_extension.extension", "app": _extension_app()}]


def _extension_app():
    from .extension import FermiExtension

    return FermiExtension
