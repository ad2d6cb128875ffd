"""The tool's constants, its logger and the errors every command reports."""

from __future__ import annotations

import datetime
import logging

from cryptography.hazmat.primitives.asymmetric import ec

from ansible_collections.sevenleague.platform.plugins.module_utils import openbao as openbao_api
from ansible_collections.sevenleague.platform.plugins.module_utils import pki

UTC = datetime.UTC
# A hook that hangs must not keep the oneshot unit (and the next timer run) waiting forever.
HOOK_TIMEOUT = 300
CURVES = {"secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1, "secp521r1": ec.SECP521R1}
RELEASE_FORMAT = "%Y%m%dT%H%M%SZ"
PENDING = "pending"
# The timer leaves a request younger than this to the converge that made it.
PENDING_GRACE = 600

log = logging.getLogger("sevenleague-pki")


# One renewal attempt failed: `retry` tells whether waiting can help (network, seal, 5xx) or not
# (a refusal or a wrong answer: trying again only issues more certificates). Refused is a 4xx.
RenewError = openbao_api.OpenBaoError
Refused = openbao_api.Refused
OpenBao = openbao_api.OpenBao
FAILURES = (pki.PKIError, openbao_api.OpenBaoError)
