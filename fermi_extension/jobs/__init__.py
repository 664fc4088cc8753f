"""Training jobs: notebooks run with papermill, queued, tracked. Independent of the backend."""
