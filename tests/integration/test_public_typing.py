"""The public API as mypy --strict sees it from a user's code: what the calls return keeps
the user's types (a user review found ``ServiceSettings.load()`` typed ``Any``, so a typo'd
field passed the type check, and ``on_shutdown`` erasing the decorated function's type)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

USER_CODE = """
import kiki_otel


class Config(kiki_otel.ServiceSettings):
    database_url: str = "postgresql://db/app"


config = Config.load()
reveal_type(config)
telemetry = kiki_otel.configure()


@telemetry.on_shutdown
async def close() -> None: ...


reveal_type(close)
reveal_type(telemetry.shutdown())
config.databse_url
"""


def test_the_public_api_keeps_the_users_types(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mypy import api

    monkeypatch.setenv("MYPYPATH", str(ROOT))  # (the editable install's import hook: not mypy's)

    user = tmp_path / "user.py"
    user.write_text(textwrap.dedent(USER_CODE))
    out, err, status = api.run(
        [
            "--strict",
            "--follow-imports=silent",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(user),
        ]
    )
    assert 'Revealed type is "user.Config"' in out, out + err
    assert 'Revealed type is "def () -> typing.Coroutine[Any, Any, None]"' in out, out
    assert 'Revealed type is "kiki_otel._shutdown.ShutdownReport"' in out, out
    assert '"Config" has no attribute "databse_url"' in out, out
    assert status == 1  # that typo, and nothing else
    assert out.count("error:") == 1, out
