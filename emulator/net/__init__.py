"""The phone's I/O adapters: DNS resolver, HTTPS client with strict TLS, and NTLM.

Each is an interface (a Protocol) a driver is handed, with one real implementation over
real sockets from the phone's own source address; tests may hand a driver scripted ones.
"""

from emulator.net.client import Answer, Download, HTTPSClient, Progress
from emulator.net.https import PhoneAiohttpResolver, PhoneHTTPSClient
from emulator.net.ntlm import AuthContext, AuthFactory, NTLMClient
from emulator.net.resolver import DNSResolver, Resolver
from emulator.net.tls import CertificateChecker, phone_context

__all__ = [
    "Answer",
    "AuthContext",
    "AuthFactory",
    "CertificateChecker",
    "DNSResolver",
    "Download",
    "HTTPSClient",
    "NTLMClient",
    "PhoneAiohttpResolver",
    "PhoneHTTPSClient",
    "Progress",
    "Resolver",
    "phone_context",
]
