"""A run's spec as a user copies it from its page: the JSON, and the equivalent `loradeck train` and `curl`
commands, each self-contained (a quoted here-document carries the JSON, so nothing in it needs escaping)."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

# A here-document ends at a line that is exactly this word; JSON printed with indent never produces one.
END = "SPEC"


@dataclass(frozen=True)
class SpecCommands:
    json: str
    cli: str
    curl: str


def spec_commands(spec: dict[str, Any], *, base_url: str, token_needed: bool) -> SpecCommands:
    """What starts the same run again: `spec` as JSON, `loradeck train` on a file of it (the worker CLI reads the
    API's RunSpec fields), and a `curl` POST to this server's API (with the token it asks for when it does)."""
    text = json.dumps(spec, indent=2, ensure_ascii=False)
    cli = f"cat > spec.json <<'{END}'\n{text}\n{END}\nloradeck train spec.json"
    auth = ' -H "Authorization: Bearer $LORADECK_TOKEN"' if token_needed else ""
    url = shlex.quote(base_url.rstrip("/") + "/api/v1/runs")
    curl = f"curl -X POST {url} -H 'Content-Type: application/json'{auth} --data-binary @- <<'{END}'\n{text}\n{END}"
    return SpecCommands(json=text, cli=cli, curl=curl)
