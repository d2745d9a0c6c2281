"""Sweeps and ablations: what is searched (space), the sweep itself (sweep), how its trials run (execution), its
definition from a request (define), one trial (trial), the two executors (local, ray_tune with ray_hooks and
ray_train; asha for the local one), the Ray cluster (ray_cluster), the live status line and the closing
summary."""
