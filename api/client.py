"""The HTTP client the CLI (and the demo) use: the API is the only way in."""

from __future__ import annotations

from typing import Any

import httpx

from shared.errors import AutopackError


def describe(detail: Any) -> str:
    """An API error's detail for a person: a validation error list (422) as `field.path: message`
    items joined by "; " (the body's own name left out), anything else as it is."""
    if isinstance(detail, list) and detail and all(isinstance(d, dict) and "msg" in d for d in detail):
        return "; ".join(f"{_field(d.get('loc'))}: {d['msg']}" for d in detail)
    return str(detail)


def _field(loc: Any) -> str:
    parts = [str(p) for p in loc if p != "body"] if isinstance(loc, list) else []
    return ".".join(parts) or "request"


class ClientError(AutopackError):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {describe(detail)}")
        self.status = status
        self.detail = detail


class ApiClient:
    def __init__(self, base_url: str, api_key: str | None, timeout: float = 30) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, raw: bool = False, **kw: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ClientError(0, f"cannot reach the API at {self._http.base_url}: {exc}") from exc
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            raise ClientError(resp.status_code, detail)
        return resp.text if raw else resp.json()

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self._call("POST", "/runs", json=spec)
        return out

    def normalize_plan(self, body: dict[str, Any]) -> dict[str, Any]:
        """`POST /plans/normalize`: the run spec draft of a Markdown plan, its provenance and warnings."""
        out: dict[str, Any] = self._call("POST", "/plans/normalize", json=body)
        return out

    def run(self, run_id: int) -> dict[str, Any]:
        out: dict[str, Any] = self._call("GET", f"/runs/{run_id}")
        return out

    def runs(
        self,
        state: str | None = None,
        limit: int = 50,
        cursor: int | None = None,
        campaign_id: int | None = None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        if cursor is not None:
            params["cursor"] = cursor
        if campaign_id is not None:
            params["campaign_id"] = campaign_id
        out: dict[str, Any] = self._call("GET", "/runs", params=params)
        return out

    def attempts(self, run_id: int, phase: int | None = None) -> list[dict[str, Any]]:
        """Every attempt of the run (or of phase index `phase`) with its full outputs."""
        params = {} if phase is None else {"phase": phase}
        out: list[dict[str, Any]] = self._call("GET", f"/runs/{run_id}/attempts", params=params)
        return out

    def cancel(self, run_id: int) -> dict[str, Any]:
        out: dict[str, Any] = self._call("POST", f"/runs/{run_id}/cancel")
        return out

    def create_campaign(self, spec: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self._call("POST", "/campaigns", json=spec)
        return out

    def campaign(self, campaign_id: int) -> dict[str, Any]:
        out: dict[str, Any] = self._call("GET", f"/campaigns/{campaign_id}")
        return out

    def campaigns(self, limit: int = 50) -> dict[str, Any]:
        out: dict[str, Any] = self._call("GET", "/campaigns", params={"limit": limit})
        return out

    def cancel_campaign(self, campaign_id: int) -> dict[str, Any]:
        out: dict[str, Any] = self._call("POST", f"/campaigns/{campaign_id}/cancel")
        return out

    def campaign_report(self, campaign_id: int) -> dict[str, Any]:
        out: dict[str, Any] = self._call("GET", f"/campaigns/{campaign_id}/report")
        return out

    def campaign_report_text(self, campaign_id: int, fmt: str) -> str:
        """The report as Markdown (`md`) or SVG (`svg`)."""
        out: str = self._call("GET", f"/campaigns/{campaign_id}/report", params={"format": fmt}, raw=True)
        return out

    def approvals(self, state: str | None = "pending", limit: int = 50) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, **({"state": state} if state else {})}
        out: dict[str, Any] = self._call("GET", "/approvals", params=params)
        return out

    def approval(self, approval_id: int) -> dict[str, Any]:
        out: dict[str, Any] = self._call("GET", f"/approvals/{approval_id}")
        return out

    def decide(self, approval_id: int, verdict: str, reason: str | None = None) -> dict[str, Any]:
        """`verdict`: "approve" or "reject" (a rejection needs a reason)."""
        body = {"reason": reason} if reason is not None else {}
        out: dict[str, Any] = self._call("POST", f"/approvals/{approval_id}/{verdict}", json=body)
        return out

    def fleet(self) -> dict[str, Any]:
        out: dict[str, Any] = self._call("GET", "/fleet")
        return out

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = self._call("GET", "/health")
        return out

    def close(self) -> None:
        self._http.close()
