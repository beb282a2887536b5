"""Reverse-proxy scenarios: the classic mistakes in publishing the external web services.

Lync publishes its external web services, the Device Update Web service among them,
through a reverse proxy (TMG, IIS ARR or similar): a listener with its own certificate for
the external web name, and a publishing rule that bridges each client to a front end's
external site on port 4443 over TLS of its own, letting the client authenticate with the
front end directly. Each scenario here has a phone at home with a user signed in, which
updates through the edge when the proxy is right (``updated ... through the edge``), and
an edge wrong in one way (framework.EdgeMisconfigured). Runs use the embedded default lab,
whose names the outcomes mention.
"""

from __future__ import annotations

from emulator import LogCode
from lab.ops.scenarios.framework import EdgeMisconfigured, PhoneSpec, ProxyMistake, Scenario

AT_HOME = (PhoneSpec(inside=False, user="alice"),)
"""The subject: a phone outside the firewall, alice signed in on it."""

PROXY_SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="proxy-certificate-without-external-web-name",
        title="The reverse proxy's certificate lacks the external web name",
        symptom="Phones at home sign in, then never update; the same phones update in the office.",
        cause="The reverse proxy's listener presents a certificate without "
        "webext.contoso.test, the external web services name in-band provisioning gives "
        "phones: the phone refuses the TLS connection before any HTTP is sent.",
        fix="Reissue the listener's certificate (the TMG web listener's, the IIS ARR site "
        "binding's) with the external web services FQDN webext.contoso.test as a subject "
        "alternative name, from a CA the phones trust.",
        expected="certificate refused: webext.contoso.test is not on it",
        fault=EdgeMisconfigured(ProxyMistake.LISTENER_CERTIFICATE),
        phones=AT_HOME,
        evidence=(LogCode.SIGNED_IN, LogCode.CONNECTION_FAILED, LogCode.GAVE_UP),
    ),
    Scenario(
        name="proxy-bridges-to-internal-port",
        title="The reverse proxy bridges to the front ends' internal port",
        symptom="Phones at home get 502 Bad Gateway from the external web services; phones "
        "in the office update.",
        cause="The publishing rule bridges to port 443, the front ends' internal web site, "
        "which takes connections from inside the firewall only and drops the proxy's: no "
        "front end answers, and the proxy answers 502.",
        fix="Bridge the publishing rule to the front ends' external web site, port 4443 "
        "(TMG: Bridging, redirect requests to SSL port 4443; ARR: the server farm's HTTPS "
        "port 4443), still published to phones as 443.",
        expected="server failed: HTTP 502 Bad Gateway: no front end took the edge's "
        "connection to its external site (diagnostic 50201)",
        fault=EdgeMisconfigured(ProxyMistake.INTERNAL_PORT),
        phones=AT_HOME,
        evidence=(LogCode.SERVER_FAILED, LogCode.SIGN_IN_FAILED, LogCode.GAVE_UP),
    ),
    Scenario(
        name="proxy-does-not-trust-internal-ca",
        title="The reverse proxy does not trust the CA of the front ends' certificates",
        symptom="Phones at home get 502 Bad Gateway from the external web services, though "
        "the proxy's own certificate is fine.",
        cause="The proxy opens its own TLS connection to each front end and checks its "
        "certificate, which the internal enterprise CA issued; the proxy trusts only the "
        "public CAs of its system store, refuses the connection and answers 502.",
        fix="Import the internal CA's root certificate (and any intermediate) into the "
        "proxy's trusted root store (Local Computer), or issue the front ends' external "
        "web certificates from a CA the proxy trusts.",
        expected="server failed: HTTP 502 Bad Gateway: the edge does not trust the "
        "certificate of the front ends' external sites (diagnostic 50202)",
        fault=EdgeMisconfigured(ProxyMistake.UNTRUSTED_CA),
        phones=AT_HOME,
        evidence=(LogCode.SERVER_FAILED, LogCode.SIGN_IN_FAILED, LogCode.GAVE_UP),
    ),
    Scenario(
        name="proxy-strips-ntlm",
        title="The reverse proxy does not let the phone authenticate with the front end",
        symptom="Phones at home are refused with 401 at every sign-in, with the right "
        "password; the same user signs in on phones in the office.",
        cause="The publishing rule keeps the client's credentials from the front ends "
        "(TMG: 'No delegation, and client cannot authenticate directly'): the phone's NTLM "
        "messages never reach the front end, which challenges it again and again.",
        fix="Set the rule's authentication delegation to 'No delegation, but client may "
        "authenticate directly' and require no authentication on the listener (ARR passes "
        "the Authorization header as it is), so that NTLM runs end to end on one connection.",
        expected="sign-in refused: HTTP 401 Unauthorized: sign in with NTLM to use this "
        "(diagnostic 40101)",
        fault=EdgeMisconfigured(ProxyMistake.NO_DIRECT_AUTHENTICATION),
        phones=AT_HOME,
        evidence=(LogCode.SIGNING_IN, LogCode.DENIED),
    ),
)
"""Troubleshooting scenarios of the reverse proxy, appended to the catalogue's."""
