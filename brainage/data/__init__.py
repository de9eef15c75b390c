"""Data layer: OpenBHB readers (both layouts), the synthetic multi-site simulator, and the
preprocessing that turns either into a compact training cache."""
