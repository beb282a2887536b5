"""The lab console: a web page on 127.0.0.1 that support staff run demos and training from.

`lab console` serves it (lab.console.app.Console) for a running lab, which it reaches
through the lab's admin API with the lab's token kept in this process; the scenario and
demo runs run in the console's own process (lab.ops.runs). The page is rendered on the
server (Jinja2 templates, package data), kept live by server-sent events naming the panels
that changed (lab.console.live), and guarded by a one-time login link, a session cookie,
a CSRF token and Host and Origin checks (lab.console.guard).
"""
