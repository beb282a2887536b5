"""Device Update Lab: the phones (a sans-IO core and the drivers that give it I/O)."""

__version__ = "0.1.0"
