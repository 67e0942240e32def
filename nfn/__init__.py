"""nfn: weight-space layers for JAX and Equinox."""
