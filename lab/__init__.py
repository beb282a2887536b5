"""Device Update Lab: the site side (DNS, update service, firewall, store, operations)."""

__version__ = "0.1.0"
