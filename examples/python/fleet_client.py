"""A fleet client in Python that knows nothing but the API's OpenAPI document.

It reads GET /v1/openapi.json, finds the enqueue operation of a job type by its operationId,
enqueues a job (with an Idempotency-Key), polls it until it ends, enqueues a second one and
cancels it. Needs only `requests`.

    FLEET_URL=http://127.0.0.1:8080 FLEET_TOKEN=... python3 fleet_client.py echo '{"message": "hi"}' \
        hash '{"text": "x", "rounds": 5000000}'

The second type and payload (optional; the first pair again by default) name a job slow enough
to cancel while it waits or runs.
"""
import json
import os
import sys
import time
import uuid

import requests


class FleetClient:
    def __init__(self, base_url: str, token: str):
        self.base = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.doc = self._json("GET", "/v1/openapi.json")
        # operationId -> (method, path), straight from the document.
        self.ops = {
            op["operationId"]: (method.upper(), path)
            for path, item in self.doc["paths"].items()
            for method, op in item.items()
        }

    def _json(self, method: str, path: str, **kwargs):
        r = self.session.request(method, self.base + path, timeout=10, **kwargs)
        body = r.json() if r.content else None
        if r.status_code >= 400:
            err = (body or {}).get("error", {})
            raise RuntimeError(f"{method} {path}: {r.status_code} {err.get('code')}: {err.get('message')}")
        return body

    def _call(self, operation_id: str, path_params=None, **kwargs):
        method, path = self.ops[operation_id]
        for k, v in (path_params or {}).items():
            path = path.replace("{" + k + "}", v)
        return self._json(method, path, **kwargs)

    def enqueue(self, job_type: str, payload, idempotency_key=None):
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("enqueue_" + job_type.replace("-", "_"), json=payload, headers=headers)

    def job(self, job_id: str):
        return self._call("getJob", {"id": job_id})

    def cancel(self, job_id: str):
        return self._call("cancelJob", {"id": job_id})

    def wait(self, job_id: str, timeout_s: float = 30):
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            j = self.job(job_id)
            if j["state"] in ("completed", "failed"):
                return j
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} did not finish in {timeout_s} s")


def main() -> int:
    job_type, payload = sys.argv[1], json.loads(sys.argv[2])
    cancel_type = sys.argv[3] if len(sys.argv) > 3 else job_type
    cancel_payload = json.loads(sys.argv[4]) if len(sys.argv) > 4 else payload
    client = FleetClient(os.environ["FLEET_URL"], os.environ["FLEET_TOKEN"])
    key = str(uuid.uuid4())
    first = client.enqueue(job_type, payload, idempotency_key=key)
    again = client.enqueue(job_type, payload, idempotency_key=key)
    done = client.wait(first["id"])
    second = client.enqueue(cancel_type, cancel_payload)
    cancelled = client.cancel(second["id"])
    print(json.dumps({"id": first["id"], "sameIdOnRetry": again["id"] == first["id"], "state": done["state"], "result": done["result"], "cancel": cancelled["outcome"]}))
    return 0 if done["state"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
