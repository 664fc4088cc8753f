"""The embedded default: jobs as papermill processes on this machine."""
