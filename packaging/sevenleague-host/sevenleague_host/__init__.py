"""The host-side tools of sevenleague, one Python package with a command per tool.

    sevenleague-pki               a host's certificates: request, install, renew (sevenleague_host.pki)
    sevenleague-envoy-secrets     Envoy's SDS files from the current certificate (envoy_secrets)
    sevenleague-rsyslog-stats     rsyslog's impstats as node_exporter metrics (rsyslog_stats)
    sevenleague-alert-journal     Alertmanager's webhook into the journal (alert_journal)
    sevenleague-check-web-config  node_exporter's web configuration, checked (check_web_config)
    sevenleague-openbao-check-config  OpenBao's server configuration, checked (openbao_check_config)

packaging/build.py builds them into the sevenleague-host package, with the collection's shared
module_utils they import (ansible_collections.sevenleague.platform.plugins.module_utils).
"""

__version__ = "2.2.0"
