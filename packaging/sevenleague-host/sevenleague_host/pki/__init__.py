"""sevenleague-pki: a host's certificates, installed and renewed on the host (cli.py lists the commands)."""
