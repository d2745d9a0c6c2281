"""Sweeps and ablations: what is searched (space), the sweep itself (model), its definition from a request
(define), one trial (trial), the two executors (local, ray_tune with ray_hooks; asha for the local one), live
progress and the closing summary."""
