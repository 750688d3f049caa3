"""Is the Hugging Face hub usable right now? A low-level probe that data, models and checks share."""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.parse
import urllib.request


def hub_offline_reason(timeout_s: float = 2.0) -> str | None:
    """Why the Hugging Face hub cannot be used right now (None when it answers within `timeout_s`)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return f"{var} is set"
    from huggingface_hub import constants

    endpoint = str(constants.ENDPOINT)
    if not urllib.parse.urlsplit(endpoint).hostname:
        return f"the hub endpoint {endpoint!r} has no host"
    outcome: list[str | None] = []

    def probe() -> None:
        request = urllib.request.Request(endpoint, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # the server answered
        except Exception as exc:  # any other failure means unreachable
            outcome.append(f"the hub ({endpoint}) is unreachable ({type(exc).__name__})")

    worker = threading.Thread(target=probe, name="kd-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout_s + 1.0)  # also bounds DNS look-ups, which ignore the socket timeout
    if not outcome:
        return f"the hub ({endpoint}) did not answer within {timeout_s:g} s"
    return outcome[0]
