"""The MQTT topic names of the contract, under the configured prefix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str

    def alerts(self, desk_id: str) -> str:
        return f"{self.prefix}/alerts/{desk_id}"

    def acks(self, desk_id: str) -> str:
        return f"{self.prefix}/acks/{desk_id}"

    @property
    def acks_filter(self) -> str:
        return f"{self.prefix}/acks/+"

    @property
    def reports_filter(self) -> str:
        return f"{self.prefix}/reports/+"

    def rejected(self, operator_id: str) -> str:
        return f"{self.prefix}/reports/{operator_id}/rejected"

    def events(self, operator_id: str) -> str:
        return f"{self.prefix}/events/{operator_id}"

    def status(self, client_id: str) -> str:
        return f"{self.prefix}/relay/{client_id}/status"

    @staticmethod
    def last_level(topic: str) -> str:
        return topic.rsplit("/", 1)[-1]
