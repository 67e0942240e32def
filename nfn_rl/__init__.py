"""nfn_rl: explicit policy-conditioned value functions (EPVFs) at scale."""
