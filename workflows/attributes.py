"""Pilothouse's custom search attributes, shown and filterable in the Temporal UI.

One list, used to register them (dev server flags, or the operator API on an external
server) and by workflows to upsert them. An unregistered one would leave workflows stuck.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

KIND = SearchAttributeKey.for_keyword("PilothouseKind")
STATE = SearchAttributeKey.for_keyword("PilothouseState")
GATE = SearchAttributeKey.for_keyword("PilothouseGate")

ALL = (KIND, STATE, GATE)
