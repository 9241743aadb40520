"""The plumbing every long-running meshroute process (node, reflector)
shares: the HTTP endpoint (``http``) and Prometheus text (``metrics``),
systemd notify and watchdog (``systemd``), supervision of long-lived tasks
(``long_tasks``), stop signals (``stop``) and YAML configuration loading
with the sections both share (``config``). It knows nothing of IPAM, BGP or
routes."""
