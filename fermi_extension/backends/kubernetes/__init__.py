"""The Kubernetes backend: pure object builders from the neutral spec, and the parts that apply
and watch them. The builders need no cluster; they are validated against the official schemas."""
