"""eqdeploy: ship group-equivariant CNNs to edge runtimes without losing their symmetry."""

__version__ = "0.1.0"
