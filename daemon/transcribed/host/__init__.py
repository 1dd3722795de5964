"""What ties the daemon to systemd and the machine: sd_notify and the watchdog, hooks, metrics,
and the network-isolation check.
"""
