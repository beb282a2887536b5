"""The lab's network: its config, the firewall policy, the DNS server, the PKI, and the
connection budget every listener shares. Nothing here knows of the store or the service."""
