"""Where work runs: ``local`` (processes on this machine) and ``kubernetes``."""
