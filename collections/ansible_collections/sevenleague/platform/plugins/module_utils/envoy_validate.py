"""Envoy's own check of a rendered configuration: `envoy --mode validate` on everything at once."""

from __future__ import annotations

import copy
import json
import subprocess
import tempfile

from ansible_collections.sevenleague.platform.plugins.module_utils.envoy_servicemap import EnvoyConfigError

# Secrets the SDS files hold (written on the host by the role's sevenleague-envoy-secrets).
HOST_SECRET = "host"
CA_SECRET = "ca"


def _strip_sds(node):
    """The same structure with every SDS reference pointing at a static secret of the same name."""
    if isinstance(node, dict):
        if set(node) == {"name", "sds_config"} and node["name"] in (HOST_SECRET, CA_SECRET):
            return {"name": node["name"]}
        return {key: _strip_sds(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_strip_sds(value) for value in node]
    return node


def validation_bootstrap(config: dict, pki_dir: str) -> dict:
    """The bootstrap with the listeners and clusters inlined as static resources, for --mode validate.

    Validation mode does not read the xDS or SDS files, so everything they hold is checked here:
    the resources exactly as the LDS and CDS files carry them, and the secrets as static secrets
    loaded from the pki directory's files (fullchain.pem, key.pem, ca.pem), whose certificates
    and key Envoy must be able to load.
    """
    bootstrap = copy.deepcopy(config["bootstrap"])
    del bootstrap["dynamic_resources"]
    # The drain layer's file may not exist yet (the role writes it next to the others).
    bootstrap["layered_runtime"]["layers"] = [
        {"name": layer["name"], "static_layer": {}} if "rtds_layer" in layer else layer
        for layer in bootstrap["layered_runtime"]["layers"]
    ]

    def plain(resources: list[dict]) -> list[dict]:
        return [{k: v for k, v in _strip_sds(r).items() if k != "@type"} for r in resources]

    bootstrap["static_resources"] = {
        "listeners": plain(config["lds"]["resources"]),
        "clusters": plain(config["cds"]["resources"]),
        "secrets": [
            {
                "name": HOST_SECRET,
                "tls_certificate": {
                    "certificate_chain": {"filename": f"{pki_dir}/fullchain.pem"},
                    "private_key": {"filename": f"{pki_dir}/key.pem"},
                },
            },
            {"name": CA_SECRET, "validation_context": {"trusted_ca": {"filename": f"{pki_dir}/ca.pem"}}},
        ],
    }
    return bootstrap


def check_with_envoy(bootstrap: dict, envoy: str = "envoy", timeout: float = 120) -> None:
    """Run `envoy --mode validate` on a bootstrap; EnvoyConfigError with Envoy's reason when it refuses."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="envoy-validate-") as handle:
        json.dump(bootstrap, handle)
        handle.flush()
        result = subprocess.run(
            [envoy, "--mode", "validate", "--log-level", "error", "-c", handle.name],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    if result.returncode != 0:
        output = (result.stderr + result.stdout).strip().splitlines()
        reason = next(
            (
                line.split("error initializing configuration", 1)[-1].split(": ", 1)[-1]
                for line in output
                if "error initializing configuration" in line
            ),
            output[-1] if output else f"exit status {result.returncode}",
        )
        raise EnvoyConfigError(f"Envoy refuses the configuration: {reason}")
