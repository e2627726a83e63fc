"""The host's own machinery, driven for the services: processes (systemd, or supervisord
where systemd is not PID 1), nginx sites, certificates, packages and system users.

Each module wraps one program of the host and knows nothing of manifests or of the state
database: `services/` decides what to do, `system/` does it and says, in one line, why it
could not. Everything here runs real commands (`run.py`), so it needs root on a real host.
"""
