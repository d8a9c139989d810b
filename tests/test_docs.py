"""Every setting and every RunSpec field is documented in the README (and the form shows RunSpec's help)."""

from __future__ import annotations

from pathlib import Path

from app.config import Settings
from app.objectives.rewards import DEFINITIONS
from app.schemas import RunSpec

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    head = "\n".join(README.splitlines()[:15])
    assert "make run" in head and "make test" in head


def test_every_setting_is_in_the_readme() -> None:
    for name, info in Settings.model_fields.items():
        env = "DATABASE_URL" if name == "database_url" else "REDIS_URL" if name == "redis_url" else None
        documented = env or f"LORADECK_{name.upper()}"
        assert documented in README, f"setting {name} ({documented}) is missing from the README"
        assert info.description, f"setting {name} has no description"


def test_every_runspec_field_is_in_the_readme() -> None:
    for name, info in RunSpec.model_fields.items():
        assert f"`{name}`" in README, f"RunSpec field {name} is missing from the README"
        assert info.description, f"RunSpec field {name} has no description"


def test_every_reward_function_is_in_the_readme_as_defined() -> None:
    # The README's table states each GRPO reward's definition word for word as the code's contract has it.
    for name, definition in DEFINITIONS.items():
        assert f"| `{name}` |" in README and definition in README, f"reward {name} is not in the README as defined"
